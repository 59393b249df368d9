// One client connection's I/O: a co_await reader of framed messages, the
// writes, and one steady_timer, over any stream type, around a SessionCore.
//
// Included by src/server/session.cpp only, which instantiates it for each
// transport; the rest of the server knows sessions as SessionBase
// (session_base.hpp) and makes them with make_session().
//
// The same template serves TCP, TLS and Unix-domain sockets. Everything a
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
#include <asio/experimental/awaitable_operators.hpp>
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
#include "chat/server/tls_staging.hpp"

namespace chat {

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
          core_(env.config, *this, env.counters, *env.log, id, peer_, env.server_version),
          decoder_(max_frame_before_hello),
          watchdog_(stream_.get_executor()) {}

    std::uint64_t id() const noexcept override { return id_; }
    void hold(std::shared_ptr<const void> resource) override {
        if constexpr (is_tls_stream<Stream>) held_ = std::move(resource);
    }
    std::size_t shard() const noexcept override { return shard_; }
    const std::string& peer() const noexcept override { return peer_; }

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
            if (!co_await self->tls_handshake()) co_return;
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
            stream_.lowest_layer().close(ignored);
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
        if (::ioctl(stream_.lowest_layer().native_handle(), SIOCINQ, &n) != 0) return 0;
        return n > 0 ? static_cast<std::size_t>(n) : 0;
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

    // Plain sockets (TCP, Unix) can be waited on for readability, so an idle
    // session holds no read buffer at all: bytes are read into one scratch
    // buffer per thread and only an incomplete frame's tail stays with the
    // session. Streams with buffers of their own (TLS) read the usual way.
    static constexpr bool waits_for_readiness =
        std::is_same_v<Stream, asio::ip::tcp::socket> || std::is_same_v<Stream, asio::local::stream_protocol::socket>;

    // Streams read the usual way (TLS): the bounds of the read size.
    static constexpr std::size_t min_read_size = 4 * 1024;
    static constexpr std::size_t max_read_size = 16 * 1024;

    static std::span<std::uint8_t> read_scratch() {
        static thread_local std::vector<std::uint8_t> scratch(64 * 1024);
        return scratch;
    }

    // TLS: the handshake comes first and counts against the handshake timeout
    // (the core's first deadline). Other streams: nothing to do.
    asio::awaitable<bool> tls_handshake() {
        if constexpr (is_tls_stream<Stream>) {
            using asio::experimental::as_tuple;
            // The watchdog does not run yet, so its timer bounds the
            // handshake: at the deadline the socket is closed, which ends it.
            watchdog_.expires_at(core_.handshake_deadline());
            watchdog_.async_wait([self = this->shared_from_this()](const asio::error_code& ec) {
                if (ec || self->handshake_done_) return;
                self->handshake_timed_out_ = true;
                asio::error_code ignored;
                self->stream_.lowest_layer().close(ignored);
            });
            auto [ec] = co_await stream_.async_handshake(Stream::server, as_tuple(asio::use_awaitable));
            handshake_done_ = true;
            watchdog_.cancel();
            if (core_.closed()) co_return false;  // aborted meanwhile (server shut down)
            if (ec || handshake_timed_out_) {
                const std::string why = handshake_timed_out_
                                            ? "TLS handshake not done within " +
                                                  format_duration(env_.config.handshake_timeout)
                                            : "TLS handshake failed: " + describe_tls_failure(ec, stream_.native_handle());
                env_.log->warn("session {} {}: {}", id_, peer_, why);
                core_.transport_failed(why);
                apply();
                co_return false;
            }
            env_.log->debug("session {} {}: {}", id_, peer_, describe_tls_session(stream_.native_handle()));
        }
        co_return true;
    }

