#include "chat/server/hub_gate.hpp"

#include <asio/experimental/as_tuple.hpp>
#include <asio/post.hpp>
#include <asio/use_awaitable.hpp>

namespace chat {

HubGate::HubGate(asio::any_io_executor shard, std::size_t limit)
    : shard_(shard), limit_(limit < 2 ? 2 : limit), wake_(shard) {
    wake_.expires_at(asio::steady_timer::time_point::max());
}

void HubGate::done() {
    // Exactly one done() takes the count from half + 1 to half, whatever the
    // interleaving with sent(); any reader that paused did so at the limit,
    // above that point, so it is woken after it began to wait.
    if (pending_.fetch_sub(1, std::memory_order_acq_rel) == limit_ / 2 + 1)
        asio::post(shard_, [this] { wake_.cancel(); });
}

asio::awaitable<void> HubGate::wait_until_open() {
    using asio::experimental::as_tuple;
    while (full()) {
        pauses_.fetch_add(1, std::memory_order_relaxed);
        co_await wake_.async_wait(as_tuple(asio::use_awaitable));
    }
}

}  // namespace chat
