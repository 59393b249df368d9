// The cluster broker: rooms that span several chat_server nodes through NATS JetStream.
//
// Every room is a subject of one stream (`PULSECHAT`, subjects pulsechat.room.<hex
// of the room name>), which keeps `--history` messages per room (MaxMsgsPerSubject)
// in file storage and numbers them: a room's positions are (the stream's creation
// time, the stream's sequence), the same on every node. A SAY is published to the
// stream (js_PublishMsgAsync with a Nats-Msg-Id, so a retry is stored once); the
// stream republishes what it stored on pulsechat.live.<hex>, with the previous
// sequence of the same room in Nats-Last-Sequence; every node that has members in
// a room subscribes to that subject and, from the links, tells a gap (a message
// lost while it was cut off) and fetches it with a direct get before going on, so
// each node delivers a room's messages exactly once and in the stream's order.
//
// Threads: libnats calls back on its own threads, and one worker thread here does
// the blocking requests (stream set-up, loading a room's history, filling gaps,
// resending). What they learn reaches the hub's thread through one bounded inbox
// (a producer waits when it is full; the hub is never blocked), drained in one
// posted handler. Publishing runs on the hub's thread and never blocks it: the
// number of unacknowledged publishes is bounded here, below libnats' own bound
// (at which it would stall), and a SAY over it is answered `unavailable`.
//
// docs/CLUSTER.md has the design, the subjects and the failure table.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <variant>
#include <vector>

#include "chat/common/units.hpp"
#include "chat/server/broker.hpp"
#include "chat/server/cluster_codec.hpp"
#include "chat/server/cluster_room_log.hpp"

namespace spdlog {
class logger;
}

// libnats' handles, as nats.h declares them (so this header needs no nats.h).
typedef struct __natsConnection natsConnection;
typedef struct __jsCtx jsCtx;

