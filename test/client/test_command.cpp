// The client's command line: what a typed line means.
#include <doctest/doctest.h>

#include <string>
#include <variant>

#include "chat/client/command.hpp"

using namespace chat;

TEST_SUITE("command") {
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
}
