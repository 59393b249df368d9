// One client connection: a reader, a writer and a watchdog coroutine over any stream type.
//
// The same template serves TCP, TLS and Unix-domain sockets. All three
// coroutines run on the session's own io_context (its shard) and share one
// idempotent stop(). The watchdog owns every deadline: the handshake, the
// heartbeat expiry, the write timeout and the drain of a closing session.
// Every stream is written by the shard's flush pass: plain sockets with one
// sendmsg gather, TLS with the batch copied into a pooled staging buffer and
// written as full-size records (see TlsStaging).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <type_traits>
#include <string>
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

#include "chat/access.hpp"
#include "chat/config.hpp"
#include "chat/flush_list.hpp"
#include "chat/hub.hpp"
#include "chat/hub_gate.hpp"
#include "chat/names.hpp"
#include "chat/participant.hpp"
#include "chat/protocol.hpp"
#include "chat/rate_limiter.hpp"
#include "chat/request.hpp"
#include "chat/tls.hpp"

namespace chat {

// What every session of a server shares. Lives as long as the server.
struct SessionEnv {
    const ServerConfig& config;
    Hub& hub;
    asio::any_io_executor hub_executor;
    std::shared_ptr<spdlog::logger> log;
    std::string server_version;
    // Called once on the session's own shard when all its coroutines ended.
    std::function<void(std::uint64_t id)> on_finished;
    // The most bytes one session has held for its peer at once (queued and in
    // flight): the figure --queue-limit bounds. For tests and metrics.
    std::atomic<std::size_t> peak_queued_bytes{0};
    // Checks HELLO's access token; null: none needed.
    AccessControl* access = nullptr;
    // One per shard: where sessions with frames to write wait for the write pass.
    std::vector<std::unique_ptr<FlushList>> flush_lists{};
    // One per shard: its requests on their way to the hub (used when shard != 0).
    std::vector<std::unique_ptr<HubGate>> hub_gates{};
    // A handler threw (a bug): close session `id` on `shard` with ERROR internal.
    // Called on any thread.
    std::function<void(std::size_t shard, std::uint64_t id)> close_after_bug{};

    // Counters for logs, tests and metrics (relaxed; none is on the per-delivery path).
    // Heartbeat expiries not carried out because the peer's bytes were waiting
    // in the socket: the peer was alive, the server behind.
    std::atomic<std::uint64_t> expiries_averted{0};
    // Handlers that threw: each is a bug, logged once and survived.
    std::atomic<std::uint64_t> bugs{0};
    // Connections that ended before their HELLO, and refused ones: summed up
    // in one log line per second rather than logged one by one.
    std::atomic<std::uint64_t> ended_before_hello{0};
    std::atomic<std::uint64_t> refused{0};
};

// Where a TLS session's batch is copied before it is encrypted, so that
// OpenSSL makes full-size records of it: asio::ssl hands SSL_write one buffer
// at a time (at most 8 KiB of a gather's small buffers linearised), so a
// gather of small frames would make small records and a socket write each.
// The buffers are pooled per thread and held only while a write is in flight:
// an idle session holds none.
class TlsStaging {
public:
    // One async_write: four full TLS records (16 KiB of plaintext each). A
    // larger batch is written in several, one after the other.
    static constexpr std::size_t capacity = 4 * 16 * 1024;

    struct Buffer {
        std::unique_ptr<char[]> data{new char[capacity]};  // not zeroed: only what is staged is touched
        std::size_t size = 0;
    };
    using Handle = std::unique_ptr<Buffer>;

    static Handle take() {
        auto& free = pool();
        if (free.empty()) return std::make_unique<Buffer>();
        Handle b = std::move(free.back());
        free.pop_back();
        b->size = 0;
        return b;
    }

    // Kept for the next write, up to a bound (what a burst of many sessions
    // with writes in flight at once needed beyond it goes back to malloc).
    static void give_back(Handle b) noexcept {
        auto& free = pool();
        if (free.size() < max_pooled) {
            try {
                free.push_back(std::move(b));
            } catch (...) {
            }
        }
    }

private:
    static constexpr std::size_t max_pooled = 64;

    static std::vector<Handle>& pool() {
        static thread_local std::vector<Handle> free;
        return free;
    }
};

// Largest payload a connection may send before its HELLO: a HELLO is a nick
// and two tokens, so a stranger cannot make the server buffer a whole max_frame.
inline constexpr std::uint32_t max_frame_before_hello = 4096;

// The transport-independent face of a session, for the server's registries.
class SessionBase : public Participant, public Flushable {
public:
    // Server shutdown: send BYE after what is queued, then close.
    virtual void shutdown(const std::string& reason) = 0;
    // Close now, queued or not.
    virtual void abort(const std::string& reason) = 0;
    virtual const std::string& peer() const noexcept = 0;
};

template <class Stream>
class Session final : public SessionBase, public std::enable_shared_from_this<Session<Stream>> {
public:
    using Clock = std::chrono::steady_clock;

    Session(Stream stream, std::uint64_t id, std::size_t shard, std::string peer, SessionEnv& env)
        : stream_(std::move(stream)),
          id_(id),
          shard_(shard),
          peer_(std::move(peer)),
          env_(env),
          decoder_(max_frame_before_hello),
          limiter_(env.config.rate, env.config.burst),
          watchdog_(stream_.get_executor()) {}