namespace chat {

struct ClusterConfig {
    std::vector<std::string> servers;  // nats://host:port, at least one
    std::string node_name;             // unique per node; make_node_name() when empty
    std::size_t history = 100;         // messages per room (MaxMsgsPerSubject)
    std::optional<Duration> history_age;  // MaxAge, when set
    int replicas = 1;                  // the stream's replicas (3 on a three-server NATS cluster)
    // How long the broker may be unreachable before SAYs are refused as
    // `unavailable`, and how long an unacknowledged publish may wait.
    Duration dead_after{3'000};
    // How long a message the broker did not acknowledge is sent again (with its
    // Nats-Msg-Id, so it is stored once) before its sender is told it was lost;
    // below JetStream's duplicate window (2 minutes).
    Duration publish_retry_for{60'000};
    std::size_t max_unacked = 16'384;  // publishes in flight; over it SAY is `unavailable`
    std::string stream = "PULSECHAT";
    std::string subject_prefix = "pulsechat";
};

// "<hostname>-<6 hex digits>": unique enough for a node that was given no name.
std::string make_node_name();
class ClusterBroker final : public Broker {
public:
    using HubPoster = std::function<void(std::function<void()>)>;

    // `post_to_hub` runs work on the hub's thread (shard 0).
    ClusterBroker(ClusterConfig config, HubPoster post_to_hub, std::shared_ptr<spdlog::logger> log);
    ~ClusterBroker() override;
    ClusterBroker(const ClusterBroker&) = delete;
    ClusterBroker& operator=(const ClusterBroker&) = delete;

    // Connects, creates or updates the stream and starts the worker. Throws
    // std::runtime_error with what went wrong (NATS unreachable, no JetStream).
    void start();
    // Waits (at most `grace`) for unacknowledged publishes, then disconnects.
    void stop(std::chrono::milliseconds grace = std::chrono::milliseconds(2'000));

    std::uint64_t subscribe(std::string_view room, Subscriber& subscriber) override;
    void unsubscribe(std::string_view room) override;
    PublishResult publish(std::string_view room, std::string_view sender, std::string_view text,
                          std::uint64_t timestamp_ms, std::uint64_t sender_id = 0) override;
    Replay replay(std::string_view room, const ReplayRequest& request) override;

    const ClusterConfig& config() const noexcept { return config_; }
    std::uint64_t epoch() const noexcept { return epoch_; }
    // Thread-safe (tests and the admin listener read them from other threads).
    bool available() const noexcept { return available_.load(std::memory_order_relaxed); }

    // --- for the cluster directory, which shares this node's NATS connection ---
    natsConnection* nats_connection() const noexcept;
    jsCtx* jetstream() const noexcept;
    // This node's id (name and incarnation), unique across restarts.
    const std::string& node_id() const noexcept;
    // Runs `job` on the worker thread (blocking requests are allowed there).
    void run_on_worker(std::function<void()> job);
    // From any thread but the hub's: runs `work` on the hub's thread, through
    // the bounded inbox (waits while it is full).
    void run_on_hub(std::function<void()> work);
    // Called on the worker thread about every 100 ms.
    void on_worker_tick(std::function<void()> hook);
    // Called on libnats' thread after every reconnection.
    void on_reconnected(std::function<void()> hook);
    bool link_up() const noexcept;
    // Called by stop() after the worker has stopped, before the connection closes.
    void on_stopping(std::function<void()> hook);

    // What the broker counted (hub thread), for /metrics and tests.
    struct Stats {
        std::uint64_t published = 0;     // accepted by publish()
        std::uint64_t acked = 0;         // acknowledged by JetStream
        std::uint64_t duplicates = 0;    // ...as a duplicate of a retry (stored once)
        std::uint64_t retried = 0;       // sent again after a timeout or an error
        std::uint64_t failed = 0;        // given up; the sender was told
        std::uint64_t refused = 0;       // publish() said unavailable
        std::uint64_t live = 0;          // messages from the live subjects
        std::uint64_t fetched = 0;       // messages fetched to load rooms or fill gaps
        std::uint64_t gaps = 0;          // gaps found (a live message that did not link up)
        std::uint64_t missed = 0;        // times a room's members were told messages never came
        std::uint64_t reconnects = 0;
        std::uint64_t epoch_changes = 0;
        std::size_t unacked = 0;         // publishes in flight now
        std::size_t rooms = 0;           // rooms this node follows
    };
    Stats stats() const;

private:
    // The counters behind Stats, written on the hub's thread, read from any.
    struct Counters {
        std::atomic<std::uint64_t> published{0}, acked{0}, duplicates{0}, failed{0}, refused{0}, live{0},
            fetched{0}, gaps{0}, missed{0}, reconnects{0}, epoch_changes{0};
        std::atomic<std::size_t> rooms{0};
    };
    static void bump(std::atomic<std::uint64_t>& counter, std::uint64_t by = 1) noexcept {
        counter.store(counter.load(std::memory_order_relaxed) + by, std::memory_order_relaxed);
    }
    struct Impl;
    struct RoomState;

    // --- inbox events, made on libnats' and the worker's threads ---
    struct LiveEvent {
        std::string room;
        ClusterRoomLog::Entry entry;
    };
    struct LoadedEvent {
        std::string room;
        std::uint64_t generation;
        std::vector<ClusterRoomLog::Entry> entries;
        bool ok;
        bool full;
    };
    struct FilledEvent {
        std::string room;
        std::uint64_t generation;
        std::vector<ClusterRoomLog::Entry> entries;
        bool ok;
        std::uint64_t upto;  // the message the gap needs (0: everything after the head)
    };
    struct LinkEvent {
        bool up;
    };
    struct EpochEvent {
        std::uint64_t epoch;
    };
    struct AvailabilityEvent {
        bool available;
    };
    struct AckEvent {
        std::uint64_t acked;
        std::uint64_t duplicates;
    };
    struct FailedEvent {
        std::uint64_t sender_id;
        std::string room;
        std::string reason;
    };
    struct HubWork {
        std::function<void()> work;
    };
    using Event = std::variant<LiveEvent, LoadedEvent, FilledEvent, LinkEvent, EpochEvent, AvailabilityEvent, AckEvent,
                               FailedEvent, HubWork>;

    // From any thread but the hub's: waits while the inbox is full.
    void push(Event event);
    void drain();  // hub thread
    void handle(LiveEvent& e);
    void handle(LoadedEvent& e);
    void handle(FilledEvent& e);
    void handle(LinkEvent& e);
    void handle(EpochEvent& e);
    void handle(AvailabilityEvent& e);
    void handle(AckEvent& e);
    void handle(FailedEvent& e);
    void handle(HubWork& e) { e.work(); }
    void advance(const std::string& name, RoomState& room);
    void retry_gaps();
    // How long a gap whose message the stream no longer holds waits for its live copy.
    std::uint64_t gap_give_up_ms() const noexcept;
    void request_load(const std::string& name, RoomState& room);

    ClusterConfig config_;
    HubPoster post_to_hub_;
    std::shared_ptr<spdlog::logger> log_;
    std::unique_ptr<Impl> impl_;

    // Hub thread only.
    std::unordered_map<std::string, std::unique_ptr<RoomState>> rooms_;
    std::uint64_t next_generation_ = 1;
    std::uint64_t epoch_ = 0;
    std::atomic<bool> available_{true};
    std::atomic<bool> gaps_waiting_{false};  // some room's fill came back short (retry_gaps)
    bool verified_ = true;  // false from a disconnect until the stream was checked again
    Counters counters_;

    // The inbox.
    std::mutex inbox_mutex_;
    std::condition_variable inbox_space_;
    std::deque<Event> inbox_;
    bool drain_posted_ = false;
    bool stopping_ = false;
    static constexpr std::size_t inbox_capacity = 16'384;
};

}  // namespace chat
