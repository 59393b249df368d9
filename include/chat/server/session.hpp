// One client connection's I/O: a co_await reader of framed messages, the
// writes, and one steady_timer, over any stream type, around a SessionCore.
//
// Included by src/server/session.cpp only, which instantiates it for each
// transport; the rest of the server knows sessions as SessionBase
// (session_base.hpp) and makes them with make_session().
//
// The same template serves TCP, TLS, Unix-domain sockets and WebSocket (over
// TCP or TLS: WebSocketStream, whose framing is added on the read and write
// paths below). Everything a
// session decides (what a frame means, the queue and its bound, every
// deadline, the close) is in SessionCore (session_core.hpp), which does no
// I/O; this class feeds it what happened and carries out what it answers
// (take_actions()): write, set the timer to next_wakeup(), close. All of it
// runs on the session's own io_context (its shard).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <linux/sockios.h>
#include <malloc.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include <cerrno>
#include <cstring>

#include <asio.hpp>
#include <asio/experimental/as_tuple.hpp>
#include <spdlog/spdlog.h>

#include "chat/common/tls.hpp"
#include "chat/proto/protocol.hpp"
#include "chat/proto/request.hpp"
#include "chat/server/access.hpp"
#include "chat/server/hub.hpp"
#include "chat/server/hub_gate.hpp"
#include "chat/server/session_base.hpp"
#include "chat/server/session_core.hpp"
#include "chat/server/session_env.hpp"
#include "chat/common/tls_socket.hpp"
#include "chat/server/tls_staging.hpp"
#include "chat/server/web_files.hpp"
#include "chat/server/websocket_handshake.hpp"
#include "chat/server/websocket_stream.hpp"