    std::uint64_t id() const noexcept override { return id_; }
    // Keeps something the stream depends on (a TLS context that a reload
    // replaced) alive as long as the session.
    void hold(std::shared_ptr<const void> resource) {
        if constexpr (is_tls_stream<Stream>) held_ = std::move(resource);
    }
    std::size_t shard() const noexcept override { return shard_; }
    const std::string& peer() const noexcept override { return peer_; }

    // Starts the coroutines. `rejection`, when set, is sent as a fatal ERROR
    // before anything is read (connection limits).
    void start(std::optional<std::pair<ErrorCode, std::string>> rejection = std::nullopt) {
        const auto now = Clock::now();
        rx_deadline_ = now + env_.config.handshake_timeout;
        last_tx_ = now;
        if (rejection) close_with_error(rejection->first, rejection->second);
        auto self = this->shared_from_this();
        // Independent tasks rather than one `reader && writer && watchdog`: a
        // parallel group costs several frames and cancellation slots per
        // session, which was most of an idle connection's memory. For the same
        // reason the watchdog is a plain timer callback and the writer runs
        // only while there is something to write.
        spawn([self]() -> asio::awaitable<void> {
            if (!co_await self->tls_handshake()) co_return;
            self->transport_ready_ = true;
            self->wake_writer();  // a rejection may be queued already
            self->arm_watchdog();
            co_await self->reader();
        });
    }

    // --- Participant: called on this session's shard ---

    void deliver(const SharedFrame& frame) override {
        if (stopped_ || closing_) return;
        if (!has_room_for(*frame)) return;
        queued_bytes_ += frame->size();
        note_peak();
        queue_.push_back(frame);
        wake_writer();
    }

    void on_login(const std::string& nick, const std::string& resume_token) override {
        if (stopped_ || closing_) return;
        nick_ = nick;
        logged_in_ = true;
        rx_deadline_ = Clock::now() + env_.config.heartbeat_timeout;
        // The watchdog slept towards the handshake deadline; the heartbeat
        // deadline and the PING schedule may come sooner.
        watchdog_.cancel();
        env_.log->info("session {} {}: logged in as '{}'", id_, peer_, nick_);
        Welcome welcome;
        welcome.session_id = id_;
        welcome.heartbeat_interval_ms = static_cast<std::uint32_t>(env_.config.heartbeat_interval.count());
        welcome.heartbeat_timeout_ms = static_cast<std::uint32_t>(env_.config.heartbeat_timeout.count());
        welcome.max_frame = env_.config.max_frame;
        welcome.nick = nick;
        welcome.resume_token = resume_token;
        welcome.server_name = env_.config.server_name;
        welcome.server_version = env_.server_version;
        // Ahead of any room traffic: the client learns its settings first.
        send_control(make_frame(welcome));
    }

    void on_renamed(const std::string& nick) override {
        env_.log->info("session {} {}: renamed '{}' -> '{}'", id_, peer_, nick_, nick);
        nick_ = nick;
    }

    void close_with_error(ErrorCode code, const std::string& reason) override {
        if (stopped_ || closing_) return;
        // Before HELLO a connection is anyone's: its end goes into the per-second summary.
        env_.log->log(hello_seen_ ? spdlog::level::info : spdlog::level::debug, "session {} {}: closing: {} ({})",
                      id_, peer_, log_safe(reason), to_string(code));
        send_control(make_frame(make_error(code, reason, true)));
        begin_close(presence_for(code), reason);
    }

    void abort(const std::string& reason) override { stop(PresenceEvent::disconnected, reason); }

    void shutdown(const std::string& reason) override {
        if (stopped_ || closing_) return;
        if (!transport_ready_) {
            // A TLS handshake still going: nothing was promised to this peer,
            // so it does not hold up the drain.
            stop(PresenceEvent::disconnected, reason);
            return;
        }
        // Unlike the other control frames, BYE waits behind the room traffic
        // already queued: a shutdown delivers what was queued, then says BYE.
        auto bye = make_frame(make_bye(reason));
        queued_bytes_ += bye->size();
        note_peak();
        queue_.push_back(std::move(bye));
        begin_close(PresenceEvent::disconnected, reason);
    }

private:
    static PresenceEvent presence_for(ErrorCode code) {
        return code == ErrorCode::heartbeat_timeout ? PresenceEvent::timed_out : PresenceEvent::disconnected;
    }

    // --- the three coroutines ---

    // Plain sockets (TCP, Unix) can be waited on for readability, so an idle
    // session holds no read buffer at all: bytes are read into one scratch
    // buffer per thread and only an incomplete frame's tail stays with the
    // session. Streams with buffers of their own (TLS) read the usual way.
    static constexpr bool waits_for_readiness =
        std::is_same_v<Stream, asio::ip::tcp::socket> || std::is_same_v<Stream, asio::local::stream_protocol::socket>;

    // Linux's IOV_MAX: frames per sendmsg (asio's own gather stops at 64).
    static constexpr std::size_t max_iov = 1024;

    // Streams read the usual way (TLS): the bounds of the read size.
    static constexpr std::size_t min_read_size = 4 * 1024;
    static constexpr std::size_t max_read_size = 16 * 1024;

    static std::span<std::uint8_t> read_scratch() {
        static thread_local std::vector<std::uint8_t> scratch(64 * 1024);
        return scratch;
    }

