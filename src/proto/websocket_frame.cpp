#include "chat/proto/websocket_frame.hpp"

#include <algorithm>
#include <array>
#include <cstring>

#include "chat/proto/protocol.hpp"

namespace chat::ws {

namespace {

// SHA-1 (FIPS 180-4), for the accept key only (once per connection).
std::array<std::uint8_t, 20> sha1(std::string_view message) {
    std::uint32_t h[5] = {0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0};
    std::string m(message);
    const std::uint64_t bits = static_cast<std::uint64_t>(message.size()) * 8;
    m.push_back(static_cast<char>(0x80));
    while (m.size() % 64 != 56) m.push_back('\0');
    for (int i = 7; i >= 0; --i) m.push_back(static_cast<char>((bits >> (8 * i)) & 0xFF));
    const auto rotl = [](std::uint32_t x, int n) { return (x << n) | (x >> (32 - n)); };
    for (std::size_t block = 0; block < m.size(); block += 64) {
        std::uint32_t w[80];
        for (int t = 0; t < 16; ++t) {
            w[t] = 0;
            for (int b = 0; b < 4; ++b) w[t] = (w[t] << 8) | static_cast<std::uint8_t>(m[block + 4 * t + b]);
        }
        for (int t = 16; t < 80; ++t) w[t] = rotl(w[t - 3] ^ w[t - 8] ^ w[t - 14] ^ w[t - 16], 1);
        std::uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4];
        for (int t = 0; t < 80; ++t) {
            const std::uint32_t f = t < 20   ? ((b & c) | (~b & d))
                                    : t < 40 ? (b ^ c ^ d)
                                    : t < 60 ? ((b & c) | (b & d) | (c & d))
                                             : (b ^ c ^ d);
            const std::uint32_t k = t < 20 ? 0x5A827999 : t < 40 ? 0x6ED9EBA1 : t < 60 ? 0x8F1BBCDC : 0xCA62C1D6;
            const std::uint32_t temp = rotl(a, 5) + f + e + k + w[t];
            e = d;
            d = c;
            c = rotl(b, 30);
            b = a;
            a = temp;
        }
        h[0] += a;
        h[1] += b;
        h[2] += c;
        h[3] += d;
        h[4] += e;
    }
    std::array<std::uint8_t, 20> out{};
    for (int i = 0; i < 20; ++i) out[i] = static_cast<std::uint8_t>(h[i / 4] >> (24 - 8 * (i % 4)));
    return out;
}

std::string base64_of(const std::uint8_t* data, std::size_t size) {
    static constexpr char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    std::string out;
    for (std::size_t i = 0; i < size; i += 3) {
        std::uint32_t v = static_cast<std::uint32_t>(data[i]) << 16;
        if (i + 1 < size) v |= static_cast<std::uint32_t>(data[i + 1]) << 8;
        if (i + 2 < size) v |= data[i + 2];
        out += alphabet[(v >> 18) & 63];
        out += alphabet[(v >> 12) & 63];
        out += i + 1 < size ? alphabet[(v >> 6) & 63] : '=';
        out += i + 2 < size ? alphabet[v & 63] : '=';
    }
    return out;
}

}  // namespace

std::string base64(std::span<const std::uint8_t> bytes) { return base64_of(bytes.data(), bytes.size()); }

