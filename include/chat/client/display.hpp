// How the client shows what happens: lines for people (plain or coloured) or JSON objects for scripts.
//
// Pure formatting: every function returns text without a trailing newline,
// or an empty string when the event shows nothing in that style.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "chat/client/connection.hpp"
#include "chat/proto/protocol.hpp"

namespace chat {

enum class OutputStyle { plain, colour, json };

// HH:MM:SS of a Unix time in milliseconds, in local time.
std::string format_clock(std::uint64_t unix_ms);
std::uint64_t unix_now_ms();

// Text from the network made safe for a terminal: control characters (but
// tab) become U+FFFD, so a hostile peer cannot move the cursor or recolour
// the screen; invalid UTF-8 is replaced as well.
std::string terminal_safe(std::string_view text);

// The name a room is shown with: "#lobby".
std::string room_label(std::string_view room);

class EventFormatter {
public:
    explicit EventFormatter(OutputStyle style) : style_(style) {}

    OutputStyle style() const noexcept { return style_; }

    // A frame from the server; `own_nick` tells this client's own messages apart.
    std::string frame(const Message& message, const FrameNote& note, std::string_view own_nick) const;
    std::string status(const ClientStatus& status) const;
    // An error found by the client itself (a typo, a refused command).
    std::string error(std::string_view code, std::string_view text) const;
    // Help, notices and other text from the client.
    std::string info(std::string_view text) const;
    // The last line before exiting.
    std::string finished(std::string_view reason, int exit_code) const;

    // The interactive prompt, e.g. "#lobby> ", with readline's markers around colour codes.
    std::string prompt(std::string_view room) const;

private:
    std::string human(const Message& message, const FrameNote& note, std::string_view own_nick) const;
    std::string json(const Message& message, const FrameNote& note, std::string_view own_nick) const;
    // "[14:03:07] " plus text, in `colour` when colour is on.
    std::string line(std::uint64_t unix_ms, std::string_view colour, std::string_view text) const;
    std::string paint(std::string_view colour, std::string_view text) const;

    OutputStyle style_;
};

}  // namespace chat
