#include "chat/bench/ws_client.hpp"

#include "chat/proto/websocket_frame.hpp"

#include <algorithm>
#include <cctype>
#include <cstring>

#include <fmt/format.h>

namespace chat::bench::ws {

namespace {

std::string_view trim(std::string_view s) {
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
    return s;
}

bool iequal(std::string_view a, std::string_view b) {
    return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
               return std::tolower(static_cast<unsigned char>(x)) == std::tolower(static_cast<unsigned char>(y));
           });
}

bool has_token(std::string_view list, std::string_view token) {
    while (true) {
        const auto comma = list.find(',');
        if (iequal(trim(list.substr(0, comma)), token)) return true;
        if (comma == std::string_view::npos) return false;
        list.remove_prefix(comma + 1);
    }
}

// XORs `size` bytes at `p` with the mask, the mask's first byte on p[0].
void apply_mask(std::uint8_t* p, std::size_t size, std::array<std::uint8_t, 4> mask) {
    std::uint8_t pattern[8];
    for (int i = 0; i < 8; ++i) pattern[i] = mask[static_cast<std::size_t>(i % 4)];
    std::uint64_t word_mask = 0;
    std::memcpy(&word_mask, pattern, 8);
    std::size_t i = 0;
    for (; i + 8 <= size; i += 8) {
        std::uint64_t word = 0;
        std::memcpy(&word, p + i, 8);
        word ^= word_mask;
        std::memcpy(p + i, &word, 8);
    }
    for (; i < size; ++i) p[i] ^= mask[i % 4];
}

}  // namespace

std::string make_key(const std::array<std::uint8_t, 16>& random) { return chat::ws::base64(random); }

std::string accept_key(std::string_view key) { return chat::ws::accept_key(key); }

std::string upgrade_request(std::string_view host, std::string_view path, std::string_view key,
                            std::string_view protocol) {
    std::string out = fmt::format(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {}\r\n"
        "Sec-WebSocket-Version: 13\r\n",
        path, host, key);
    if (!protocol.empty()) out += fmt::format("Sec-WebSocket-Protocol: {}\r\n", protocol);
    out += "\r\n";
    return out;
}

UpgradeResult check_upgrade_response(std::string_view in, std::string_view key, std::string_view protocol) {
    constexpr std::size_t max_head = 8 * 1024;
    UpgradeResult result;
    const auto end = in.find("\r\n\r\n");
    if (end == std::string_view::npos) {
        if (in.size() > max_head) {
            result.status = UpgradeResult::Status::refused;
            result.reason = "the answer to the upgrade has no end of head";
        }
        return result;
    }
    result.head_size = end + 4;
    result.status = UpgradeResult::Status::refused;
    std::string_view head = in.substr(0, end + 2);
    const auto first_eol = head.find("\r\n");
    const std::string_view status_line = head.substr(0, first_eol);
    if (status_line.substr(0, 13) != "HTTP/1.1 101 " && status_line != "HTTP/1.1 101") {
        result.reason = fmt::format("the upgrade was refused: {}", status_line);
        return result;
    }
    head.remove_prefix(first_eol + 2);
    bool upgrade = false, connection = false, accepted = false, selected = protocol.empty();
    const std::string want_accept = accept_key(key);
    while (!head.empty()) {
        const auto eol = head.find("\r\n");
        const std::string_view line = head.substr(0, eol);
        head.remove_prefix(eol + 2);
        const auto colon = line.find(':');
        if (colon == std::string_view::npos) continue;
        const std::string_view name = line.substr(0, colon);
        const std::string_view value = trim(line.substr(colon + 1));
        if (iequal(name, "upgrade")) upgrade = has_token(value, "websocket");
        else if (iequal(name, "connection")) connection = has_token(value, "upgrade");
        else if (iequal(name, "sec-websocket-accept")) accepted = value == want_accept;
        else if (iequal(name, "sec-websocket-protocol")) selected = value == protocol;
    }
    if (!upgrade || !connection) result.reason = "101 without Upgrade: websocket and Connection: upgrade";
    else if (!accepted) result.reason = "101 without the right Sec-WebSocket-Accept";
    else if (!selected) result.reason = fmt::format("101 without Sec-WebSocket-Protocol: {}", protocol);
    else result.status = UpgradeResult::Status::accepted;
    return result;
}

