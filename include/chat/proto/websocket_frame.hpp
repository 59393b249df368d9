// RFC 6455 framing for the server side, sans-io: the reader of client frames
// and the writer of server frames. No sockets, no allocation per server frame
// (a header is at most 10 bytes, built into a caller's array, so one encoded
// DELIVER can be shared by every WebSocket member as it is by every TCP one).
//
// What the reader enforces (each violation is final, with the close code the
// RFC asks for): client frames masked (5.1); RSV bits clear, no extension was
// negotiated (5.2); known opcodes only; control frames unfragmented and at
// most 125 bytes (5.5); continuations only inside a fragmented message and no
// new message inside one (5.4); lengths in their shortest form and below 2^63
// (5.2); a whole message at most `max_message` bytes (1009); a close frame's
// code one a peer may send and its reason UTF-8 (7.4, 8.1); text messages
// UTF-8 (1007), and then refused anyway: pulsechat is carried in binary
// messages only (1003).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace chat::ws {

enum class Opcode : std::uint8_t {
    continuation = 0x0,
    text = 0x1,
    binary = 0x2,
    close = 0x8,
    ping = 0x9,
    pong = 0xA,
};

// The close codes this server sends (RFC 6455 7.4.1).
enum class CloseCode : std::uint16_t {
    normal = 1000,
    going_away = 1001,      // the server shuts down
    protocol_error = 1002,  // a framing rule broken
    unsupported = 1003,     // a text message: pulsechat is binary
    no_status = 1005,       // (never sent: a close frame without a code)
    invalid_payload = 1007, // text that is not UTF-8
    policy = 1008,          // a fatal pulsechat ERROR (its code is in the reason)
    too_big = 1009,         // a message over the bound
    internal = 1011,
    try_again_later = 1013,  // refused for now (server full, too many connections)
};

// base64 (RFC 4648) of `bytes`, and Sec-WebSocket-Accept for a client's
// key: base64(SHA-1(key + the RFC's GUID)), without OpenSSL (the load
// generator builds without it; the server computes it with OpenSSL, and
// fuzz_http checks the one against the other).
std::string base64(std::span<const std::uint8_t> bytes);
std::string accept_key(std::string_view key);

// Whether a peer may send `code` in a close frame (RFC 6455 7.4).
bool is_valid_close_code(std::uint16_t code) noexcept;

// The header of an unmasked server frame carrying `payload_size` bytes, FIN
// set, into `out`; returns how many bytes of it are used (2, 4 or 10).
std::size_t encode_header(Opcode opcode, std::uint64_t payload_size, std::array<std::uint8_t, 10>& out) noexcept;

// A whole server control frame (ping, pong, close): payload clipped to 125 bytes.
std::string encode_control(Opcode opcode, std::string_view payload);
// A close frame: the code, then the reason clipped to fit 125 bytes at a
// UTF-8 character boundary (so it is still valid UTF-8).
std::string encode_close(CloseCode code, std::string_view reason);

// Reads a client's frames from the bytes it sent, incrementally.
class Reader {
public:
    struct Event {
        enum class Kind {
            data,   // bytes of a binary message (`payload`), in order; `last`: the message ends here
            ping,   // answer with a pong carrying `payload`
            pong,
            close,  // the client closes: echo `code` (no_status: none given) and close
            error,  // a violation: send a close frame with `code` and `reason`, then close
        };
        Kind kind = Kind::data;
        std::span<const std::uint8_t> payload;  // valid until the next feed()/next()
        bool last = false;
        CloseCode code = CloseCode::normal;
        std::string reason;
    };

    explicit Reader(std::size_t max_message) : max_message_(max_message) {}
    void set_max_message(std::size_t max_message) noexcept { max_message_ = max_message; }

    void feed(std::span<const std::uint8_t> bytes);
    void feed(std::string_view bytes);
    // The next event, or false when more bytes are needed. After an error or
    // a close event it returns false for good: the connection is done.
    bool next(Event& out);

    bool failed() const noexcept { return failed_; }
    bool closed() const noexcept { return closed_; }
    std::size_t buffered() const noexcept { return buffer_.size() - begin_; }
    // Gives the buffer's memory back when nothing is buffered (an idle
    // connection keeps none); a frame under way keeps its state, not its bytes.
    void release_buffer() noexcept {
        if (buffered() != 0) return;
        std::vector<std::uint8_t>().swap(buffer_);
        begin_ = 0;
    }

private:
    bool fail(Event& out, CloseCode code, std::string reason);
    void compact();

    std::size_t max_message_;
    std::vector<std::uint8_t> buffer_;
    std::size_t begin_ = 0;

    // The frame being read.
    bool in_frame_ = false;
    Opcode opcode_ = Opcode::binary;
    bool fin_ = false;
    std::array<std::uint8_t, 4> mask_{};
    std::uint64_t left_ = 0;       // payload bytes of this frame not yet taken
    std::uint64_t mask_offset_ = 0;

    // The message being read (data frames).
    bool in_message_ = false;
    Opcode message_opcode_ = Opcode::binary;
    std::uint64_t message_size_ = 0;
    std::string text_;  // a text message, kept to check its UTF-8 before refusing it

    bool failed_ = false;
    bool closed_ = false;
};

}  // namespace chat::ws
