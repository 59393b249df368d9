#include "chat/server/directory.hpp"

#include <algorithm>

namespace chat {

// --- the wire form ---------------------------------------------------------------

namespace {

void put_u8(std::string& out, std::uint8_t v) { out.push_back(static_cast<char>(v)); }
void put_u16(std::string& out, std::uint16_t v) {
    out.push_back(static_cast<char>(v >> 8));
    out.push_back(static_cast<char>(v & 0xFF));
}
void put_u32(std::string& out, std::uint32_t v) {
    for (int shift = 24; shift >= 0; shift -= 8) out.push_back(static_cast<char>((v >> shift) & 0xFF));
}
void put_u64(std::string& out, std::uint64_t v) {
    for (int shift = 56; shift >= 0; shift -= 8) out.push_back(static_cast<char>((v >> shift) & 0xFF));
}
void put_str8(std::string& out, std::string_view s) {
    s = s.substr(0, 255);
    put_u8(out, static_cast<std::uint8_t>(s.size()));
    out.append(s);
}
void put_str16(std::string& out, std::string_view s) {
    s = s.substr(0, 0xFFFF);
    put_u16(out, static_cast<std::uint16_t>(s.size()));
    out.append(s);
}

class Reader {
public:
    explicit Reader(std::string_view bytes) : rest_(bytes) {}
    bool ok() const noexcept { return ok_; }
    bool done() const noexcept { return ok_ && rest_.empty(); }
    std::uint64_t uint(std::size_t size) {
        if (rest_.size() < size) {
            ok_ = false;
            return 0;
        }
        std::uint64_t v = 0;
        for (std::size_t i = 0; i < size; ++i) v = v << 8 | static_cast<unsigned char>(rest_[i]);
        rest_.remove_prefix(size);
        return v;
    }
    std::string str(std::size_t length_size) {
        const auto n = static_cast<std::size_t>(uint(length_size));
        if (!ok_ || rest_.size() < n) {
            ok_ = false;
            return {};
        }
        std::string s(rest_.substr(0, n));
        rest_.remove_prefix(n);
        return s;
    }

private:
    std::string_view rest_;
    bool ok_ = true;
};

bool valid_node(std::string_view node) noexcept {
    if (node.empty() || node.size() > 128) return false;
    return std::all_of(node.begin(), node.end(), [](char c) {
        return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
               c == '_' || c == '.';
    });
}

}  // namespace

std::string encode_peer_event(const PeerEvent& e) {
    std::string out;
    put_u8(out, static_cast<std::uint8_t>(e.kind));
    put_str8(out, e.node);
    put_u64(out, e.sequence);
    put_str8(out, e.room);
    put_str8(out, e.nick);
    put_str16(out, e.detail);
    put_str16(out, e.text);
    put_u64(out, e.timestamp_ms);
    put_u8(out, static_cast<std::uint8_t>(e.presence));
    put_u32(out, static_cast<std::uint32_t>(e.members.size()));
    for (const auto& [room, nick] : e.members) {
        put_str8(out, room);
        put_str8(out, nick);
    }
    put_u32(out, static_cast<std::uint32_t>(e.nicks.size()));
    for (const auto& nick : e.nicks) put_str8(out, nick);
    return out;
}

std::optional<PeerEvent> decode_peer_event(std::string_view bytes) {
    Reader r(bytes);
    PeerEvent e;
    const auto kind = r.uint(1);
    if (kind < 1 || kind > 10) return std::nullopt;
    e.kind = static_cast<PeerEvent::Kind>(kind);
    e.node = r.str(1);
    e.sequence = r.uint(8);
    e.room = r.str(1);
    e.nick = r.str(1);
    e.detail = r.str(2);
    e.text = r.str(2);
    e.timestamp_ms = r.uint(8);
    const auto presence = r.uint(1);
    if (presence < 1 || presence > 5) return std::nullopt;
    e.presence = static_cast<PresenceEvent>(presence);
    const auto members = r.uint(4);
    // Each pair takes at least two bytes: a count beyond what is left is a lie.
    if (!r.ok() || members > bytes.size() / 2) return std::nullopt;
    e.members.reserve(members);
    for (std::uint64_t i = 0; i < members && r.ok(); ++i) {
        auto room = r.str(1);
        auto nick = r.str(1);
        if (!RoomName::parse(room) || !NickName::parse(nick)) return std::nullopt;
        e.members.emplace_back(std::move(room), std::move(nick));
    }
    const auto nicks = r.uint(4);
    if (!r.ok() || nicks > bytes.size()) return std::nullopt;
    e.nicks.reserve(nicks);
    for (std::uint64_t i = 0; i < nicks && r.ok(); ++i) {
        auto nick = r.str(1);
        if (!NickName::parse(nick)) return std::nullopt;
        e.nicks.push_back(std::move(nick));
    }
    if (!r.done() || !valid_node(e.node)) return std::nullopt;
    // The names each kind carries follow the rules a client's would.
    const bool needs_nick = e.kind != PeerEvent::Kind::beat && e.kind != PeerEvent::Kind::hello &&
                            e.kind != PeerEvent::Kind::state;
    if (needs_nick && !NickName::parse(e.nick)) return std::nullopt;
    const bool needs_room = e.kind == PeerEvent::Kind::join || e.kind == PeerEvent::Kind::leave;
    if (needs_room && !RoomName::parse(e.room)) return std::nullopt;
    if (e.kind == PeerEvent::Kind::rename && !NickName::parse(e.detail)) return std::nullopt;
    if (e.kind == PeerEvent::Kind::whisper && (!NickName::parse(e.detail) || !is_valid_text(e.text)))
        return std::nullopt;
    if (!is_valid_utf8(e.detail) || !is_valid_utf8(e.text)) return std::nullopt;
    return e;
}

// --- the view --------------------------------------------------------------------

ClusterView::Peer& ClusterView::peer(const std::string& node, std::chrono::steady_clock::time_point now) {
    Peer& p = peers_[node];
    p.last_heard = now;
    return p;
}

void ClusterView::remove_member(Peer& p, const std::string& room, const std::string& nick) {
    auto it = p.rooms.find(room);
    if (it == p.rooms.end()) return;
    std::erase(it->second, nick);
    if (it->second.empty()) p.rooms.erase(it);
}

std::vector<ClusterView::Change> ClusterView::apply(const PeerEvent& e, std::chrono::steady_clock::time_point now) {
    using Kind = PeerEvent::Kind;
    std::vector<Change> changes;
    if (e.kind == Kind::whisper || e.kind == Kind::replace) {
        peer(e.node, now);
        return changes;
    }
    const bool known = peers_.contains(e.node);
    Peer& p = peer(e.node, now);
    if (e.kind == Kind::hello) return changes;
    if (e.kind == Kind::state) return replace_state(p, e);
    if (e.kind == Kind::beat) {
        // A beat carries the sender's latest number: a higher one than we
        // have means events were lost on the way.
        if (!known || e.sequence > p.sequence) needs_state_.insert(e.node);
        return changes;
    }
    if (known && e.sequence <= p.sequence) return changes;  // seen already
    if (!known || e.sequence != p.sequence + 1) needs_state_.insert(e.node);
    p.sequence = e.sequence;
    switch (e.kind) {
        case Kind::online: p.nicks.insert(e.nick); break;
        case Kind::offline: {
            p.nicks.erase(e.nick);
            for (auto it = p.rooms.begin(); it != p.rooms.end();) {
                auto& nicks = it->second;
                if (std::find(nicks.begin(), nicks.end(), e.nick) != nicks.end()) {
                    changes.push_back(Change{it->first, e.nick, e.presence, e.detail});
                    std::erase(nicks, e.nick);
                }
                it = nicks.empty() ? p.rooms.erase(it) : std::next(it);
            }
            break;
        }
        case Kind::join: {
            auto& nicks = p.rooms[e.room];
            if (std::find(nicks.begin(), nicks.end(), e.nick) == nicks.end()) {
                nicks.push_back(e.nick);
                changes.push_back(Change{e.room, e.nick, PresenceEvent::joined, {}});
            }
            p.nicks.insert(e.nick);
            break;
        }
        case Kind::leave: {
            auto it = p.rooms.find(e.room);
            if (it != p.rooms.end() && std::find(it->second.begin(), it->second.end(), e.nick) != it->second.end()) {
                remove_member(p, e.room, e.nick);
                changes.push_back(Change{e.room, e.nick, e.presence, e.detail});
            }
            break;
        }
        case Kind::rename: {
            p.nicks.erase(e.nick);
            p.nicks.insert(e.detail);
            for (auto& [room, nicks] : p.rooms)
                for (auto& n : nicks)
                    if (n == e.nick) {
                        n = e.detail;
                        changes.push_back(Change{room, e.nick, PresenceEvent::renamed, e.detail});
                    }
            break;
        }
        default: break;
    }
    return changes;
}

std::vector<ClusterView::Change> ClusterView::replace_state(Peer& p, const PeerEvent& state) {
    std::vector<Change> changes;
    std::map<std::string, std::vector<std::string>, std::less<>> rooms;
    for (const auto& [room, nick] : state.members) {
        auto& nicks = rooms[room];
        if (std::find(nicks.begin(), nicks.end(), nick) == nicks.end()) nicks.push_back(nick);
    }
    // Who went while we did not hear, then who came.
    for (const auto& [room, nicks] : p.rooms) {
        auto now_there = rooms.find(room);
        for (const auto& nick : nicks)
            if (now_there == rooms.end() ||
                std::find(now_there->second.begin(), now_there->second.end(), nick) == now_there->second.end())
                changes.push_back(Change{room, nick, PresenceEvent::disconnected, "while the cluster was cut off"});
    }
    for (const auto& [room, nicks] : rooms) {
        auto before = p.rooms.find(room);
        for (const auto& nick : nicks)
            if (before == p.rooms.end() ||
                std::find(before->second.begin(), before->second.end(), nick) == before->second.end())
                changes.push_back(Change{room, nick, PresenceEvent::joined, {}});
    }
    p.rooms = std::move(rooms);
    p.nicks = std::set<std::string>(state.nicks.begin(), state.nicks.end());
    p.sequence = state.sequence;
    needs_state_.erase(state.node);
    return changes;
}

std::vector<ClusterView::Change> ClusterView::drop_node(const std::string& node, PresenceEvent event,
                                                        std::string_view detail) {
    std::vector<Change> changes;
    auto it = peers_.find(node);
    if (it == peers_.end()) return changes;
    for (const auto& [room, nicks] : it->second.rooms)
        for (const auto& nick : nicks) changes.push_back(Change{room, nick, event, std::string(detail)});
    peers_.erase(it);
    needs_state_.erase(node);
    return changes;
}

std::vector<std::string> ClusterView::silent_since(std::chrono::steady_clock::time_point deadline) const {
    std::vector<std::string> out;
    for (const auto& [node, p] : peers_)
        if (p.last_heard < deadline) out.push_back(node);
    return out;
}

std::optional<std::string> ClusterView::holder_of(std::string_view nick) const {
    for (const auto& [node, p] : peers_)
        if (p.nicks.contains(std::string(nick))) return node;
    return std::nullopt;
}

std::vector<std::string> ClusterView::members_of(std::string_view room) const {
    std::vector<std::string> out;
    for (const auto& [node, p] : peers_)
        if (auto it = p.rooms.find(room); it != p.rooms.end()) out.insert(out.end(), it->second.begin(), it->second.end());
    return out;
}

std::size_t ClusterView::member_count(std::string_view room) const {
    std::size_t n = 0;
    for (const auto& [node, p] : peers_)
        if (auto it = p.rooms.find(room); it != p.rooms.end()) n += it->second.size();
    return n;
}

std::map<std::string, std::size_t, std::less<>> ClusterView::rooms() const {
    std::map<std::string, std::size_t, std::less<>> out;
    for (const auto& [node, p] : peers_)
        for (const auto& [room, nicks] : p.rooms) out[room] += nicks.size();
    return out;
}

std::set<std::string> ClusterView::nodes() const {
    std::set<std::string> out;
    for (const auto& [node, p] : peers_) out.insert(node);
    return out;
}

std::set<std::string> ClusterView::take_needs_state() {
    std::set<std::string> out;
    out.swap(needs_state_);
    return out;
}

}  // namespace chat
