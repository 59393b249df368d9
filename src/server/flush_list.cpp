#include "chat/server/flush_list.hpp"

#include <algorithm>

#include <asio/post.hpp>

namespace chat {

void FlushList::add(std::shared_ptr<Flushable> session) {
    pending_.push_back(std::move(session));
    if (posted_) return;
    posted_ = true;
    asio::post(executor_, [this] { run(); });
}

void FlushList::run() {
    if (next_ == running_.size()) {
        // A new pass. Sessions that queue more while it runs (or that a flush
        // adds back) land in pending_ and get the next one.
        running_.clear();
        next_ = 0;
        running_.swap(pending_);
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