    // TLS: the handshake comes first and counts against the handshake timeout
    // (rx_deadline_ is already set from it). Other streams: nothing to do.
    asio::awaitable<bool> tls_handshake() {
        if constexpr (is_tls_stream<Stream>) {
            using asio::experimental::as_tuple;
            // The watchdog coroutine does not run yet, so its timer bounds the
            // handshake: at the deadline the socket is closed, which ends it.
            watchdog_.expires_at(rx_deadline_);
            watchdog_.async_wait([self = this->shared_from_this()](const asio::error_code& ec) {
                if (ec || self->handshake_done_) return;
                self->handshake_timed_out_ = true;
                asio::error_code ignored;
                self->stream_.lowest_layer().close(ignored);
            });
            auto [ec] = co_await stream_.async_handshake(Stream::server, as_tuple(asio::use_awaitable));
            handshake_done_ = true;
            watchdog_.cancel();
            if (stopped_) co_return false;  // aborted meanwhile (server shut down)
            if (ec || handshake_timed_out_) {
                const std::string why = handshake_timed_out_
                                            ? "TLS handshake not done within " +
                                                  format_duration(env_.config.handshake_timeout)
                                            : "TLS handshake failed: " + describe_tls_failure(ec, stream_.native_handle());
                env_.log->warn("session {} {}: {}", id_, peer_, why);
                stop(PresenceEvent::disconnected, why);
                co_return false;
            }
            env_.log->debug("session {} {}: {}", id_, peer_, describe_tls_session(stream_.native_handle()));
        }
        co_return true;
    }

    asio::awaitable<void> reader() {
        using asio::experimental::as_tuple;
        Message message;
        while (!stopped_) {
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
            if (ec == asio::error::eof) peer_eof_ = true;
            if (ec == asio::error::eof && (closing_ || decoder_.buffered() > 0)) {
                // The peer half-closed: while closing, or in the middle of a
                // frame (which earns an ERROR), the writer still gets to send
                // what is queued, then closes; the watchdog bounds the wait.
                if (!closing_)
                    protocol_violation(ErrorCode::malformed_frame, "connection closed in the middle of a frame");
                // Our side is shut already: the peer's EOF was all we waited for.
                if (send_shut_) stop(close_event_, close_reason_);
                break;
            }
            if (ec) {
                if ((is_tls_stream<Stream> || send_shut_) && closing_) {
                    // The close_notify exchange races the peer's own close
                    // (typically a reset after its BYE), or the peer reset
                    // while we waited for its EOF: the reason is the close's.
                    stop(close_event_, close_reason_);
                    break;
                }
                if (ec == asio::error::eof)
                    stop(PresenceEvent::disconnected, "connection closed by peer");
                else if (ec != asio::error::operation_aborted)
                    stop(PresenceEvent::disconnected, "read failed: " + ec.message());
                else
                    stop(PresenceEvent::disconnected, "read cancelled");
                break;
            }
            if (closing_) {
                // Draining: what the peer sends now is read and dropped, so
                // that unread input never turns our close into a reset.
                decoder_ = Decoder(max_frame());
                continue;
            }
            for (bool first = true;; first = false) {
                const auto status = decoder_.next(message);
                if (status == Decoder::Status::need_more) break;
                if (status == Decoder::Status::error) {
                    protocol_error(decoder_.error());
                    break;
                }
                // Whole frames push the deadline, not stray bytes: a peer that
                // trickles a frame one byte at a time is not kept alive by it.
                if (first && (logged_in_ || hello_seen_))
                    rx_deadline_ = Clock::now() + env_.config.heartbeat_timeout;
                handle_guarded(message);
                if (closing_ || stopped_) break;
            }
            // A huge SAY once received must not stay with an idle session.
            if (holds_big_text(message)) message = Heartbeat{};
            if constexpr (waits_for_readiness) {
                // Nothing half-read: give the buffer back (an idle session keeps none).
                if (decoder_.buffered() == 0 && !closing_) decoder_ = Decoder(max_frame());
            } else {
                if (shrink_read_buffer_ && decoder_.buffered() == 0 && !closing_) {
                    decoder_ = Decoder(max_frame());
                    shrink_read_buffer_ = false;
                }
            }
            if (shard_ != 0 && !closing_ && !stopped_ && env_.hub_gates[shard_]->full()) {
                // The hub is behind this shard's requests: read no more until
                // it catches up. Bytes wait in the socket meanwhile, which the
                // watchdog counts as a sign of life (see arm_watchdog).
                co_await env_.hub_gates[shard_]->wait_until_open();
            }
        }
    }

    // The decoder's bound: a few KiB until HELLO, then --max-frame.
    std::uint32_t max_frame() const noexcept { return hello_seen_ ? env_.config.max_frame : max_frame_before_hello; }

    static bool holds_big_text(const Message& m) noexcept {
        constexpr std::size_t keep = 4096;
        if (const auto* say = std::get_if<Say>(&m)) return say->text.capacity() > keep;
        if (const auto* whisper = std::get_if<Whisper>(&m)) return whisper->text.capacity() > keep;
        return false;
    }

