#include "chat/server/flush_list.hpp"

#include <algorithm>

#include <asio/post.hpp>

namespace chat {

void FlushList::add(std::shared_ptr<Flushable> session) {
    if (pending_.empty() && latency_ != nullptr) pending_since_ = std::chrono::steady_clock::now();
    pending_.push_back(std::move(session));
    if (posted_) return;
    posted_ = true;
    asio::post(executor_, [this] { run(); });
}

void FlushList::add_at(std::shared_ptr<Flushable> session, std::chrono::steady_clock::time_point when) {
    later_.emplace_back(when, std::move(session));
    if (!timer_armed_) arm_timer();
}

void FlushList::arm_timer() {
    timer_armed_ = true;
    timer_.expires_at(later_.front().first);
    timer_.async_wait([this](const asio::error_code& ec) {
        timer_armed_ = false;
        if (ec) return;  // the shard is going away
        const auto now = std::chrono::steady_clock::now();
        bool moved = false;
        while (!later_.empty() && later_.front().first <= now + early_) {
            if (pending_.empty()) pending_since_ = now;
            pending_.push_back(std::move(later_.front().second));
            later_.pop_front();
            moved = true;
        }
        if (moved && !posted_) {
            posted_ = true;
            run();
        }
        if (!later_.empty() && !timer_armed_) arm_timer();
    });
}

void FlushList::run() {
    if (next_ == running_.size()) {
        // A new pass. Sessions that queue more while it runs (or that a flush
        // adds back) land in pending_ and get the next one.
        running_.clear();
        next_ = 0;
        running_.swap(pending_);
        if (latency_ != nullptr && !running_.empty())
            latency_->observe(std::chrono::duration<double>(std::chrono::steady_clock::now() - pending_since_).count());
    }
    const std::size_t end = std::min(running_.size(), next_ + chunk);
    while (next_ < end) {
        auto session = std::move(running_[next_++]);
        session->flush();
    }
    if (next_ < running_.size() || !pending_.empty()) {
        asio::post(executor_, [this] { run(); });  // after whatever became ready meanwhile
    } else {
        posted_ = false;
    }
}

}  // namespace chat
