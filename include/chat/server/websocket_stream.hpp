// A WebSocket connection as one more stream type for Session<Stream>: the
// transport underneath (a TCP socket, or a TlsSocket for wss) and what RFC
// 6455 adds on top of it, for the session to read and write through.
//
// The session reads bytes from next_layer() and feeds them to reader(); the
// binary messages' payloads are a pulsechat byte stream, fed to the session's
// Decoder like a TCP stream's bytes. Writing, everything the core hands the
// transport in one batch becomes one binary message: a header of at most 10
// bytes (start_message()) in front of the batch's shared frames, gathered in
// one write like the TCP path, so one encoded DELIVER is still shared by
// every member, TCP and WebSocket alike (server frames are not masked).
// Control frames the transport adds itself (pongs, the close) wait in
// control_ for a message boundary: a control frame may not cut a frame.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>

#include "chat/proto/websocket_frame.hpp"
#include "chat/server/metrics.hpp"

namespace chat {

template <class Inner>
class WebSocketStream {
public:
    explicit WebSocketStream(Inner inner) : inner_(std::move(inner)) {}

    Inner& next_layer() noexcept { return inner_; }
    const Inner& next_layer() const noexcept { return inner_; }

    // --- reading ---
    ws::Reader& reader() noexcept { return reader_; }

    // --- control frames (pong, close): written at a message boundary ---
    void queue_control(std::string_view frame) { control_.append(frame); }
    bool control_left() const noexcept { return control_sent_ < control_.size(); }
    std::string_view control_rest() const noexcept {
        return std::string_view(control_).substr(control_sent_);
    }
    void control_consumed(std::size_t n) {
        control_sent_ += n;
        if (control_sent_ >= control_.size()) {
            std::string().swap(control_);  // pongs are rare: keep no buffer
            control_sent_ = 0;
        }
    }
    // Part of a control frame is out: the next message must wait for the rest.
    bool control_started() const noexcept { return control_sent_ > 0; }

    // --- the binary message around one batch ---
    void start_message(std::uint64_t payload_size) noexcept {
        header_len_ = static_cast<std::uint8_t>(ws::encode_header(ws::Opcode::binary, payload_size, header_));
        header_sent_ = 0;
    }
    bool header_left() const noexcept { return header_sent_ < header_len_; }
    bool message_started() const noexcept { return header_sent_ > 0; }
    std::span<const std::uint8_t> header_rest() const noexcept {
        return std::span<const std::uint8_t>(header_).subspan(header_sent_, header_len_ - header_sent_);
    }
    void header_consumed(std::size_t n) noexcept { header_sent_ = static_cast<std::uint8_t>(header_sent_ + n); }

    // --- the close handshake ---
    bool close_sent() const noexcept { return close_sent_; }
    void mark_close_sent() noexcept { close_sent_ = true; }
    // A framing violation of the peer's: its close code wins over the cause's.
    void set_failure(ws::CloseCode code) noexcept { failure_ = code; }
    std::optional<ws::CloseCode> failure() const noexcept { return failure_; }

private:
    Inner inner_;
    ws::Reader reader_{0};  // bound set by the session at the upgrade
    std::string control_;
    std::size_t control_sent_ = 0;
    std::array<std::uint8_t, 10> header_{};
    std::uint8_t header_len_ = 0;
    std::uint8_t header_sent_ = 0;
    bool close_sent_ = false;
    std::optional<ws::CloseCode> failure_;
};

// Which transport a session's stream runs over, and whether it is WebSocket.
template <class Stream>
struct TransportOf {
    using type = Stream;
    static constexpr bool websocket = false;
};
template <class Inner>
struct TransportOf<WebSocketStream<Inner>> {
    using type = Inner;
    static constexpr bool websocket = true;
};

// The close code that tells a WebSocket client why the session ended
// (PROTOCOL.md, "WebSocket"): the ERROR frame before it has the details.
constexpr ws::CloseCode websocket_close_code(CloseCause cause) noexcept {
    switch (cause) {
    case CloseCause::client_quit:
    case CloseCause::peer_closed: return ws::CloseCode::normal;
    case CloseCause::shutdown: return ws::CloseCode::going_away;
    case CloseCause::refused: return ws::CloseCode::try_again_later;
    case CloseCause::internal: return ws::CloseCode::internal;
    default: return ws::CloseCode::policy;  // a fatal ERROR: its code is in the frame before
    }
}

}  // namespace chat
