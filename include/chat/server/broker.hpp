// Where rooms get their sequence numbers, history and fan-out: one small interface.
//
// LocalBroker keeps everything in this process. A cluster broker (NATS JetStream)
// can implement the same interface: publish() goes out to the cluster and the
// message comes back through the subscriber, possibly later and with gaps in
// the sequence numbers; clients only assume that they increase.
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "chat/server/participant.hpp"
#include "chat/proto/protocol.hpp"

namespace chat {

// One message as the broker holds it: its position and its DELIVER frame.
struct StoredMessage {
    Position position;
    SharedFrame frame;  // DELIVER without the history flag, encoded once
    // The same frame with the history flag, made by the first JOIN that
    // replays this message and shared by every later one.
    SharedFrame replay_frame{};
};

// What a JOIN asks of a room's history.
struct ReplayRequest {
    bool resume = false;  // when true, `after` is the last position the client saw
    Position after;
    // The replay is cut, oldest first, to fit these bytes; what was cut counts as missed.
    std::size_t byte_budget = static_cast<std::size_t>(-1);
};

// What a joining client is sent from a room's history.
struct Replay {
    std::uint64_t epoch = 0;
    std::uint64_t head_seq = 0;
    std::uint64_t missed = 0;
    bool epoch_changed = false;
    std::vector<SharedFrame> frames;  // DELIVER frames with the history flag set, oldest first
};

// What became of a publish at once (a cluster broker may still fail it later:
// Broker::Listener::on_publish_failed).
enum class PublishResult {
    accepted,     // on its way into the room's log
    unavailable,  // the broker cannot take messages now (a cluster broker cut off from NATS)
};

class Broker {
public:
    // Receives every message published to a room, in the room's order.
    class Subscriber {
    public:
        virtual ~Subscriber() = default;
        virtual void on_message(const StoredMessage& message) = 0;
        // The room's log, which subscribe() could not open at once, is open:
        // replay() now answers for it. Called on the hub's thread.
        virtual void on_ready() {}
        // Messages of the room never reached this server and are gone from
        // the stream (a clustered server cut off longer than the history
        // lasts): whoever is here now missed them. Called on the hub's thread,
        // before the first message after them.
        virtual void on_missed() {}
    };
    // What the hub hears from the broker besides messages, on the hub's thread.
    class Listener {
    public:
        virtual ~Listener() = default;
        // A message publish() accepted could not be stored (the cluster stayed
        // unreachable): its sender (`sender_id`) is told, nothing is lost silently.
        virtual void on_publish_failed(std::uint64_t sender_id, std::string_view room, std::string_view reason) = 0;
    };

    virtual ~Broker() = default;

    void set_listener(Listener* listener) noexcept { listener_ = listener; }

    // Starts delivering a room's messages to `subscriber`, opening the room's log
    // (in a new epoch) if it has none. Returns the room's epoch, or 0 when the
    // log is still being opened (a cluster broker loads it): the subscriber's
    // on_ready() follows, and replay() must not be asked before.
    virtual std::uint64_t subscribe(std::string_view room, Subscriber& subscriber) = 0;
    // The room emptied: stop delivering and forget its log.
    virtual void unsubscribe(std::string_view room) = 0;
    // Appends a message; the subscriber gets it with its assigned position.
    // `sender_id` is the sending session, for on_publish_failed().
    virtual PublishResult publish(std::string_view room, std::string_view sender, std::string_view text,
                                  std::uint64_t timestamp_ms, std::uint64_t sender_id = 0) = 0;
    // History for a JOIN: everything held, or, when `request.resume`, what
    // follows `request.after`; within the request's byte budget.
    virtual Replay replay(std::string_view room, const ReplayRequest& request) = 0;

protected:
    Listener* listener_ = nullptr;
};

// The in-memory broker: per-room logs capped at `history` messages, and all of
// them together at `history_memory` bytes (the oldest message of the server
// goes first; a later resume counts it as missed).
class LocalBroker final : public Broker {
public:
    static constexpr std::size_t default_history_memory = 64 * 1024 * 1024;

    // `epoch_base` makes epochs unique across restarts (default: the clock).
    explicit LocalBroker(std::size_t history, std::size_t history_memory = default_history_memory,
                         std::uint64_t epoch_base = 0);

    std::uint64_t subscribe(std::string_view room, Subscriber& subscriber) override;
    void unsubscribe(std::string_view room) override;
    PublishResult publish(std::string_view room, std::string_view sender, std::string_view text,
                          std::uint64_t timestamp_ms, std::uint64_t sender_id = 0) override;
    Replay replay(std::string_view room, const ReplayRequest& request) override;

    // What the history holds now (frames and their bookkeeping), for tests and metrics.
    std::size_t history_bytes() const noexcept { return history_bytes_; }
    std::size_t history_messages() const noexcept { return held_messages_; }
    // Messages dropped to keep within `history_memory` so far.
    std::uint64_t evicted_for_memory() const noexcept { return evicted_for_memory_; }
    std::size_t log_count() const noexcept { return logs_.size(); }

private:
    struct RoomLog {
        std::uint64_t id = 0;  // unique per log, never reused
        std::uint64_t epoch = 0;
        std::uint64_t head_seq = 0;
        std::deque<StoredMessage> history;
        Subscriber* subscriber = nullptr;
    };
    struct StringHash {
        using is_transparent = void;
        std::size_t operator()(std::string_view s) const noexcept { return std::hash<std::string_view>{}(s); }
    };
    // One held message in server-wide publish order, for the memory bound.
    struct Held {
        std::uint64_t log_id;
        std::uint64_t seq;
    };

    static std::size_t cost(const StoredMessage& m) noexcept;
    void pop_oldest(RoomLog& log);
    void enforce_memory_bound();

    std::size_t history_limit_;
    std::size_t history_memory_;
    std::uint64_t next_epoch_;
    std::uint64_t next_log_id_ = 1;
    std::unordered_map<std::string, RoomLog, StringHash, std::equal_to<>> logs_;
    std::unordered_map<std::uint64_t, RoomLog*> by_id_;
    std::deque<Held> order_;  // may hold entries of messages gone already: skipped
    std::size_t history_bytes_ = 0;
    std::size_t held_messages_ = 0;
    std::uint64_t evicted_for_memory_ = 0;
    Message scratch_{Deliver{}};  // reused: encoding a publish copies no strings into a new message
};

}  // namespace chat
