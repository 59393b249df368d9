#include "chat/server/hub.hpp"

#include <sys/random.h>

#include <algorithm>
#include <array>
#include <chrono>

#include <fmt/format.h>

#include "pulsechat_config.h"
#if PULSECHAT_HAVE_OPENSSL
#include <openssl/crypto.h>
#include <openssl/rand.h>
#endif

namespace chat {

std::string make_resume_token() noexcept {
    std::array<unsigned char, 24> bytes{};
    bool ok = false;
#if PULSECHAT_HAVE_OPENSSL
    ok = RAND_bytes(bytes.data(), static_cast<int>(bytes.size())) == 1;
#endif
    if (!ok) ok = ::getrandom(bytes.data(), bytes.size(), 0) == static_cast<ssize_t>(bytes.size());
    if (!ok) return {};
    static constexpr char hex[] = "0123456789abcdef";
    std::string token(2 * bytes.size(), '0');
    for (std::size_t i = 0; i < bytes.size(); ++i) {
        token[2 * i] = hex[bytes[i] >> 4];
        token[2 * i + 1] = hex[bytes[i] & 0xF];
    }
    return token;
}

namespace {

// Whether a presented resume token is the one a session holds, in time that
// does not depend on where they differ.
bool same_token(std::string_view held, std::string_view presented) noexcept {
    if (held.empty() || held.size() != presented.size()) return false;
#if PULSECHAT_HAVE_OPENSSL
    return CRYPTO_memcmp(held.data(), presented.data(), held.size()) == 0;
#else
    unsigned char diff = 0;
    for (std::size_t i = 0; i < held.size(); ++i)
        diff |= static_cast<unsigned char>(held[i] ^ presented[i]);
    return diff == 0;
#endif
}

// Requests one session may send behind a JOIN that waits for its room.
constexpr std::size_t max_held_requests = 1024;

// Room name, counts and the other fields of a list frame besides the list.
constexpr std::size_t list_budget_slack = 512;

template <class F>
void on_shard(ShardPoster& poster, const std::shared_ptr<Participant>& p, F&& f) {
    if (p->shard() == poster.current_shard())
        f();
    else
        poster.post(p->shard(), std::forward<F>(f));
}
}  // namespace

Hub::Hub(Broker& broker, ShardPoster& poster, std::size_t shard_count, HubLimits limits)
    : broker_(broker), poster_(poster), shard_count_(shard_count), limits_(limits) {
    broker_.set_listener(this);
}

Hub::~Hub() { broker_.set_listener(nullptr); }

void Hub::on_publish_failed(std::uint64_t sender_id, std::string_view room, std::string_view reason) {
    ++stats_.unavailable;
    if (SessionRecord* record = find(sender_id))
        send_error(*record, ErrorCode::unavailable,
                   fmt::format("a message to '{}' was not stored: {}", log_safe(room), log_safe(reason)));
}

std::uint64_t Hub::now_ms() {
    return static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                          std::chrono::system_clock::now().time_since_epoch())
                                          .count());
}

Hub::SessionRecord* Hub::find(std::uint64_t id) {
    auto it = sessions_.find(id);
    return it == sessions_.end() ? nullptr : &it->second;
}

const Room* Hub::find_room(std::string_view name) const {
    auto it = rooms_.find(name);
    return it == rooms_.end() ? nullptr : it->second.get();
}

std::optional<std::uint64_t> Hub::holder_of(std::string_view nick) const {
    auto it = nicks_.find(nick);
    if (it == nicks_.end()) return std::nullopt;
    return it->second;
}

void Hub::send(const SessionRecord& to, SharedFrame frame) {
    const std::size_t shard = to.participant->shard();
    if (shard == poster_.current_shard()) {
        to.participant->deliver(frame);
    } else {
        poster_.post(shard, [p = to.participant, frame = std::move(frame)] { p->deliver(frame); });
    }
}

void Hub::send_error(const SessionRecord& to, ErrorCode code, std::string_view reason) {
    send(to, make_error(code, reason, false));
}

