#include "chat/hub.hpp"

#include <algorithm>
#include <chrono>

#include <fmt/format.h>

namespace chat {

Hub::Hub(Broker& broker, ShardPoster& poster, std::size_t shard_count, HubLimits limits)
    : broker_(broker), poster_(poster), shard_count_(shard_count), limits_(limits), rng_(std::random_device{}()) {}

std::uint64_t Hub::now_ms() {
    return static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                          std::chrono::system_clock::now().time_since_epoch())
                                          .count());
}

std::string Hub::make_resume_token() {
    return fmt::format("{:016x}{:016x}", rng_(), rng_());
}

Hub::SessionRecord* Hub::find(std::uint64_t id) {
    auto it = sessions_.find(id);
    return it == sessions_.end() ? nullptr : &it->second;
}

const Room* Hub::find_room(std::string_view name) const {
    auto it = rooms_.find(name);
    return it == rooms_.end() ? nullptr : it->second.get();
}

void Hub::send(const SessionRecord& to, SharedFrame frame) {
    const std::size_t shard = to.participant->shard();
    if (shard == poster_.current_shard()) {
        to.participant->deliver(frame);
    } else {
        poster_.post(shard, [p = to.participant, frame = std::move(frame)] { p->deliver(frame); });
    }
}

void Hub::send_error(const SessionRecord& to, ErrorCode code, std::string reason) {
    send(to, Error{code, std::move(reason), false});
}

namespace {

// Lists are cut so that a frame fits the announced size bound; the room's
// full membership is still there, a client sees the first ones.
constexpr std::size_t list_budget_slack = 512;  // room name, counts and other fields

void fit_names(std::vector<std::string>& names, std::size_t budget) {
    std::size_t used = 0;
    std::size_t keep = 0;
    for (; keep < names.size() && keep < 0xFFFF; ++keep) {
        used += 2 + names[keep].size();
        if (used > budget) break;
    }
    names.resize(keep);
}

template <class F>
void on_shard(ShardPoster& poster, const std::shared_ptr<Participant>& p, F&& f) {
    if (p->shard() == poster.current_shard())
        f();
    else
        poster.post(p->shard(), std::forward<F>(f));
}
}  // namespace

void Hub::login(const std::shared_ptr<Participant>& participant, std::string nick,
                const std::string& resume_token) {
    if (auto it = nicks_.find(nick); it != nicks_.end()) {
        SessionRecord* holder = find(it->second);
        const bool may_take_over = holder != nullptr && !resume_token.empty() && holder->resume_token == resume_token;
        if (!may_take_over) {
            on_shard(poster_, participant, [participant, nick] {
                participant->close_with_error(ErrorCode::nick_taken,
                                              "nickname '" + nick + "' is in use by another session");
            });
            return;
        }
        // The same client reconnecting while the server still holds its old,
        // probably half-open, session: the old one goes, the new one gets the nick.
        auto old = holder->participant;
        on_shard(poster_, old, [old] {
            old->close_with_error(ErrorCode::replaced, "this nickname was resumed by a new connection");
        });
        disconnect(old->id(), PresenceEvent::disconnected, "replaced by a new connection");
    }
    SessionRecord record{participant, nick, make_resume_token(), {}};
    nicks_.emplace(nick, participant->id());
    auto token = record.resume_token;
    sessions_.emplace(participant->id(), std::move(record));
    on_shard(poster_, participant, [participant, nick = std::move(nick), token = std::move(token)] {
        participant->on_login(nick, token);
    });
}

void Hub::join(std::uint64_t id, const Join& join) {
    SessionRecord* record = find(id);
    if (record == nullptr) return;
    auto it = rooms_.find(join.room);
    if (it != rooms_.end() && it->second->contains(id)) {
        send_error(*record, ErrorCode::invalid_room, "already in room '" + join.room + "'");
        return;
    }
    if (record->rooms.size() >= limits_.max_rooms_per_session) {
        send_error(*record, ErrorCode::too_many_rooms,
                   fmt::format("at most {} rooms per session", limits_.max_rooms_per_session));
        return;
    }
    if (it == rooms_.end()) {
        auto room = std::make_unique<Room>(join.room, shard_count_, poster_);
        broker_.subscribe(join.room, *room);
        it = rooms_.emplace(join.room, std::move(room)).first;
    }
    Room& room = *it->second;
    Replay replay = broker_.replay(join.room, join);
    // Keep the newest messages that fit the replay budget; the older ones are
    // reported as missed, like messages the history no longer holds.
    std::size_t bytes = 0;
    std::size_t keep = 0;
    for (auto f = replay.frames.rbegin(); f != replay.frames.rend(); ++f, ++keep) {
        bytes += (*f)->size();
        if (bytes > limits_.replay_budget) break;
    }
    if (keep < replay.frames.size()) {
        const std::size_t cut = replay.frames.size() - keep;
        replay.frames.erase(replay.frames.begin(), replay.frames.begin() + static_cast<std::ptrdiff_t>(cut));
        replay.missed += cut;
    }

    Joined joined;
    joined.room = join.room;
    joined.epoch = replay.epoch;
    joined.head_seq = replay.head_seq;
    joined.missed = replay.missed;
    joined.history_count = static_cast<std::uint32_t>(replay.frames.size());
    joined.epoch_changed = replay.epoch_changed;
    joined.members = room.nicks();
    joined.members.push_back(record->nick);
    fit_names(joined.members, limits_.max_frame - list_budget_slack);

    // Presence first to the others, then the joiner's own view: both are
    // ordered before any message published after this join.
    room.broadcast(make_frame(Presence{join.room, record->nick, PresenceEvent::joined, {}}));
    room.add(record->participant, record->nick);
    record->rooms.push_back(join.room);
    send(*record, joined);
    for (auto& frame : replay.frames) send(*record, std::move(frame));
}

