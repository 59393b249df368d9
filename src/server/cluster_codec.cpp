#include "chat/server/cluster_codec.hpp"

#include "chat/proto/names.hpp"
#include "chat/proto/protocol.hpp"

namespace chat {

std::string room_token(std::string_view room) {
    static constexpr char hex[] = "0123456789abcdef";
    std::string token;
    token.reserve(2 * room.size());
    for (unsigned char c : room) {
        token.push_back(hex[c >> 4]);
        token.push_back(hex[c & 0xF]);
    }
    return token;
}

std::optional<std::string> room_from_token(std::string_view token) {
    if (token.empty() || token.size() % 2 != 0 || token.size() > 2 * max_room_length) return std::nullopt;
    auto nibble = [](char c) -> int {
        if (c >= '0' && c <= '9') return c - '0';
        if (c >= 'a' && c <= 'f') return c - 'a' + 10;
        return -1;
    };
    std::string room;
    room.reserve(token.size() / 2);
    for (std::size_t i = 0; i < token.size(); i += 2) {
        const int hi = nibble(token[i]), lo = nibble(token[i + 1]);
        if (hi < 0 || lo < 0) return std::nullopt;
        room.push_back(static_cast<char>(hi << 4 | lo));
    }
    if (!RoomName::parse(room)) return std::nullopt;
    return room;
}

std::string encode_cluster_body(std::string_view sender, std::uint64_t timestamp_ms, std::string_view text) {
    std::string body;
    const auto nick = sender.substr(0, 255);
    body.reserve(1 + nick.size() + 8 + text.size());
    body.push_back(static_cast<char>(nick.size()));
    body.append(nick);
    for (int shift = 56; shift >= 0; shift -= 8) body.push_back(static_cast<char>((timestamp_ms >> shift) & 0xFF));
    body.append(text);
    return body;
}

std::optional<ClusterBody> decode_cluster_body(std::string_view body) {
    if (body.empty()) return std::nullopt;
    const std::size_t nick_size = static_cast<unsigned char>(body[0]);
    if (body.size() < 1 + nick_size + 8) return std::nullopt;
    ClusterBody out;
    out.sender.assign(body.substr(1, nick_size));
    std::uint64_t ts = 0;
    for (std::size_t i = 0; i < 8; ++i) ts = ts << 8 | static_cast<unsigned char>(body[1 + nick_size + i]);
    out.timestamp_ms = ts;
    out.text.assign(body.substr(1 + nick_size + 8));
    // What the hub checks of a SAY, checked again: another node is no more
    // trusted than a client.
    if (!NickName::parse(out.sender) || !is_valid_text(out.text) || out.text.size() > 0xFFFF) return std::nullopt;
    return out;
}

}  // namespace chat
