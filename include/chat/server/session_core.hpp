// The decisions of one client session, apart from any socket (sans-io).
//
// SessionCore is told what happened (a decoded frame, the peer's EOF, a frame
// from the hub, a write done, the time) and answers with what to do: frames to
// write (control frames first), calls to the hub (through SessionHost), when
// to wake it next, and whether to close. It does no I/O and reads no clock, so
// every deadline, every close path, the queue bound and the control-first
// order are unit-tested without sockets (test/server/test_session_core.cpp).
// Session<Stream> (session.hpp) is the transport around it: reads, writes, one
// steady_timer set to next_wakeup(), and the socket's close.
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <spdlog/logger.h>

#include "chat/proto/names.hpp"
#include "chat/proto/protocol.hpp"
#include "chat/proto/request.hpp"
#include "chat/server/metrics.hpp"
#include "chat/server/access.hpp"
#include "chat/server/participant.hpp"
#include "chat/server/rate_limiter.hpp"
#include "chat/server/server_config.hpp"

namespace chat {

// Largest payload a connection may send before its HELLO: a HELLO is a nick
// and two tokens, so a stranger cannot make the server buffer a whole max_frame.
inline constexpr std::uint32_t max_frame_before_hello = 4096;

// A session's life, in order; it only moves forward.
enum class SessionState : std::uint8_t {
    connecting,  // the transport's own handshake (TLS) is under way
    greeting,    // waiting for HELLO, within --handshake-timeout
    logging_in,  // HELLO went to the hub; waiting for its answer
    active,      // logged in: heartbeat expiry, server PINGs, room traffic
    draining,    // closing: what is queued goes out, then the half-close
    lingering,   // half-closed: the peer's input is read and dropped until its EOF
    closed,      // done: the transport closes the socket
};
std::string_view to_string(SessionState state) noexcept;

// What the core asks of the world around it. The transport implements it:
// the hub calls (posted to the hub's shard where needed) and one question
// about the socket.
class SessionHost {
public:
    virtual ~SessionHost() = default;
    // HELLO passed the checks: log in as `nick`; the hub answers with on_login() or close_with_error().
    virtual void login(const NickName& nick, std::string_view resume_token) = 0;
    // A request that passed vet_request().
    virtual void submit(const Request& request) = 0;
    // The session ends: its rooms hear `event`. Called at most once.
    virtual void leave_hub(PresenceEvent event, const std::string& reason) = 0;
    // HELLO's access token: why it does not pass, or nothing.
    virtual std::optional<AuthRefusal> check_access(std::string_view token) = 0;
    // Bytes the peer sent that wait unread in the socket: proof that it is
    // alive even when the server has not got round to reading.
    virtual std::size_t unread_bytes() = 0;
    // The time, for the one event that brings none: room traffic that makes
    // the session a slow consumer (deliver() is the per-member path and
    // reads no clock otherwise).
    virtual std::chrono::steady_clock::time_point now() = 0;
};

// What the sessions of a server count, for logs, tests and metrics (relaxed;
// none is on the per-delivery path).
struct SessionCounters {
    // The most bytes one session has held for its peer at once (queued and in
    // flight): the figure --queue-limit bounds.
    std::atomic<std::size_t> peak_queued_bytes{0};
    // Heartbeat expiries not carried out because the peer's bytes were
    // waiting in the socket: the peer was alive, the server behind.
    std::atomic<std::uint64_t> expiries_averted{0};
    // Handlers that threw: each is a bug, logged once and survived.
    std::atomic<std::uint64_t> bugs{0};
    // Connections that ended before their HELLO, and refused ones: summed up
    // in one log line per second rather than logged one by one.
    std::atomic<std::uint64_t> ended_before_hello{0};
    std::atomic<std::uint64_t> refused{0};
};

class SessionCore {
public:
    using Clock = std::chrono::steady_clock;

    // What the transport is to do after a call, as bits (take_actions()).
    enum Action : unsigned {
        act_none = 0,
        act_write = 1u << 0,    // frames are queued (or the close is due): schedule a write pass
        act_replan = 1u << 1,   // a deadline moved closer: set the timer to next_wakeup() again
        act_close = 1u << 2,    // the session is over: close the socket, cancel the timer
        act_release = 1u << 3,  // the queues gave their memory back: the transport's buffers too
        act_trim = 1u << 4,     // ...after a large backlog: and hand free heap pages to the kernel
    };

