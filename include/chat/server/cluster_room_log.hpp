// One room's log on a cluster node, sans-io: the stream's messages put in the
// stream's order by their links, gaps found, history replayed. Tested without
// NATS (test_cluster's first cases) and fuzzed (fuzz/fuzz_cluster.cpp).
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "chat/proto/protocol.hpp"
#include "chat/server/broker.hpp"
#include "chat/server/cluster_codec.hpp"

namespace chat {

// A room's log as one node holds it while it has members there: the messages
// the stream keeps, in order, and the live ones that came out of order. Pure
// bookkeeping (no NATS), so its ordering rules are tested without a server.
class ClusterRoomLog {
public:
    static constexpr std::uint64_t unknown_link = ~std::uint64_t{0};

    struct Entry {
        std::uint64_t seq = 0;
        // The sequence of the room's message before this one (Nats-Last-Sequence),
        // or unknown_link when that is not known (the oldest message loaded).
        std::uint64_t last = 0;
        ClusterBody body;
    };
    // What advance() wants from the stream: the room's messages after `after` up to `upto`.
    struct Gap {
        std::uint64_t after = 0;
        std::uint64_t upto = 0;
    };

    ClusterRoomLog(std::string room, std::size_t history_limit)
        : room_(std::move(room)), history_limit_(history_limit) {}

    // Messages loaded from the stream (everything it holds of the room, oldest
    // first); `full`: the stream's per-room limit was reached, so older ones
    // may have been dropped.
    void load(std::vector<Entry> entries, bool full);
    // A message from the live subject, or fetched for a gap.
    void offer(Entry entry);
    // Moves every waiting message that links up onto the log, in order, calling
    // `deliver(stored)` for each; returns the gap that stops it, if any.
    // `missed()` comes before a message that follows others this node never
    // got (a skipped gap, or a fill from the head that found the head dropped
    // by the stream): the members who were here for them must be told.
    std::optional<Gap> advance(std::uint64_t epoch, const std::function<void(const StoredMessage&)>& deliver,
                               const std::function<void()>& missed = {});
    // The stream was recreated: everything here belonged to a history that is gone.
    void reset();
    // The gap before the oldest waiting message will never fill: deliver on.
    void skip_gap();

    Replay replay(std::uint64_t epoch, const ReplayRequest& request);
    std::uint64_t head() const noexcept { return head_; }
    std::size_t held() const noexcept { return log_.size(); }
    std::size_t waiting() const noexcept { return pending_.size(); }

private:
    struct Held {
        StoredMessage message;
        std::uint64_t last;  // the link of the message (Entry::last)
    };
    void append(std::uint64_t epoch, Entry&& entry, const std::function<void(const StoredMessage&)>& deliver);

    std::string room_;  // the room's name, for its DELIVER frames
    std::size_t history_limit_;
    std::uint64_t head_ = 0;  // seq of the newest message on the log; 0: none yet
    // Messages before the oldest held one may be gone, and not counted.
    bool dropped_possible_ = false;
    // The seq of the oldest message load() found, whose unknown link hides
    // nothing anyone here saw; 0: none.
    std::uint64_t loaded_oldest_ = 0;
    std::deque<Held> log_;
    std::map<std::uint64_t, Entry> pending_;  // by seq, ahead of head_
    Message scratch_{Deliver{}};
};

// How long a room waits for the live copy of the message a gap needs, when
// a fill came back without it (the stream already dropped it: at a high rate
// it is usually still on its way, out of order). The wait is per gap: a gap
// that closed by itself and a later one each get their own. Sans-io: the
// broker gives it the time.
class GapWait {
public:
    enum class Verdict { wait, skip };

    explicit GapWait(std::uint64_t give_up_ms) : give_up_ms_(give_up_ms) {}
    // A fill for the gap up to `upto` came back without that message.
    Verdict short_fill(std::uint64_t upto, std::uint64_t now_ms) noexcept {
        if (since_ms_ == 0 || upto_ != upto) {
            since_ms_ = now_ms == 0 ? 1 : now_ms;
            upto_ = upto;
        }
        if (now_ms - since_ms_ < give_up_ms_) return Verdict::wait;
        since_ms_ = 0;
        return Verdict::skip;
    }
    // The gap closed (the fill found the message, or the head is past it).
    void closed() noexcept { since_ms_ = 0; }
    bool waiting() const noexcept { return since_ms_ != 0; }

private:
    std::uint64_t give_up_ms_;
    std::uint64_t since_ms_ = 0;
    std::uint64_t upto_ = 0;
};

}  // namespace chat