namespace chat {

// TLS sessions run over TlsSocket (OpenSSL on the socket's descriptor);
// everything else is a plain stream socket.
#if PULSECHAT_HAVE_OPENSSL
template <class Stream>
inline constexpr bool is_tls_socket = std::is_same_v<Stream, TlsSocket>;
#else
template <class Stream>
inline constexpr bool is_tls_socket = false;
#endif

template <class Stream>
class Session final : public SessionBase,
                      private SessionHost,
                      public std::enable_shared_from_this<Session<Stream>> {
public:
    using Clock = std::chrono::steady_clock;

    Session(Stream stream, std::uint64_t id, std::size_t shard, std::string peer, SessionEnv& env)
        : stream_(std::move(stream)),
          id_(id),
          shard_(shard),
          peer_(std::move(peer)),
          env_(env),
          core_(env.config, *this, env.counters, *env.shard_metrics[shard], *env.log, id, peer_, env.server_version),
          decoder_(max_frame_before_hello),
          watchdog_(sock().get_executor()) {}

    std::uint64_t id() const noexcept override { return id_; }
    void hold(std::shared_ptr<const void> resource) override {
        if constexpr (is_tls) held_ = std::move(resource);
    }
    std::size_t shard() const noexcept override { return shard_; }
    const std::string& peer() const noexcept override { return peer_; }
    std::size_t queued_bytes() const noexcept override { return core_.queued_bytes(); }

    void start(std::optional<std::pair<ErrorCode, std::string>> rejection) override {
        core_.start(Clock::now(), std::move(rejection));
        apply();  // a rejection's ERROR waits for the transport
        auto self = this->shared_from_this();
        // Independent tasks rather than one `reader && writer && watchdog`: a
        // parallel group costs several frames and cancellation slots per
        // session, which was most of an idle connection's memory. For the same
        // reason the watchdog is a plain timer callback and the writer runs
        // only while there is something to write.
        spawn([self]() -> asio::awaitable<void> {
            if (!co_await self->transport_handshake()) co_return;
            self->transport_ready_ = true;
            self->core_.transport_ready();
            self->apply();
            self->on_watchdog();
            co_await self->reader();
        });
    }

    // --- Participant and SessionBase: called on this session's shard ---

    void deliver(const SharedFrame& frame) override {
        core_.deliver(frame);
        apply();
    }
    void on_login(const std::string& nick, const std::string& resume_token) override {
        core_.on_login(nick, resume_token, Clock::now());
        apply();
    }
    void on_renamed(const std::string& nick) override { core_.on_renamed(nick); }
    void close_with_error(ErrorCode code, const std::string& reason) override {
        core_.close_with_error(code, reason, Clock::now());
        apply();
    }
    void abort(const std::string& reason) override {
        core_.abort(reason);
        apply();
    }
    void shutdown(const std::string& reason) override {
        core_.shutdown(reason, Clock::now());
        apply();
    }

private:
    // --- carrying out what the core decided ---

    void apply() {
        const unsigned actions = core_.take_actions();
        if (actions == SessionCore::act_none) return;
        if (actions & SessionCore::act_close) {
            asio::error_code ignored;
            sock().lowest_layer().close(ignored);
            watchdog_.cancel();
            return;
        }
        if (actions & SessionCore::act_release) release_buffers(actions & SessionCore::act_trim);
        if (actions & SessionCore::act_replan) replan();
        if (actions & SessionCore::act_write) wake_writer();
    }

    // A deadline moved closer than the timer's: wake it to set it again.
    void replan() {
        if (watchdog_armed_ && watchdog_.expiry() > core_.next_wakeup()) watchdog_.cancel();
    }

    // The timer fired, or was cancelled for a re-plan: let the core look at
    // the time, then sleep until its next deadline.
    void on_watchdog() {
        watchdog_armed_ = false;
        if (core_.closed()) return;
        core_.on_timer(Clock::now());
        apply();
        if (core_.closed()) return;
        watchdog_.expires_at(core_.next_wakeup());
        watchdog_armed_ = true;
        ++tasks_;
        watchdog_.async_wait([self = this->shared_from_this()](const asio::error_code&) {
            self->on_watchdog();
            self->task_done();
        });
    }

    // --- SessionHost: what the core asks of the hub and the socket ---

    void login(const NickName& nick, std::string_view resume_token) override {
        const auto login = [self = this->shared_from_this(), nick, token = std::string(resume_token)] {
            try {
                self->env_.hub.login(self, nick, token);
            } catch (const std::exception& e) {
                hub_bug(self->env_, self->shard_, self->id_, "HELLO", e.what());
            }
        };
        if (shard_ == 0)
            login();
        else
            asio::post(env_.hub_executor, login);
    }

    // To the hub: directly on its own shard (no copy of the text), else
    // posted with an owned copy and counted against this shard's hub gate.
    void submit(const Request& request) override {
        if (shard_ == 0) {
            run_on_hub(env_, shard_, id_, request);
            return;
        }
        auto& gate = *env_.hub_gates[shard_];
        gate.sent();
        asio::post(env_.hub_executor, [&env = env_, &gate, shard = shard_, id = id_, owned = OwnedRequest(request)] {
            run_on_hub(env, shard, id, owned.get());
            gate.done();
        });
    }

    void leave_hub(PresenceEvent event, const std::string& reason) override {
        asio::post(env_.hub_executor, [&env = env_, id = id_, event, reason] {
            try {
                env.hub.disconnect(id, event, reason);
            } catch (const std::exception& e) {
                env.counters.bugs.fetch_add(1, std::memory_order_relaxed);
                env.log->error("session {}: bug: the hub threw on disconnect: {}", id, e.what());
            }
        });
    }

    std::optional<AuthRefusal> check_access(std::string_view token) override {
        if (env_.access == nullptr) return std::nullopt;
        return env_.access->check(token, peer_address(peer_));
    }

    // SIOCINQ: bytes waiting in the socket's receive queue.
    std::size_t unread_bytes() override {
        int n = 0;
        if (::ioctl(sock().lowest_layer().native_handle(), SIOCINQ, &n) != 0) n = 0;
        std::size_t waiting = n > 0 ? static_cast<std::size_t>(n) : 0;
        if constexpr (is_tls) {
            if (sock().has_pending()) ++waiting;  // read ahead into OpenSSL's buffer
        }
        return waiting;
    }

    Clock::time_point now() override { return Clock::now(); }

    // On the hub's thread. A hub handler that throws is a bug: the session
    // involved is closed, the hub and every other session carry on.
    static void run_on_hub(SessionEnv& env, std::size_t shard, std::uint64_t id, const Request& request) noexcept {
        try {
            env.hub.handle(id, request);
        } catch (const std::exception& e) {
            hub_bug(env, shard, id, request_name(request), e.what());
        } catch (...) {
            hub_bug(env, shard, id, request_name(request), "unknown exception");
        }
    }

    static void hub_bug(SessionEnv& env, std::size_t shard, std::uint64_t id, std::string_view what,
                        const char* why) noexcept {
        try {
            env.counters.bugs.fetch_add(1, std::memory_order_relaxed);
            env.log->error("session {}: bug: the hub threw on {}: {}; closing the session", id, what, why);
            env.hub.disconnect(id, PresenceEvent::disconnected, "internal error");
            if (env.close_after_bug) env.close_after_bug(shard, id);
        } catch (...) {
        }
    }

    // --- reading ---

    // Every transport is read after a readiness wait, so an idle session
    // holds no read buffer at all: bytes are read into one scratch buffer per
    // thread and only an incomplete frame's tail stays with the session. TLS
    // too: OpenSSL reads the descriptor itself (TlsSocket) and, with
    // SSL_MODE_RELEASE_BUFFERS, gives its record buffer back once it is empty.
    using Socket = typename TransportOf<Stream>::type;  // the socket under any WebSocket layer
    static constexpr bool is_ws = TransportOf<Stream>::websocket;
    static constexpr bool is_tls = is_tls_socket<Socket>;

    Socket& sock() noexcept {
        if constexpr (is_ws)
            return stream_.next_layer();
        else
            return stream_;
    }

    static std::span<std::uint8_t> read_scratch() {
        static thread_local std::vector<std::uint8_t> scratch(64 * 1024);
        return scratch;
    }

    // The transport's own handshakes come first: TLS, then WebSocket's HTTP
    // upgrade. Both count against the handshake timeout (the core's first
    // deadline), and the watchdog's timer bounds them: the watchdog does not
    // run yet, and at the deadline it closes the socket, which ends them.
    // Plain TCP and Unix sockets have none.
    asio::awaitable<bool> transport_handshake() {
        if constexpr (!is_tls && !is_ws) {
            co_return true;
        } else {
            watchdog_.expires_at(core_.handshake_deadline());
            watchdog_.async_wait([self = this->shared_from_this()](const asio::error_code& ec) {
                if (ec || self->handshake_done_) return;
                self->handshake_timed_out_ = true;
                asio::error_code ignored;
                self->sock().lowest_layer().close(ignored);
            });
            std::string failure;  // empty: the transport is ready
            bool served = false;  // WebSocket port: pages served, no chat session
            if constexpr (is_tls) failure = co_await tls_handshake();
            if constexpr (is_ws) {
                if (failure.empty() && !handshake_timed_out_) failure = co_await websocket_upgrade(served);
            }
            handshake_done_ = true;
            watchdog_.cancel();
            if (core_.closed()) co_return false;  // aborted meanwhile (server shut down)
            if (served) {
                core_.end_without_session("HTTP connection done");
                apply();
                co_return false;
            }
            if (handshake_timed_out_ || !failure.empty()) {
                if (handshake_timed_out_)
                    failure = std::string(is_ws ? "WebSocket" : "TLS") + " handshake not done within " +
                              format_duration(env_.config.handshake_timeout);
                env_.log->warn("session {} {}: {}", id_, peer_, failure);
                core_.transport_failed(failure, handshake_timed_out_);
                apply();
                co_return false;
            }
            co_return true;
        }
    }

    // TLS: SSL_do_handshake steps until done; an empty string when it is.
    asio::awaitable<std::string> tls_handshake() {
        if constexpr (is_tls) {
            using asio::experimental::as_tuple;
            asio::error_code ec;
            for (;;) {
                const auto step = sock().handshake();
                if (step.status == TlsSocket::Status::done) break;
                if (step.status != TlsSocket::Status::want_read && step.status != TlsSocket::Status::want_write) {
                    ec = step.error;
                    break;
                }
                auto [wait_ec] = co_await sock().async_wait(step.status == TlsSocket::Status::want_read
                                                                ? asio::socket_base::wait_read
                                                                : asio::socket_base::wait_write,
                                                            as_tuple(asio::use_awaitable));
                if (wait_ec) {
                    ec = wait_ec;
                    break;
                }
            }
            if (core_.closed() || handshake_timed_out_) co_return std::string{};
            if (ec) co_return "TLS handshake failed: " + describe_tls_failure(ec, sock().native_handle());
            env_.log->debug("session {} {}: {}", id_, peer_, describe_tls_session(sock().native_handle()));
            // The client's first frames may have come with its last handshake
            // message: OpenSSL holds them, the socket need not turn readable.
            read_again_ = true;
        }
        co_return std::string{};
    }

    // WebSocket: HTTP requests until the upgrade. A GET of a page (the
    // browser client, web_files.hpp) is answered and the connection kept
    // for the next request while the client keeps it alive; the upgrade
    // request is checked (websocket_handshake.hpp: version, key, Origin,
    // subprotocol) and answered 101 or refused. Bytes behind the upgrade
    // request are the client's first WebSocket frames: they stay in the
    // reader. `served`: the connection ended after pages, never upgrading.
    asio::awaitable<std::string> websocket_upgrade(bool& served) {
        if constexpr (is_ws) {
            HttpRequestReader http;
            std::string pending;  // read, not yet parsed
            bool answered = false;
            const auto scratch = read_scratch();
            for (;;) {
                auto status = HttpRequestReader::Status::need_more;
                if (!pending.empty()) {
                    std::size_t consumed = 0;
                    status = http.feed(pending, consumed);
                    pending.erase(0, consumed);
                }
                if (status == HttpRequestReader::Status::need_more) {
                    asio::error_code ec;
                    const std::size_t n = co_await read_raw(scratch, ec);
                    if (ec) {
                        // Between requests (or before any): the client is done
                        // with the connection, or it idled to the deadline.
                        if (!http.in_request() && pending.empty() &&
                            (answered || ec == asio::error::eof)) {
                            served = true;
                            co_return std::string{};
                        }
                        if (handshake_timed_out_ || core_.closed()) co_return std::string{};
                        co_return ec == asio::error::eof ? "WebSocket handshake: closed in the middle of a request"
                                                         : "WebSocket handshake: read failed: " + ec.message();
                    }
                    env_.shard_metrics[shard_]->bytes_in += n;
                    pending.append(reinterpret_cast<const char*>(scratch.data()), n);
                    continue;
                }
                if (status == HttpRequestReader::Status::error) {
                    const std::string answer = http_response(400, "Bad Request", "text/plain; charset=utf-8",
                                                             http.error() + "\n", false);
                    co_await write_raw(answer);
                    co_return "WebSocket handshake: bad HTTP request: " + http.error();
                }
                const HttpRequest request = http.take();
                answered = true;
                if (request.upgrade || request.header("upgrade") || request.header("sec-websocket-key")) {
                    HandshakeAnswer answer;
                    if (request.path() != "/ws") {
                        answer.status = 404;
                        answer.reason = "no WebSocket endpoint at " + log_safe(request.path()) + "; use /ws";
                        answer.response = http_response(404, "Not Found", "text/plain; charset=utf-8",
                                                        "the WebSocket endpoint is /ws\n", false);
                    } else {
                        answer = websocket_handshake(request, WebSocketPolicy{env_.config.ws_allow_origins});
                    }
                    if (!co_await write_raw(answer.response)) co_return "WebSocket handshake: write failed";
                    if (!answer.accepted)
                        co_return "WebSocket handshake refused (" + std::to_string(answer.status) +
                            "): " + answer.reason;
                    // A client's message holds at most one frame of --max-frame
                    // (or several smaller ones): the reader's bound (1009 above it).
                    stream_.reader().set_max_message(std::size_t{env_.config.max_frame} + header_size);
                    if (!pending.empty()) stream_.reader().feed(pending);
                    env_.log->debug("session {} {}: WebSocket upgrade{}", id_, peer_,
                                    request.header("origin") ? " from " + log_safe(*request.header("origin")) : "");
                    co_return std::string{};
                }
                const WebAnswer page = web_response(request);
                env_.log->debug("session {} {}: {} {}: {}", id_, peer_, log_safe(request.method),
                                log_safe(request.target), page.status);
                env_.shard_metrics[shard_]->count_web_response(page.status);
                if (!co_await write_raw(page.response)) co_return "HTTP: write failed";
                if (!page.keep_alive) {
                    asio::error_code ignored;
                    sock().lowest_layer().shutdown(asio::socket_base::shutdown_send, ignored);
                    served = true;
                    co_return std::string{};
                }
            }
        } else {
            (void)served;
            co_return std::string{};
        }
    }

    // The handshakes' reads: whatever the transport has, after waiting for it.
    asio::awaitable<std::size_t> read_raw(std::span<std::uint8_t> into, asio::error_code& ec) {
        using asio::experimental::as_tuple;
        for (;;) {
            auto wait = asio::socket_base::wait_read;
            if constexpr (is_tls) {
                const auto got = sock().read(into.data(), into.size());
                switch (got.status) {
                case TlsSocket::Status::done: co_return got.bytes;
                case TlsSocket::Status::want_read: break;
                case TlsSocket::Status::want_write: wait = asio::socket_base::wait_write; break;
                case TlsSocket::Status::closed: ec = asio::error::eof; co_return 0;
                case TlsSocket::Status::failed: ec = got.error; co_return 0;
                }
            } else {
                const std::size_t n = sock().read_some(asio::buffer(into.data(), into.size()), ec);
                if (!ec) co_return n;
                if (ec != asio::error::would_block && ec != asio::error::try_again) co_return 0;
                ec = {};
            }
            auto [wait_ec] = co_await sock().async_wait(wait, as_tuple(asio::use_awaitable));
            if (wait_ec) {
                ec = wait_ec;
                co_return 0;
            }
        }
    }

    // The handshakes' writes: all of `data`, waiting for room as needed.
    asio::awaitable<bool> write_raw(std::string_view data) {
        using asio::experimental::as_tuple;
        std::size_t off = 0;
        while (off < data.size()) {
            auto wait = asio::socket_base::wait_write;
            if constexpr (is_tls) {
                const auto sent = sock().write(data.data() + off, data.size() - off);
                switch (sent.status) {
                case TlsSocket::Status::done: off += sent.bytes; continue;
                case TlsSocket::Status::want_write: break;
                case TlsSocket::Status::want_read: wait = asio::socket_base::wait_read; break;
                case TlsSocket::Status::closed:
                case TlsSocket::Status::failed: co_return false;
                }
            } else {
                const ssize_t n = ::send(sock().lowest_layer().native_handle(), data.data() + off, data.size() - off,
                                         MSG_NOSIGNAL | MSG_DONTWAIT);
                if (n >= 0) {
                    off += static_cast<std::size_t>(n);
                    continue;
                }
                if (errno == EINTR) continue;
                if (errno != EAGAIN && errno != EWOULDBLOCK) co_return false;
            }
            auto [wait_ec] = co_await sock().async_wait(wait, as_tuple(asio::use_awaitable));
            if (wait_ec) co_return false;
        }
        env_.shard_metrics[shard_]->bytes_out += data.size();
        co_return true;
    }

    // TLS: decrypts what OpenSSL can give without blocking into `scratch`.
    // A full scratch, or an end of stream behind bytes still to be handled,
    // sets read_again_: the next read comes before any readiness wait.
    std::size_t read_tls(std::span<std::uint8_t> scratch, asio::error_code& ec) {
        if constexpr (is_tls) {
            if (tls_end_) {
                ec = *tls_end_;
                tls_end_.reset();
                return 0;
            }
            std::size_t n = 0;
            while (n < scratch.size()) {
                const auto got = sock().read(scratch.data() + n, scratch.size() - n);
                switch (got.status) {
                case TlsSocket::Status::done:
                    n += got.bytes;
                    // OpenSSL holds nothing more: wait for readability rather
                    // than call read() again only to hear EAGAIN. The wait
                    // (epoll_ctl on an edge-triggered descriptor) reports at
                    // once if more came meanwhile, so nothing waits longer.
                    if (!sock().has_pending()) return n;
                    continue;
                case TlsSocket::Status::want_read: return n;
                case TlsSocket::Status::want_write: tls_read_wants_write_ = true; return n;
                case TlsSocket::Status::closed:
                case TlsSocket::Status::failed: {
                    // Closed without close_notify (a truncation) ends the
                    // stream all the same: whole frames carry our protocol.
                    const asio::error_code end =
                        got.status == TlsSocket::Status::closed ? asio::error::eof : got.error;
                    if (n == 0) {
                        ec = end;
                        return 0;
                    }
                    tls_end_ = end;
                    read_again_ = true;
                    return n;
                }
                }
            }
            read_again_ = true;
            return n;
        } else {
            (void)scratch;
            (void)ec;
            return 0;
        }
    }

    asio::awaitable<void> reader() {
        using asio::experimental::as_tuple;
        Message message;
        // WebSocket: frames that came behind the upgrade request wait in the reader.
        bool buffered_input = false;
        if constexpr (is_ws) buffered_input = stream_.reader().buffered() > 0;
        while (!core_.closed()) {
            asio::error_code ec;
            std::size_t n = 0;
            if (!read_again_ && !buffered_input) {
                auto [wait_ec] = co_await sock().async_wait(asio::socket_base::wait_read, as_tuple(asio::use_awaitable));
                ec = wait_ec;
            }
            read_again_ = false;
            auto scratch = read_scratch();
            if (!ec && !buffered_input) {
                if constexpr (is_tls) {
                    n = read_tls(scratch, ec);
                    if (tls_read_wants_write_) {
                        // A TLS 1.3 post-handshake message of ours waits for room.
                        tls_read_wants_write_ = false;
                        auto [wait_ec] =
                            co_await sock().async_wait(asio::socket_base::wait_write, as_tuple(asio::use_awaitable));
                        if (!wait_ec) read_again_ = true;
                        ec = wait_ec;
                    }
                } else {
                    n = sock().read_some(asio::buffer(scratch.data(), scratch.size()), ec);
                    if (ec == asio::error::would_block || ec == asio::error::try_again) continue;
                }
                if (!ec && n == 0) continue;
            }
            [[maybe_unused]] bool ws_peer_closed = false;
            if (!ec) {
                env_.shard_metrics[shard_]->bytes_in += n;
                if constexpr (is_ws) {
                    // The WebSocket layer first: binary payloads go on to the decoder.
                    ws_peer_closed = read_websocket(scratch.first(n));
                } else {
                    decoder_.feed(scratch.first(n));
                }
            }
            buffered_input = false;
            if (ec == asio::error::eof) {
                core_.on_peer_eof(decoder_.buffered() > 0, Clock::now());
                apply();
                break;
            }
            if (ec) {
                core_.on_read_failed(ec == asio::error::operation_aborted ? std::string("read cancelled")
                                                                         : "read failed: " + ec.message(),
                                     is_tls);
                apply();
                break;
            }
            if (core_.closing()) {
                if constexpr (is_ws) {
                    if (ws_peer_closed) {  // its close frame: the answer to ours, or its own
                        core_.on_peer_eof(false, Clock::now());
                        apply();
                        break;
                    }
                }
                // Draining: what the peer sends now is read and dropped, so
                // that unread input never turns our close into a reset.
                decoder_ = Decoder(core_.max_frame());
                continue;
            }
            Clock::time_point now{};
            for (bool first = true;; first = false) {
                const auto status = decoder_.next(message);
                if (status == Decoder::Status::need_more) break;
                if (status == Decoder::Status::error) {
                    core_.on_decode_error(decoder_.error(), decoder_.failed_type(), Clock::now());
                    apply();
                    break;
                }
                // One clock read per read, not per frame.
                if (first) now = Clock::now();
                core_.on_frame(message, now);
                decoder_.set_max_payload(core_.max_frame());  // HELLO lifts the bound
                apply();
                if (core_.closing() || core_.closed()) break;
            }
            if constexpr (is_ws) {
                // The frames that came before a violation or a close count;
                // then the violation closes the session, or the close ends it
                // like an EOF (and ours answers it).
                if (ws_error_) {
                    if (!core_.closing() && !core_.closed()) {
                        stream_.set_failure(ws_error_->first);
                        core_.close_with_error(ErrorCode::malformed_frame, "websocket: " + ws_error_->second,
                                               Clock::now());
                        apply();
                    }
                    ws_error_.reset();
                }
                if (ws_peer_closed) {
                    // Closed in the middle of a pulsechat frame: that is a
                    // violation, whose ERROR must still go out before our close
                    // frame (the writer sends it at the half-close). Otherwise
                    // the session ends now, and our close frame answers at once.
                    const bool mid_frame = !core_.closing() && decoder_.buffered() > 0;
                    if (!mid_frame) answer_peer_close();
                    core_.on_peer_eof(mid_frame, Clock::now());
                    apply();
                    break;
                }
            }
            // A huge SAY once received must not stay with an idle session.
            if (holds_big_text(message)) message = Heartbeat{};
            // Nothing half-read: give the buffer back (an idle session keeps none).
            if (decoder_.buffered() == 0 && !core_.closing()) decoder_ = Decoder(core_.max_frame());
            if (shard_ != 0 && !core_.closing() && !core_.closed() && env_.hub_gates[shard_]->full()) {
                // The hub is behind this shard's requests: read no more until
                // it catches up. Bytes wait in the socket meanwhile, which the
                // core counts as a sign of life (SessionCore::on_timer).
                co_await env_.hub_gates[shard_]->wait_until_open();
            }
        }
    }

    // WebSocket: the frames in `bytes` (and any the reader holds). Binary
    // payloads go to the decoder (dropped while closing), pings are
    // answered, a framing violation is kept in ws_error_ for the reader to
    // act on once the frames before it are handled. Returns whether the
    // peer sent its close frame.
    bool read_websocket(std::span<const std::uint8_t> bytes) {
        if constexpr (is_ws) {
            auto& reader = stream_.reader();
            if (!bytes.empty()) reader.feed(bytes);
            ws::Reader::Event event;
            bool peer_closed = false;
            while (reader.next(event)) {
                switch (event.kind) {
                case ws::Reader::Event::Kind::data:
                    if (!core_.closing() && !core_.closed()) decoder_.feed(event.payload);
                    break;
                case ws::Reader::Event::Kind::ping:
                    if (!stream_.close_sent()) {
                        stream_.queue_control(ws::encode_control(
                            ws::Opcode::pong, std::string_view(reinterpret_cast<const char*>(event.payload.data()),
                                                               event.payload.size())));
                        wake_writer();
                    }
                    break;
                case ws::Reader::Event::Kind::pong: break;
                case ws::Reader::Event::Kind::close:
                    peer_close_code_ = event.code;
                    peer_closed = true;
                    break;
                case ws::Reader::Event::Kind::error: ws_error_.emplace(event.code, std::move(event.reason)); break;
                }
            }
            reader.release_buffer();  // an idle connection keeps no buffer
            return peer_closed;
        } else {
            (void)bytes;
            return false;
        }
    }

    // WebSocket: the peer closed first and the session ends now; RFC 6455
    // 5.5.1 wants our close frame back. It is written at once, if the
    // socket takes it and no message is half-written (else the peer sees
    // the TCP close, which it must accept as the end too).
    void answer_peer_close() {
        if constexpr (is_ws) {
            if (stream_.close_sent() || stream_.control_started() || core_.closing() ||
                (!core_.batch().empty() && (stream_.message_started() || sent_index_ > 0 || sent_offset_ > 0)))
                return;
            stream_.mark_close_sent();
            const auto code = peer_close_code_ == ws::CloseCode::no_status ? ws::CloseCode::normal : peer_close_code_;
            const std::string frame = ws::encode_close(code, {});
            if constexpr (is_tls) {
                (void)sock().write(frame.data(), frame.size());
            } else {
                (void)::send(sock().lowest_layer().native_handle(), frame.data(), frame.size(),
                             MSG_NOSIGNAL | MSG_DONTWAIT);
            }
        }
    }

    static bool holds_big_text(const Message& m) noexcept {
        constexpr std::size_t keep = 4096;
        if (const auto* say = std::get_if<Say>(&m)) return say->text.capacity() > keep;
        if (const auto* whisper = std::get_if<Whisper>(&m)) return whisper->text.capacity() > keep;
        return false;
    }

    // --- writing ---

    // Linux's IOV_MAX: frames per sendmsg (asio's own gather stops at 64).
    static constexpr std::size_t max_iov = 1024;

    enum class WriteResult { done, would_block, failed };

    // The core's batch, with the cursor of what was sent of it reset.
    // WebSocket: the batch becomes one binary message; its header goes first.
    bool take_batch(Clock::time_point now) {
        if (!core_.take_batch(now)) return false;
        sent_index_ = 0;
        sent_offset_ = 0;
        if constexpr (is_ws) {
            std::uint64_t size = 0;
            for (const auto& frame : core_.batch()) size += frame->size();
            stream_.start_message(size);
        }
        return true;
    }

    // WebSocket: control frames of the transport's own wait to be written.
    bool transport_output_left() const noexcept {
        if constexpr (is_ws) return stream_.control_left();
        return false;
    }

    // Whether anything of the current write is still to go: the batch, and
    // for WebSocket its message header and any control frame.
    bool output_left() const noexcept {
        const bool frames = sent_index_ < core_.batch().size();
        if constexpr (is_ws) return frames || stream_.control_left() || (!core_.batch().empty() && stream_.header_left());
        return frames;
    }

    // WebSocket: a control frame goes between messages only, never into one.
    bool control_may_go() const noexcept {
        if constexpr (is_ws) return !stream_.message_started() || sent_index_ >= core_.batch().size();
        return false;
    }

    // Started when a write has to wait (socket buffer full), or to close;
    // ends when the queues are empty (or, closing, after the close).
    // Otherwise every stream is written by flush(), without a coroutine.
    asio::awaitable<void> writer() {
        using asio::experimental::as_tuple;
        while (!core_.closed()) {
            if (core_.batch().empty() && !take_batch(Clock::now()) && !transport_output_left()) {
                if (core_.wants_half_close()) {
                    // Everything queued before the close is out: now close.
                    if constexpr (is_ws) {
                        // WebSocket's close frame first, with the code for the cause.
                        if (!stream_.close_sent()) {
                            stream_.mark_close_sent();
                            const auto code = stream_.failure().value_or(websocket_close_code(core_.close_cause()));
                            stream_.queue_control(ws::encode_close(code, core_.close_reason()));
                            continue;
                        }
                    }
                    if constexpr (is_tls) {
                        // close_notify tells the peer the stream ended here and
                        // was not cut. Its own close_notify (or its plain close)
                        // then ends the session: the reader tells the core.
                        for (;;) {
                            const auto sent = sock().shutdown();
                            if (sent.status != TlsSocket::Status::want_write) break;
                            auto [wait_ec] = co_await sock().async_wait(asio::socket_base::wait_write,
                                                                         as_tuple(asio::use_awaitable));
                            if (wait_ec || core_.closed()) break;
                        }
                        if (core_.closed()) break;
                    }
                    // The core waits for the peer's EOF before the close (a
                    // close with unread input would be a reset); the reader
                    // drains until it comes.
                    asio::error_code ignored;
                    sock().lowest_layer().shutdown(asio::socket_base::shutdown_send, ignored);
                    core_.half_closed(Clock::now());
                    apply();
                }
                break;  // idle: the next queued frame starts a new writer
            }
            asio::error_code ec;
            if (write_now(ec) == WriteResult::would_block) {
                if (!core_.batch().empty()) {
                    core_.write_waiting();
                    apply();
                }
                auto [wait_ec] = co_await sock().async_wait(asio::socket_base::wait_write, as_tuple(asio::use_awaitable));
                if (!wait_ec) continue;
                ec = wait_ec;
            }
            if (ec) {
                core_.on_write_failed("write failed: " + ec.message());
                apply();
                break;
            }
            if (!core_.batch().empty()) core_.batch_written(Clock::now());
            apply();
        }
        writer_running_ = false;
    }

    // Flushable: the shard's write pass, for every stream type.
    void flush() override {
        flush_pending_ = false;
        if (core_.closed() || writer_running_) return;
        const auto now = Clock::now();
        if constexpr (is_tls) {
            if (defer_tls_write(now)) return;
        }
        if (core_.batch().empty() && !take_batch(now) && !transport_output_left()) {
            if (core_.wants_half_close()) start_writer();  // nothing left to send: the writer closes
            return;
        }
        asio::error_code ec;
        switch (write_now(ec)) {
        case WriteResult::done:
            if (!core_.batch().empty()) core_.batch_written(now);
            if (core_.wants_half_close()) {
                start_writer();
            }
            if constexpr (is_tls) last_tls_write_ = now;
            break;
        case WriteResult::would_block:
            start_writer();  // the rest waits for writability there
            if (!core_.batch().empty()) core_.write_waiting();
            break;
        case WriteResult::failed:
            core_.on_write_failed("write failed: " + ec.message());
            break;
        }
        apply();
    }

    // TLS: every write costs a record (its header, tag and encryption set-up)
    // on both ends, and the client decrypts one record per read. A session
    // that wrote less than the coalescing delay ago and has less than a
    // record queued waits for the rest of that delay (once), so that a busy
    // room's frames share records; a session that was quiet writes at once.
    bool defer_tls_write(Clock::time_point now) {
        if constexpr (is_tls) {
            const auto delay = env_.config.tls_coalesce;
            if (tls_deferred_ || delay.count() <= 0 || now - last_tls_write_ >= delay ||
                core_.queued_bytes() >= tls_record_size || core_.closing()) {
                tls_deferred_ = false;
                return false;
            }
            tls_deferred_ = true;
            flush_pending_ = true;
            env_.flush_lists[shard_]->add_at(this->shared_from_this(), last_tls_write_ + delay);
            return true;
        } else {
            (void)now;
            return false;
        }
    }

    static constexpr std::size_t tls_record_size = 16 * 1024;

    // TLS: copies the batch from the cursor (sent_index_, sent_offset_) on
    // into a staging buffer, as far as it holds, and moves the cursor past it.
    TlsStaging::Handle stage_chunk() {
        const auto& batch = core_.batch();
        auto staging = TlsStaging::take();
        char* out = staging->data.get();
        std::size_t room = TlsStaging::capacity;
        if constexpr (is_ws) {
            // WebSocket: a waiting control frame, then the message's header.
            if (control_may_go() && stream_.control_left()) {
                const auto control = stream_.control_rest();
                const std::size_t n = std::min(room, control.size());
                std::memcpy(out, control.data(), n);
                out += n;
                room -= n;
                stream_.control_consumed(n);
            }
            if (!batch.empty() && stream_.header_left()) {
                const auto header = stream_.header_rest();
                const std::size_t n = std::min(room, header.size());
                std::memcpy(out, header.data(), n);
                out += n;
                room -= n;
                stream_.header_consumed(n);
            }
        }
        while (room > 0 && sent_index_ < batch.size()) {
            const std::string& f = *batch[sent_index_];
            const std::size_t n = std::min(room, f.size() - sent_offset_);
            std::memcpy(out, f.data() + sent_offset_, n);
            out += n;
            room -= n;
            sent_offset_ += n;
            if (sent_offset_ == f.size()) {
                ++sent_index_;
                sent_offset_ = 0;
            }
        }
        staging->size = TlsStaging::capacity - room;
        return staging;
    }

    // TLS: the batch goes out through staging buffers, so that OpenSSL makes
    // full-size records of it (one SSL_write per small frame would make a
    // record and a socket write each): staged, then encrypted and sent a
    // record at a time, until the batch is out or the socket is full. The
    // staging buffer in flight stays with the session until it is sent.
    WriteResult write_tls(asio::error_code& ec) {
        if constexpr (is_tls) {
            for (;;) {
                if (!tls_out_) {
                    if (!output_left()) return WriteResult::done;
                    tls_out_ = stage_chunk();
                    tls_out_sent_ = 0;
                }
                while (tls_out_sent_ < tls_out_->size) {
                    const auto sent =
                        sock().write(tls_out_->data.get() + tls_out_sent_, tls_out_->size - tls_out_sent_);
                    switch (sent.status) {
                    case TlsSocket::Status::done: {
                        auto& metrics = *env_.shard_metrics[shard_];
                        ++metrics.writes;
                        metrics.bytes_out += sent.bytes;
                        tls_out_sent_ += sent.bytes;
                        continue;
                    }
                    case TlsSocket::Status::want_write: return WriteResult::would_block;
                    case TlsSocket::Status::want_read:
                        // Only a renegotiation would; it is off (restrict_versions).
                        ec = asio::error::operation_not_supported;
                        return WriteResult::failed;
                    case TlsSocket::Status::closed:
                    case TlsSocket::Status::failed: ec = sent.error; return WriteResult::failed;
                    }
                }
                TlsStaging::give_back(std::move(tls_out_));  // leaves tls_out_ empty
            }
        } else {
            (void)ec;
            return WriteResult::failed;
        }
    }

    // The transport's own arrays after a backlog (the core gave back its
    // queues'); `trim`: a large backlog, so free heap pages go back too.
    // Called between writes only: nothing in flight points into them.
    void release_buffers(bool trim) {
        std::vector<iovec>().swap(iov_);
        if (trim) return_free_memory();
    }

    // A drained backlog of thousands of frames freed as many small blocks,
    // which malloc keeps (they are not at the top of the heap): hand whole
    // free pages back to the kernel, at most once a second per process, so
    // that the server's RSS comes back down too.
    static void return_free_memory() noexcept {
#ifdef __GLIBC__
        static std::atomic<std::int64_t> last_ms{0};
        const auto now = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now().time_since_epoch()).count();
        auto seen = last_ms.load(std::memory_order_relaxed);
        if (now - seen < 1000 || !last_ms.compare_exchange_strong(seen, now, std::memory_order_relaxed)) return;
        ::malloc_trim(0);
#endif
    }