void Hub::remove_from_room(SessionRecord& record, std::string_view name, PresenceEvent event,
                           std::string_view detail) {
    auto it = rooms_.find(name);
    if (it == rooms_.end()) return;
    Room& room = *it->second;
    if (!room.remove(record.participant->id())) return;
    std::erase(record.rooms, name);
    if (room.empty()) {
        broker_.unsubscribe(name);
        rooms_.erase(it);
        return;
    }
    room.broadcast(make_frame(Presence{std::string(name), record.nick, event, std::string(detail)}));
}

void Hub::leave(std::uint64_t id, std::string_view room) {
    SessionRecord* record = find(id);
    if (record == nullptr) return;
    auto it = rooms_.find(room);
    if (it == rooms_.end() || !it->second->contains(id)) {
        send_error(*record, ErrorCode::not_in_room, fmt::format("not in room '{}'", room));
        return;
    }
    // The leaver sees its own PRESENCE(left) as the confirmation.
    send(*record, Presence{std::string(room), record->nick, PresenceEvent::left, {}});
    remove_from_room(*record, room, PresenceEvent::left, {});
}

void Hub::say(std::uint64_t id, std::string_view room, std::string_view text) {
    SessionRecord* record = find(id);
    if (record == nullptr) return;
    auto it = rooms_.find(room);
    if (it == rooms_.end() || !it->second->contains(id)) {
        send_error(*record, ErrorCode::not_in_room, fmt::format("not in room '{}'", room));
        return;
    }
    broker_.publish(room, record->nick, text, now_ms());
}

void Hub::whisper(std::uint64_t id, std::string_view to, std::string_view text) {
    SessionRecord* record = find(id);
    if (record == nullptr) return;
    auto it = nicks_.find(to);
    SessionRecord* target = it == nicks_.end() ? nullptr : find(it->second);
    if (target == nullptr) {
        send_error(*record, ErrorCode::no_such_nick, fmt::format("nobody is called '{}'", to));
        return;
    }
    const auto ts = now_ms();
    send(*target, Whisper{record->nick, ts, std::string(text), false});
    send(*record, Whisper{target->nick, ts, std::string(text), true});
}

void Hub::rename(std::uint64_t id, std::string nick) {
    SessionRecord* record = find(id);
    if (record == nullptr) return;
    if (nick == record->nick) {
        send(*record, Nick{record->nick, nick});
        return;
    }
    if (nicks_.contains(nick)) {
        send_error(*record, ErrorCode::nick_taken, "nickname '" + nick + "' is in use by another session");
        return;
    }
    const std::string old = record->nick;
    nicks_.erase(old);
    nicks_.emplace(nick, id);
    record->nick = nick;
    for (const auto& name : record->rooms) {
        auto it = rooms_.find(name);
        if (it == rooms_.end()) continue;
        it->second->rename(id, nick);
        it->second->broadcast(make_frame(Presence{name, old, PresenceEvent::renamed, nick}), id);
    }
    send(*record, Nick{old, nick});
    auto p = record->participant;
    on_shard(poster_, p, [p, nick] { p->on_renamed(nick); });
}

void Hub::list(std::uint64_t id) {
    SessionRecord* record = find(id);
    if (record == nullptr) return;
    Rooms rooms;
    rooms.rooms.reserve(rooms_.size());
    std::size_t used = 0;
    for (const auto& [name, room] : rooms_) {
        used += 2 + name.size() + 4;
        if (used > limits_.max_frame - list_budget_slack || rooms.rooms.size() == 0xFFFF) break;
        rooms.rooms.push_back(RoomInfo{name, static_cast<std::uint32_t>(room->size())});
    }
    send(*record, rooms);
}

void Hub::who(std::uint64_t id, std::string_view name) {
    SessionRecord* record = find(id);
    if (record == nullptr) return;
    auto it = rooms_.find(name);
    if (it == rooms_.end()) {
        send_error(*record, ErrorCode::invalid_room, fmt::format("no room called '{}'", name));
        return;
    }
    Members members{std::string(name), it->second->nicks()};
    fit_names(members.nicks, limits_.max_frame - list_budget_slack);
    send(*record, members);
}

void Hub::disconnect(std::uint64_t id, PresenceEvent event, std::string_view detail) {
    auto it = sessions_.find(id);
    if (it == sessions_.end()) return;
    SessionRecord record = std::move(it->second);
    sessions_.erase(it);
    if (auto n = nicks_.find(record.nick); n != nicks_.end() && n->second == id) nicks_.erase(n);
    const auto rooms = record.rooms;
    for (const auto& room : rooms) remove_from_room(record, room, event, detail);
}

}  // namespace chat
