// ClusterView and the PeerEvent wire form, without NATS.
#include <doctest/doctest.h>

#include "chat/server/directory.hpp"

using namespace chat;
using Kind = PeerEvent::Kind;

namespace {
PeerEvent event(Kind kind, std::uint64_t seq, std::string nick = {}, std::string room = {}) {
    PeerEvent e;
    e.kind = kind;
    e.node = "b.1";
    e.sequence = seq;
    e.nick = std::move(nick);
    e.room = std::move(room);
    return e;
}
const auto t0 = std::chrono::steady_clock::time_point{} + std::chrono::hours(1);
}  // namespace

TEST_CASE("peer events survive the wire, and a damaged or lying one is refused") {
    PeerEvent e = event(Kind::state, 7);
    e.members = {{"lobby", "alice"}, {"dev", "bob"}};
    e.nicks = {"alice", "bob"};
    auto back = decode_peer_event(encode_peer_event(e));
    REQUIRE(back);
    CHECK(back->members == e.members);
    CHECK(back->nicks == e.nicks);
    CHECK(back->sequence == 7);
    const auto bytes = encode_peer_event(event(Kind::join, 1, "alice", "lobby"));
    CHECK(decode_peer_event(bytes));
    CHECK_FALSE(decode_peer_event(bytes.substr(0, bytes.size() - 1)));  // truncated
    CHECK_FALSE(decode_peer_event(bytes + "x"));                        // trailing
    CHECK_FALSE(decode_peer_event(encode_peer_event(event(Kind::join, 1, "bad nick!", "lobby"))));
    CHECK_FALSE(decode_peer_event(encode_peer_event(event(Kind::join, 1, "alice", ""))));
    auto w = event(Kind::whisper, 0, "alice");
    w.detail = "bob";
    w.text = "a\x01";  // control character
    CHECK_FALSE(decode_peer_event(encode_peer_event(w)));
    std::string bad = bytes;
    bad[0] = 99;  // no such kind
    CHECK_FALSE(decode_peer_event(bad));
}

TEST_CASE("the view follows a node's joins, leaves and renames once each, and asks for state after a gap") {
    ClusterView view;
    auto c = view.apply(event(Kind::online, 1, "alice"), t0);
    CHECK(c.empty());
    // A node heard for the first time may have had sessions before: ask it.
    CHECK(view.take_needs_state() == std::set<std::string>{"b.1"});
    c = view.apply(event(Kind::join, 2, "alice", "lobby"), t0);
    REQUIRE(c.size() == 1);
    CHECK(c[0].event == PresenceEvent::joined);
    CHECK(view.apply(event(Kind::join, 2, "alice", "lobby"), t0).empty());  // the same event again
    CHECK(view.members_of("lobby") == std::vector<std::string>{"alice"});
    CHECK(view.holder_of("alice") == std::string("b.1"));
    auto r = event(Kind::rename, 3, "alice");
    r.detail = "alicia";
    c = view.apply(r, t0);
    REQUIRE(c.size() == 1);
    CHECK(c[0].event == PresenceEvent::renamed);
    CHECK(view.members_of("lobby") == std::vector<std::string>{"alicia"});
    CHECK(view.take_needs_state().empty());
    // Event 4 was lost: 5 applies, and the node is asked for its state.
    auto off = event(Kind::offline, 5, "alicia");
    off.presence = PresenceEvent::timed_out;
    c = view.apply(off, t0);
    REQUIRE(c.size() == 1);
    CHECK(c[0].event == PresenceEvent::timed_out);
    CHECK(view.take_needs_state() == std::set<std::string>{"b.1"});
    CHECK(view.member_count("lobby") == 0);
}

TEST_CASE("a state replaces what was known, a dead node's members time out once, silence is found") {
    ClusterView view;
    view.apply(event(Kind::join, 1, "alice", "lobby"), t0);
    view.apply(event(Kind::join, 2, "bob", "lobby"), t0);
    PeerEvent state = event(Kind::state, 9);
    state.members = {{"lobby", "bob"}, {"dev", "carol"}};
    auto c = view.apply(state, t0 + std::chrono::seconds(1));
    REQUIRE(c.size() == 2);  // alice went, carol came
    CHECK(c[0].nick == "alice");
    CHECK(c[0].event == PresenceEvent::disconnected);
    CHECK(c[1].nick == "carol");
    CHECK(c[1].event == PresenceEvent::joined);
    CHECK(view.silent_since(t0 + std::chrono::seconds(1)).empty());
    CHECK(view.silent_since(t0 + std::chrono::seconds(2)) == std::vector<std::string>{"b.1"});
    c = view.drop_node("b.1", PresenceEvent::timed_out, "gone");
    CHECK(c.size() == 2);
    CHECK(view.drop_node("b.1", PresenceEvent::timed_out, "gone").empty());  // once
    CHECK(view.rooms().empty());
}
