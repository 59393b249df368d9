// What a line typed into the client means: a message for the current room or a /command.
//
// Pure parsing, no I/O: the client app acts on the result. A line that looks
// like a command but is not one is a CommandError, never a message, so a typo
// such as "/jion dev" is not said to the room by mistake.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <variant>

namespace chat::command {

struct Say {
    std::string text;
    friend bool operator==(const Say&, const Say&) = default;
};
struct Join {
    std::string room;
    friend bool operator==(const Join&, const Join&) = default;
};
struct Leave {
    std::optional<std::string> room;  // none: the current room
    friend bool operator==(const Leave&, const Leave&) = default;
};
struct Switch {
    std::string room;
    friend bool operator==(const Switch&, const Switch&) = default;
};
struct Rooms {
    friend bool operator==(const Rooms&, const Rooms&) = default;
};
struct Who {
    std::optional<std::string> room;  // none: the current room
    friend bool operator==(const Who&, const Who&) = default;
};
struct Nick {
    std::string nick;
    friend bool operator==(const Nick&, const Nick&) = default;
};
struct Msg {
    std::string nick;
    std::string text;
    friend bool operator==(const Msg&, const Msg&) = default;
};
struct Help {
    friend bool operator==(const Help&, const Help&) = default;
};
struct Quit {
    friend bool operator==(const Quit&, const Quit&) = default;
};
// A blank line: nothing to do.
struct Empty {
    friend bool operator==(const Empty&, const Empty&) = default;
};
// Not a valid command; `message` says why and what to type instead.
struct Error {
    std::string message;
    friend bool operator==(const Error&, const Error&) = default;
};

using Command = std::variant<Say, Join, Leave, Switch, Rooms, Who, Nick, Msg, Help, Quit, Empty, Error>;

// A line without '/' is said in the current room; "//text" says "/text".
// Names are checked here (is_valid_room, is_valid_nick, is_valid_text), so
// the server is not asked what the client can already tell is wrong.
Command parse(std::string_view line);

// The text /help prints: one line per command.
std::string_view help_text();

}  // namespace chat::command
