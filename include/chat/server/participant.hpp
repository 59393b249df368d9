// What a room and the hub see of a session: an id, a shard, and a place to put frames.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "chat/proto/protocol.hpp"

namespace chat {

// An encoded frame, made once and shared by every recipient's write queue.
using SharedFrame = std::shared_ptr<const std::string>;

inline SharedFrame make_frame(const Message& message) {
    return std::make_shared<const std::string>(encode(message));
}

// A member of rooms. Every call is made on the participant's own shard (the
// io_context thread that owns its socket), so implementations need no lock.
class Participant {
public:
    virtual ~Participant() = default;

    virtual std::uint64_t id() const noexcept = 0;
    // Index of the io_context that owns this participant.
    virtual std::size_t shard() const noexcept = 0;

    // Queues a frame behind the room traffic already queued. A participant that
    // cannot take it (its queue is over its bound) disconnects itself.
    virtual void deliver(const SharedFrame& frame) = 0;

    // The hub accepted the login: the session may now send WELCOME.
    virtual void on_login(const std::string& nick, const std::string& resume_token) = 0;
    // The hub changed this participant's nick.
    virtual void on_renamed(const std::string& nick) = 0;
    // The hub wants this participant gone: send ERROR(code, reason, fatal) and close.
    virtual void close_with_error(ErrorCode code, const std::string& reason) = 0;
};

}  // namespace chat