void append_masked(std::string& out, std::uint8_t opcode, std::string_view payload, std::array<std::uint8_t, 4> mask) {
    const std::size_t size = payload.size();
    std::uint8_t header[14];
    std::size_t h = 0;
    header[h++] = static_cast<std::uint8_t>(0x80 | opcode);
    if (size < 126) {
        header[h++] = static_cast<std::uint8_t>(0x80 | size);
    } else if (size <= 0xFFFF) {
        header[h++] = 0x80 | 126;
        header[h++] = static_cast<std::uint8_t>(size >> 8);
        header[h++] = static_cast<std::uint8_t>(size);
    } else {
        header[h++] = 0x80 | 127;
        for (int i = 7; i >= 0; --i) header[h++] = static_cast<std::uint8_t>(static_cast<std::uint64_t>(size) >> (8 * i));
    }
    for (auto b : mask) header[h++] = b;
    const std::size_t at = out.size();
    out.resize(at + h + size);
    auto* p = reinterpret_cast<std::uint8_t*>(out.data()) + at;
    std::memcpy(p, header, h);
    if (size != 0) std::memcpy(p + h, payload.data(), size);
    apply_mask(p + h, size, mask);
}

void append_close(std::string& out, std::uint16_t code, std::array<std::uint8_t, 4> mask) {
    const char payload[2] = {static_cast<char>(code >> 8), static_cast<char>(code & 0xFF)};
    append_masked(out, op_close, std::string_view(payload, 2), mask);
}

// --- Reader ---

void Reader::fail(std::string reason) {
    error_ = std::move(reason);
    closed_ = true;
}

bool Reader::start_frame() {
    const std::uint8_t b0 = header_[0], b1 = header_[1];
    const bool fin = (b0 & 0x80) != 0;
    opcode_ = b0 & 0x0F;
    std::uint64_t size = b1 & 0x7F;
    if (size == 126) {
        size = (std::uint64_t{header_[2]} << 8) | header_[3];
        if (size < 126) return fail("a length not in its shortest form"), false;
    } else if (size == 127) {
        size = 0;
        for (int i = 0; i < 8; ++i) size = (size << 8) | header_[2 + static_cast<std::size_t>(i)];
        if (size <= 0xFFFF || (size >> 63) != 0) return fail("a length not in its shortest form"), false;
    }
    if ((opcode_ & 0x08) != 0) {
        if (opcode_ != op_close && opcode_ != op_ping && opcode_ != op_pong)
            return fail(fmt::format("unknown control opcode {:#x}", opcode_)), false;
        if (!fin || size > 125) return fail("a fragmented or long control frame"), false;
    } else if (opcode_ == op_text) {
        return fail("a text message (pulsechat is carried in binary messages)"), false;
    } else if (opcode_ == op_binary) {
        if (in_message_) return fail("a new message inside a fragmented one"), false;
        in_message_ = !fin;
    } else if (opcode_ == op_continuation) {
        if (!in_message_) return fail("a continuation outside a fragmented message"), false;
        in_message_ = !fin;
    } else {
        return fail(fmt::format("unknown opcode {:#x}", opcode_)), false;
    }
    if ((opcode_ & 0x08) == 0 && size > max_frame_)
        return fail(fmt::format("a frame of {} bytes, over the bound of {}", size, max_frame_)), false;
    in_frame_ = true;
    left_ = size;
    control_size_ = 0;
    header_size_ = 0;
    return true;
}

Reader::Result Reader::filter(std::span<std::uint8_t> bytes) {
    Result result;
    std::uint8_t* const p = bytes.data();
    const std::size_t n = bytes.size();
    std::size_t at = 0;
    while (!closed_) {
        if (!in_frame_) {
            if (at == n) break;
            // The header: 2 bytes, then the extended length (a server's frames carry no mask).
            while (header_size_ < 2 && at < n) header_[header_size_++] = p[at++];
            if (header_size_ < 2) break;
            if ((header_[0] & 0x70) != 0) {
                fail("RSV bits set (no extension was negotiated)");
                break;
            }
            if ((header_[1] & 0x80) != 0) {
                fail("a masked frame from the server");
                break;
            }
            const std::size_t len7 = header_[1] & 0x7F;
            const std::size_t need = 2 + (len7 == 126 ? 2 : len7 == 127 ? 8 : 0);
            while (header_size_ < need && at < n) header_[header_size_++] = p[at++];
            if (header_size_ < need) break;
            if (!start_frame()) break;
        }
        const std::size_t take = static_cast<std::size_t>(std::min<std::uint64_t>(left_, n - at));
        if ((opcode_ & 0x08) == 0) {
            // Over the header bytes already passed: the data only ever moves towards the front.
            if (take != 0 && p + result.data != p + at) std::memmove(p + result.data, p + at, take);
            result.data += take;
        } else {
            std::memcpy(control_.data() + control_size_, p + at, take);
            control_size_ += take;
        }
        at += take;
        left_ -= take;
        if (left_ != 0) break;  // (at == n)
        in_frame_ = false;
        if (opcode_ == op_ping) {
            ping_ = control_;
            ping_size_ = control_size_;
            result.ping = true;
        } else if (opcode_ == op_close) {
            closed_ = true;
            close_code_ = control_size_ >= 2
                              ? static_cast<std::uint16_t>((control_[0] << 8) | control_[1])
                              : std::uint16_t{1005};
        }
    }
    return result;
}

}  // namespace chat::bench::ws
