// The client side of RFC 6455 for chat_bench --ws, sans-io: the opening
// handshake's request and the check of its answer, masked client frames, and
// a reader of server frames that works in place on the bytes a read brought.
//
// Built for the generator's hot path: the reader moves the payload of binary
// frames to the front of the read buffer over the frame headers (the bytes
// then go straight to the pulsechat Decoder) and keeps only a frame header's
// worth of state between reads; the writer masks a whole batch of pulsechat
// frames into one binary message with a 64-bit XOR. Neither allocates per
// message. The server's Reader (proto/websocket_frame.hpp) is not used here:
// it reads masked client frames and copies every message.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

namespace chat::bench::ws {

// --- the opening handshake (RFC 6455 4.1) ---

// base64 of 16 bytes: a fresh Sec-WebSocket-Key from `random`.
std::string make_key(const std::array<std::uint8_t, 16>& random);
// base64(SHA-1(key + the RFC's GUID)): what the server must answer.
std::string accept_key(std::string_view key);

// The GET that asks for the upgrade, offering `protocol` (no Origin: not a browser).
std::string upgrade_request(std::string_view host, std::string_view path, std::string_view key,
                            std::string_view protocol);

struct UpgradeResult {
    enum class Status { need_more, accepted, refused };
    Status status = Status::need_more;
    std::size_t head_size = 0;  // accepted: bytes of the HTTP head; what follows is WebSocket
    std::string reason;         // refused: why (the status line, or what is missing)
};

// Checks the server's answer at the front of `in`: 101, Upgrade: websocket,
// Connection: upgrade, the right Sec-WebSocket-Accept and `protocol` selected.
UpgradeResult check_upgrade_response(std::string_view in, std::string_view key, std::string_view protocol);

// --- client frames: FIN set, masked (RFC 6455 5.3) ---

inline constexpr std::uint8_t op_continuation = 0x0, op_text = 0x1, op_binary = 0x2, op_close = 0x8, op_ping = 0x9,
                              op_pong = 0xA;

// Appends one masked frame carrying `payload` to `out`.
void append_masked(std::string& out, std::uint8_t opcode, std::string_view payload, std::array<std::uint8_t, 4> mask);
// A close frame with `code` (and no reason).
void append_close(std::string& out, std::uint16_t code, std::array<std::uint8_t, 4> mask);

// --- server frames ---

// Reads the server's frames in place. filter() is given each read's bytes;
// it moves the payload of binary (and continuation) frames to the front and
// says how many there are: those are pulsechat bytes, in order, whatever the
// message boundaries. Control frames are taken out on the way: the latest
// ping's payload waits in ping() to be answered (RFC 6455 5.5.3 lets a client
// answer only the latest), a close ends the reading.
class Reader {
public:
    explicit Reader(std::uint64_t max_frame) : max_frame_(max_frame) {}

    struct Result {
        std::size_t data = 0;  // payload bytes now at the front of the span
        bool ping = false;     // a ping arrived: answer with a pong carrying ping()
    };
    Result filter(std::span<std::uint8_t> bytes);

    std::string_view ping() const noexcept {
        return {reinterpret_cast<const char*>(ping_.data()), ping_size_};
    }
    // A close frame arrived (code 1005 if it had none) or the server broke the
    // framing (failed(), with why in error()); either way nothing more is read.
    bool closed() const noexcept { return closed_; }
    std::uint16_t close_code() const noexcept { return close_code_; }
    std::string_view close_reason() const noexcept {
        return control_size_ > 2 ? std::string_view(reinterpret_cast<const char*>(control_.data()) + 2, control_size_ - 2)
                                 : std::string_view{};
    }
    bool failed() const noexcept { return !error_.empty(); }
    const std::string& error() const noexcept { return error_; }

private:
    void fail(std::string reason);
    bool start_frame();  // header_ is whole: sets up the frame

    std::uint64_t max_frame_;
    std::array<std::uint8_t, 14> header_{};
    std::size_t header_size_ = 0;  // bytes of the next frame's header gathered
    bool in_frame_ = false;
    std::uint8_t opcode_ = 0;      // of the frame being read
    std::uint64_t left_ = 0;       // its payload bytes still to come
    bool in_message_ = false;      // a fragmented binary message is under way
    std::array<std::uint8_t, 125> control_{};
    std::size_t control_size_ = 0;
    std::array<std::uint8_t, 125> ping_{};
    std::size_t ping_size_ = 0;
    bool closed_ = false;
    std::uint16_t close_code_ = 0;
    std::string error_;
};

}  // namespace chat::bench::ws