    // `peer` and `server_version` must outlive the core.
    // `metrics` is the session's shard's: only that thread calls the core.
    SessionCore(const ServerConfig& config, SessionHost& host, SessionCounters& counters, ShardMetrics& metrics,
                spdlog::logger& log, std::uint64_t id, const std::string& peer, const std::string& server_version);

    // --- the transport's events ---

    // The connection is accepted: the handshake deadline starts. `rejection`,
    // when set, is sent as a fatal ERROR before anything is read.
    void start(Clock::time_point now, std::optional<std::pair<ErrorCode, std::string>> rejection);
    // The transport's handshake is done (at once for TCP and Unix sockets).
    void transport_ready();
    // The transport's handshake failed or took too long: the session ends.
    void transport_failed(const std::string& why, bool timed_out = false);
    // One decoded frame. Whole frames push the heartbeat deadline, stray bytes do not.
    void on_frame(Message& message, Clock::time_point now) noexcept;
    // The decoder refused the input (`type`: the frame type it was reading).
    void on_decode_error(DecodeError error, std::uint8_t type, Clock::time_point now);
    // The peer's EOF; `mid_frame`: part of a frame was still buffered.
    void on_peer_eof(bool mid_frame, Clock::time_point now);
    // The read failed otherwise (`reason` in words); `tls`: over TLS, where
    // the close_notify exchange races the peer's own close.
    void on_read_failed(const std::string& reason, bool tls);
    // The timer fired (or was cancelled for a re-plan).
    void on_timer(Clock::time_point now);

    // --- the hub's calls (Participant) ---

    // Room traffic. False when dropped (closing) or when it made the session a slow consumer.
    bool deliver(const SharedFrame& frame);
    void on_login(const std::string& nick, const std::string& resume_token, Clock::time_point now);
    void on_renamed(const std::string& nick);
    // A fatal ERROR, then the close.
    void close_with_error(ErrorCode code, const std::string& reason, Clock::time_point now);
    // Server shutdown: what is queued, then BYE, then the close.
    void shutdown(const std::string& reason, Clock::time_point now);
    // Close now, queued or not.
    void abort(const std::string& reason, CloseCause cause = CloseCause::shutdown);
    // A connection on a WebSocket port that only fetched pages and never
    // upgraded: it closes without having been a session, so neither
    // sessions_closed_total nor the HELLO-less count hears of it.
    void end_without_session(const std::string& reason);

    // --- writing ---

    // Moves everything queued into the batch (control frames first). False when nothing is queued.
    bool take_batch(Clock::time_point now);
    const std::vector<SharedFrame>& batch() const noexcept { return in_flight_; }
    // The batch could not be written at once: the write timeout now counts.
    void write_waiting();
    // The batch is out.
    void batch_written(Clock::time_point now);
    void on_write_failed(const std::string& reason);
    // Draining and nothing left to write: time for the half-close.
    bool wants_half_close() const noexcept {
        return state_ == SessionState::draining && in_flight_.empty() && control_.empty() && queue_.empty();
    }
    // Our half-close is done (shutdown(SHUT_WR), or TLS close_notify sent):
    // wait for the peer's EOF, briefly; ends the session if it came already.
    void half_closed(Clock::time_point now);
    // The wait for the peer's EOF is over (TLS: the close_notify exchange ended).
    void linger_done();

    // --- what the transport asks ---

