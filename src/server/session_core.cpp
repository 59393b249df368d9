#include "chat/server/session_core.hpp"

#include <algorithm>
#include <exception>
#include <type_traits>
#include <utility>

#include <fmt/format.h>

namespace chat {

std::string_view to_string(SessionState state) noexcept {
    switch (state) {
        case SessionState::connecting: return "connecting";
        case SessionState::greeting: return "greeting";
        case SessionState::logging_in: return "logging_in";
        case SessionState::active: return "active";
        case SessionState::draining: return "draining";
        case SessionState::lingering: return "lingering";
        case SessionState::closed: return "closed";
    }
    return "unknown";
}

namespace {

PresenceEvent presence_for(ErrorCode code) {
    return code == ErrorCode::heartbeat_timeout ? PresenceEvent::timed_out : PresenceEvent::disconnected;
}

}  // namespace

SessionCore::SessionCore(const ServerConfig& config, SessionHost& host, SessionCounters& counters,
                         ShardMetrics& metrics, spdlog::logger& log, std::uint64_t id, const std::string& peer,
                         const std::string& server_version)
    : config_(config),
      host_(host),
      counters_(counters),
      metrics_(metrics),
      log_(log),
      id_(id),
      peer_(peer),
      server_version_(server_version),
      limiter_(config.rate, config.burst) {}

std::string SessionCore::who() const {
    return nick_.empty() ? fmt::format("session {} {}", id_, peer_) : fmt::format("session {} {} '{}'", id_, peer_, nick_);
}

// --- the transport's events ---

void SessionCore::start(Clock::time_point now, std::optional<std::pair<ErrorCode, std::string>> rejection) {
    handshake_deadline_ = rx_deadline_ = now + config_.handshake_timeout;
    last_tx_ = now;
    if (rejection) close_with_error(rejection->first, rejection->second, now);
}

void SessionCore::transport_ready() {
    if (state_ == SessionState::connecting) state_ = SessionState::greeting;  // else a rejection is draining
    actions_ |= act_write | act_replan;  // a rejection may be queued already
}

void SessionCore::transport_failed(const std::string& why, bool timed_out) {
    note_cause(timed_out ? CloseCause::handshake_timeout : CloseCause::connection_error);
    stop(PresenceEvent::disconnected, why);
}

void SessionCore::on_frame(Message& message, Clock::time_point now) noexcept {
    if (closed()) return;
    if (closing()) return;  // draining: input is dropped so it never turns the close into a reset
    ++metrics_.frames_in;
    if (hello_seen_) rx_deadline_ = now + config_.heartbeat_timeout;
    // A handler that throws is a bug; it ends this session, never the server.
    try {
        handle(message, now);
    } catch (const std::exception& e) {
        report_bug(e.what(), now);
    } catch (...) {
        report_bug("unknown exception", now);
    }
}

void SessionCore::report_bug(const char* what, Clock::time_point now) noexcept {
    try {
        counters_.bugs.fetch_add(1, std::memory_order_relaxed);
        note_cause(CloseCause::internal);
        log_.error("session {} {}: bug: a handler threw: {}; closing the session", id_, peer_, what);
        close_with_error(ErrorCode::internal, "internal error", now);
    } catch (...) {
        stop(PresenceEvent::disconnected, "internal error");
    }
}

void SessionCore::on_decode_error(DecodeError error, std::uint8_t type, Clock::time_point now) {
    // "SAY: truncated_field": the frame type and what was wrong with it (PROTOCOL.md 9.2).
    const auto frame = to_string(static_cast<FrameType>(type));
    std::string reason = fmt::format("{}: {}", frame, to_string(error));
    if (error == DecodeError::frame_too_large)
        reason = fmt::format("{}: frame larger than the maximum of {} bytes{}", frame, max_frame(),
                             hello_seen_ ? "" : " before HELLO");
    else if (error == DecodeError::unsupported_version)
        reason = fmt::format("this server speaks protocol version {}", protocol_version);
    else if (error == DecodeError::unknown_type)
        reason = fmt::format("unknown frame type 0x{:02x}", type);
    protocol_violation(to_error_code(error), reason, now);
}

void SessionCore::on_peer_eof(bool mid_frame, Clock::time_point now) {
    peer_eof_ = true;
    if (closed()) return;
    if (closing() || mid_frame) {
        // The peer half-closed: while closing, or in the middle of a frame
        // (which earns an ERROR), the writer still gets to send what is
        // queued, then closes; the drain deadline bounds the wait.
        if (!closing()) protocol_violation(ErrorCode::malformed_frame, "connection closed in the middle of a frame", now);
        // Our side is shut already: the peer's EOF was all we waited for.
        if (state_ == SessionState::lingering) stop(close_event_, close_reason_);
        return;
    }
    note_cause(CloseCause::peer_closed);
    stop(PresenceEvent::disconnected, "connection closed by peer");
}

void SessionCore::on_read_failed(const std::string& reason, bool tls) {
    if (closed()) return;
    if ((tls || state_ == SessionState::lingering) && closing()) {
        // The close_notify exchange races the peer's own close (typically a
        // reset after its BYE), or the peer reset while we waited for its
        // EOF: the reason is the close's.
        stop(close_event_, close_reason_);
        return;
    }
    note_cause(CloseCause::connection_error);
    stop(PresenceEvent::disconnected, reason);
}

void SessionCore::on_timer(Clock::time_point now) {
    const auto& cfg = config_;
    for (;;) {
        if (closed()) return;
        if (state_ == SessionState::connecting) return;  // the transport bounds its handshake itself
        if (now >= rx_deadline_ && !closing()) {
            if (const std::size_t waiting = host_.unread_bytes(); waiting > 0) {
                // The peer sent something we have not read yet: it is alive and
                // the server is behind (a join storm, a paused reader). Read it
                // instead of expiring a live peer.
                counters_.expiries_averted.fetch_add(1, std::memory_order_relaxed);
                ++metrics_.expiries_averted;
                // Once per session: an overloaded server would otherwise log a
                // line per session per interval.
                if (!averted_logged_)
                    log_.warn("{}: deadline passed with {} unread bytes waiting: the server is behind, not the "
                              "peer; not expiring it",
                              who(), waiting);
                averted_logged_ = true;
                rx_deadline_ = now + std::min(cfg.heartbeat_interval, cfg.heartbeat_timeout);
                continue;
            }
            if (state_ == SessionState::greeting) {
                log_.debug("session {} {}: no HELLO within {}", id_, peer_, format_duration(cfg.handshake_timeout));
                close_with_error(ErrorCode::handshake_timeout,
                                 "no HELLO within " + format_duration(cfg.handshake_timeout), now);
            } else if (state_ == SessionState::logging_in) {
                // The client did its part; the hub has not answered its HELLO
                // (the server is overloaded): not a heartbeat timeout.
                log_.warn("session {} {}: the hub did not answer HELLO within {}; closing", id_, peer_,
                          format_duration(cfg.heartbeat_timeout));
                close_with_error(ErrorCode::internal,
                                 "the server did not answer HELLO within " + format_duration(cfg.heartbeat_timeout) +
                                     " (overloaded); try again later",
                                 now);
            } else {
                heartbeat_timeout(now);
            }
            continue;
        }
        if (writing_ && now - write_started_ >= cfg.write_timeout && !closing()) {
            slow_consumer("a write did not finish within " + format_duration(cfg.write_timeout), now);
            continue;
        }
        if (closing() && now >= close_deadline_) {
            // After our half-close the wait was only for the peer's EOF:
            // everything was sent, the reason stands as it is.
            stop(close_event_, state_ == SessionState::lingering
                                   ? close_reason_
                                   : close_reason_ + " (peer did not take the last frames in time)");
            continue;
        }
        if (state_ == SessionState::active && now - last_tx_ >= cfg.heartbeat_interval) {
            // Nothing was sent for an interval: the session is idle, so
            // whatever its queue arrays grew to in a burst (a join storm's
            // PRESENCE frames) goes back now, however small.
            if (!writing_ && queue_.empty() && control_.empty() && release_backlog_memory(0) > 0)
                actions_ |= act_release;
            send_control(make_frame(Ping{++ping_nonce_}));
            last_tx_ = now;  // a PING counts as sending; the next one waits an interval
        }
        return;
    }
}

SessionCore::Clock::time_point SessionCore::next_wakeup() const noexcept {
    // While closing only the drain deadline counts: the others may already
    // have passed and would wake the timer without end.
    if (closing()) return close_deadline_;
    auto next = rx_deadline_;
    if (state_ == SessionState::active) next = std::min(next, last_tx_ + config_.heartbeat_interval);
    if (writing_) next = std::min(next, write_started_ + config_.write_timeout);
    return next;
}

// --- frames from the client ---

void SessionCore::handle(Message& message, Clock::time_point now) {
    if (!hello_seen_) {
        if (auto* hello = std::get_if<Hello>(&message)) {
            on_hello(*hello, now);
        } else {
            protocol_violation(ErrorCode::hello_required,
                               fmt::format("expected HELLO, got {}", to_string(frame_type(message))), now);
        }
        return;
    }
    if (is_request_frame(message)) {
        on_request(message, now);
        return;
    }
    if (std::holds_alternative<Heartbeat>(message) || std::holds_alternative<Pong>(message)) return;  // the deadline moved
    if (const auto* ping = std::get_if<Ping>(&message)) {
        // A peer that PINGs but never reads would otherwise pile up PONGs.
        auto pong = make_frame(Pong{ping->nonce});
        if (has_room_for(*pong, now)) send_control(std::move(pong));
        return;
    }
    if (const auto* bye = std::get_if<Bye>(&message)) {
        on_bye(*bye, now);
        return;
    }
    if (std::holds_alternative<Hello>(message)) {
        protocol_violation(ErrorCode::duplicate_hello, "HELLO was already sent on this connection", now);
        return;
    }
    protocol_violation(ErrorCode::unknown_type,
                       fmt::format("{} is not a frame a client may send", to_string(frame_type(message))), now);
}

void SessionCore::on_hello(Hello& hello, Clock::time_point now) {
    hello_seen_ = true;
    // Until WELCOME the client waits for us: the hub's answer is bounded by
    // the heartbeat timeout, not by the handshake deadline (on_timer).
    rx_deadline_ = now + config_.heartbeat_timeout;
    if (auto refusal = host_.check_access(hello.token)) {
        log_.warn("session {} {}: login refused: {}", id_, peer_, refusal->detail);
        close_with_error(ErrorCode::auth_failed, refusal->reason, now);
        return;
    }
    auto nick = NickName::parse(hello.nick);
    if (!nick) {
        protocol_violation(ErrorCode::invalid_nick,
                           "nickname must be 1-32 characters of letters, digits, '_', '-', '.', "
                           "starting with a letter or digit",
                           now);
        return;
    }
    log_.debug("session {} {}: HELLO as '{}'", id_, peer_, nick->view());
    state_ = SessionState::logging_in;
    host_.login(*nick, hello.resume_token);
}

// JOIN, LEAVE, SAY, WHISPER, NICK, LIST, WHO: checked here, at the edge; the
// hub gets only what passed (request.hpp).
void SessionCore::on_request(const Message& frame, Clock::time_point now) {
    if (!admit(now)) return;
    auto vetted = vet_request(frame);
    if (const auto* refusal = std::get_if<Refusal>(&vetted)) {
        send_error(refusal->code, std::string(refusal->reason), now);
        return;
    }
    const Request& request = std::get<Request>(vetted);
    if (const auto* join = std::get_if<JoinRequest>(&request))
        log_.info("session {} {} '{}': join '{}'", id_, peer_, nick_, join->room.view());
    else if (const auto* leave = std::get_if<LeaveRequest>(&request))
        log_.info("session {} {} '{}': leave '{}'", id_, peer_, nick_, leave->room.view());
    else if (const auto* say = std::get_if<SayRequest>(&request); say != nullptr && log_.should_log(spdlog::level::debug))
        log_.debug("session {} '{}' in '{}': {}", id_, nick_, say->room.view(), log_safe(say->text));
    host_.submit(request);
}

// Flood control for everything but heartbeats; true when the frame may pass.
bool SessionCore::admit(Clock::time_point now) {
    if (limiter_.try_take(now)) {
        rate_strikes_ = 0;
        return true;
    }
    ++metrics_.rate_limited;
    if (++rate_strikes_ >= config_.rate_strikes) {
        log_.warn("session {} {} '{}': disconnected for flooding ({} refused messages in a row)", id_, peer_, nick_,
                  rate_strikes_);
        close_with_error(ErrorCode::rate_limited, "disconnected for flooding", now);
    } else {
        send_error(ErrorCode::rate_limited,
                   fmt::format("over {} messages/s (burst {}); message dropped", config_.rate, config_.burst), now);
    }
    return false;
}

void SessionCore::on_bye(const Bye& bye, Clock::time_point now) {
    log_.info("session {} {} '{}': said BYE: {}", id_, peer_, nick_, log_safe(bye.reason));
    // The receiver of a BYE sends nothing more (PROTOCOL.md section 10): what
    // is queued is dropped, the connection closes.
    note_cause(CloseCause::client_quit);
    drop_queued();
    begin_close(PresenceEvent::disconnected, bye.reason.empty() ? std::string("quit") : "quit: " + clip_reason(bye.reason),
                config_.write_timeout, now);
}

// --- the hub's calls ---

bool SessionCore::deliver(const SharedFrame& frame) {
    if (state_ >= SessionState::draining) return false;
    if (queued_bytes_ + in_flight_bytes_ + frame->size() > config_.queue_limit) {
        has_room_for(*frame, host_.now());  // the slow-consumer close, with its reason
        return false;
    }
    queued_bytes_ += frame->size();
    note_peak();
    queue_.push_back(frame);
    ++metrics_.deliveries;
    actions_ |= act_write;
    return true;
}

void SessionCore::on_login(const std::string& nick, const std::string& resume_token, Clock::time_point now) {
    if (state_ >= SessionState::draining) return;
    nick_ = nick;
    state_ = SessionState::active;
    rx_deadline_ = now + config_.heartbeat_timeout;
    // The timer slept towards the handshake deadline; the heartbeat deadline
    // and the PING schedule may come sooner.
    actions_ |= act_replan;
    log_.info("session {} {}: logged in as '{}'", id_, peer_, nick_);
    Welcome welcome;
    welcome.session_id = id_;
    welcome.heartbeat_interval_ms = static_cast<std::uint32_t>(config_.heartbeat_interval.count());
    welcome.heartbeat_timeout_ms = static_cast<std::uint32_t>(config_.heartbeat_timeout.count());
    welcome.max_frame = config_.max_frame;
    welcome.nick = nick;
    welcome.resume_token = resume_token;
    welcome.server_name = config_.server_name;
    welcome.server_version = server_version_;
    // Ahead of any room traffic: the client learns its settings first.
    send_control(make_frame(welcome));
}

void SessionCore::on_renamed(const std::string& nick) {
    log_.info("session {} {}: renamed '{}' -> '{}'", id_, peer_, nick_, nick);
    nick_ = nick;
}

void SessionCore::close_with_error(ErrorCode code, const std::string& reason, Clock::time_point now) {
    if (state_ >= SessionState::draining) return;
    // Before HELLO a connection is anyone's: its end goes into the per-second summary.
    log_.log(hello_seen_ ? spdlog::level::info : spdlog::level::debug, "session {} {}: closing: {} ({})", id_, peer_,
             log_safe(reason), to_string(code));
    note_cause(close_cause_for(code));
    send_control(make_frame(make_error(code, reason, true)));
    begin_close(presence_for(code), reason, config_.write_timeout, now);
}

void SessionCore::shutdown(const std::string& reason, Clock::time_point now) {
    if (state_ >= SessionState::draining) return;
    note_cause(CloseCause::shutdown);
    if (state_ == SessionState::connecting) {
        // A TLS handshake still going: nothing was promised to this peer, so
        // it does not hold up the drain.
        stop(PresenceEvent::disconnected, reason);
        return;
    }
    // Unlike the other control frames, BYE waits behind the room traffic
    // already queued: a shutdown delivers what was queued, then says BYE.
    auto bye = make_frame(make_bye(reason));
    queued_bytes_ += bye->size();
    note_peak();
    queue_.push_back(std::move(bye));
    begin_close(PresenceEvent::disconnected, reason, config_.write_timeout, now);
}

void SessionCore::abort(const std::string& reason, CloseCause cause) {
    note_cause(cause);
    stop(PresenceEvent::disconnected, reason);
}

void SessionCore::end_without_session(const std::string& reason) {
    if (closed()) return;
    state_ = SessionState::closed;
    log_.debug("{}: {}", who(), log_safe(reason));
    leave_hub(PresenceEvent::disconnected, reason);
    actions_ |= act_close;
}

// --- writing ---

bool SessionCore::take_batch(Clock::time_point now) {
    if (control_.empty() && queue_.empty()) return false;
    in_flight_.swap(control_);
    in_flight_.insert(in_flight_.end(), std::make_move_iterator(queue_.begin()), std::make_move_iterator(queue_.end()));
    queue_.clear();
    // Everything waiting is now in flight and still held: it counts against
    // the queue limit until the write is done.
    in_flight_bytes_ = queued_bytes_;
    queued_bytes_ = 0;
    writing_ = true;
    write_started_ = now;
    return true;
}

void SessionCore::write_waiting() {
    if (writing_ && !closing()) actions_ |= act_replan;
}

void SessionCore::batch_written(Clock::time_point now) {
    writing_ = false;
    last_tx_ = now;
    in_flight_bytes_ = 0;
    in_flight_.clear();
    // After a backlog of thousands of frames: give the arrays back.
    if (queue_.empty() && control_.empty() && release_backlog_memory(256) >= 256 * 1024)
        actions_ |= act_release | act_trim;
}

void SessionCore::on_write_failed(const std::string& reason) {
    note_cause(CloseCause::connection_error);
    stop(PresenceEvent::disconnected, reason);
}

void SessionCore::half_closed(Clock::time_point now) {
    if (state_ != SessionState::draining) return;
    if (peer_eof_) {
        stop(close_event_, close_reason_);
        return;
    }
    // Closing now, with the peer's input unread, would make the kernel send a
    // reset, and a reset makes the peer's kernel drop what we sent last (the
    // BYE, the fatal ERROR). The transport reads and drops until the peer's
    // EOF; this deadline bounds the wait.
    state_ = SessionState::lingering;
    close_deadline_ = std::min(close_deadline_, now + short_grace());
    actions_ |= act_replan;
}

void SessionCore::linger_done() { stop(close_event_, close_reason_); }

std::size_t SessionCore::release_backlog_memory(std::size_t keep) {
    std::size_t released = 0;
    const auto release = [keep, &released](std::vector<SharedFrame>& v) {
        if (v.capacity() <= keep) return;
        released += v.capacity() * sizeof(v[0]);
        std::vector<SharedFrame>().swap(v);
    };
    if (in_flight_.empty()) release(in_flight_);
    if (queue_.empty()) release(queue_);
    if (control_.empty()) release(control_);
    return released;
}

// --- outcomes ---

void SessionCore::protocol_violation(ErrorCode code, const std::string& reason, Clock::time_point now) {
    log_.log(hello_seen_ ? spdlog::level::warn : spdlog::level::debug, "session {} {}: protocol violation: {} ({})",
             id_, peer_, log_safe(reason), to_string(code));
    close_with_error(code, reason, now);
}

void SessionCore::slow_consumer(const std::string& why, Clock::time_point now) {
    if (closed()) return;
    log_.warn("session {} {} '{}': slow consumer: {}", id_, peer_, nick_, why);
    note_cause(CloseCause::slow_consumer);
    // The ERROR jumps the queue, but the peer is not reading, so it gets a
    // short grace only; the queued room traffic is dropped here, which is what
    // keeps server memory bounded.
    if (closing() && left_hub_) {
        stop(PresenceEvent::disconnected, "slow consumer: " + why);
        return;
    }
    leave_hub(PresenceEvent::disconnected, "slow consumer");
    drop_queued();
    send_control(make_frame(make_error(ErrorCode::slow_consumer, why, true)));
    begin_close(PresenceEvent::disconnected, "slow consumer: " + why, short_grace(), now);
}

void SessionCore::heartbeat_timeout(Clock::time_point now) {
    log_.warn("session {} {} '{}': heartbeat timeout: nothing received for {}", id_, peer_, nick_,
              format_duration(config_.heartbeat_timeout));
    note_cause(CloseCause::heartbeat_timeout);
    // From its last frame (the deadline is always a timeout after it; after
    // an averted expiry, from that moment) to now.
    metrics_.detection.observe(
        std::chrono::duration<double>(now - (rx_deadline_ - config_.heartbeat_timeout)).count());
    // The peer is presumably dead: its rooms hear of it now; the ERROR gets a
    // short grace to go out, no more.
    leave_hub(PresenceEvent::timed_out, "heartbeat timeout");
    drop_queued();
    send_control(make_frame(make_error(ErrorCode::heartbeat_timeout,
                                       "nothing received for " + format_duration(config_.heartbeat_timeout), true)));
    begin_close(PresenceEvent::timed_out, "heartbeat timeout", short_grace(), now);
}

void SessionCore::send_error(ErrorCode code, std::string reason, Clock::time_point now) {
    auto error = make_frame(make_error(code, reason, false));
    if (has_room_for(*error, now)) send_control(std::move(error));
}

// True when `frame` fits under --queue-limit with everything held for the
// peer (waiting and in flight); otherwise the session is a slow consumer.
bool SessionCore::has_room_for(const std::string& frame, Clock::time_point now) {
    if (queued_bytes_ + in_flight_bytes_ + frame.size() <= config_.queue_limit) return true;
    slow_consumer(fmt::format("write queue full: {} bytes held for the peer, and a {}-byte frame would pass the limit "
                              "of {}",
                              queued_bytes_ + in_flight_bytes_, frame.size(), format_size(config_.queue_limit)),
                  now);
    return false;
}

// Control frames jump the queue but count against its limit like the rest;
// the callers that could repeat without bound (PONG, non-fatal ERROR) check
// has_room_for() first.
void SessionCore::send_control(SharedFrame frame) {
    queued_bytes_ += frame->size();
    note_peak();
    control_.push_back(std::move(frame));
    actions_ |= act_write;
}

// Frames not yet handed to a write; the batch in flight cannot be taken back.
void SessionCore::drop_queued() {
    control_.clear();
    queue_.clear();
    queued_bytes_ = 0;
}

void SessionCore::note_peak() {
    const std::size_t held = queued_bytes_ + in_flight_bytes_;
    auto& peak = counters_.peak_queued_bytes;
    auto seen = peak.load(std::memory_order_relaxed);
    while (held > seen && !peak.compare_exchange_weak(seen, held, std::memory_order_relaxed)) {
    }
}

void SessionCore::begin_close(PresenceEvent event, const std::string& reason, Duration grace, Clock::time_point now) {
    // A closing session takes no more room traffic (deliver() drops it), so
    // its rooms hear of its end now, not after the drain.
    leave_hub(event, reason);
    state_ = SessionState::draining;
    close_event_ = event;
    close_reason_ = reason;
    close_deadline_ = now + grace;
    actions_ |= act_replan | act_write;  // re-plan around the drain deadline; the writer closes
}

void SessionCore::leave_hub(PresenceEvent event, const std::string& reason) {
    if (left_hub_) return;
    left_hub_ = true;
    host_.leave_hub(event, reason);
}

void SessionCore::stop(PresenceEvent event, const std::string& reason) {
    if (closed()) return;
    state_ = SessionState::closed;
    ++metrics_.closed[static_cast<std::size_t>(cause_)];
    if (!hello_seen_) counters_.ended_before_hello.fetch_add(1, std::memory_order_relaxed);
    log_.log(hello_seen_ ? spdlog::level::info : spdlog::level::debug, "{}: disconnected: {}", who(),
             log_safe(reason));
    leave_hub(event, reason);
    actions_ |= act_close;
}

}  // namespace chat
