#include "chat/broker.hpp"

#include <chrono>

namespace chat {

LocalBroker::LocalBroker(std::size_t history, std::uint64_t epoch_base)
    : history_limit_(history), next_epoch_(epoch_base) {
    if (next_epoch_ == 0) {
        // Milliseconds since the Unix epoch, shifted so that about a million rooms
        // can be made in one run before an epoch could meet a later run's.
        const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                            std::chrono::system_clock::now().time_since_epoch())
                            .count();
        next_epoch_ = static_cast<std::uint64_t>(ms) << 20;
    }
}

std::uint64_t LocalBroker::subscribe(std::string_view room, Subscriber& subscriber) {
    auto it = logs_.find(room);
    if (it == logs_.end()) {
        it = logs_.emplace(std::string(room), RoomLog{}).first;
        it->second.epoch = ++next_epoch_;
    }
    it->second.subscriber = &subscriber;
    return it->second.epoch;
}

void LocalBroker::unsubscribe(std::string_view room) {
    if (auto it = logs_.find(room); it != logs_.end()) logs_.erase(it);
}

void LocalBroker::publish(std::string_view room, std::string_view sender, std::string_view text,
                          std::uint64_t timestamp_ms) {
    auto it = logs_.find(room);
    if (it == logs_.end()) return;
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
        if (log.history.size() == history_limit_) log.history.pop_front();
        log.history.push_back(stored);
    }
    if (log.subscriber != nullptr) log.subscriber->on_message(stored);
}

Replay LocalBroker::replay(std::string_view room, const Join& join) const {
    Replay replay;
    auto it = logs_.find(room);
    if (it == logs_.end()) return replay;
    const RoomLog& log = it->second;
    replay.epoch = log.epoch;
    replay.head_seq = log.head_seq;

    std::uint64_t after = 0;
    if (join.resume) {
        if (join.after.epoch == log.epoch) {
            after = join.after.seq;
            const std::uint64_t first_held =
                log.history.empty() ? log.head_seq + 1 : log.history.front().position.seq;
            // This broker numbers densely, so the gap is exactly what it no longer holds.
            if (after + 1 < first_held) replay.missed = first_held - after - 1;
        } else {
            replay.epoch_changed = true;
        }
    }
    for (const StoredMessage& m : log.history) {
        if (m.position.seq <= after) continue;
        // The history flag lives in the header (byte 3, low bit of the flags),
        // so a replayed copy differs from the live frame by one bit.
        auto copy = std::make_shared<std::string>(*m.frame);
        (*copy)[3] = static_cast<char>(static_cast<unsigned char>((*copy)[3]) | flag_history);
        replay.frames.push_back(std::move(copy));
    }
    return replay;
}

}  // namespace chat