    // Started when a plain socket's write has to wait (socket buffer full), or
    // to close (TLS: the close_notify exchange); ends when the queues are empty
    // (or, closing, after the close). Otherwise every stream is written by
    // flush(), without a coroutine.
    asio::awaitable<void> writer() {
        using asio::experimental::as_tuple;
        while (!stopped_) {
            if (in_flight_.empty() && !take_batch()) {
                if (closing_) {
                    // Everything queued before the close is out: now close.
                    if constexpr (is_tls_stream<Stream>) {
                        // close_notify tells the peer the stream ended here and was
                        // not cut; its answer gets a short, bounded wait.
                        using namespace asio::experimental::awaitable_operators;
                        asio::steady_timer bound(stream_.get_executor());
                        bound.expires_at(std::min(close_deadline_, Clock::now() + short_grace()));
                        // From here the peer's EOF (its answer, or its plain
                        // close) ends the session: the reader stops it.
                        send_shut_ = true;
                        co_await (stream_.async_shutdown(as_tuple(asio::use_awaitable)) ||
                                  bound.async_wait(as_tuple(asio::use_awaitable)));
                    } else {
                        asio::error_code ignored;
                        stream_.lowest_layer().shutdown(asio::socket_base::shutdown_send, ignored);
                        if (!peer_eof_) {
                            // Closing now, with the peer's input unread, would
                            // make the kernel send a reset, and a reset makes
                            // the peer's kernel drop what we sent last (the
                            // BYE, the fatal ERROR). The reader drains until
                            // the peer's EOF; the watchdog bounds the wait.
                            send_shut_ = true;
                            close_deadline_ = std::min(close_deadline_, Clock::now() + short_grace());
                            watchdog_.cancel();
                            break;
                        }
                    }
                    stop(close_event_, close_reason_);
                    break;
                }
                break;  // idle: the next queued frame starts a new writer
            }
            asio::error_code ec;
            if constexpr (waits_for_readiness) {
                if (write_now(ec) == WriteResult::would_block) {
                    plan_write_deadline();
                    auto [wait_ec] =
                        co_await stream_.async_wait(asio::socket_base::wait_write, as_tuple(asio::use_awaitable));
                    if (!wait_ec) continue;
                    ec = wait_ec;
                }
            } else {
                // Not reached in practice (the flush pass writes TLS batches and
                // starts the writer only to close), but the same staged write.
                plan_write_deadline();
                while (!ec && sent_index_ < in_flight_.size()) {
                    auto staging = stage_chunk();
                    auto [write_ec, n] = co_await asio::async_write(
                        stream_, asio::buffer(staging->data.get(), staging->size), as_tuple(asio::use_awaitable));
                    TlsStaging::give_back(std::move(staging));
                    ec = write_ec;
                }
            }
            if (ec) {
                if (!stopped_) stop(PresenceEvent::disconnected, "write failed: " + ec.message());
                break;
            }
            finish_batch();
        }
        writer_running_ = false;
    }

    // Flushable: the shard's write pass, for every stream type.
    void flush() override {
        flush_pending_ = false;
        if (stopped_ || writer_running_) return;
        if constexpr (!waits_for_readiness) {
            // TLS: everything queued (control frames first) becomes one write
            // of full-size records; what is queued while it is in flight goes
            // in the next one (write_staged_done).
            if (in_flight_.empty() && !take_batch()) {
                if (closing_) start_writer();  // nothing left to send: the writer sends close_notify
                return;
            }
            plan_write_deadline();
            write_staged();
        } else {
            if (in_flight_.empty() && !take_batch()) {
                if (closing_) start_writer();  // nothing left to send: the writer closes
                return;
            }
            asio::error_code ec;
            switch (write_now(ec)) {
            case WriteResult::done:
                finish_batch();
                if (closing_) start_writer();
                return;
            case WriteResult::would_block:
                start_writer();  // the rest waits for writability there
                plan_write_deadline();
                return;
            case WriteResult::failed:
                stop(PresenceEvent::disconnected, "write failed: " + ec.message());
                return;
            }
        }
    }

    // Copies the batch from the cursor (sent_index_, sent_offset_) on into a
    // staging buffer, as far as it holds, and moves the cursor past it.
    TlsStaging::Handle stage_chunk() {
        auto staging = TlsStaging::take();
        char* out = staging->data.get();
        std::size_t room = TlsStaging::capacity;
        while (room > 0 && sent_index_ < in_flight_.size()) {
            const std::string& f = *in_flight_[sent_index_];
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

    // One async_write of the next chunk of the batch; its completion starts
    // the next chunk, or ends the batch. writer_running_ stands for the write
    // in flight, so wake_writer() leaves the session off the flush list
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
            if (stopped_) return;
            if (ec) {
                stop(PresenceEvent::disconnected, "write failed: " + ec.message());
                return;
            }
            if (sent_index_ < in_flight_.size()) {
                write_staged();
                return;
            }
            finish_batch();
            // Queued meanwhile, or closing: the next pass writes it (or closes).
            if (closing_ || !queue_.empty() || !control_.empty()) wake_writer();
        } catch (const std::exception& e) {
            env_.log->error("session {} {}: bug: {}", id_, peer_, e.what());
            stop(PresenceEvent::disconnected, "internal error");
        }
    }

    // Moves every queued frame into the batch to write, control frames
    // (WELCOME, PING, PONG, ERROR, BYE) first, so a full queue never starves a
    // heartbeat. False when nothing is queued.
    bool take_batch() {
        if (control_.empty() && queue_.empty()) return false;
        in_flight_.swap(control_);
        in_flight_.insert(in_flight_.end(), std::make_move_iterator(queue_.begin()),
                          std::make_move_iterator(queue_.end()));
        queue_.clear();
        // Everything waiting is now in flight and still held: it counts
        // against the queue limit until the write is done.
        in_flight_bytes_ = queued_bytes_;
        queued_bytes_ = 0;
        sent_index_ = 0;
        sent_offset_ = 0;
        writing_ = true;
        write_started_ = Clock::now();
        return true;
    }