    asio::awaitable<void> reader() {
        using asio::experimental::as_tuple;
        Message message;
        while (!core_.closed()) {
            asio::error_code ec;
            if constexpr (waits_for_readiness) {
                auto [wait_ec] = co_await stream_.async_wait(asio::socket_base::wait_read, as_tuple(asio::use_awaitable));
                ec = wait_ec;
                if (!ec) {
                    auto scratch = read_scratch();
                    const std::size_t n = stream_.read_some(asio::buffer(scratch.data(), scratch.size()), ec);
                    if (ec == asio::error::would_block || ec == asio::error::try_again) continue;
                    if (!ec) decoder_.feed(scratch.first(n));
                }
            } else {
                // The read buffer stays with the session while it waits, so it
                // is sized to the traffic: 4 KiB (the decoder's least) while
                // reads are small, doubling up to 16 KiB (a record) while they
                // fill it. At a fixed 16 KiB, zeroed as the decoder's array
                // grew to 16-32 KiB, it was a fifth of an idle TLS session.
                if (read_size_ < min_read_size) read_size_ = min_read_size;  // the first read
                auto space = decoder_.prepare(read_size_);
                auto [read_ec, n] = co_await stream_.async_read_some(asio::buffer(space.data(), space.size()),
                                                                     as_tuple(asio::use_awaitable));
                ec = read_ec;
                if (!ec) {
                    decoder_.commit(n);
                    if (n == read_size_ && read_size_ < max_read_size) {
                        read_size_ *= 2;
                    } else if (n < min_read_size && read_size_ > min_read_size) {
                        // Back to small reads: the big array goes once nothing is half-read.
                        read_size_ = min_read_size;
                        shrink_read_buffer_ = true;
                    }
                }
                if (is_tls_truncation(ec)) ec = asio::error::eof;  // closed without close_notify
            }
            if (ec == asio::error::eof) {
                core_.on_peer_eof(decoder_.buffered() > 0, Clock::now());
                apply();
                break;
            }
            if (ec) {
                core_.on_read_failed(ec == asio::error::operation_aborted ? std::string("read cancelled")
                                                                         : "read failed: " + ec.message(),
                                     is_tls_stream<Stream>);
                apply();
                break;
            }
            if (core_.closing()) {
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
            // A huge SAY once received must not stay with an idle session.
            if (holds_big_text(message)) message = Heartbeat{};
            if constexpr (waits_for_readiness) {
                // Nothing half-read: give the buffer back (an idle session keeps none).
                if (decoder_.buffered() == 0 && !core_.closing()) decoder_ = Decoder(core_.max_frame());
            } else {
                if (shrink_read_buffer_ && decoder_.buffered() == 0 && !core_.closing()) {
                    decoder_ = Decoder(core_.max_frame());
                    shrink_read_buffer_ = false;
                }
            }
            if (shard_ != 0 && !core_.closing() && !core_.closed() && env_.hub_gates[shard_]->full()) {
                // The hub is behind this shard's requests: read no more until
                // it catches up. Bytes wait in the socket meanwhile, which the
                // core counts as a sign of life (SessionCore::on_timer).
                co_await env_.hub_gates[shard_]->wait_until_open();
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

    // The core's batch, with the cursor of what was sent of it reset.
    bool take_batch(Clock::time_point now) {
        if (!core_.take_batch(now)) return false;
        sent_index_ = 0;
        sent_offset_ = 0;
        return true;
    }

    // Started when a plain socket's write has to wait (socket buffer full), or
    // to close (TLS: the close_notify exchange); ends when the queues are empty
    // (or, closing, after the close). Otherwise every stream is written by
    // flush(), without a coroutine.
    asio::awaitable<void> writer() {
        using asio::experimental::as_tuple;
        while (!core_.closed()) {
            if (core_.batch().empty() && !take_batch(Clock::now())) {
                if (core_.wants_half_close()) {
                    // Everything queued before the close is out: now close.
                    if constexpr (is_tls_stream<Stream>) {
                        // close_notify tells the peer the stream ended here and was
                        // not cut; its answer gets a short, bounded wait. From here
                        // the peer's EOF (its answer, or its plain close) ends the
                        // session: the reader tells the core.
                        core_.half_closed(Clock::now());
                        apply();
                        if (core_.closed()) break;
                        using namespace asio::experimental::awaitable_operators;
                        asio::steady_timer bound(stream_.get_executor());
                        bound.expires_at(core_.next_wakeup());
                        co_await (stream_.async_shutdown(as_tuple(asio::use_awaitable)) ||
                                  bound.async_wait(as_tuple(asio::use_awaitable)));
                        core_.linger_done();
                        apply();
                    } else {
                        // The core waits for the peer's EOF before the close (a
                        // close with unread input would be a reset); the reader
                        // drains until it comes.
                        asio::error_code ignored;
                        stream_.lowest_layer().shutdown(asio::socket_base::shutdown_send, ignored);
                        core_.half_closed(Clock::now());
                        apply();
                    }
                }
                break;  // idle: the next queued frame starts a new writer
            }
            asio::error_code ec;
            if constexpr (waits_for_readiness) {
                if (write_now(ec) == WriteResult::would_block) {
                    core_.write_waiting();
                    apply();
                    auto [wait_ec] =
                        co_await stream_.async_wait(asio::socket_base::wait_write, as_tuple(asio::use_awaitable));
                    if (!wait_ec) continue;
                    ec = wait_ec;
                }
            } else {
                // Not reached in practice (the flush pass writes TLS batches and
                // starts the writer only to close), but the same staged write.
                core_.write_waiting();
                apply();
                while (!ec && sent_index_ < core_.batch().size()) {
                    auto staging = stage_chunk();
                    auto [write_ec, n] = co_await asio::async_write(
                        stream_, asio::buffer(staging->data.get(), staging->size), as_tuple(asio::use_awaitable));
                    TlsStaging::give_back(std::move(staging));
                    ec = write_ec;
                }
            }
            if (ec) {
                core_.on_write_failed("write failed: " + ec.message());
                apply();
                break;
            }
            core_.batch_written(Clock::now());
            apply();
        }
        writer_running_ = false;
    }

    // Flushable: the shard's write pass, for every stream type.
    void flush() override {
        flush_pending_ = false;
        if (core_.closed() || writer_running_) return;
        const auto now = Clock::now();
        if (core_.batch().empty() && !take_batch(now)) {
            if (core_.wants_half_close()) start_writer();  // nothing left to send: the writer closes
            return;
        }
        if constexpr (!waits_for_readiness) {
            // TLS: everything queued (control frames first) becomes one write
            // of full-size records; what is queued while it is in flight goes
            // in the next one (write_staged_done).
            core_.write_waiting();
            write_staged();
            apply();
        } else {
            asio::error_code ec;
            switch (write_now(ec)) {
            case WriteResult::done:
                core_.batch_written(now);
                if (core_.wants_half_close()) start_writer();
                break;
            case WriteResult::would_block:
                start_writer();  // the rest waits for writability there
                core_.write_waiting();
                break;
            case WriteResult::failed:
                core_.on_write_failed("write failed: " + ec.message());
                break;
            }
            apply();
        }
    }

    // TLS: copies the batch from the cursor (sent_index_, sent_offset_) on
    // into a staging buffer, as far as it holds, and moves the cursor past it.
    TlsStaging::Handle stage_chunk() {
        const auto& batch = core_.batch();
        auto staging = TlsStaging::take();
        char* out = staging->data.get();
        std::size_t room = TlsStaging::capacity;
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

    // TLS: one async_write of the next chunk of the batch; its completion
    // starts the next chunk, or ends the batch. writer_running_ stands for the
    // write in flight, so wake_writer() leaves the session off the flush list
    // meanwhile.
    void write_staged() {
        auto staging = stage_chunk();
        const asio::const_buffer buffer(staging->data.get(), staging->size);
        writer_running_ = true;
        ++tasks_;
        asio::async_write(stream_, buffer,
                          [self = this->shared_from_this(), staging = std::move(staging)](
                              const asio::error_code& ec, std::size_t) mutable {
                              TlsStaging::give_back(std::move(staging));
                              self->write_staged_done(ec);
                              self->task_done();
                          });
    }

    void write_staged_done(const asio::error_code& ec) noexcept {
        writer_running_ = false;
        try {
            if (core_.closed()) return;
            if (ec) {
                core_.on_write_failed("write failed: " + ec.message());
                apply();
                return;
            }
            if (sent_index_ < core_.batch().size()) {
                write_staged();
                return;
            }
            core_.batch_written(Clock::now());
            apply();
            // Queued meanwhile, or closing: the next pass writes it (or closes).
            if (core_.has_queued() || core_.wants_half_close()) wake_writer();
        } catch (const std::exception& e) {
            env_.log->error("session {} {}: bug: {}", id_, peer_, e.what());
            core_.abort("internal error");
            apply();
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

    enum class WriteResult { done, would_block, failed };

    // Straight to the kernel: up to max_iov frames per sendmsg, continuing a
    // partially written batch, until the batch is out or the socket is full.
    WriteResult write_now(asio::error_code& ec) {
        if constexpr (!waits_for_readiness) {
            // TLS writes through its stream (writer()); explicit instantiation
            // still compiles this member for it.
            ec = asio::error::operation_not_supported;
            return WriteResult::failed;
        }
        const auto& batch = core_.batch();
        auto& iov = iov_;
        while (sent_index_ < batch.size()) {
            iov.clear();
            for (std::size_t i = sent_index_; i < batch.size() && iov.size() < max_iov; ++i) {
                const std::string& f = *batch[i];
                const std::size_t skip = i == sent_index_ ? sent_offset_ : 0;
                iov.push_back(iovec{const_cast<char*>(f.data()) + skip, f.size() - skip});
            }
            msghdr msg{};
            msg.msg_iov = iov.data();
            msg.msg_iovlen = iov.size();
            // MSG_NOSIGNAL: a peer that has gone is EPIPE here, never SIGPIPE.
            const ssize_t sent = ::sendmsg(stream_.lowest_layer().native_handle(), &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
            if (sent < 0) {
                if (errno == EINTR) continue;
                if (errno == EAGAIN || errno == EWOULDBLOCK) return WriteResult::would_block;
                ec = asio::error_code(errno, asio::error::get_system_category());
                return WriteResult::failed;
            }
            for (auto left = static_cast<std::size_t>(sent); left > 0;) {
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
        asio::co_spawn(stream_.get_executor(), std::move(task),
                       [self = this->shared_from_this()](std::exception_ptr e) {
                           if (e) {
                               try {
                                   std::rethrow_exception(e);
                               } catch (const std::exception& ex) {
                                   self->env_.log->error("session {} {}: bug: {}", self->id_, self->peer_, ex.what());
                               }
                               self->core_.abort("internal error");
                               self->apply();
                           }
                           self->task_done();
                       });
    }

    // The server forgets the session once its last task (reader, writer, or a
    // pending timer wait) has ended.
    void task_done() {
        if (--tasks_ == 0) env_.on_finished(id_);
    }

    // Members only TLS uses take no room in the other sessions.
    struct Nothing {};
    template <class T>
    using TlsOnly = std::conditional_t<is_tls_stream<Stream>, T, Nothing>;

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
    bool handshake_done_ = false;       // TLS
    bool handshake_timed_out_ = false;  // TLS
    unsigned tasks_ = 0;

    // The cursor in the core's batch: batch()[sent_index_] is the first frame
    // not fully sent, sent_offset_ bytes of it already are.
    std::size_t sent_index_ = 0;
    std::size_t sent_offset_ = 0;
    // sendmsg's buffer list, kept so its capacity is reused.
    std::vector<iovec> iov_;
    // TLS: the next read's size, and whether the decoder's array is to be
    // made small again (reads went back from large to small).
    [[no_unique_address]] TlsOnly<std::size_t> read_size_{};
    [[no_unique_address]] TlsOnly<bool> shrink_read_buffer_{};
};

}  // namespace chat
