#include "chat/server/cluster_room_log.hpp"

#include <iterator>

namespace chat {

void ClusterRoomLog::load(std::vector<Entry> entries, bool full) {
    dropped_possible_ = full;
    for (auto& entry : entries)
        if (entry.seq > head_) pending_.insert_or_assign(entry.seq, std::move(entry));
    if (!pending_.empty() && head_ == 0) {
        // The oldest loaded message links to whatever came before it: nothing,
        // or (when the history is full) messages dropped uncounted.
        pending_.begin()->second.last = full ? unknown_link : 0;
        loaded_oldest_ = pending_.begin()->first;
    }
}

void ClusterRoomLog::offer(Entry entry) {
    if (entry.seq <= head_) return;  // had it already (live and fetched both)
    auto [it, added] = pending_.try_emplace(entry.seq, std::move(entry));
    if (added) return;
    // Both copies came (live and fetched): a known link beats an unknown one.
    const std::uint64_t link = it->second.last;
    it->second = std::move(entry);
    if (it->second.last == unknown_link) it->second.last = link;
}

void ClusterRoomLog::skip_gap() {
    if (!pending_.empty()) pending_.begin()->second.last = unknown_link;
    dropped_possible_ = true;
}

void ClusterRoomLog::reset() {
    head_ = 0;
    dropped_possible_ = false;
    loaded_oldest_ = 0;
    log_.clear();
    pending_.clear();
}

void ClusterRoomLog::append(std::uint64_t epoch, Entry&& entry,
                            const std::function<void(const StoredMessage&)>& deliver) {
    auto& d = std::get<Deliver>(scratch_);
    d.room = room_;
    d.sender = std::move(entry.body.sender);
    d.text = std::move(entry.body.text);
    d.timestamp_ms = entry.body.timestamp_ms;
    d.position = Position{epoch, entry.seq};
    d.history = false;
    auto frame = std::make_shared<std::string>();
    encode(scratch_, *frame);
    head_ = entry.seq;
    if (history_limit_ > 0) {
        if (log_.size() >= history_limit_) {
            log_.pop_front();
            dropped_possible_ = true;
        }
        log_.push_back(Held{StoredMessage{d.position, frame}, entry.last});
    }
    if (deliver) deliver(StoredMessage{d.position, std::move(frame)});
}

std::optional<ClusterRoomLog::Gap> ClusterRoomLog::advance(
    std::uint64_t epoch, const std::function<void(const StoredMessage&)>& deliver,
    const std::function<void()>& missed) {
    while (!pending_.empty()) {
        auto it = pending_.begin();
        if (it->first <= head_) {
            pending_.erase(it);
            continue;
        }
        Entry& next = it->second;
        // It follows what is on the log when its link is the head (or older:
        // a message in between was deleted from the stream), or unknown (the
        // oldest message loaded).
        if (next.last != unknown_link && next.last > head_) return Gap{head_, next.last};
        Entry entry = std::move(next);
        pending_.erase(it);
        if (entry.last == unknown_link && entry.seq != loaded_oldest_ && missed) missed();
        append(epoch, std::move(entry), deliver);
    }
    return std::nullopt;
}

Replay ClusterRoomLog::replay(std::uint64_t epoch, const ReplayRequest& request) {
    Replay replay;
    replay.epoch = epoch;
    replay.head_seq = head_;
    std::uint64_t after = 0;
    if (request.resume) {
        if (request.after.epoch != epoch) {
            replay.epoch_changed = true;
        } else {
            after = std::min(request.after.seq, head_);
            if (after < head_) {
                // Whether every message after `after` is still on the log: the
                // oldest held one must link to `after` or earlier.
                const bool complete = !log_.empty() && (after >= log_.front().message.position.seq ||
                                                        (log_.front().last != unknown_link && log_.front().last <= after));
                if (!complete && (dropped_possible_ || log_.empty())) replay.missed = missed_unknown;
            }
        }
    }
    std::size_t bytes = 0, kept = 0, eligible = 0;
    for (auto m = log_.rbegin(); m != log_.rend() && m->message.position.seq > after; ++m) {
        ++eligible;
        // A held message after the resume point whose link is unknown follows
        // a gap that was skipped (skip_gap): what it missed cannot be counted.
        if (request.resume && !replay.epoch_changed && m->last == unknown_link && std::next(m) != log_.rend())
            replay.missed = missed_unknown;
        if (kept == eligible - 1) {
            bytes += m->message.frame->size();
            if (bytes <= request.byte_budget) ++kept;
        }
    }
    if (replay.missed != missed_unknown) replay.missed += eligible - kept;
    replay.frames.reserve(kept);
    for (auto m = log_.end() - static_cast<std::ptrdiff_t>(kept); m != log_.end(); ++m) {
        auto& stored = m->message;
        if (!stored.replay_frame) {
            auto copy = std::make_shared<std::string>(*stored.frame);
            (*copy)[3] = static_cast<char>(static_cast<unsigned char>((*copy)[3]) | flag_history);
            stored.replay_frame = std::move(copy);
        }
        replay.frames.push_back(stored.replay_frame);
    }
    return replay;
}

}  // namespace chat
