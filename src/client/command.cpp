#include "chat/client/command.hpp"

#include <array>

#include "chat/proto/protocol.hpp"

namespace chat::command {
namespace {

constexpr std::string_view blanks = " \t";

std::string_view trim(std::string_view s) {
    const auto first = s.find_first_not_of(blanks);
    if (first == std::string_view::npos) return {};
    const auto last = s.find_last_not_of(blanks);
    return s.substr(first, last - first + 1);
}

// Splits off the first word; `rest` is what follows, trimmed.
std::string_view first_word(std::string_view s, std::string_view& rest) {
    s = trim(s);
    const auto end = s.find_first_of(blanks);
    if (end == std::string_view::npos) {
        rest = {};
        return s;
    }
    rest = trim(s.substr(end));
    return s.substr(0, end);
}

std::optional<Error> check_room(std::string_view room) {
    if (is_valid_room(room)) return std::nullopt;
    return Error{"'" + std::string(room) +
                 "' is not a room name: 1-64 letters, digits, '_', '-', '.', '#', starting with a letter, digit "
                 "or '#'"};
}

std::optional<Error> check_nick(std::string_view nick) {
    if (is_valid_nick(nick)) return std::nullopt;
    return Error{"'" + std::string(nick) +
                 "' is not a nickname: 1-32 letters, digits, '_', '-', '.', starting with a letter or digit"};
}

std::optional<Error> check_text(std::string_view text) {
    if (is_valid_text(text)) return std::nullopt;
    return Error{"a message must be valid UTF-8 without control characters"};
}

struct Usage {
    std::string_view name;
    std::string_view synopsis;
    std::string_view what;
};

constexpr std::array<Usage, 10> usages{{
    {"join", "/join ROOM", "join ROOM (it becomes the current room)"},
    {"leave", "/leave [ROOM]", "leave ROOM, or the current room"},
    {"switch", "/switch ROOM", "make ROOM, which you are in, the current room"},
    {"rooms", "/rooms", "list the server's rooms"},
    {"who", "/who [ROOM]", "list who is in ROOM, or in the current room"},
    {"nick", "/nick NAME", "change your nickname"},
    {"msg", "/msg NICK TEXT", "send TEXT to NICK only"},
    {"help", "/help", "show this help"},
    {"quit", "/quit", "say goodbye and exit (also /exit, Ctrl-D, Ctrl-C)"},
    {"exit", "/exit", "the same as /quit"},
}};

Error usage_error(std::string_view name) {
    for (const auto& u : usages)
        if (u.name == name) return Error{"usage: " + std::string(u.synopsis)};
    return Error{"unknown command"};
}

}  // namespace

Command parse(std::string_view line) {
    // A pasted line may end in CR; a line of blanks says nothing.
    while (!line.empty() && (line.back() == '\r' || line.back() == '\n')) line.remove_suffix(1);
    if (trim(line).empty()) return Empty{};
    if (line.front() != '/') {
        if (auto e = check_text(line)) return *e;
        return Say{std::string(line)};
    }
    if (line.size() > 1 && line[1] == '/') {
        // "//" escapes a message that starts with a slash.
        const auto text = line.substr(1);
        if (auto e = check_text(text)) return *e;
        return Say{std::string(text)};
    }

    std::string_view rest;
    const std::string_view name = first_word(line.substr(1), rest);
    std::string_view tail;

    if (name == "join" || name == "switch") {
        const auto room = first_word(rest, tail);
        if (room.empty() || !tail.empty()) return usage_error(name);
        if (auto e = check_room(room)) return *e;
        if (name == "join") return Join{std::string(room)};
        return Switch{std::string(room)};
    }
    if (name == "leave" || name == "who") {
        const auto room = first_word(rest, tail);
        if (!tail.empty()) return usage_error(name);
        std::optional<std::string> target;
        if (!room.empty()) {
            if (auto e = check_room(room)) return *e;
            target = std::string(room);
        }
        if (name == "leave") return Leave{target};
        return Who{target};
    }
    if (name == "rooms" || name == "list") {
        if (!rest.empty()) return usage_error("rooms");
        return Rooms{};
    }
    if (name == "nick") {
        const auto nick = first_word(rest, tail);
        if (nick.empty() || !tail.empty()) return usage_error(name);
        if (auto e = check_nick(nick)) return *e;
        return Nick{std::string(nick)};
    }
    if (name == "msg") {
        const auto nick = first_word(rest, tail);
        if (nick.empty() || tail.empty()) return usage_error(name);
        if (auto e = check_nick(nick)) return *e;
        if (auto e = check_text(tail)) return *e;
        return Msg{std::string(nick), std::string(tail)};
    }
    if (name == "help") return Help{};
    if (name == "quit" || name == "exit") return Quit{};
    if (name.empty()) return Error{"a lone '/' is not a command; /help lists them, '//text' says '/text'"};
    return Error{"unknown command '/" + std::string(name) +
                 "' (nothing was sent); /help lists the commands, '//text' says a line starting with '/'"};
}

std::string_view help_text() {
    static const std::string text = [] {
        std::string t = "commands:";
        for (const auto& u : usages) {
            t += "\n  ";
            t += u.synopsis;
            t.append(16 - std::min<std::size_t>(15, u.synopsis.size()), ' ');
            t += u.what;
        }
        t += "\nany other line is said in the current room; start it with '//' to say a line beginning with '/'";
        return t;
    }();
    return text;
}

}  // namespace chat::command
