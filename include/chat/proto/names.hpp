// Validated names and bounded strings: what may reach the hub, and what may go
// back out in a frame or a log line built from client data.
//
// Pure code, standard library only. A RoomName or a NickName exists only if its
// text passed the rules of PROTOCOL.md section 4, so the hub, which takes
// only these types, cannot be handed an unchecked string. Both keep their
// bytes inline (the rules bound their length), so making, copying and
// hashing one allocates nothing.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>

#include "chat/proto/protocol.hpp"

namespace chat {

namespace detail {
template <std::size_t Capacity, bool (*Valid)(std::string_view) noexcept>
class BoundedName {
public:
    static constexpr std::size_t capacity = Capacity;

    // The name, if `text` follows the rules; nothing otherwise.
    static std::optional<BoundedName> parse(std::string_view text) noexcept {
        if (!Valid(text)) return std::nullopt;
        BoundedName name;
        name.size_ = static_cast<std::uint8_t>(text.size());
        text.copy(name.bytes_.data(), text.size());
        return name;
    }

    std::string_view view() const noexcept { return {bytes_.data(), size_}; }
    std::string str() const { return std::string(view()); }
    operator std::string_view() const noexcept { return view(); }
    std::size_t size() const noexcept { return size_; }

    friend bool operator==(const BoundedName& a, const BoundedName& b) noexcept { return a.view() == b.view(); }
    friend bool operator==(const BoundedName& a, std::string_view b) noexcept { return a.view() == b; }
    friend auto operator<=>(const BoundedName& a, const BoundedName& b) noexcept { return a.view() <=> b.view(); }

private:
    BoundedName() = default;
    std::array<char, Capacity> bytes_{};
    std::uint8_t size_ = 0;
};
}  // namespace detail

// A room name that follows PROTOCOL.md section 4 (is_valid_room).
using RoomName = detail::BoundedName<max_room_length, is_valid_room>;
// A nickname that follows PROTOCOL.md section 4 (is_valid_nick).
using NickName = detail::BoundedName<max_nick_length, is_valid_nick>;

// Longest client-supplied text the server copies into a frame it builds
// (ERROR reasons, PRESENCE details, BYE reasons): far below a str16's 65,535.
inline constexpr std::size_t max_reason_length = 256;

// The longest prefix of `text` of at most `limit` bytes that does not end in
// the middle of a UTF-8 sequence. Never throws past std::bad_alloc.
std::string_view clip_utf8(std::string_view text, std::size_t limit) noexcept;
// The same, with "..." appended when something was cut; any byte that is not
// valid UTF-8 becomes '?', so the result always fits a frame.
std::string clip_reason(std::string_view text, std::size_t limit = max_reason_length);

// Longest client-supplied string a log line quotes.
inline constexpr std::size_t max_logged_length = 128;
// `text` made safe for one log line: control characters (C0, DEL, C1, and so
// newline and ESC) and backslashes escaped as \n, \t, \xNN or \\, bytes that
// are not UTF-8 as \xNN, cut after `limit` bytes of input with "...".
std::string log_safe(std::string_view text, std::size_t limit = max_logged_length);

// ERROR and PRESENCE as the server builds them from anything a client said:
// the free-text fields are clipped, so encoding them cannot fail.
Error make_error(ErrorCode code, std::string_view reason, bool fatal = false);
Presence make_presence(const RoomName& room, const NickName& nick, PresenceEvent event, std::string_view detail = {});
Bye make_bye(std::string_view reason);

}  // namespace chat

template <std::size_t C, bool (*V)(std::string_view) noexcept>
struct std::hash<chat::detail::BoundedName<C, V>> {
    std::size_t operator()(const chat::detail::BoundedName<C, V>& name) const noexcept {
        return std::hash<std::string_view>{}(name.view());
    }
};
