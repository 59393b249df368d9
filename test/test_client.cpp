// The client's pure parts: JSON output, line formatting, command parsing, backoff, and ClientState.
#include <doctest/doctest.h>

#include <cstdlib>
#include <ctime>

#include "chat/client.hpp"
#include "chat/command.hpp"
#include "chat/display.hpp"
#include "chat/json.hpp"

using namespace chat;
using namespace std::chrono_literals;

namespace {

// Formatting uses local time: pin it.
struct UtcClock {
    UtcClock() {
        ::setenv("TZ", "UTC", 1);
        ::tzset();
    }
};
const UtcClock utc;

using Clock = ClientState::Clock;
const Clock::time_point t0{};

Deliver deliver(std::string room, std::string sender, std::string text, Position at, bool history = false) {
    Deliver d;
    d.room = std::move(room);
    d.sender = std::move(sender);
    d.text = std::move(text);
    d.position = at;
    d.timestamp_ms = 5000;
    d.history = history;
    return d;
}

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

Joined joined(std::string room, std::uint64_t epoch, std::uint64_t head, std::uint32_t history = 0) {
    Joined j;
    j.room = std::move(room);
    j.epoch = epoch;
    j.head_seq = head;
    j.history_count = history;
    j.members = {"alice"};
    return j;
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

TEST_SUITE("client") {
    // --- JSON ---

    TEST_CASE("JSON strings escape quotes, backslashes and control characters and keep UTF-8") {
        CHECK(json_string("plain") == "\"plain\"");
        CHECK(json_string("say \"hi\"") == R"("say \"hi\"")");
        CHECK(json_string("back\\slash") == R"("back\\slash")");
        CHECK(json_string("a\nb\tc\rd") == R"("a\nb\tc\rd")");
        CHECK(json_string(std::string("\x01\x1f", 2)) == R"("\u0001\u001f")");
        CHECK(json_string(std::string("nul\0byte", 8)) == R"("nul\u0000byte")");
        CHECK(json_string("grüße 日本 🎉") == "\"grüße 日本 🎉\"");
    }

    TEST_CASE("JSON strings replace bytes that are not UTF-8 with U+FFFD") {
        CHECK(json_string("a\xff" "b") == "\"a\xEF\xBF\xBD" "b\"");
        CHECK(json_string("\xC3") == "\"\xEF\xBF\xBD\"");                      // truncated sequence
        CHECK(json_string("\xC0\xAF") == "\"\xEF\xBF\xBD\xEF\xBF\xBD\"");      // overlong '/'
        CHECK(json_string("\xED\xA0\x80") == "\"\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD\"");  // surrogate
    }

    TEST_CASE("a JSON object keeps its fields in order, with numbers, booleans and arrays") {
        const auto text = JsonObject()
                              .add("type", "message")
                              .add("seq", std::uint64_t{18446744073709551615u})
                              .add("n", 3u)
                              .add("history", false)
                              .add("members", std::vector<std::string>{"a", "b\"c"})
                              .add_raw("nested", "{}")
                              .str();
        CHECK(text == R"({"type":"message","seq":18446744073709551615,"n":3,"history":false,"members":["a","b\"c"],"nested":{}})");
        CHECK(JsonObject().str() == "{}");
    }

    // --- formatting ---

    TEST_CASE("a message is shown as [HH:MM:SS] #room <nick> text") {
        EventFormatter plain(OutputStyle::plain);
        CHECK(format_clock(0) == "00:00:00");
        CHECK(format_clock(3'723'000) == "01:02:03");
        CHECK(plain.frame(deliver("lobby", "alice", "hi", {7, 1}), {}, "bob") == "[00:00:05] #lobby <alice> hi");
    }

    TEST_CASE("text from the network cannot move the cursor or recolour the terminal") {
        CHECK(terminal_safe("ok\ttab") == "ok\ttab");
        CHECK(terminal_safe("\033[2Jwiped") == "\xEF\xBF\xBD[2Jwiped");
        CHECK(terminal_safe("c1 \xC2\x9B" "31m") == "c1 \xEF\xBF\xBD" "31m");
        CHECK(terminal_safe("bell\x07") == "bell\xEF\xBF\xBD");
        CHECK(terminal_safe("é and ✓") == "é and ✓");
        EventFormatter plain(OutputStyle::plain);
        CHECK(plain.frame(deliver("lobby", "mallory", "\033[31mred", {7, 1}), {}, "bob") ==
              "[00:00:05] #lobby <mallory> \xEF\xBF\xBD[31mred");
    }

