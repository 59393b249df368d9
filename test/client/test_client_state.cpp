// ClientState without sockets: requests one at a time, answers, rejoin and resume after a reconnect.
#include <doctest/doctest.h>

#include <string>

#include "chat/client/client_state.hpp"
#include "utils/frames.hpp"

using namespace chat;
using chat::test::deliver;
using chat::test::joined;
using namespace std::chrono_literals;

namespace {

using Clock = ClientState::Clock;
const Clock::time_point t0{};

Welcome welcome(std::string nick = "alice") {
    Welcome w;
    w.session_id = 1;
    w.heartbeat_interval_ms = 100;
    w.heartbeat_timeout_ms = 500;
    w.max_frame = default_max_frame;
    w.nick = std::move(nick);
    w.resume_token = "token";
    return w;
}

// Connects `state` and answers its join of `room`.
void connect_and_join(ClientState& state, const std::string& room = "lobby", std::uint64_t epoch = 7,
                      std::uint64_t head = 0) {
    state.on_welcome(welcome(state.nick()));
    auto request = state.next_request(t0);
    REQUIRE(request);
    REQUIRE(std::get<Join>(*request).room == room);
    state.on_frame(joined(room, epoch, head), t0);
}

}  // namespace

TEST_SUITE("client_state") {
    TEST_CASE("nothing is sent before WELCOME; then the start rooms are joined without resuming") {
        ClientState state("alice", {"lobby", "dev"});
        CHECK(state.current_room() == "lobby");
        CHECK(state.hello() == Hello{"alice", "", ""});
        CHECK_FALSE(state.say("early"));
        CHECK_FALSE(state.next_request(t0));
        state.on_welcome(welcome());
        CHECK(state.hello().resume_token == "token");
        auto first = state.next_request(t0);
        REQUIRE(first);
        CHECK(*first == Message{Join{"lobby", false, {}}});
        CHECK_FALSE(state.next_request(t0));  // one request at a time
        CHECK(state.on_frame(joined("lobby", 7, 0), t0).answer);
        CHECK(state.next_request(t0) == Message{Join{"dev", false, {}}});
        state.on_frame(joined("dev", 8, 0), t0);
        CHECK(state.next_request(t0) == Message{Say{"lobby", "early"}});
    }

    TEST_CASE("a message is answered by its own echo; others' messages are no answer") {
        ClientState state("alice", {"lobby"});
        connect_and_join(state);
        CHECK(state.idle());
        state.say("one");
        state.say("two");
        CHECK_FALSE(state.idle());
        CHECK(state.next_request(t0) == Message{Say{"lobby", "one"}});
        CHECK_FALSE(state.on_frame(deliver("lobby", "bob", "one", {7, 1}), t0).answer);
        CHECK_FALSE(state.next_request(t0));
        CHECK(state.on_frame(deliver("lobby", "alice", "one", {7, 2}), t0).answer);
        CHECK(state.next_request(t0) == Message{Say{"lobby", "two"}});
        state.on_frame(deliver("lobby", "alice", "two", {7, 3}), t0);
        CHECK(state.idle());
        CHECK(state.last_position("lobby") == Position{7, 3});
    }

    TEST_CASE("after a reconnect each room is rejoined from the newest message seen in it") {
        ClientState state("alice", {"lobby"});
        connect_and_join(state, "lobby", 7, 4);
        CHECK(state.last_position("lobby") == Position{7, 4});
        state.on_frame(deliver("lobby", "bob", "x", {7, 5}), t0);
        state.on_frame(deliver("lobby", "bob", "y", {7, 9}), t0);
        CHECK(state.on_disconnected().empty());
        CHECK_FALSE(state.connected());
        state.on_welcome(welcome());
        CHECK(state.next_request(t0) == Message{Join{"lobby", true, Position{7, 9}}});
        auto j = joined("lobby", 7, 12, 3);
        j.missed = 0;
        CHECK(state.on_frame(j, t0).rejoin);
        CHECK(state.on_frame(deliver("lobby", "bob", "a", {7, 10}, true), t0).rejoin);
        state.on_frame(deliver("lobby", "bob", "b", {7, 11}, true), t0);
        state.on_frame(deliver("lobby", "bob", "c", {7, 12}, true), t0);
        CHECK(state.last_position("lobby") == Position{7, 12});
        CHECK(state.idle());
    }

    TEST_CASE("a message in flight when the connection died is sent again only if the rejoin shows it never arrived") {
        ClientState state("alice", {"lobby"});
        connect_and_join(state, "lobby", 7, 2);
        state.say("maybe");
        REQUIRE(state.next_request(t0) == Message{Say{"lobby", "maybe"}});
        state.on_disconnected();
        CHECK_FALSE(state.idle());
        state.on_welcome(welcome());
        REQUIRE(state.next_request(t0) == Message{Join{"lobby", true, Position{7, 2}}});

        SUBCASE("it is in the history: done") {
            state.on_frame(joined("lobby", 7, 3, 1), t0);
            const auto note = state.on_frame(deliver("lobby", "alice", "maybe", {7, 3}, true), t0);
            CHECK(note.notice.empty());
            CHECK(state.idle());
            CHECK_FALSE(state.next_request(t0));
        }
        SUBCASE("it is not: sent again") {
            const auto note = state.on_frame(joined("lobby", 7, 2, 0), t0);
            CHECK(note.notice.find("maybe") != std::string::npos);
            CHECK(state.next_request(t0) == Message{Say{"lobby", "maybe"}});
        }
    }

    TEST_CASE("a rate-limited request goes again after a pause that grows while refusals continue") {
        ClientState state("alice", {"lobby"});
        connect_and_join(state);
        state.say("flood");
        REQUIRE(state.next_request(t0));
        auto note = state.on_frame(Error{ErrorCode::rate_limited, "slow down", false}, t0);
        CHECK(note.answer);
        CHECK(note.retry);
        CHECK(note.retry_in == 100ms);
        CHECK(state.paused_until(t0) == t0 + 100ms);
        CHECK_FALSE(state.next_request(t0 + 99ms));
        REQUIRE(state.next_request(t0 + 100ms) == Message{Say{"lobby", "flood"}});
        note = state.on_frame(Error{ErrorCode::rate_limited, "slow down", false}, t0 + 100ms);
        CHECK(note.retry_in == 200ms);
        REQUIRE(state.next_request(t0 + 300ms));
        state.on_frame(deliver("lobby", "alice", "flood", {7, 1}), t0 + 300ms);
        CHECK(state.idle());
    }

    TEST_CASE("a join the server refuses is forgotten and the current room goes back") {
        ClientState state("alice", {"lobby"});
        connect_and_join(state);
        CHECK_FALSE(state.join("dev"));
        CHECK(state.current_room() == "dev");
        CHECK(state.join("dev") == std::optional<std::string>("already in #dev"));
        REQUIRE(state.next_request(t0) == Message{Join{"dev", false, {}}});
        state.on_frame(Error{ErrorCode::too_many_rooms, "at most 1 room", false}, t0);
        CHECK_FALSE(state.has_room("dev"));
        CHECK(state.current_room() == "lobby");
    }

    TEST_CASE("leaving the current room makes the most recently joined other room current") {
        ClientState state("alice", {"lobby", "dev", "ops"});
        CHECK_FALSE(state.switch_to("dev"));
        CHECK(state.leave("dev") == std::nullopt);
        CHECK(state.current_room() == "ops");
        CHECK(state.switch_to("dev").has_value());
        CHECK(state.leave("nowhere").has_value());
        CHECK(state.leave("ops") == std::nullopt);
        CHECK(state.leave("lobby") == std::nullopt);
        CHECK(state.current_room().empty());
        CHECK(state.say("into the void").has_value());
    }

    TEST_CASE("a rename is confirmed by NICK and changes whose echoes answer") {
        ClientState state("alice", {"lobby"});
        connect_and_join(state);
        state.rename("alicia");
        REQUIRE(state.next_request(t0) == Message{Nick{"", "alicia"}});
        CHECK(state.on_frame(Nick{"alice", "alicia"}, t0).answer);
        CHECK(state.nick() == "alicia");
        state.say("hi");
        REQUIRE(state.next_request(t0));
        CHECK(state.on_frame(deliver("lobby", "alicia", "hi", {7, 1}), t0).answer);
    }

    TEST_CASE("on a lost connection, whispers in flight are reported, joins are left to the rejoin") {
        ClientState state("alice", {"lobby"});
        connect_and_join(state);
        state.whisper("bob", "psst");
        state.join("dev");
        state.list();
        REQUIRE(std::holds_alternative<Whisper>(*state.next_request(t0)));
        const auto notices = state.on_disconnected();
        REQUIRE(notices.size() == 1);
        CHECK(notices[0].find("bob") != std::string::npos);
        state.on_welcome(welcome());
        CHECK(state.next_request(t0) == Message{Join{"lobby", true, Position{7, 0}}});
        state.on_frame(joined("lobby", 7, 0), t0);
        CHECK(state.next_request(t0) == Message{Join{"dev", false, {}}});
        state.on_frame(joined("dev", 9, 0), t0);
        CHECK(state.next_request(t0) == Message{List{}});
    }
}
