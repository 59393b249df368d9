#include "chat/proto/names.hpp"

namespace chat {

std::string_view clip_utf8(std::string_view text, std::size_t limit) noexcept {
    if (text.size() <= limit) return text;
    std::size_t end = limit;
    // Step back over continuation bytes (10xxxxxx) to the start of the
    // sequence that the cut would split, and drop that sequence.
    while (end > 0 && (static_cast<unsigned char>(text[end]) & 0xC0) == 0x80) --end;
    return text.substr(0, end);
}

namespace {
// Every byte that is not part of a valid UTF-8 sequence becomes '?': a frame
// the server builds must decode, whatever a caller handed in.
void repair_utf8(std::string& text) {
    if (is_valid_utf8(text)) return;
    std::string out;
    out.reserve(text.size());
    for (std::size_t i = 0; i < text.size();) {
        std::size_t n = 1;
        const auto b = static_cast<unsigned char>(text[i]);
        if (b >= 0x80) {
            n = b >= 0xF0 ? 4 : b >= 0xE0 ? 3 : 2;
            if (i + n > text.size() || !is_valid_utf8(std::string_view(text).substr(i, n))) {
                out += '?';
                ++i;
                continue;
            }
        }
        out.append(text, i, n);
        i += n;
    }
    text.swap(out);
}
}  // namespace

std::string clip_reason(std::string_view text, std::size_t limit) {
    std::string out;
    if (text.size() <= limit) {
        out.assign(text);
    } else if (limit < 3) {
        // Too small for the marker: the longest whole-character prefix, unmarked.
        out.assign(clip_utf8(text, limit));
    } else {
        out.assign(clip_utf8(text, limit - 3));
        out += "...";
    }
    repair_utf8(out);
    return out;
}

namespace {
// Length of the valid UTF-8 sequence starting at text[i], or 0.
std::size_t utf8_sequence(std::string_view text, std::size_t i) noexcept {
    const auto b = static_cast<unsigned char>(text[i]);
    std::size_t n = 0;
    if (b >= 0xC2 && b <= 0xDF)
        n = 2;
    else if (b >= 0xE0 && b <= 0xEF)
        n = 3;
    else if (b >= 0xF0 && b <= 0xF4)
        n = 4;
    else
        return 0;
    if (i + n > text.size()) return 0;
    return is_valid_utf8(text.substr(i, n)) ? n : 0;
}
}  // namespace

std::string log_safe(std::string_view text, std::size_t limit) {
    static constexpr char hex[] = "0123456789abcdef";
    const bool cut = text.size() > limit;
    if (cut) text = clip_utf8(text, limit);
    std::string out;
    out.reserve(text.size() + 8);
    for (std::size_t i = 0; i < text.size();) {
        const auto b = static_cast<unsigned char>(text[i]);
        if (b >= 0x20 && b < 0x7F && b != '\\') {
            out += static_cast<char>(b);
            ++i;
            continue;
        }
        if (b == '\\') {
            out += "\\\\";
            ++i;
            continue;
        }
        if (b == '\n' || b == '\t' || b == '\r') {
            out += '\\';
            out += b == '\n' ? 'n' : b == '\t' ? 't' : 'r';
            ++i;
            continue;
        }
        if (b >= 0x80) {
            const std::size_t n = utf8_sequence(text, i);
            // U+0080..U+009F (C1 controls) are C2 80..C2 9F: escaped like C0.
            const bool c1 = n == 2 && b == 0xC2 && static_cast<unsigned char>(text[i + 1]) < 0xA0;
            if (n > 0 && !c1) {
                out.append(text.substr(i, n));
                i += n;
                continue;
            }
        }
        out += "\\x";
        out += hex[b >> 4];
        out += hex[b & 0xF];
        ++i;
    }
    if (cut) out += "...";
    return out;
}

Error make_error(ErrorCode code, std::string_view reason, bool fatal) {
    return Error{code, clip_reason(reason), fatal};
}

Presence make_presence(const RoomName& room, const NickName& nick, PresenceEvent event, std::string_view detail) {
    return Presence{room.str(), nick.str(), event, clip_reason(detail)};
}

Bye make_bye(std::string_view reason) { return Bye{clip_reason(reason)}; }

}  // namespace chat