    void finish_batch() {
        writing_ = false;
        last_tx_ = Clock::now();
        in_flight_bytes_ = 0;
        in_flight_.clear();
        if (queue_.empty() && control_.empty() && release_backlog_memory(256) >= 256 * 1024) return_free_memory();
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

    // After a backlog the queues' arrays keep their size; a session that once
    // held thousands of frames gives that memory back once it is drained
    // (arrays over `keep` frames), and any array once it has been idle for a
    // heartbeat interval (keep = 0). Steady traffic in batches of fewer than
    // 256 frames keeps its arrays: no allocation per batch.
    // Returns the bytes of array capacity given back.
    std::size_t release_backlog_memory(std::size_t keep) {
        std::size_t released = 0;
        const auto release = [keep, &released](auto& v) {
            if (v.capacity() <= keep) return;
            released += v.capacity() * sizeof(v[0]);
            std::remove_reference_t<decltype(v)>().swap(v);
        };
        release(in_flight_);
        release(queue_);
        release(control_);
        release(iov_);
        return released;
    }

    // A write that has to wait is bounded by --write-timeout: make sure the
    // watchdog wakes by then (it may sleep towards a later deadline).
    void plan_write_deadline() {
        if (!writing_ || closing_) return;
        if (watchdog_.expiry() > write_started_ + env_.config.write_timeout) watchdog_.cancel();
    }

    // Bytes the peer sent that wait unread in the socket (SIOCINQ): proof
    // that it is alive even when the server has not got round to reading.
    std::size_t unread_bytes() noexcept {
        int n = 0;
        if (::ioctl(stream_.lowest_layer().native_handle(), SIOCINQ, &n) != 0) return 0;
        return n > 0 ? static_cast<std::size_t>(n) : 0;
    }

    enum class WriteResult { done, would_block, failed };

    // Straight to the kernel: up to max_iov frames per sendmsg, continuing a
    // partially written batch, until the batch is out or the socket is full.
    WriteResult write_now(asio::error_code& ec) {
        auto& iov = iov_;
        while (sent_index_ < in_flight_.size()) {
            iov.clear();
            for (std::size_t i = sent_index_; i < in_flight_.size() && iov.size() < max_iov; ++i) {
                const std::string& f = *in_flight_[i];
                const std::size_t skip = i == sent_index_ ? sent_offset_ : 0;
                iov.push_back(iovec{const_cast<char*>(f.data()) + skip, f.size() - skip});
            }
            msghdr msg{};
            msg.msg_iov = iov.data();
            msg.msg_iovlen = iov.size();
            // MSG_NOSIGNAL: a peer that has gone is EPIPE here, never SIGPIPE.
            const ssize_t sent = ::sendmsg(stream_.native_handle(), &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
            if (sent < 0) {
                if (errno == EINTR) continue;
                if (errno == EAGAIN || errno == EWOULDBLOCK) return WriteResult::would_block;
                ec = asio::error_code(errno, asio::error::get_system_category());
                return WriteResult::failed;
            }
            for (auto left = static_cast<std::size_t>(sent); left > 0;) {
                const std::size_t rest = in_flight_[sent_index_]->size() - sent_offset_;
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

    void start_writer() {
        writer_running_ = true;
        ++tasks_;
        spawn_counted(writer());
    }

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
                               self->stop(PresenceEvent::disconnected, "internal error");
                           }
                           self->task_done();
                       });
    }

    // The server forgets the session once its last task (reader, writer, or a
    // pending watchdog wait) has ended.
    void task_done() {
        if (--tasks_ == 0) env_.on_finished(id_);
    }

    // One timer for every deadline of the session; re-planned each time it fires
    // or is cancelled (a cancel is how others ask for a re-plan).
    void arm_watchdog() {
        const auto& cfg = env_.config;
        for (;;) {
            if (stopped_) return;
            const auto now = Clock::now();
            if (now >= rx_deadline_ && !closing_) {
                if (const std::size_t waiting = unread_bytes(); waiting > 0) {
                    // The peer sent something we have not read yet: it is
                    // alive and the server is behind (a join storm, a paused
                    // reader). Read it instead of expiring a live peer.
                    env_.expiries_averted.fetch_add(1, std::memory_order_relaxed);
                    // Once per session: an overloaded server would otherwise
                    // log a line per session per interval.
                    if (!averted_logged_) env_.log->warn("session {} {}{}: deadline passed with {} unread bytes waiting: the server is "
                                   "behind, not the peer; not expiring it",
                                   id_, peer_, nick_.empty() ? "" : " '" + nick_ + "'", waiting);
                    averted_logged_ = true;
                    rx_deadline_ = now + std::min(cfg.heartbeat_interval, cfg.heartbeat_timeout);
                    continue;
                }
                if (!logged_in_ && !hello_seen_) {
                    env_.log->debug("session {} {}: no HELLO within {}", id_, peer_,
                                    format_duration(cfg.handshake_timeout));
                    close_with_error(ErrorCode::handshake_timeout,
                                     "no HELLO within " + format_duration(cfg.handshake_timeout));
                } else if (!logged_in_) {
                    // The client did its part; the hub has not answered its
                    // HELLO (the server is overloaded): not a heartbeat timeout.
                    env_.log->warn("session {} {}: the hub did not answer HELLO within {}; closing", id_, peer_,
                                   format_duration(cfg.heartbeat_timeout));
                    close_with_error(ErrorCode::internal, "the server did not answer HELLO within " +
                                                              format_duration(cfg.heartbeat_timeout) +
                                                              " (overloaded); try again later");
                } else {
                    env_.log->warn("session {} {} '{}': heartbeat timeout: nothing received for {}", id_, peer_,
                                   nick_, format_duration(cfg.heartbeat_timeout));
                    // The peer is presumably dead: its rooms hear of it now; the
                    // ERROR gets a short grace to go out, no more.
                    leave_hub(PresenceEvent::timed_out, "heartbeat timeout");
                    drop_queued();
                    send_control(make_frame(make_error(
                        ErrorCode::heartbeat_timeout, "nothing received for " + format_duration(cfg.heartbeat_timeout),
                        true)));
                    begin_close(PresenceEvent::timed_out, "heartbeat timeout", short_grace());
                }
                continue;
            }
            if (writing_ && now - write_started_ >= cfg.write_timeout && !closing_) {
                slow_consumer("a write did not finish within " + format_duration(cfg.write_timeout));
                continue;
            }
            if (closing_ && now >= close_deadline_) {
                // After our half-close the wait was only for the peer's EOF:
                // everything was sent, the reason stands as it is.
                stop(close_event_, send_shut_ ? close_reason_
                                              : close_reason_ + " (peer did not take the last frames in time)");
                continue;
            }
            if (logged_in_ && !closing_ && now - last_tx_ >= cfg.heartbeat_interval) {
                // Nothing was sent for an interval: the session is idle, so
                // whatever its queue arrays grew to in a burst (a join storm's
                // PRESENCE frames) goes back now, however small.
                if (!writing_ && queue_.empty() && control_.empty()) release_backlog_memory(0);
                send_control(make_frame(Ping{++ping_nonce_}));
                last_tx_ = now;  // a PING counts as sending; the next one waits an interval
            }
            // While closing only the drain deadline counts: the others may
            // already have passed and would wake the watchdog without end.
            auto next = closing_ ? close_deadline_ : rx_deadline_;
            if (!closing_ && logged_in_) next = std::min(next, last_tx_ + cfg.heartbeat_interval);
            if (!closing_ && writing_) next = std::min(next, write_started_ + cfg.write_timeout);
            watchdog_.expires_at(next);
            ++tasks_;
            watchdog_.async_wait([self = this->shared_from_this()](const asio::error_code&) {
                self->arm_watchdog();
                self->task_done();
            });
            return;
        }
    }

    // --- frames from the client ---

    // A handler that throws is a bug; it ends this session, never the server.
    void handle_guarded(Message& message) noexcept {
        try {
            handle(message);
        } catch (const std::exception& e) {
            report_bug(e.what());
        } catch (...) {
            report_bug("unknown exception");
        }
    }

    void report_bug(const char* what) noexcept {
        try {
            env_.bugs.fetch_add(1, std::memory_order_relaxed);
            env_.log->error("session {} {}: bug: a handler threw: {}; closing the session", id_, peer_, what);
            close_with_error(ErrorCode::internal, "internal error");
        } catch (...) {
            stop(PresenceEvent::disconnected, "internal error");
        }
    }

    void handle(Message& message) {
        if (!hello_seen_) {
            if (auto* hello = std::get_if<Hello>(&message)) {
                on_hello(*hello);
            } else {
                protocol_violation(ErrorCode::hello_required,
                                   fmt::format("expected HELLO, got {}", to_string(frame_type(message))));
            }
            return;
        }
        if (is_request_frame(message)) {
            on_request(message);
            return;
        }
        std::visit([this](auto& m) { this->on(m); }, message);
    }

    // JOIN, LEAVE, SAY, WHISPER, NICK, LIST, WHO: checked here, at the edge;
    // the hub gets only what passed (request.hpp).
    void on_request(const Message& frame) {
        if (!admit()) return;
        auto vetted = vet_request(frame);
        if (const auto* refusal = std::get_if<Refusal>(&vetted)) {
            send_error(refusal->code, std::string(refusal->reason));
            return;
        }
        const Request& request = std::get<Request>(vetted);
        if (const auto* join = std::get_if<JoinRequest>(&request))
            env_.log->info("session {} {} '{}': join '{}'", id_, peer_, nick_, join->room.view());
        else if (const auto* leave = std::get_if<LeaveRequest>(&request))
            env_.log->info("session {} {} '{}': leave '{}'", id_, peer_, nick_, leave->room.view());
        else if (const auto* say = std::get_if<SayRequest>(&request))
            env_.log->debug("session {} '{}' in '{}': {}", id_, nick_, say->room.view(), log_safe(say->text));
        submit(request);
    }

    // To the hub: directly on its own shard (no copy of the text), else
    // posted with an owned copy and counted against this shard's hub gate.
    void submit(const Request& request) {
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
            env.bugs.fetch_add(1, std::memory_order_relaxed);
            env.log->error("session {}: bug: the hub threw on {}: {}; closing the session", id, what, why);
            env.hub.disconnect(id, PresenceEvent::disconnected, "internal error");
            if (env.close_after_bug) env.close_after_bug(shard, id);
        } catch (...) {
        }
    }