    unsigned take_actions() noexcept {
        const unsigned a = actions_;
        actions_ = act_none;
        return a;
    }
    SessionState state() const noexcept { return state_; }
    bool closing() const noexcept { return state_ == SessionState::draining || state_ == SessionState::lingering; }
    bool closed() const noexcept { return state_ == SessionState::closed; }
    bool writing() const noexcept { return writing_; }
    // Frames wait for the next write (beyond the batch in flight).
    bool has_queued() const noexcept { return !control_.empty() || !queue_.empty(); }
    // When on_timer() is due next. Connecting: the handshake deadline.
    Clock::time_point next_wakeup() const noexcept;
    // What bounds the transport's own handshake (TLS): --handshake-timeout from start().
    Clock::time_point handshake_deadline() const noexcept { return handshake_deadline_; }
    // The decoder's bound: a few KiB until HELLO, then --max-frame.
    std::uint32_t max_frame() const noexcept { return hello_seen_ ? config_.max_frame : max_frame_before_hello; }
    bool hello_seen() const noexcept { return hello_seen_; }
    const std::string& nick() const noexcept { return nick_; }
    std::size_t queued_bytes() const noexcept { return queued_bytes_ + in_flight_bytes_; }
    PresenceEvent close_event() const noexcept { return close_event_; }
    const std::string& close_reason() const noexcept { return close_reason_; }
    // What ended (or is ending) the session; connection_error until a close began.
    CloseCause close_cause() const noexcept { return cause_; }
    // After a backlog, the queue arrays keep their size: give back arrays
    // over `keep` frames. Returns the bytes of capacity given back.
    std::size_t release_backlog_memory(std::size_t keep);

    // A dead or stalled peer gets this long to take a last ERROR.
    Duration short_grace() const { return std::min<Duration>(config_.write_timeout, Duration{1000}); }

private:
    void handle(Message& message, Clock::time_point now);
    void on_hello(Hello& hello, Clock::time_point now);
    void on_request(const Message& frame, Clock::time_point now);
    bool admit(Clock::time_point now);
    void on_bye(const Bye& bye, Clock::time_point now);
    void report_bug(const char* what, Clock::time_point now) noexcept;

    void protocol_violation(ErrorCode code, const std::string& reason, Clock::time_point now);
    void slow_consumer(const std::string& why, Clock::time_point now);
    void heartbeat_timeout(Clock::time_point now);
    void send_error(ErrorCode code, std::string reason, Clock::time_point now);
    bool has_room_for(const std::string& frame, Clock::time_point now);
    void send_control(SharedFrame frame);
    void drop_queued();
    void note_peak();
    void begin_close(PresenceEvent event, const std::string& reason, Duration grace, Clock::time_point now);
    void leave_hub(PresenceEvent event, const std::string& reason);
    void stop(PresenceEvent event, const std::string& reason);
    // The first reason a close had wins: what sessions_closed_total counts.
    void note_cause(CloseCause cause) noexcept {
        if (!cause_set_) cause_ = cause;
        cause_set_ = true;
    }
    std::string who() const;  // "session 7 1.2.3.4:5 'alice'" for the log

    const ServerConfig& config_;
    SessionHost& host_;
    SessionCounters& counters_;
    ShardMetrics& metrics_;
    spdlog::logger& log_;
    const std::uint64_t id_;
    const std::string& peer_;
    const std::string& server_version_;

    SessionState state_ = SessionState::connecting;
    unsigned actions_ = act_none;
    // Facts that outlive the state they were learnt in.
    bool hello_seen_ = false;      // the log level of the close, the decoder's bound
    bool peer_eof_ = false;        // the half-close need not wait for it
    bool left_hub_ = false;
    bool averted_logged_ = false;  // once per session
    bool writing_ = false;         // a batch is in flight
    bool cause_set_ = false;
    CloseCause cause_ = CloseCause::connection_error;

    std::string nick_;
    RateLimiter limiter_;
    unsigned rate_strikes_ = 0;
    std::uint64_t ping_nonce_ = 0;

    // Control frames (WELCOME, PING, PONG, ERROR) jump the queue of room
    // traffic; both count against --queue-limit, and so does the batch in
    // flight until it is written.
    std::vector<SharedFrame> control_;
    std::vector<SharedFrame> queue_;
    std::vector<SharedFrame> in_flight_;
    std::size_t queued_bytes_ = 0;     // waiting in control_ and queue_
    std::size_t in_flight_bytes_ = 0;  // handed to the write in progress

    Clock::time_point handshake_deadline_{};
    Clock::time_point rx_deadline_{};     // handshake, then heartbeat expiry
    Clock::time_point last_tx_{};         // the next PING is due an interval after it
    Clock::time_point write_started_{};   // bounds the batch in flight (--write-timeout)
    Clock::time_point close_deadline_{};  // bounds the drain and the linger

    PresenceEvent close_event_ = PresenceEvent::disconnected;
    std::string close_reason_;
};

}  // namespace chat
