// Who is where across the nodes of a cluster: the hub's view of the other
// nodes' sessions, and the way its own news reaches them. Sans-io: the hub
// layer owns the view; the transport (ClusterDirectory, over NATS) only
// carries the events and the nick claims.
//
// A single node has no directory (Hub without one): nicks are unique within
// the process and every member is local.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "chat/proto/names.hpp"
#include "chat/proto/protocol.hpp"

namespace chat {

// One node's news for the others, in the order it happened there.
struct PeerEvent {
    enum class Kind : std::uint8_t {
        online = 1,   // a session logged in with `nick`
        offline = 2,  // that session is gone; `presence` says how (its rooms see it)
        join = 3,     // `nick` joined `room`
        leave = 4,    // `nick` left `room` (presence: left, or how its session ended)
        rename = 5,   // `nick` is now `detail`
        beat = 6,     // nothing new: the node is alive (sequence: its latest)
        hello = 7,    // the node (re)started or reconnected: send it your state
        state = 8,    // the node's whole state (`members`, `nicks`), answering hello
        whisper = 9,  // to the node holding `nick`: `detail` says `text`
        replace = 10, // to the node holding `nick`: its session was resumed elsewhere
    };
    Kind kind = Kind::beat;
    std::string node;            // the sending node's id (name and incarnation)
    std::uint64_t sequence = 0;  // the sender's event number (online..rename; beat: the latest)
    std::string room;
    std::string nick;
    std::string detail;
    std::string text;
    std::uint64_t timestamp_ms = 0;
    PresenceEvent presence = PresenceEvent::left;
    // state: (room, nick) pairs and the nicks of the node's sessions.
    std::vector<std::pair<std::string, std::string>> members;
    std::vector<std::string> nicks;
};

// The wire form of a PeerEvent (docs/CLUSTER.md): u8 kind, str8 node, u64
// sequence, str8 room, str8 nick, str16 detail, str16 text, u64 timestamp,
// u8 presence, u32 member count + (str8, str8) each, u32 nick count + str8
// each. Decoding checks every name as the hub would.
std::string encode_peer_event(const PeerEvent& event);
std::optional<PeerEvent> decode_peer_event(std::string_view bytes);

// What one node knows of the others: their sessions' nicks and rooms, their
// last event, when they were last heard. Plain data, driven by the hub.
class ClusterView {
public:
    struct Change {
        std::string room;  // empty: a nick change without a room
        std::string nick;
        PresenceEvent event;
        std::string detail;  // renamed: the new nick; else a reason
    };

    // Applies `event` of another node at time `now`; returns the presence the
    // local members of each affected room must be told, in order. A sequence
    // gap (an event lost while NATS was unreachable) sets needs_state().
    std::vector<Change> apply(const PeerEvent& event, std::chrono::steady_clock::time_point now);
    // The node whose members go (dead, or its state replaced them).
    std::vector<Change> drop_node(const std::string& node, PresenceEvent event, std::string_view detail);
    // Nodes not heard from since `deadline`.
    std::vector<std::string> silent_since(std::chrono::steady_clock::time_point deadline) const;

    // The node holding `nick`, if another node does.
    std::optional<std::string> holder_of(std::string_view nick) const;
    // Remote members of `room`, in the order they joined.
    std::vector<std::string> members_of(std::string_view room) const;
    std::size_t member_count(std::string_view room) const;
    // Every room with remote members, and how many.
    std::map<std::string, std::size_t, std::less<>> rooms() const;
    std::set<std::string> nodes() const;
    // Nodes whose events had a gap: ask them for their state.
    std::set<std::string> take_needs_state();

private:
    struct Peer {
        std::uint64_t sequence = 0;
        std::chrono::steady_clock::time_point last_heard{};
        std::set<std::string> nicks;
        std::map<std::string, std::vector<std::string>, std::less<>> rooms;  // room -> its nicks here, join order
    };
    Peer& peer(const std::string& node, std::chrono::steady_clock::time_point now);
    std::vector<Change> replace_state(Peer& peer, const PeerEvent& state);
    void remove_member(Peer& peer, const std::string& room, const std::string& nick);

    std::map<std::string, Peer, std::less<>> peers_;
    std::set<std::string> needs_state_;
};

// The hub's way out to the other nodes, and its nick authority. Every call is
// made on the hub's thread and answered there through Directory::Listener.
class Directory {
public:
    // resumed: the holder on another node is replaced; unavailable: NATS did not answer.
    enum class Claim { granted, taken, resumed, unavailable };

    class Listener {
    public:
        virtual ~Listener() = default;
        virtual void on_nick_claimed(std::uint64_t request, Claim outcome, std::string_view previous_node) = 0;
        virtual void on_peer_event(const PeerEvent& event) = 0;
        // Called about every 100 ms, so the hub can find nodes gone silent.
        virtual void on_directory_tick(std::chrono::steady_clock::time_point now) = 0;
        // The node is back on NATS after a disconnection: others need its state.
        virtual void on_directory_reconnected() = 0;
    };

    virtual ~Directory() = default;
    void set_listener(Listener* listener) noexcept { listener_ = listener; }

    // This node's id, as in PeerEvent::node.
    virtual const std::string& node() const noexcept = 0;
    // Claims `nick` cluster-wide for a session with `token` (its new resume
    // token); `presented` is the token the client showed, which may take the
    // nick over from a session on another node. Answered with on_nick_claimed(request, ...).
    virtual void claim(std::uint64_t request, const NickName& nick, std::string_view token,
                       std::string_view presented) = 0;
    // The session holding `nick` with `token` is gone (or renamed): the nick is free.
    virtual void release(const NickName& nick, std::string_view token) = 0;
    // This node's news; the directory numbers it and sends it to every node.
    virtual void announce(PeerEvent event) = 0;
    // To one node: whisper or replace.
    virtual void send_to(const std::string& node, PeerEvent event) = 0;
    // Whether this node can tell that others are dead (it hears itself).
    virtual bool connected() const noexcept = 0;

protected:
    Listener* listener_ = nullptr;
};

}  // namespace chat
