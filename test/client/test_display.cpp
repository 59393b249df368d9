// How the client shows what happens: human lines (no terminal control from
// the network) and one JSON object per event.
#include <doctest/doctest.h>

#include <cstdlib>
#include <ctime>
#include <string>

#include "chat/client/display.hpp"
#include "chat/proto/protocol.hpp"
#include "utils/frames.hpp"

using namespace chat;
using chat::test::deliver;
using chat::test::joined;
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

}  // namespace

TEST_SUITE("display") {
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
}
