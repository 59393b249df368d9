// Where rooms get their sequence numbers, history and fan-out: one small interface.
//
// LocalBroker keeps everything in this process. A cluster broker (NATS JetStream)
// can implement the same interface: publish() goes out to the cluster and the
// message comes back through the subscriber, possibly later and with gaps in
// the sequence numbers; clients only assume that they increase.
#pragma once

#include <cstdint>
#include <deque>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "chat/participant.hpp"
#include "chat/protocol.hpp"

namespace chat {

// One message as the broker holds it: its position and its DELIVER frame.
struct StoredMessage {
    Position position;
    SharedFrame frame;  // DELIVER without the history flag, encoded once
};

// What a joining client is sent from a room's history.
struct Replay {
    std::uint64_t epoch = 0;
    std::uint64_t head_seq = 0;
    std::uint64_t missed = 0;
    bool epoch_changed = false;
    std::vector<SharedFrame> frames;  // DELIVER frames with the history flag set
};

class Broker {
public:
    // Receives every message published to a room, in the room's order.
    class Subscriber {
    public:
        virtual ~Subscriber() = default;
        virtual void on_message(const StoredMessage& message) = 0;
    };

    virtual ~Broker() = default;

    // Starts delivering a room's messages to `subscriber`, opening the room's log
    // (in a new epoch) if it has none. Returns the room's epoch.
    virtual std::uint64_t subscribe(std::string_view room, Subscriber& subscriber) = 0;
    // The room emptied: stop delivering and forget its log.
    virtual void unsubscribe(std::string_view room) = 0;
    // Appends a message; the subscriber gets it with its assigned position.
    virtual void publish(std::string_view room, std::string_view sender, std::string_view text,
                         std::uint64_t timestamp_ms) = 0;
    // History for a JOIN: everything held, or, when `join.resume`, what follows `join.after`.
    virtual Replay replay(std::string_view room, const Join& join) const = 0;
};

// The in-memory broker: per-room logs capped at `history` messages.
class LocalBroker final : public Broker {
public:
    // `epoch_base` makes epochs unique across restarts (default: the clock).
    explicit LocalBroker(std::size_t history, std::uint64_t epoch_base = 0);

    std::uint64_t subscribe(std::string_view room, Subscriber& subscriber) override;
    void unsubscribe(std::string_view room) override;
    void publish(std::string_view room, std::string_view sender, std::string_view text,
                 std::uint64_t timestamp_ms) override;
    Replay replay(std::string_view room, const Join& join) const override;

private:
    struct RoomLog {
        std::uint64_t epoch = 0;
        std::uint64_t head_seq = 0;
        std::deque<StoredMessage> history;
        Subscriber* subscriber = nullptr;
    };
    struct StringHash {
        using is_transparent = void;
        std::size_t operator()(std::string_view s) const noexcept { return std::hash<std::string_view>{}(s); }
    };

    std::size_t history_limit_;
    std::uint64_t next_epoch_;
    std::unordered_map<std::string, RoomLog, StringHash, std::equal_to<>> logs_;
    Message scratch_{Deliver{}};  // reused: encoding a publish copies no strings into a new message
};

}  // namespace chat
