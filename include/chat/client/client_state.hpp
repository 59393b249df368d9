// What the chat client wants and knows, apart from any socket (sans-io).
//
// ClientState is fed frames and the user's intents and asked for frames; it
// does no I/O and reads no clock, so its bookkeeping (rooms, the last
// position seen in each, requests waiting for an answer, resuming after a
// reconnect) is tested without sockets.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <optional>
#include <string>
#include <vector>

#include "chat/common/units.hpp"
#include "chat/proto/protocol.hpp"

namespace chat {

// What a frame from the server meant to ClientState, for whoever shows it.
struct FrameNote {
    bool answer = false;   // it answered the request the client was waiting on
    bool rejoin = false;   // JOINED, or a history DELIVER, of a room rejoined after a reconnect
    bool retry = false;    // ERROR rate_limited: the refused request goes again after `retry_in`
    Duration retry_in{0};
    std::string notice;    // something the user should know (e.g. a message is being sent again)
};

// What the client wants and knows, apart from any socket. Requests go out one
// at a time: every request has exactly one answer (its reply or a non-fatal
// ERROR), so the client always knows which request an ERROR refused, keeps
// the user's order, and knows when every message it sent has come back.
class ClientState {
public:
    using Clock = std::chrono::steady_clock;

    // `rooms` are joined on connecting, in order; the first is the current room.
    ClientState(std::string nick, const std::vector<std::string>& rooms, std::string token = {});

    // --- the user's intents; each returns why it was refused, or nothing ---
    std::optional<std::string> say(std::string text);
    std::optional<std::string> whisper(std::string nick, std::string text);
    std::optional<std::string> join(std::string room);
    std::optional<std::string> leave(const std::string& room);
    std::optional<std::string> switch_to(const std::string& room);
    std::optional<std::string> rename(std::string nick);
    std::optional<std::string> list();
    std::optional<std::string> who(std::string room);

    // --- the connection's life ---
    Hello hello() const;
    // WELCOME arrived: the rooms are rejoined, each from the last position
    // seen in it, ahead of everything the user queued.
    void on_welcome(const Welcome& welcome);
    // The connection is gone. Returns notices for requests whose fate is unknown.
    std::vector<std::string> on_disconnected();
    // A frame from the server other than WELCOME, PING, PONG, BYE and a fatal ERROR.
    FrameNote on_frame(const Message& message, Clock::time_point now);

    // The next request to send, if one may go now: connected, nothing
    // unanswered, not paused by the rate limit.
    std::optional<Message> next_request(Clock::time_point now);
    // When a rate-limit pause ends; nullopt when not paused.
    std::optional<Clock::time_point> paused_until(Clock::time_point now) const;

    // Nothing queued, nothing unanswered, no message of unknown fate: every
    // message this client sent has come back from the server.
    bool idle() const noexcept { return queue_.empty() && !in_flight_ && !unconfirmed_; }
    // Requests queued or unanswered.
    std::size_t pending() const noexcept { return queue_.size() + (in_flight_ ? 1 : 0) + (unconfirmed_ ? 1 : 0); }

    bool connected() const noexcept { return connected_; }
    const std::string& nick() const noexcept { return nick_; }
    const std::string& resume_token() const noexcept { return resume_token_; }
    // Where a line without a command goes; empty when in no room.
    const std::string& current_room() const noexcept { return current_; }
    bool has_room(const std::string& room) const { return find(room) != nullptr; }
    bool joined(const std::string& room) const;
    // In join order.
    std::vector<std::string> rooms() const;
    std::optional<Position> last_position(const std::string& room) const;

private:
    struct Room {
        explicit Room(std::string room) : name(std::move(room)) {}
        std::string name;
        bool joined = false;
        bool rejoining = false;       // JOINED with resume seen, its history still arriving
        std::optional<Position> last;  // the newest message seen, for resuming
        std::uint32_t history_left = 0;
    };

    Room* find(const std::string& name);
    const Room* find(const std::string& name) const;
    void forget_room(const std::string& name);
    bool answers(const Message& reply) const;
    void history_done(Room& room, FrameNote& note);

    std::string nick_;
    std::string token_;
    std::string resume_token_;
    std::string current_;
    std::vector<Room> rooms_;  // join order
    std::deque<Message> queue_;
    std::optional<Message> in_flight_;
    // A SAY that was in flight when the connection died: it either shows up in
    // its room's history on rejoining, or it is sent again.
    std::optional<Say> unconfirmed_;
    bool connected_ = false;
    Clock::time_point paused_until_{};
    Duration retry_delay_{100};
};

}  // namespace chat
