#include "chat/room.hpp"

#include <algorithm>

namespace chat {

Room::Room(std::string name, std::size_t shard_count, ShardPoster& poster)
    : name_(std::move(name)), poster_(poster), by_shard_(shard_count) {}

bool Room::add(std::shared_ptr<Participant> participant, std::string nick) {
    if (!ids_.insert(participant->id()).second) return false;
    const std::size_t shard = participant->shard();
    members_.push_back(Member{std::move(participant), std::move(nick)});
    rebuild_shard(shard);
    return true;
}

bool Room::remove(std::uint64_t id) {
    if (ids_.erase(id) == 0) return false;
    auto it = std::find_if(members_.begin(), members_.end(),
                           [id](const Member& m) { return m.participant->id() == id; });
    const std::size_t shard = it->participant->shard();
    members_.erase(it);
    rebuild_shard(shard);
    return true;
}

void Room::rename(std::uint64_t id, const std::string& nick) {
    for (Member& m : members_)
        if (m.participant->id() == id) m.nick = nick;
}

std::vector<std::string> Room::nicks() const {
    std::vector<std::string> out;
    out.reserve(members_.size());
    for (const Member& m : members_) out.push_back(m.nick);
    return out;
}

void Room::rebuild_shard(std::size_t shard) {
    auto snapshot = std::make_shared<Snapshot>();
    for (const Member& m : members_)
        if (m.participant->shard() == shard) snapshot->push_back(m.participant);
    by_shard_[shard] = snapshot->empty() ? nullptr : std::move(snapshot);
}

void Room::broadcast(const SharedFrame& frame, std::uint64_t except) {
    const std::size_t here = poster_.current_shard();
    for (std::size_t shard = 0; shard < by_shard_.size(); ++shard) {
        // A local copy of the pointer keeps the list alive even if a member's
        // deliver() leads to a membership change.
        std::shared_ptr<const Snapshot> members = by_shard_[shard];
        if (!members) continue;
        if (shard == here) {
            for (const auto& p : *members)
                if (p->id() != except) p->deliver(frame);
        } else {
            poster_.post(shard, [members = std::move(members), frame, except] {
                for (const auto& p : *members)
                    if (p->id() != except) p->deliver(frame);
            });
        }
    }
}

}  // namespace chat
