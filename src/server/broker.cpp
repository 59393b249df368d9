#include "chat/server/broker.hpp"

#include <algorithm>
#include <chrono>

namespace chat {

LocalBroker::LocalBroker(std::size_t history, std::size_t history_memory, std::uint64_t epoch_base)
    : history_limit_(history), history_memory_(history_memory), next_epoch_(epoch_base) {
    if (next_epoch_ == 0) {
        // Milliseconds since the Unix epoch, shifted so that about a million rooms
        // can be made in one run before an epoch could meet a later run's.
        const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                            std::chrono::system_clock::now().time_since_epoch())
                            .count();
        next_epoch_ = static_cast<std::uint64_t>(ms) << 20;
    }
}

// A held message's share of memory: its frames and roughly what holds them
// (the deque slot, the shared_ptr control blocks and string headers).
std::size_t LocalBroker::cost(const StoredMessage& m) noexcept {
    constexpr std::size_t bookkeeping = sizeof(StoredMessage) + 2 * 48 + sizeof(Held);
    return bookkeeping + m.frame->size() + (m.replay_frame ? m.replay_frame->size() + 48 : 0);
}

std::uint64_t LocalBroker::subscribe(std::string_view room, Subscriber& subscriber) {
    auto it = logs_.find(room);
    if (it == logs_.end()) {
        it = logs_.emplace(std::string(room), RoomLog{}).first;
        it->second.id = next_log_id_++;
        it->second.epoch = ++next_epoch_;
        by_id_.emplace(it->second.id, &it->second);
    }
    it->second.subscriber = &subscriber;
    return it->second.epoch;
}

void LocalBroker::unsubscribe(std::string_view room) {
    auto it = logs_.find(room);
    if (it == logs_.end()) return;
    for (const StoredMessage& m : it->second.history) history_bytes_ -= cost(m);
    held_messages_ -= it->second.history.size();
    by_id_.erase(it->second.id);
    logs_.erase(it);
    // The order entries of this log are stale now; drop them all once nothing is held.
    if (held_messages_ == 0) order_.clear();
}

void LocalBroker::pop_oldest(RoomLog& log) {
    history_bytes_ -= cost(log.history.front());
    --held_messages_;
    log.history.pop_front();
}

PublishResult LocalBroker::publish(std::string_view room, std::string_view sender, std::string_view text,
                                   std::uint64_t timestamp_ms, std::uint64_t /*sender_id*/) {
    auto it = logs_.find(room);
    if (it == logs_.end()) return PublishResult::accepted;  // nobody to hear it: as if heard by nobody
    RoomLog& log = it->second;
    auto& deliver = std::get<Deliver>(scratch_);
    deliver.room.assign(room);
    deliver.sender.assign(sender);
    deliver.text.assign(text);
    deliver.timestamp_ms = timestamp_ms;
    deliver.position = Position{log.epoch, ++log.head_seq};
    deliver.history = false;
    auto frame = std::make_shared<std::string>();
    encode(scratch_, *frame);
    StoredMessage stored{deliver.position, std::move(frame)};
    if (history_limit_ > 0) {
        if (log.history.size() == history_limit_) pop_oldest(log);
        log.history.push_back(stored);
        history_bytes_ += cost(stored);
        ++held_messages_;
        order_.push_back(Held{log.id, stored.position.seq});
        enforce_memory_bound();
    }
    if (log.subscriber != nullptr) log.subscriber->on_message(stored);
    return PublishResult::accepted;
}

void LocalBroker::enforce_memory_bound() {
    while (history_bytes_ > history_memory_ && !order_.empty()) {
        const Held oldest = order_.front();
        order_.pop_front();
        auto log = by_id_.find(oldest.log_id);
        if (log == by_id_.end()) continue;  // the room is gone
        RoomLog& l = *log->second;
        if (l.history.empty() || l.history.front().position.seq != oldest.seq) continue;  // dropped by the cap
        pop_oldest(l);
        ++evicted_for_memory_;
    }
    // Entries of messages the per-room cap dropped pile up behind live ones:
    // squeeze them out once they outnumber the live ones.
    if (order_.size() > 2 * held_messages_ + 1024) {
        std::deque<Held> live;
        for (const Held& h : order_) {
            auto log = by_id_.find(h.log_id);
            if (log == by_id_.end()) continue;
            const auto& history = log->second->history;
            if (!history.empty() && h.seq >= history.front().position.seq) live.push_back(h);
        }
        order_.swap(live);
    }
}

Replay LocalBroker::replay(std::string_view room, const ReplayRequest& request) {
    Replay replay;
    auto it = logs_.find(room);
    if (it == logs_.end()) return replay;
    RoomLog& log = it->second;
    replay.epoch = log.epoch;
    replay.head_seq = log.head_seq;

    std::uint64_t after = 0;
    if (request.resume) {
        if (request.after.epoch == log.epoch) {
            // A resume point beyond the head is up to date (and cannot wrap below).
            after = std::min(request.after.seq, log.head_seq);
            const std::uint64_t first_held =
                log.history.empty() ? log.head_seq + 1 : log.history.front().position.seq;
            // This broker numbers densely, so the gap is exactly what it no longer holds.
            if (after + 1 < first_held) replay.missed = first_held - after - 1;
        } else {
            replay.epoch_changed = true;
        }
    }
    // Newest first, until the budget is spent: only what is kept is touched.
    std::size_t bytes = 0;
    std::size_t kept = 0;
    std::size_t eligible = 0;
    for (auto m = log.history.rbegin(); m != log.history.rend() && m->position.seq > after; ++m) {
        ++eligible;
        if (kept == eligible - 1) {
            bytes += m->frame->size();
            if (bytes <= request.byte_budget) ++kept;
        }
    }
    replay.missed += eligible - kept;
    replay.frames.reserve(kept);
    for (auto m = log.history.end() - static_cast<std::ptrdiff_t>(kept); m != log.history.end(); ++m) {
        if (!m->replay_frame) {
            // The history flag lives in the header (byte 3, low bit of the flags),
            // so a replayed copy differs from the live frame by one bit.
            auto copy = std::make_shared<std::string>(*m->frame);
            (*copy)[3] = static_cast<char>(static_cast<unsigned char>((*copy)[3]) | flag_history);
            history_bytes_ -= cost(*m);
            m->replay_frame = std::move(copy);
            history_bytes_ += cost(*m);
        }
        replay.frames.push_back(m->replay_frame);
    }
    enforce_memory_bound();
    return replay;
}

}  // namespace chat