    // Plain sockets straight to the kernel: up to max_iov frames per sendmsg, continuing a
    // partially written batch, until the batch is out or the socket is full.
    WriteResult write_now(asio::error_code& ec) {
        if constexpr (is_tls) return write_tls(ec);
        const auto& batch = core_.batch();
        auto& iov = iov_;
        while (output_left()) {
            iov.clear();
            // WebSocket: a waiting control frame, the message's header, then
            // the shared frames themselves, all in the one sendmsg.
            [[maybe_unused]] std::size_t control_bytes = 0;
            [[maybe_unused]] std::size_t header_bytes = 0;
            if constexpr (is_ws) {
                if (control_may_go() && stream_.control_left()) {
                    const auto control = stream_.control_rest();
                    iov.push_back(iovec{const_cast<char*>(control.data()), control.size()});
                    control_bytes = control.size();
                }
                if (!batch.empty() && stream_.header_left()) {
                    const auto header = stream_.header_rest();
                    iov.push_back(iovec{const_cast<std::uint8_t*>(header.data()), header.size()});
                    header_bytes = header.size();
                }
            }
            for (std::size_t i = sent_index_; i < batch.size() && iov.size() < max_iov; ++i) {
                const std::string& f = *batch[i];
                const std::size_t skip = i == sent_index_ ? sent_offset_ : 0;
                iov.push_back(iovec{const_cast<char*>(f.data()) + skip, f.size() - skip});
            }
            msghdr msg{};
            msg.msg_iov = iov.data();
            msg.msg_iovlen = iov.size();
            // MSG_NOSIGNAL: a peer that has gone is EPIPE here, never SIGPIPE.
            const ssize_t sent = ::sendmsg(sock().lowest_layer().native_handle(), &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
            if (sent < 0) {
                if (errno == EINTR) continue;
                if (errno == EAGAIN || errno == EWOULDBLOCK) return WriteResult::would_block;
                ec = asio::error_code(errno, asio::error::get_system_category());
                return WriteResult::failed;
            }
            auto& metrics = *env_.shard_metrics[shard_];
            ++metrics.writes;
            metrics.bytes_out += static_cast<std::size_t>(sent);
            auto left = static_cast<std::size_t>(sent);
            if constexpr (is_ws) {
                const std::size_t control = std::min(left, control_bytes);
                if (control > 0) stream_.control_consumed(control);
                left -= control;
                const std::size_t header = std::min(left, header_bytes);
                stream_.header_consumed(header);
                left -= header;
            }
            while (left > 0) {
                const std::size_t rest = batch[sent_index_]->size() - sent_offset_;
                if (left >= rest) {
                    left -= rest;
                    ++sent_index_;
                    sent_offset_ = 0;
                } else {
                    sent_offset_ += left;
                    left = 0;
                }
            }
        }
        return WriteResult::done;
    }

    void wake_writer() {
        if (writer_running_ || flush_pending_ || core_.closed() || !transport_ready_) return;
        // Not written here: everything queued until the shard's write pass
        // (a whole read's worth of fan-out) goes out in one write. A write in
        // flight (writer_running_) takes the session back when it is done.
        flush_pending_ = true;
        env_.flush_lists[shard_]->add(this->shared_from_this());
    }

    void start_writer() {
        writer_running_ = true;
        ++tasks_;
        spawn_counted(writer());
    }

    // --- tasks ---

    template <class Task>
    void spawn(Task task) {
        ++tasks_;
        spawn_counted(std::move(task));
    }

    // co_spawn for a task already counted in tasks_.
    template <class Task>
    void spawn_counted(Task task) {
        asio::co_spawn(sock().get_executor(), std::move(task),
                       [self = this->shared_from_this()](std::exception_ptr e) {
                           if (e) {
                               try {
                                   std::rethrow_exception(e);
                               } catch (const std::exception& ex) {
                                   self->env_.log->error("session {} {}: bug: {}", self->id_, self->peer_, ex.what());
                               }
                               self->core_.abort("internal error", CloseCause::internal);
                               self->apply();
                           }
                           self->task_done();
                       });
    }

    // The server forgets the session once its last task (reader, writer, or a
    // pending timer wait) has ended.
    void task_done() {
        if (--tasks_ == 0) {
            ++env_.shard_metrics[shard_]->finished[static_cast<std::size_t>(transport)];
            env_.on_finished(id_);
        }
    }

    static constexpr Transport transport = is_ws    ? (is_tls ? Transport::websocket_tls : Transport::websocket)
                                           : is_tls ? Transport::tls
                                           : std::is_same_v<Stream, asio::local::stream_protocol::socket>
                                               ? Transport::unix_socket
                                               : Transport::tcp;

    // Members only TLS uses take no room in the other sessions.
    struct Nothing {};
    template <class T>
    using TlsOnly = std::conditional_t<is_tls, T, Nothing>;

    Stream stream_;
    [[no_unique_address]] TlsOnly<std::shared_ptr<const void>> held_;
    const std::uint64_t id_;
    const std::size_t shard_;
    const std::string peer_;
    SessionEnv& env_;
    SessionCore core_;

    Decoder decoder_;
    asio::steady_timer watchdog_;
    bool watchdog_armed_ = false;
    bool writer_running_ = false;
    bool flush_pending_ = false;    // on the shard's flush list
    bool transport_ready_ = false;  // TLS: after the handshake
    bool read_again_ = false;       // read before waiting: the last read may have left bytes
    bool handshake_done_ = false;       // TLS, WebSocket
    bool handshake_timed_out_ = false;  // TLS, WebSocket
    unsigned tasks_ = 0;

    // The cursor in the core's batch: batch()[sent_index_] is the first frame
    // not fully sent, sent_offset_ bytes of it already are.
    std::size_t sent_index_ = 0;
    std::size_t sent_offset_ = 0;
    // sendmsg's buffer list, kept so its capacity is reused.
    std::vector<iovec> iov_;
    // TLS: the staging buffer being sent and how much of it is out; the end
    // of the stream that came behind bytes still to be handled; a read that
    // waits for writability.
    [[no_unique_address]] TlsOnly<TlsStaging::Handle> tls_out_{};
    [[no_unique_address]] TlsOnly<std::size_t> tls_out_sent_{};
    [[no_unique_address]] TlsOnly<std::optional<asio::error_code>> tls_end_{};
    [[no_unique_address]] TlsOnly<bool> tls_read_wants_write_{};
    // TLS write coalescing (defer_tls_write): the last write, and whether
    // the session is waiting on the flush list's timer.
    [[no_unique_address]] TlsOnly<Clock::time_point> last_tls_write_{};
    [[no_unique_address]] TlsOnly<bool> tls_deferred_{};
    // WebSocket: the code of the peer's close frame, echoed in ours.
    [[no_unique_address]] std::conditional_t<is_ws, ws::CloseCode, Nothing> peer_close_code_{};
    // WebSocket: a framing violation read, not yet acted on (reader()).
    [[no_unique_address]] std::conditional_t<is_ws, std::optional<std::pair<ws::CloseCode, std::string>>, Nothing>
        ws_error_{};
};

}  // namespace chat
