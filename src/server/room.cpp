#include "chat/server/room.hpp"

#include <algorithm>

namespace chat {

Room::Room(const RoomName& name, std::size_t shard_count, ShardPoster& poster)
    : name_(name), poster_(poster), by_shard_(shard_count) {}

Room::Snapshot& Room::writable_shard(std::size_t shard) {
    auto& list = by_shard_[shard];
    // use_count() == 1: only this room holds the list, and only the hub's
    // thread could copy the pointer, so nobody can start reading it meanwhile.
    if (!list)
        list = std::make_shared<Snapshot>();
    else if (list.use_count() > 1)
        list = std::make_shared<Snapshot>(*list);
    return *list;
}

void Room::on_missed() {
    // The room's name is at most max_room_length bytes: the reason stays far
    // below str16's bound, so the encoding cannot fail.
    broadcast(make_frame(Error{ErrorCode::messages_missed,
                               "room '" + std::string(name_.view()) +
                                   "': messages sent while this server was cut off from the cluster are gone "
                                   "(how many is unknown); rejoin to see the history that is left",
                               false}));
}

bool Room::contains(std::uint64_t id) const {
    return std::any_of(members_.begin(), members_.end(), [id](const Member& m) { return m.id == id; });
}

bool Room::add(std::shared_ptr<Participant> participant, const NickName& nick) {
    const std::uint64_t id = participant->id();
    if (contains(id)) return false;
    writable_shard(participant->shard()).push_back(participant);
    members_.push_back(Member{id, std::move(participant), nick});
    return true;
}

bool Room::remove(std::uint64_t id) {
    auto it = std::find_if(members_.begin(), members_.end(), [id](const Member& m) { return m.id == id; });
    if (it == members_.end()) return false;
    const std::size_t shard = it->participant->shard();
    const Participant* gone = it->participant.get();
    members_.erase(it);
    Snapshot& list = writable_shard(shard);
    std::erase_if(list, [gone](const std::shared_ptr<Participant>& p) { return p.get() == gone; });
    if (list.empty()) by_shard_[shard].reset();
    return true;
}

void Room::rename(std::uint64_t id, const NickName& nick) {
    for (Member& m : members_)
        if (m.id == id) m.nick = nick;
}

std::vector<std::string> Room::nicks(std::size_t budget, std::size_t max_count) const {
    std::vector<std::string> out;
    std::size_t used = 0;
    for (const Member& m : members_) {
        if (out.size() >= max_count) break;
        used += 2 + m.nick.size();
        if (used > budget) break;
        out.emplace_back(m.nick.view());
    }
    return out;
}

void Room::broadcast(const SharedFrame& frame, std::uint64_t except) {
    const std::size_t here = poster_.current_shard();
    for (std::size_t shard = 0; shard < by_shard_.size(); ++shard) {
        // A local copy of the pointer keeps the list alive (and unchanged: a
        // change meanwhile copies it) even if a member's deliver() leads to a
        // membership change.
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