void Hub::login(const std::shared_ptr<Participant>& participant, const NickName& nick,
                std::string_view resume_token) {
    if (auto it = nicks_.find(nick.view()); it != nicks_.end()) {
        SessionRecord* holder = find(it->second);
        const bool may_take_over = holder != nullptr && same_token(holder->resume_token.view(), resume_token);
        if (!may_take_over) {
            on_shard(poster_, participant, [participant, nick] {
                participant->close_with_error(ErrorCode::nick_taken,
                                              fmt::format("nickname '{}' is in use by another session", nick.view()));
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
    } else if (claiming_.contains(nick.view())) {
        // Another session of this node is claiming it right now.
        on_shard(poster_, participant, [participant, nick] {
            participant->close_with_error(ErrorCode::nick_taken,
                                          fmt::format("nickname '{}' is in use by another session", nick.view()));
        });
        return;
    }
    std::string token = make_resume_token();
    if (directory_ != nullptr) {
        // Unique across the cluster: the directory's claim decides, and may
        // take the nick over from a session on another node that `resume_token` resumes.
        const std::uint64_t claim = next_claim_++;
        claims_.emplace(claim, PendingClaim{participant, nick, token, false});
        claim_of_[participant->id()] = claim;
        claiming_.insert(nick.str());
        directory_->claim(claim, nick, token, resume_token);
        return;
    }
    complete_login(participant, nick, std::move(token));
}

void Hub::complete_login(const std::shared_ptr<Participant>& participant, const NickName& nick, std::string token) {
    SessionRecord record{participant, nick, {}, {}, 0, {}};
    record.resume_token.assign(token);
    nicks_.emplace(nick.str(), participant->id());
    sessions_.emplace(participant->id(), std::move(record));
    announce(PeerEvent::Kind::online, nick);
    on_shard(poster_, participant, [participant, nick, token = std::move(token)] {
        participant->on_login(nick.str(), token);
    });
}

void Hub::set_directory(Directory* directory) {
    directory_ = directory;
    if (directory_ != nullptr) directory_->set_listener(this);
}

void Hub::announce(PeerEvent::Kind kind, const NickName& nick, std::string_view room, PresenceEvent presence,
                   std::string_view detail) {
    if (directory_ == nullptr) return;
    PeerEvent e;
    e.kind = kind;
    e.nick = nick.str();
    e.room.assign(room);
    e.presence = presence;
    e.detail.assign(detail);
    directory_->announce(std::move(e));
}

PeerEvent Hub::state_event() const {
    PeerEvent e;
    e.kind = PeerEvent::Kind::state;
    for (const auto& [id, record] : sessions_) {
        e.nicks.push_back(record.nick.str());
        for (const Room* room : record.rooms) e.members.emplace_back(room->name().str(), record.nick.str());
    }
    return e;
}

std::size_t Hub::population(const Room& room) const {
    return room.size() + (directory_ != nullptr ? view_.member_count(room.name().view()) : 0);
}

void Hub::on_nick_claimed(std::uint64_t claim, Directory::Claim outcome, std::string_view previous_node) {
    auto it = claims_.find(claim);
    if (it == claims_.end()) return;
    PendingClaim c = std::move(it->second);
    claims_.erase(it);
    claiming_.erase(c.nick.str());
    const bool got_it = outcome == Directory::Claim::granted || outcome == Directory::Claim::resumed;
    if (!c.participant) {  // the session went while its claim was on the way
        if (got_it) directory_->release(c.nick, c.token);
        return;
    }
    const std::uint64_t id = c.participant->id();
    claim_of_.erase(id);
    if (got_it && outcome == Directory::Claim::resumed && !previous_node.empty()) {
        PeerEvent replace;
        replace.kind = PeerEvent::Kind::replace;
        replace.nick = c.nick.str();
        directory_->send_to(std::string(previous_node), std::move(replace));
    }
    if (c.rename) {
        SessionRecord* record = find(id);
        if (record == nullptr) {
            if (got_it) directory_->release(c.nick, c.token);
            return;
        }
        --record->waiting;
        if (got_it)
            complete_rename(*record, c.nick);
        else if (outcome == Directory::Claim::unavailable)
            send_error(*record, ErrorCode::unavailable,
                       "the cluster cannot confirm the nickname now; try again later");
        else
            send_error(*record, ErrorCode::nick_taken,
                       fmt::format("nickname '{}' is in use by another session", c.nick.view()));
        release_held(id);
        return;
    }
    if (outcome == Directory::Claim::unavailable) {
        auto p = c.participant;
        on_shard(poster_, p, [p] {
            p->close_with_error(ErrorCode::unavailable, "the cluster cannot confirm the nickname now; try again later");
        });
        return;
    }
    if (!got_it) {
        auto p = c.participant;
        const NickName nick = c.nick;
        on_shard(poster_, p, [p, nick] {
            p->close_with_error(ErrorCode::nick_taken,
                                fmt::format("nickname '{}' is in use by another session", nick.view()));
        });
        return;
    }
    if (nicks_.contains(c.nick.view())) {  // cannot happen (claiming_ guards it); never two holders
        directory_->release(c.nick, c.token);
        auto p = c.participant;
        on_shard(poster_, p, [p] { p->close_with_error(ErrorCode::nick_taken, "nickname is in use"); });
        return;
    }
    complete_login(c.participant, c.nick, std::move(c.token));
}

void Hub::apply_changes(const std::vector<ClusterView::Change>& changes) {
    for (const auto& change : changes) {
        auto it = rooms_.find(change.room);
        if (it == rooms_.end() || opening_.contains(it->second.get())) continue;  // no members here
        Room& room = *it->second;
        // The room's size as it was with the member in (a leave) or without (a join).
        const std::size_t size = population(room) + (change.event == PresenceEvent::joined ? 0 : 1);
        if (quiet(size)) continue;
        auto name = RoomName::parse(change.room);
        auto nick = NickName::parse(change.nick);
        if (!name || !nick) continue;
        room.broadcast(make_frame(make_presence(*name, *nick, change.event, change.detail)));
    }
}

void Hub::on_peer_event(const PeerEvent& event) {
    if (directory_ == nullptr || event.node == directory_->node()) return;
    using Kind = PeerEvent::Kind;
    if (event.kind == Kind::whisper) {
        // To a nick held here: from `detail`.
        auto it = nicks_.find(event.nick);
        if (SessionRecord* target = it == nicks_.end() ? nullptr : find(it->second))
            send(*target, Whisper{event.detail, event.timestamp_ms, event.text, false});
        view_.apply(event, std::chrono::steady_clock::now());
        return;
    }
    if (event.kind == Kind::replace) {
        view_.apply(event, std::chrono::steady_clock::now());
        auto it = nicks_.find(event.nick);
        SessionRecord* holder = it == nicks_.end() ? nullptr : find(it->second);
        if (holder == nullptr) return;
        auto old = holder->participant;
        on_shard(poster_, old, [old] {
            old->close_with_error(ErrorCode::replaced, "this nickname was resumed by a new connection");
        });
        // The nick is the other node's now: this session's release must not free it (its
        // token no longer matches the claim), and its rooms hear it went.
        disconnect(old->id(), PresenceEvent::disconnected, "replaced by a new connection");
        return;
    }
    if (event.kind == Kind::hello) {
        view_.apply(event, std::chrono::steady_clock::now());
        directory_->announce(state_event());  // every node refreshes its view of this one
        return;
    }
    apply_changes(view_.apply(event, std::chrono::steady_clock::now()));
    for (const auto& node : view_.take_needs_state()) {
        PeerEvent hello;
        hello.kind = Kind::hello;
        directory_->send_to(node, std::move(hello));
    }
}

void Hub::on_directory_reconnected() {
    if (directory_ == nullptr) return;
    PeerEvent hello;
    hello.kind = PeerEvent::Kind::hello;
    directory_->announce(std::move(hello));  // every node answers with its state
    directory_->announce(state_event());     // and refreshes its view of this one
}

void Hub::on_directory_tick(std::chrono::steady_clock::time_point now) {
    // Only a node that hears itself can tell that silence means death.
    if (directory_ == nullptr || !directory_->connected()) return;
    for (const auto& node : view_.silent_since(now - limits_.peer_dead_after))
        apply_changes(view_.drop_node(node, PresenceEvent::timed_out, "its node stopped answering"));
}

void Hub::handle(std::uint64_t id, const Request& request) {
    SessionRecord* record = find(id);
    if (record == nullptr) return;
    if (record->waiting > 0) {
        // Behind a JOIN whose room is still opening (a few milliseconds of a
        // cluster broker's loading); the session's rate limit keeps this short.
        if (record->held.size() >= max_held_requests) {
            auto p = record->participant;
            on_shard(poster_, p, [p] {
                p->close_with_error(ErrorCode::rate_limited, "too many requests while a JOIN waits for its room");
            });
            disconnect(id, PresenceEvent::disconnected, "too many requests");
            return;
        }
        record->held.push_back(request);
        return;
    }
    std::visit(
        [this, record](const auto& r) {
            using R = std::decay_t<decltype(r)>;
            if constexpr (std::is_same_v<R, JoinRequest>)
                join(*record, r);
            else if constexpr (std::is_same_v<R, LeaveRequest>)
                leave(*record, r.room);
            else if constexpr (std::is_same_v<R, SayRequest>)
                say(*record, r.room, r.text);
            else if constexpr (std::is_same_v<R, WhisperRequest>)
                whisper(*record, r.to, r.text);
            else if constexpr (std::is_same_v<R, RenameRequest>)
                rename(*record, r.nick);
            else if constexpr (std::is_same_v<R, ListRequest>)
                list(*record);
            else
                who(*record, r.room);
        },
        request);
}

std::size_t Hub::member_count() const noexcept {
    std::size_t members = 0;
    for (const auto& [name, room] : rooms_) members += room->size();
    return members;
}

void Hub::join(SessionRecord& record, const JoinRequest& join) {
    auto it = rooms_.find(join.room.view());
    if (it != rooms_.end() && is_member(record, it->second.get())) {
        send_error(record, ErrorCode::invalid_room, fmt::format("already in room '{}'", join.room.view()));
        return;
    }
    if (record.rooms.size() >= limits_.max_rooms_per_session) {
        send_error(record, ErrorCode::too_many_rooms,
                   fmt::format("at most {} rooms per session", limits_.max_rooms_per_session));
        return;
    }
    if (it == rooms_.end()) {
        auto room = std::make_unique<Room>(join.room, shard_count_, poster_);
        room->set_ready_handler([this](Room& r) { room_ready(r); });
        Room* raw = room.get();
        it = rooms_.emplace(join.room.str(), std::move(room)).first;
        if (broker_.subscribe(join.room.view(), *raw) == 0) opening_.emplace(raw, OpeningRoom{});
    }
    Room& room = *it->second;
    if (auto opening = opening_.find(&room); opening != opening_.end()) {
        // The broker is still loading the room's log: this JOIN (and every
        // later request of the session) waits for room_ready().
        opening->second.joins.emplace_back(record.participant->id(), join);
        ++record.waiting;
        return;
    }
    // The newest messages that fit the replay budget; the older ones are
    // reported as missed, like messages the history no longer holds.
    Replay replay = broker_.replay(join.room.view(), ReplayRequest{join.resume, join.after, limits_.replay_budget});

    const bool quiet_room = quiet(population(room) + 1);
    Joined joined;
    joined.room = join.room.str();
    joined.epoch = replay.epoch;
    joined.head_seq = replay.head_seq;
    joined.missed = replay.missed;
    joined.history_count = static_cast<std::uint32_t>(replay.frames.size());
    joined.epoch_changed = replay.epoch_changed;
    joined.quiet = quiet_room;
    if (join.resume) {
        if (replay.epoch_changed)
            ++stats_.resumes_epoch;
        else if (replay.missed > 0)
            ++stats_.resumes_gap;
        else
            ++stats_.resumes_full;
    }
    // Join order, the joiner last; its place is kept when the list is cut.
    // A quiet room lists only the joiner (members ask with WHO), which keeps
    // a join O(1) in the room's size.
    if (!quiet_room) {
        const std::size_t budget = limits_.max_frame - list_budget_slack - (2 + record.nick.size());
        joined.members = room.nicks(budget, 0xFFFF - 1);
        if (directory_ != nullptr) {
            // Then the other nodes' members, within what is left of the budget.
            std::size_t used = 0;
            for (const auto& n : joined.members) used += 2 + n.size();
            for (auto& n : view_.members_of(join.room.view())) {
                used += 2 + n.size();
                if (used > budget || joined.members.size() >= 0xFFFF - 1) break;
                joined.members.push_back(std::move(n));
            }
        }
    }
    joined.members.emplace_back(record.nick.view());

    // Presence first to the others, then the joiner's own view: both are
    // ordered before any message published after this join.
    if (!quiet_room) room.broadcast(make_frame(make_presence(join.room, record.nick, PresenceEvent::joined)));
    room.add(record.participant, record.nick);
    record.rooms.push_back(&room);
    announce(PeerEvent::Kind::join, record.nick, join.room.view());
    send(record, joined);
    for (auto& frame : replay.frames) send(record, std::move(frame));
}

void Hub::room_ready(Room& room) {
    auto opening = opening_.find(&room);
    if (opening == opening_.end()) return;
    const auto joins = std::move(opening->second.joins);
    opening_.erase(opening);
    std::vector<std::uint64_t> waited;
    for (const auto& [id, request] : joins) {
        SessionRecord* record = find(id);
        if (record == nullptr) continue;  // gone while it waited
        --record->waiting;
        join(*record, request);
        waited.push_back(id);
    }
    drop_if_unused(room);  // every joiner may have gone
    for (std::uint64_t id : waited) release_held(id);
}

void Hub::release_held(std::uint64_t id) {
    // Requests that came behind a waiting JOIN, in order, until one of them
    // waits again (a JOIN of another room that is opening).
    for (SessionRecord* record = find(id); record != nullptr && record->waiting == 0 && !record->held.empty();
         record = find(id)) {
        const Request request = std::move(record->held.front());
        record->held.pop_front();
        handle(id, request);
    }
}

void Hub::drop_if_unused(Room& room) {
    if (!room.empty() || opening_.contains(&room)) return;
    const RoomName name = room.name();
    broker_.unsubscribe(name.view());
    if (auto it = rooms_.find(name.view()); it != rooms_.end()) rooms_.erase(it);
}

bool Hub::is_member(const SessionRecord& record, const Room* room) noexcept {
    return std::find(record.rooms.begin(), record.rooms.end(), room) != record.rooms.end();
}

void Hub::remove_from_room(SessionRecord& record, Room& room, PresenceEvent event, std::string_view detail,
                           bool tell_cluster) {
    const bool quiet_room = quiet(population(room));
    if (!room.remove(record.participant->id())) return;
    if (tell_cluster) announce(PeerEvent::Kind::leave, record.nick, room.name().view(), event, detail);
    std::erase(record.rooms, &room);
    if (room.empty()) {
        drop_if_unused(room);
        return;
    }
    if (!quiet_room) room.broadcast(make_frame(make_presence(room.name(), record.nick, event, detail)));
}

void Hub::leave(SessionRecord& record, const RoomName& room) {
    auto it = rooms_.find(room.view());
    if (it == rooms_.end() || !is_member(record, it->second.get())) {
        send_error(record, ErrorCode::not_in_room, fmt::format("not in room '{}'", room.view()));
        return;
    }
    // The leaver sees its own PRESENCE(left) as the confirmation.
    send(record, make_presence(room, record.nick, PresenceEvent::left));
    remove_from_room(record, *it->second, PresenceEvent::left, {});
}

void Hub::say(SessionRecord& record, const RoomName& room, std::string_view text) {
    auto it = rooms_.find(room.view());
    if (it == rooms_.end() || !is_member(record, it->second.get())) {
        send_error(record, ErrorCode::not_in_room, fmt::format("not in room '{}'", room.view()));
        return;
    }
    if (broker_.publish(room.view(), record.nick.view(), text, now_ms(), record.participant->id()) ==
        PublishResult::unavailable) {
        ++stats_.unavailable;
        send_error(record, ErrorCode::unavailable,
                   fmt::format("the message to '{}' was not taken: the cluster is unavailable; send it again later",
                               room.view()));
        return;
    }
    ++stats_.published;
}

void Hub::whisper(SessionRecord& record, const NickName& to, std::string_view text) {
    auto it = nicks_.find(to.view());
    SessionRecord* target = it == nicks_.end() ? nullptr : find(it->second);
    if (target == nullptr && directory_ != nullptr) {
        if (auto node = view_.holder_of(to.view())) {
            // Held on another node: it delivers; the echo is ours.
            const auto ts = now_ms();
            ++stats_.published;
            PeerEvent w;
            w.kind = PeerEvent::Kind::whisper;
            w.nick = to.str();
            w.detail = record.nick.str();
            w.text.assign(text);
            w.timestamp_ms = ts;
            directory_->send_to(*node, std::move(w));
            send(record, Whisper{to.str(), ts, std::string(text), true});
            return;
        }
    }
    if (target == nullptr) {
        send_error(record, ErrorCode::no_such_nick, fmt::format("nobody is called '{}'", to.view()));
        return;
    }
    const auto ts = now_ms();
    ++stats_.published;
    send(*target, Whisper{record.nick.str(), ts, std::string(text), false});
    send(record, Whisper{target->nick.str(), ts, std::string(text), true});
}

void Hub::rename(SessionRecord& record, const NickName& nick) {
    const std::uint64_t id = record.participant->id();
    if (nick == record.nick) {
        send(record, Nick{record.nick.str(), nick.str()});
        return;
    }
    if (nicks_.contains(nick.view()) || claiming_.contains(nick.view())) {
        send_error(record, ErrorCode::nick_taken, fmt::format("nickname '{}' is in use by another session", nick.view()));
        return;
    }
    if (directory_ != nullptr) {
        // Claimed cluster-wide first; the session's later requests wait for it.
        const std::uint64_t claim = next_claim_++;
        claims_.emplace(claim, PendingClaim{record.participant, nick, std::string(record.resume_token.view()), true});
        claim_of_[id] = claim;
        claiming_.insert(nick.str());
        ++record.waiting;
        directory_->claim(claim, nick, record.resume_token.view(), {});
        return;
    }
    complete_rename(record, nick);
}

void Hub::complete_rename(SessionRecord& record, const NickName& nick) {
    const std::uint64_t id = record.participant->id();
    const NickName old = record.nick;
    nicks_.erase(old.str());
    nicks_.emplace(nick.str(), id);
    record.nick = nick;
    for (Room* room : record.rooms) {
        room->rename(id, nick);
        if (!quiet(population(*room)))
            room->broadcast(make_frame(make_presence(room->name(), old, PresenceEvent::renamed, nick.view())), id);
    }
    if (directory_ != nullptr) {
        announce(PeerEvent::Kind::rename, old, {}, PresenceEvent::renamed, nick.view());
        directory_->release(old, record.resume_token.view());
    }
    send(record, Nick{old.str(), nick.str()});
    auto p = record.participant;
    on_shard(poster_, p, [p, nick] { p->on_renamed(nick.str()); });
}

void Hub::list(SessionRecord& record) {
    Rooms rooms;
    rooms.rooms.reserve(std::min<std::size_t>(rooms_.size(), 4096));
    std::size_t used = 0;
    auto add = [&](const std::string& name, std::size_t members) {
        used += 2 + name.size() + 4;
        if (used > limits_.max_frame - list_budget_slack || rooms.rooms.size() == 0xFFFF) return false;
        rooms.rooms.push_back(RoomInfo{name, static_cast<std::uint32_t>(std::min<std::size_t>(members, 0xFFFFFFFF))});
        return true;
    };
    if (directory_ == nullptr) {
        for (const auto& [name, room] : rooms_)
            if (!add(name, room->size())) break;
    } else {
        // Rooms here and rooms with members on other nodes, in name order.
        auto remote = view_.rooms();
        for (const auto& [name, room] : rooms_) remote[name] += room->size();
        for (const auto& [name, members] : remote)
            if (!add(name, members)) break;
    }
    send(record, rooms);
}

void Hub::who(SessionRecord& record, const RoomName& name) {
    auto it = rooms_.find(name.view());
    const std::size_t budget = limits_.max_frame - list_budget_slack;
    std::vector<std::string> remote;
    if (directory_ != nullptr) remote = view_.members_of(name.view());
    if (it == rooms_.end() && remote.empty()) {
        send_error(record, ErrorCode::invalid_room, fmt::format("no room called '{}'", name.view()));
        return;
    }
    std::vector<std::string> nicks;
    if (it != rooms_.end()) nicks = it->second->nicks(budget);
    std::size_t used = 0;
    for (const auto& n : nicks) used += 2 + n.size();
    for (auto& n : remote) {
        used += 2 + n.size();
        if (used > budget || nicks.size() >= 0xFFFF) break;
        nicks.push_back(std::move(n));
    }
    send(record, Members{name.str(), std::move(nicks)});
}

void Hub::disconnect(std::uint64_t id, PresenceEvent event, std::string_view detail) {
    auto it = sessions_.find(id);
    if (it == sessions_.end()) {
        // Gone while its nick claim was on the way: the answer releases it.
        if (auto c = claim_of_.find(id); c != claim_of_.end()) {
            if (auto claim = claims_.find(c->second); claim != claims_.end()) claim->second.participant.reset();
            claim_of_.erase(c);
        }
        return;
    }
    SessionRecord record = std::move(it->second);
    sessions_.erase(it);
    if (auto c = claim_of_.find(id); c != claim_of_.end()) {  // a rename on its way
        if (auto claim = claims_.find(c->second); claim != claims_.end()) claim->second.participant.reset();
        claim_of_.erase(c);
    }
    if (auto n = nicks_.find(record.nick.view()); n != nicks_.end() && n->second == id) nicks_.erase(n);
    const auto rooms = record.rooms;
    for (Room* room : rooms) remove_from_room(record, *room, event, detail, false);
    if (directory_ != nullptr) {
        // One event for the other nodes: its rooms there hear `event`.
        announce(PeerEvent::Kind::offline, record.nick, {}, event, detail);
        directory_->release(record.nick, record.resume_token.view());
    }
}

}  // namespace chat
