// The log's JSON format (--log-format json): the fields read from a session
// line, and escaping that no client string can break.
#include <doctest/doctest.h>

#include <string>

#include "chat/common/logging.hpp"

using namespace chat;

TEST_CASE("json log: a session line gives session, peer, nick, event and reason") {
    const auto line = json_log_line("2026-12-02T04:50:00.123Z", "warning",
                                    "session 12 127.0.0.1:5000 'alice': heartbeat timeout: nothing received for 15s");
    CHECK(line ==
          R"({"time":"2026-12-02T04:50:00.123Z","level":"warning","session":12,"peer":"127.0.0.1:5000","nick":"alice",)"
          R"("event":"heartbeat timeout","reason":"nothing received for 15s",)"
          R"("message":"session 12 127.0.0.1:5000 'alice': heartbeat timeout: nothing received for 15s"})");
}

TEST_CASE("json log: before the nick is known, and an event without a reason") {
    CHECK(json_log_line("t", "info", "session 3 [::1]:4000: logged in as 'bob'") ==
          R"({"time":"t","level":"info","session":3,"peer":"[::1]:4000","event":"logged in as 'bob'",)"
          R"("message":"session 3 [::1]:4000: logged in as 'bob'"})");
    CHECK(json_log_line("t", "info", "session 4 unix:pid=7,uid=0 'c': join 'lobby'") ==
          R"({"time":"t","level":"info","session":4,"peer":"unix:pid=7,uid=0","nick":"c","event":"join 'lobby'",)"
          R"("message":"session 4 unix:pid=7,uid=0 'c': join 'lobby'"})");
}

TEST_CASE("json log: other lines carry only the message; nothing a client sent escapes its string") {
    CHECK(json_log_line("t", "info", "listening on 0.0.0.0:7000") ==
          R"({"time":"t","level":"info","message":"listening on 0.0.0.0:7000"})");
    // Not a session prefix: no fields guessed.
    CHECK(json_log_line("t", "info", "session x y") == R"({"time":"t","level":"info","message":"session x y"})");
    const std::string hostile = std::string("session 1 1.2.3.4:5 'eve': said BYE: \"}\n{\"level\":\"fake\x1b[2J\\") +
                                "\xff\xfe";
    const auto line = json_log_line("t", "info", hostile);
    CHECK(line.find('\n') == std::string::npos);
    CHECK(line.find('\x1b') == std::string::npos);
    CHECK(line.find(R"(\"}\n{\"level\":\"fake\u001b[2J\\)") != std::string::npos);
    CHECK(line.find("\xff") == std::string::npos);  // invalid UTF-8 became U+FFFD
    CHECK(line.back() == '}');
}

TEST_CASE("json log: --log-format takes text or json, nothing else") {
    CHECK(set_log_format("text").empty());
    CHECK(set_log_format("xml").find("neither text nor json") != std::string::npos);
    CHECK(set_log_format("json").empty());
    CHECK(set_log_format("text").empty());
}
