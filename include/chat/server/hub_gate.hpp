// Backpressure from the hub to one shard (--threads > 1): a bound on the
// requests that shard's sessions have on their way to the hub.
//
// Without it a shard posts to the hub as fast as its clients send (with
// --rate 0 nothing else limits them) and the hub's queue grows without bound.
// The count is one atomic per request, not per delivery; readers pause while
// it is at the limit and resume once the hub has worked it down to half.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>

#include <asio/any_io_executor.hpp>
#include <asio/awaitable.hpp>
#include <asio/steady_timer.hpp>

namespace chat {

class HubGate {
public:
    // `shard` is the executor of the shard whose requests this gate counts.
    HubGate(asio::any_io_executor shard, std::size_t limit);

    // On the shard: one more request is posted to the hub.
    void sent() noexcept {
        const auto now = pending_.fetch_add(1, std::memory_order_relaxed) + 1;
        if (now > peak_.load(std::memory_order_relaxed)) peak_.store(now, std::memory_order_relaxed);
    }
    // On the hub: one request of this shard is done. The one that brings the
    // backlog down to half the limit wakes the shard's paused readers.
    void done();
    // On the shard: whether its readers should pause before reading more.
    bool full() const noexcept { return pending_.load(std::memory_order_relaxed) >= limit_; }
    // On the shard: returns once the backlog is below the limit again.
    asio::awaitable<void> wait_until_open();

    std::size_t pending() const noexcept { return pending_.load(std::memory_order_relaxed); }
    std::size_t limit() const noexcept { return limit_; }
    // The largest backlog seen, and how often a reader paused (tests, metrics).
    std::size_t peak() const noexcept { return peak_.load(std::memory_order_relaxed); }
    std::uint64_t pauses() const noexcept { return pauses_.load(std::memory_order_relaxed); }

private:
    asio::any_io_executor shard_;
    std::size_t limit_;
    std::atomic<std::size_t> pending_{0};
    std::atomic<std::size_t> peak_{0};
    std::atomic<std::uint64_t> pauses_{0};  // written on the shard only
    // Paused readers wait on it; a cancel() (on the shard) wakes them all.
    asio::steady_timer wake_;
};

}  // namespace chat