std::string accept_key(std::string_view key) {
    const auto digest = sha1(std::string(key) + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    return base64_of(digest.data(), digest.size());
}

bool is_valid_close_code(std::uint16_t code) noexcept {
    // 1004-1006 and 1015 are reserved or mean "no frame"; 1012-1014 are
    // registered since (service restart, try again later, bad gateway).
    if (code >= 1000 && code <= 1014) return code != 1004 && code != 1005 && code != 1006;
    return code >= 3000 && code <= 4999;
}

std::size_t encode_header(Opcode opcode, std::uint64_t payload_size, std::array<std::uint8_t, 10>& out) noexcept {
    out[0] = static_cast<std::uint8_t>(0x80 | static_cast<std::uint8_t>(opcode));
    if (payload_size < 126) {
        out[1] = static_cast<std::uint8_t>(payload_size);
        return 2;
    }
    if (payload_size <= 0xFFFF) {
        out[1] = 126;
        out[2] = static_cast<std::uint8_t>(payload_size >> 8);
        out[3] = static_cast<std::uint8_t>(payload_size);
        return 4;
    }
    out[1] = 127;
    for (int i = 0; i < 8; ++i) out[2 + i] = static_cast<std::uint8_t>(payload_size >> (56 - 8 * i));
    return 10;
}

std::string encode_control(Opcode opcode, std::string_view payload) {
    payload = payload.substr(0, 125);
    std::array<std::uint8_t, 10> header{};
    const std::size_t n = encode_header(opcode, payload.size(), header);
    std::string frame(reinterpret_cast<const char*>(header.data()), n);
    frame.append(payload);
    return frame;
}

std::string encode_close(CloseCode code, std::string_view reason) {
    std::size_t keep = std::min<std::size_t>(reason.size(), 123);
    // Back off to a character boundary: never cut a UTF-8 sequence in two.
    while (keep > 0 && keep < reason.size() && (static_cast<unsigned char>(reason[keep]) & 0xC0) == 0x80) --keep;
    std::string payload;
    const auto value = static_cast<std::uint16_t>(code);
    payload.push_back(static_cast<char>(value >> 8));
    payload.push_back(static_cast<char>(value & 0xFF));
    payload.append(reason.substr(0, keep));
    if (!is_valid_utf8(std::string_view(payload).substr(2))) payload.resize(2);
    return encode_control(Opcode::close, payload);
}

void Reader::feed(std::span<const std::uint8_t> bytes) {
    if (failed_ || closed_) return;
    compact();
    buffer_.insert(buffer_.end(), bytes.begin(), bytes.end());
}

void Reader::feed(std::string_view bytes) {
    feed(std::span<const std::uint8_t>(reinterpret_cast<const std::uint8_t*>(bytes.data()), bytes.size()));
}

void Reader::compact() {
    if (begin_ == 0) return;
    buffer_.erase(buffer_.begin(), buffer_.begin() + static_cast<std::ptrdiff_t>(begin_));
    begin_ = 0;
}

bool Reader::fail(Event& out, CloseCode code, std::string reason) {
    failed_ = true;
    buffer_.clear();
    begin_ = 0;
    out = Event{};
    out.kind = Event::Kind::error;
    out.code = code;
    out.reason = std::move(reason);
    return true;
}

bool Reader::next(Event& out) {
    if (failed_ || closed_) return false;
    for (;;) {
        const std::size_t available = buffer_.size() - begin_;
        const std::uint8_t* p = buffer_.data() + begin_;
        if (!in_frame_) {
            if (available < 2) return false;
            const bool fin = (p[0] & 0x80) != 0;
            if ((p[0] & 0x70) != 0) return fail(out, CloseCode::protocol_error, "reserved bits set");
            const auto op = static_cast<std::uint8_t>(p[0] & 0x0F);
            if ((p[1] & 0x80) == 0) return fail(out, CloseCode::protocol_error, "a client frame must be masked");
            std::uint64_t length = p[1] & 0x7F;
            std::size_t header = 2;
            if (length == 126) {
                if (available < 4) return false;
                length = static_cast<std::uint64_t>(p[2]) << 8 | p[3];
                if (length < 126) return fail(out, CloseCode::protocol_error, "length not in its shortest form");
                header = 4;
            } else if (length == 127) {
                if (available < 10) return false;
                length = 0;
                for (int i = 0; i < 8; ++i) length = length << 8 | p[2 + i];
                if (length >> 63) return fail(out, CloseCode::protocol_error, "length over 2^63");
                if (length <= 0xFFFF) return fail(out, CloseCode::protocol_error, "length not in its shortest form");
                header = 10;
            }
            if (available < header + 4) return false;
            const bool control = (op & 0x8) != 0;
            switch (op) {
                case 0x0:
                    if (!in_message_) return fail(out, CloseCode::protocol_error, "a continuation outside a message");
                    break;
                case 0x1:
                case 0x2:
                    if (in_message_) return fail(out, CloseCode::protocol_error, "a new message inside a fragmented one");
                    break;
                case 0x8:
                case 0x9:
                case 0xA:
                    if (!fin) return fail(out, CloseCode::protocol_error, "a fragmented control frame");
                    if (length > 125) return fail(out, CloseCode::protocol_error, "a control frame over 125 bytes");
                    break;
                default:
                    return fail(out, CloseCode::protocol_error, "unknown opcode " + std::to_string(op));
            }
            if (!control) {
                const std::uint64_t total = (op == 0x0 ? message_size_ : 0) + length;
                if (total > max_message_)
                    return fail(out, CloseCode::too_big,
                                "message over " + std::to_string(max_message_) + " bytes");
                if (op != 0x0) {
                    in_message_ = true;
                    message_opcode_ = static_cast<Opcode>(op);
                    message_size_ = 0;
                    text_.clear();
                }
                message_size_ = total;
            }
            std::copy_n(p + header, 4, mask_.begin());
            opcode_ = static_cast<Opcode>(op);
            fin_ = fin;
            left_ = length;
            mask_offset_ = 0;
            in_frame_ = true;
            begin_ += header + 4;
            continue;
        }

        const bool control = (static_cast<std::uint8_t>(opcode_) & 0x8) != 0;
        if (control) {
            // Whole control frames only (at most 125 bytes).
            if (available < left_) return false;
            auto* payload = buffer_.data() + begin_;
            for (std::uint64_t i = 0; i < left_; ++i) payload[i] ^= mask_[i % 4];
            const auto size = static_cast<std::size_t>(left_);
            begin_ += size;
            in_frame_ = false;
            out = Event{};
            out.payload = std::span<const std::uint8_t>(payload, size);
            if (opcode_ == Opcode::ping) {
                out.kind = Event::Kind::ping;
                return true;
            }
            if (opcode_ == Opcode::pong) {
                out.kind = Event::Kind::pong;
                return true;
            }
            // close
            if (size == 1) return fail(out, CloseCode::protocol_error, "a close frame of one byte");
            out.kind = Event::Kind::close;
            out.code = CloseCode::no_status;
            if (size >= 2) {
                const auto code = static_cast<std::uint16_t>(payload[0] << 8 | payload[1]);
                if (!is_valid_close_code(code))
                    return fail(out, CloseCode::protocol_error, "close code " + std::to_string(code));
                const std::string_view reason(reinterpret_cast<const char*>(payload) + 2, size - 2);
                if (!is_valid_utf8(reason)) return fail(out, CloseCode::invalid_payload, "close reason not UTF-8");
                out.code = static_cast<CloseCode>(code);
                out.reason.assign(reason);
            }
            closed_ = true;
            return true;
        }

        // Data: hand out what is here, unmasked in place.
        if (left_ > 0 && available == 0) return false;
        const auto take = static_cast<std::size_t>(std::min<std::uint64_t>(left_, available));
        auto* payload = buffer_.data() + begin_;
        for (std::size_t i = 0; i < take; ++i) payload[i] ^= mask_[(mask_offset_ + i) % 4];
        mask_offset_ += take;
        left_ -= take;
        begin_ += take;
        const bool frame_done = left_ == 0;
        if (frame_done) in_frame_ = false;
        const bool message_done = frame_done && fin_;
        if (message_opcode_ == Opcode::text) {
            text_.append(reinterpret_cast<const char*>(payload), take);
            if (!message_done) continue;
            in_message_ = false;
            if (!is_valid_utf8(text_)) return fail(out, CloseCode::invalid_payload, "a text message that is not UTF-8");
            return fail(out, CloseCode::unsupported, "pulsechat is carried in binary messages");
        }
        if (message_done) in_message_ = false;
        if (take == 0 && !message_done) continue;  // an empty fragment
        out = Event{};
        out.kind = Event::Kind::data;
        out.payload = std::span<const std::uint8_t>(payload, take);
        out.last = message_done;
        return true;
    }
}

}  // namespace chat::ws