    void on_hello(Hello& hello) {
        hello_seen_ = true;
        decoder_.set_max_payload(env_.config.max_frame);
        // Until WELCOME the client waits for us: the hub's answer is bounded
        // by the heartbeat timeout, not by the handshake deadline (arm_watchdog).
        rx_deadline_ = Clock::now() + env_.config.heartbeat_timeout;
        if (env_.access != nullptr) {
            if (auto refusal = env_.access->check(hello.token, peer_address(peer_))) {
                env_.log->warn("session {} {}: login refused: {}", id_, peer_, refusal->detail);
                close_with_error(ErrorCode::auth_failed, refusal->reason);
                return;
            }
        }
        auto nick = NickName::parse(hello.nick);
        if (!nick) {
            protocol_violation(ErrorCode::invalid_nick,
                               "nickname must be 1-32 characters of letters, digits, '_', '-', '.', "
                               "starting with a letter or digit");
            return;
        }
        env_.log->debug("session {} {}: HELLO as '{}'", id_, peer_, nick->view());
        auto self = this->shared_from_this();
        const auto login = [self, nick = *nick, token = std::move(hello.resume_token)] {
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

    void on(Hello&) { protocol_violation(ErrorCode::duplicate_hello, "HELLO was already sent on this connection"); }

    void on(Heartbeat&) {}  // the read itself pushed the deadline forward
    void on(Pong&) {}
    void on(Ping& ping) {
        // A peer that PINGs but never reads would otherwise pile up PONGs.
        auto pong = make_frame(Pong{ping.nonce});
        if (has_room_for(*pong)) send_control(std::move(pong));
    }

    void on(Bye& bye) {
        env_.log->info("session {} {} '{}': said BYE: {}", id_, peer_, nick_, log_safe(bye.reason));
        // The receiver of a BYE sends nothing more (PROTOCOL.md section 10):
        // what is queued is dropped, the connection closes.
        drop_queued();
        begin_close(PresenceEvent::disconnected,
                    bye.reason.empty() ? std::string("quit") : "quit: " + clip_reason(bye.reason));
    }

    template <class M>
    void on(M& m) {
        protocol_violation(ErrorCode::unknown_type,
                           fmt::format("{} is not a frame a client may send", to_string(frame_type(Message{m}))));
    }

    // Flood control for everything but heartbeats; true when the frame may pass.
    bool admit() {
        if (!hello_seen_) return false;
        if (limiter_.try_take(Clock::now())) {
            rate_strikes_ = 0;
            return true;
        }
        if (++rate_strikes_ >= env_.config.rate_strikes) {
            env_.log->warn("session {} {} '{}': disconnected for flooding ({} refused messages in a row)", id_, peer_,
                           nick_, rate_strikes_);
            close_with_error(ErrorCode::rate_limited, "disconnected for flooding");
        } else {
            send_error(ErrorCode::rate_limited,
                       fmt::format("over {} messages/s (burst {}); message dropped", env_.config.rate,
                                   env_.config.burst));
        }
        return false;
    }

    // --- outcomes ---

    void protocol_error(DecodeError error) {
        // "SAY: truncated_field": the frame type and what was wrong with it (PROTOCOL.md 9.2).
        const auto type = decoder_.failed_type();
        std::string reason = fmt::format("{}: {}", to_string(static_cast<FrameType>(type)), to_string(error));
        if (error == DecodeError::frame_too_large)
            reason = fmt::format("{}: frame larger than the maximum of {} bytes{}", to_string(static_cast<FrameType>(type)),
                                 max_frame(), hello_seen_ ? "" : " before HELLO");
        else if (error == DecodeError::unsupported_version)
            reason = fmt::format("this server speaks protocol version {}", protocol_version);
        else if (error == DecodeError::unknown_type)
            reason = fmt::format("unknown frame type 0x{:02x}", decoder_.failed_type());
        protocol_violation(to_error_code(error), reason);
    }

    void protocol_violation(ErrorCode code, const std::string& reason) {
        env_.log->log(hello_seen_ ? spdlog::level::warn : spdlog::level::debug,
                      "session {} {}: protocol violation: {} ({})", id_, peer_, log_safe(reason), to_string(code));
        close_with_error(code, reason);
    }

    void slow_consumer(const std::string& why) {
        if (stopped_) return;
        env_.log->warn("session {} {} '{}': slow consumer: {}", id_, peer_, nick_, why);
        // The ERROR jumps the queue, but the peer is not reading, so it gets a
        // short grace only; the queued room traffic is dropped here, which is
        // what keeps server memory bounded.
        if (closing_ && left_hub_) {
            stop(PresenceEvent::disconnected, "slow consumer: " + why);
            return;
        }
        leave_hub(PresenceEvent::disconnected, "slow consumer");
        drop_queued();
        send_control(make_frame(make_error(ErrorCode::slow_consumer, why, true)));
        begin_close(PresenceEvent::disconnected, "slow consumer: " + why, short_grace());
    }

    // Frames not yet handed to a write; the one in flight cannot be taken back.
    void drop_queued() {
        control_.clear();
        queue_.clear();
        queued_bytes_ = 0;
    }

    void send_error(ErrorCode code, std::string reason) {
        auto error = make_frame(make_error(code, reason, false));
        if (has_room_for(*error)) send_control(std::move(error));
    }

    // True when `frame` fits under --queue-limit with everything held for the
    // peer (waiting and in flight); otherwise the session is a slow consumer.
    bool has_room_for(const std::string& frame) {
        if (queued_bytes_ + in_flight_bytes_ + frame.size() <= env_.config.queue_limit) return true;
        slow_consumer(fmt::format("write queue full: {} bytes held for the peer, and a {}-byte frame would pass "
                                  "the limit of {}",
                                  queued_bytes_ + in_flight_bytes_, frame.size(), format_size(env_.config.queue_limit)));
        return false;
    }

    void note_peak() {
        const std::size_t held = queued_bytes_ + in_flight_bytes_;
        auto& peak = env_.peak_queued_bytes;
        auto seen = peak.load(std::memory_order_relaxed);
        while (held > seen && !peak.compare_exchange_weak(seen, held, std::memory_order_relaxed)) {
        }
    }

    // Control frames jump the queue but count against its limit like the rest;
    // the callers that could repeat without bound (PONG, non-fatal ERROR) check
    // has_room_for() first.
    void send_control(SharedFrame frame) {
        queued_bytes_ += frame->size();
        note_peak();
        control_.push_back(std::move(frame));
        wake_writer();
    }

    void wake_writer() {
        if (writer_running_ || flush_pending_ || stopped_ || !transport_ready_) return;
        // Not written here: everything queued until the shard's write pass
        // (a whole read's worth of fan-out) goes out in one write. A write in
        // flight (writer_running_) takes the session back when it is done.
        flush_pending_ = true;
        env_.flush_lists[shard_]->add(this->shared_from_this());
    }

    // A dead or stalled peer gets this long to take a last ERROR.
    Duration short_grace() const { return std::min<Duration>(env_.config.write_timeout, Duration{1000}); }

    void begin_close(PresenceEvent event, const std::string& reason) {
        begin_close(event, reason, env_.config.write_timeout);
    }

    void begin_close(PresenceEvent event, const std::string& reason, Duration grace) {
        // A closing session takes no more room traffic (deliver() drops it),
        // so its rooms hear of its end now, not after the drain.
        leave_hub(event, reason);
        closing_ = true;
        close_event_ = event;
        close_reason_ = reason;
        close_deadline_ = Clock::now() + grace;
        watchdog_.cancel();  // re-plan around the drain deadline
        wake_writer();
    }

    // Idempotent: the hub forgets the session and its rooms see `event`.
    void leave_hub(PresenceEvent event, const std::string& reason) {
        if (left_hub_) return;
        left_hub_ = true;
        asio::post(env_.hub_executor, [&env = env_, id = id_, event, reason] {
            try {
                env.hub.disconnect(id, event, reason);
            } catch (const std::exception& e) {
                env.bugs.fetch_add(1, std::memory_order_relaxed);
                env.log->error("session {}: bug: the hub threw on disconnect: {}", id, e.what());
            }
        });
    }

    // Idempotent: leaves the hub, closes the socket, cancels timers, logs the reason once.
    void stop(PresenceEvent event, const std::string& reason) {
        if (stopped_) return;
        stopped_ = true;
        if (!hello_seen_) env_.ended_before_hello.fetch_add(1, std::memory_order_relaxed);
        env_.log->log(hello_seen_ ? spdlog::level::info : spdlog::level::debug, "session {} {}{}: disconnected: {}",
                      id_, peer_, nick_.empty() ? "" : " '" + nick_ + "'", log_safe(reason));
        leave_hub(event, reason);
        asio::error_code ignored;
        stream_.lowest_layer().close(ignored);
        watchdog_.cancel();
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
    std::string nick_;

    Decoder decoder_;
    // TLS: the next read's size, and whether the decoder's array is to be
    // made small again (reads went back from large to small).
    [[no_unique_address]] TlsOnly<std::size_t> read_size_{};
    [[no_unique_address]] TlsOnly<bool> shrink_read_buffer_{};
    RateLimiter limiter_;
    unsigned rate_strikes_ = 0;

    asio::steady_timer watchdog_;
    bool writer_running_ = false;
    bool flush_pending_ = false;  // on the shard's flush list
    bool transport_ready_ = false;  // TLS: after the handshake
    // The writer's batch and its buffer list, kept so their capacity is reused.
    std::vector<SharedFrame> in_flight_;
    // in_flight_[sent_index_] is the first frame not fully sent (TLS: not
    // fully staged), sent_offset_ bytes of it already are.
    std::size_t sent_index_ = 0;
    std::size_t sent_offset_ = 0;
    std::vector<iovec> iov_;

    std::vector<SharedFrame> control_;
    std::vector<SharedFrame> queue_;
    std::size_t queued_bytes_ = 0;     // waiting in control_ and queue_
    std::size_t in_flight_bytes_ = 0;  // handed to the write in progress

    Clock::time_point rx_deadline_{};
    Clock::time_point last_tx_{};
    Clock::time_point write_started_{};
    Clock::time_point close_deadline_{};
    bool writing_ = false;
    std::uint64_t ping_nonce_ = 0;

    bool handshake_done_ = false;      // TLS
    bool handshake_timed_out_ = false;  // TLS
    bool hello_seen_ = false;
    bool logged_in_ = false;
    bool closing_ = false;
    bool averted_logged_ = false;
    bool send_shut_ = false;  // our half-close is done: waiting for the peer's EOF
    bool peer_eof_ = false;
    bool stopped_ = false;
    unsigned tasks_ = 0;
    bool left_hub_ = false;
    PresenceEvent close_event_ = PresenceEvent::disconnected;
    std::string close_reason_;
};

}  // namespace chat