    TEST_CASE("colour output wraps parts in SGR codes and plain output has none") {
        EventFormatter colour(OutputStyle::colour);
        EventFormatter plain(OutputStyle::plain);
        const auto line = colour.frame(deliver("lobby", "alice", "hi", {7, 1}), {}, "alice");
        CHECK(line.find("\033[") != std::string::npos);
        CHECK(line.find("hi") != std::string::npos);
        CHECK(plain.status(ClientStatus{}).find('\033') == std::string::npos);
        CHECK(colour.prompt("lobby") == "\001\033[1;36m\002#lobby>\001\033[0m\002 ");
        CHECK(plain.prompt("lobby") == "#lobby> ");
        CHECK(plain.prompt("") == "> ");
    }

    TEST_CASE("presence, whispers and errors have their own human form") {
        EventFormatter plain(OutputStyle::plain);
        const auto tail = [&](const Message& m, FrameNote note = {}) {
            auto line = plain.frame(m, note, "me");
            return line.substr(line.find("] ") + 2);
        };
        CHECK(tail(Presence{"lobby", "bob", PresenceEvent::timed_out, {}}) == "#lobby -- bob timed out");
        CHECK(tail(Presence{"lobby", "bob", PresenceEvent::renamed, "robert"}) == "#lobby -- bob is now known as robert");
        CHECK(tail(Presence{"lobby", "bob", PresenceEvent::disconnected, "quit"}) == "#lobby -- bob disconnected (quit)");
        CHECK(tail(Presence{"lobby", "me", PresenceEvent::left, {}}) == "#lobby -- you left");
        CHECK(tail(Whisper{"bob", 1000, "psst", false}) == "*bob* psst");
        CHECK(tail(Whisper{"bob", 1000, "psst", true}) == "-> *bob* psst");
        CHECK(tail(Error{ErrorCode::no_such_nick, "nobody is called 'x'", false}) ==
              "!! nobody is called 'x' (no_such_nick)");
        FrameNote retry;
        retry.retry = true;
        retry.retry_in = 200ms;
        CHECK(tail(Error{ErrorCode::rate_limited, "slow down", false}, retry) ==
              "!! slow down (rate_limited); sending it again in 200ms");
        Joined j = joined("lobby", 7, 10, 2);
        j.missed = 5;
        FrameNote rejoin;
        rejoin.rejoin = true;
        CHECK(tail(j, rejoin) ==
              "#lobby -- rejoined; you missed 5 messages the server no longer holds; 2 messages from while you were "
              "away follow");
    }

    TEST_CASE("every event has one JSON object with the documented fields") {
        EventFormatter json(OutputStyle::json);
        CHECK(json.frame(deliver("lobby", "alice", "hi \"there\"", {7, 42}), {}, "bob") ==
              R"({"type":"message","room":"lobby","nick":"alice","text":"hi \"there\"","ts":5000,"seq":42,"history":false})");
        CHECK(json.frame(Whisper{"alice", 9, "psst", false}, {}, "bob") ==
              R"({"type":"whisper","from":"alice","to":"bob","text":"psst","ts":9})");
        CHECK(json.frame(Whisper{"alice", 9, "psst", true}, {}, "bob") ==
              R"({"type":"whisper","from":"bob","to":"alice","text":"psst","ts":9})");
        CHECK(json.frame(Presence{"lobby", "bob", PresenceEvent::timed_out, {}}, {}, "me") ==
              R"({"type":"presence","room":"lobby","nick":"bob","event":"timed_out"})");
        CHECK(json.frame(Presence{"lobby", "bob", PresenceEvent::renamed, "rob"}, {}, "me") ==
              R"({"type":"presence","room":"lobby","nick":"bob","event":"renamed","new_nick":"rob"})");
        CHECK(json.frame(Error{ErrorCode::nick_taken, "in use", true}, {}, "me") ==
              R"({"type":"error","code":"nick_taken","text":"in use","fatal":true})");
        CHECK(json.frame(joined("lobby", 7, 3, 1), {}, "me") ==
              R"({"type":"joined","room":"lobby","members":["alice"],"history":1,"missed":0,"epoch_changed":false,"quiet":false,"resumed":false})");
        CHECK(json.frame(Rooms{{RoomInfo{"lobby", 2}}}, {}, "me") ==
              R"({"type":"rooms","rooms":[{"name":"lobby","members":2}]})");
        CHECK(json.frame(Members{"lobby", {"a", "b"}}, {}, "me") == R"({"type":"members","room":"lobby","nicks":["a","b"]})");
        CHECK(json.frame(Nick{"a", "b"}, {}, "b") == R"({"type":"nick","old":"a","new":"b"})");
        CHECK(json.error("command", "bad") == R"({"type":"error","code":"command","text":"bad","fatal":false})");
        CHECK(json.info("hello") == R"({"type":"info","text":"hello"})");

