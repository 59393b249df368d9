// The sessions of one shard that have frames to write, written in one pass.
//
// Fan-out queues a frame for every member of a room; writing to each member's
// socket right there would make one system call per delivered frame. Instead
// a session with something new to send puts itself on its shard's flush list
// once, and a single posted handler writes them all after the current handler
// returns: everything a whole read's worth of fan-out queued goes out in one
// gather write per member, with no coroutine, timer or allocation per write.
// The same pass that Redis (clients_pending_write) and NATS (the read loop's
// pending-client flush) make, with one difference: the pass yields to the
// event loop every `chunk` sessions. A message that arrives while a long pass
// runs then reaches the members not yet written in this pass, instead of
// waiting for the whole pass to end and its own pass to come round, which
// halves the latency of a big room under load (docs/BENCHMARKS.md).
#pragma once

#include <chrono>
#include <deque>
#include <memory>
#include <utility>
#include <vector>

#include <asio/any_io_executor.hpp>
#include <asio/steady_timer.hpp>

#include "chat/server/metrics.hpp"

namespace chat {

class Flushable {
public:
    virtual ~Flushable() = default;
    // Writes what is queued, as far as the socket takes it without waiting.
    virtual void flush() = 0;
};

class FlushList {
public:
    // Sessions written between two turns of the event loop.
    static constexpr std::size_t chunk = 32;

    // `latency`, if given, gets for every pass the time from the first add
    // that made it due to its start: how long the oldest frame of the pass
    // waited for its write (one clock read per pass, none per session).
    // `early`: when the timer of the deferred sessions (add_at) fires, it
    // also takes those due less than this after now, so that sessions due
    // close together share one expiry and the timer is set at most about once
    // per `early`. Setting it is not free: each time is a timerfd_settime, in
    // a VM a trap to the hypervisor, and with one expiry per busy TLS session
    // it was a tenth of the server's time in a chatty room.
    explicit FlushList(asio::any_io_executor executor, Histogram* latency = nullptr,
                       std::chrono::steady_clock::duration early = {})
        : executor_(std::move(executor)), latency_(latency), early_(early) {}
    FlushList(const FlushList&) = delete;
    FlushList& operator=(const FlushList&) = delete;

    // On the shard's thread only. The caller adds itself once until flushed.
    void add(std::shared_ptr<Flushable> session);
    // The same, for the first pass at or after `when` (or up to `early`
    // before it), which is at most the shard's coalescing delay away:
    // deferred sessions wait in arrival order for one timer.
    void add_at(std::shared_ptr<Flushable> session, std::chrono::steady_clock::time_point when);


private:
    void run();
    void arm_timer();

    asio::any_io_executor executor_;
    asio::steady_timer timer_{executor_};
    std::deque<std::pair<std::chrono::steady_clock::time_point, std::shared_ptr<Flushable>>> later_;
    bool timer_armed_ = false;
    Histogram* latency_;
    std::chrono::steady_clock::duration early_;
    std::chrono::steady_clock::time_point pending_since_{};  // the first add into an empty pending_
    std::vector<std::shared_ptr<Flushable>> pending_;
    std::vector<std::shared_ptr<Flushable>> running_;  // the pass under way
    std::size_t next_ = 0;                              // running_[next_] is written next
    bool posted_ = false;                               // a run() is queued or running
};

}  // namespace chat