        ClientStatus timeout;
        timeout.event = StatusEvent::server_timeout;
        timeout.server = "127.0.0.1:7000";
        timeout.silent = 512ms;
        timeout.timeout = 500ms;
        const auto line = json.status(timeout);
        CHECK(line.starts_with(R"({"type":"status","event":"server_timeout","server":"127.0.0.1:7000","ts":)"));
        CHECK(line.ends_with(R"(,"silent_ms":512,"timeout_ms":500})"));
        ClientStatus again;
        again.event = StatusEvent::reconnecting;
        again.attempt = 2;
        again.delay = 300ms;
        again.detail = "Connection refused";
        CHECK(json.status(again).ends_with(R"(,"attempt":2,"delay_ms":300,"reason":"Connection refused"})"));
    }

    // --- commands ---

    TEST_CASE("a line without a slash is said in the current room; '//' says a line that starts with '/'") {
        CHECK(command::parse("hello there") == command::Command{command::Say{"hello there"}});
        CHECK(command::parse("//not a command") == command::Command{command::Say{"/not a command"}});
        CHECK(command::parse("trailing cr\r") == command::Command{command::Say{"trailing cr"}});
        CHECK(command::parse("") == command::Command{command::Empty{}});
        CHECK(command::parse("  \t ") == command::Command{command::Empty{}});
        CHECK(std::holds_alternative<command::Error>(command::parse("bell\x07")));
    }

    TEST_CASE("commands are parsed with their arguments") {
        CHECK(command::parse("/join dev") == command::Command{command::Join{"dev"}});
        CHECK(command::parse("  /join   #dev  ") == command::Command{command::Say{"  /join   #dev  "}});  // a slash must come first
        CHECK(command::parse("/join #dev") == command::Command{command::Join{"#dev"}});
        CHECK(command::parse("/leave") == command::Command{command::Leave{}});
        CHECK(command::parse("/leave dev") == command::Command{command::Leave{"dev"}});
        CHECK(command::parse("/switch dev") == command::Command{command::Switch{"dev"}});
        CHECK(command::parse("/rooms") == command::Command{command::Rooms{}});
        CHECK(command::parse("/who") == command::Command{command::Who{}});
        CHECK(command::parse("/who dev") == command::Command{command::Who{"dev"}});
        CHECK(command::parse("/nick alice2") == command::Command{command::Nick{"alice2"}});
        CHECK(command::parse("/msg bob hello   there") == command::Command{command::Msg{"bob", "hello   there"}});
        CHECK(command::parse("/help") == command::Command{command::Help{}});
        CHECK(command::parse("/quit") == command::Command{command::Quit{}});
        CHECK(command::parse("/exit") == command::Command{command::Quit{}});
    }

    TEST_CASE("a mistyped or unknown command is an error with a hint, never a message") {
        const auto error = [](std::string_view line) {
            auto c = command::parse(line);
            REQUIRE(std::holds_alternative<command::Error>(c));
            return std::get<command::Error>(c).message;
        };
        CHECK(error("/jion dev").starts_with("unknown command '/jion'"));
        CHECK(error("/jion dev").find("/help") != std::string::npos);
        CHECK(error("/join") == "usage: /join ROOM");
        CHECK(error("/join a b") == "usage: /join ROOM");
        CHECK(error("/msg bob") == "usage: /msg NICK TEXT");
        CHECK(error("/nick") == "usage: /nick NAME");
        CHECK(error("/rooms now") == "usage: /rooms");
        CHECK(error("/join bad!room").find("not a room name") != std::string::npos);
        CHECK(error("/nick -x").find("not a nickname") != std::string::npos);
        CHECK(error("/").find("not a command") != std::string::npos);
        CHECK(command::help_text().find("/msg NICK TEXT") != std::string_view::npos);
    }

    // --- backoff ---

    TEST_CASE("reconnect waits double from the first, carry jitter, and never exceed the maximum") {
        Backoff backoff(200ms, 3s, 42);
        const std::vector<Duration> bases = {200ms, 400ms, 800ms, 1600ms, 3s, 3s, 3s};
        for (std::size_t i = 0; i < bases.size(); ++i) {
            const auto wait = backoff.next();
            CHECK(wait >= bases[i] / 2);
            CHECK(wait <= bases[i]);
            CHECK(backoff.attempts() == i + 1);
        }
        backoff.reset();
        CHECK(backoff.attempts() == 0);
        CHECK(backoff.next() <= 200ms);
    }

    TEST_CASE("two clients with different seeds do not reconnect in step") {
        Backoff a(1s, 30s, 1), b(1s, 30s, 2);
        bool differ = false;
        for (int i = 0; i < 5; ++i) differ = differ || a.next() != b.next();
        CHECK(differ);
    }

    TEST_CASE("a maximum under the first wait caps the first wait too") {
        Backoff backoff(200ms, 50ms, 7);
        for (int i = 0; i < 4; ++i) CHECK(backoff.next() <= 50ms);
        Backoff zero(200ms, 0ms, 7);
        CHECK(zero.next() == 0ms);
    }

    // --- ClientState ---

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
