// The WebSocket opening handshake (RFC 6455 4.2), sans-io: an HTTP request
// read by HttpRequestReader in, the server's answer out (101 Switching
// Protocols with Sec-WebSocket-Accept, or the refusal a client can act on).
//
// Checked: GET; Upgrade: websocket and Connection: upgrade (tokens, any
// case); Sec-WebSocket-Version 13 (else 426 naming 13); Sec-WebSocket-Key the
// base64 of 16 bytes; Origin on the allow-list when one is set, else the
// request's own host (the page came from this server), or 403; a
// client that offers subprotocols must offer "pulsechat", which the answer
// then selects. A request without Origin is not a browser's and is let in:
// Origin only protects browsers' users from other sites' pages.
#pragma once

#include <span>
#include <string>
#include <string_view>

#include "chat/server/http_request.hpp"

namespace chat {

inline constexpr std::string_view websocket_subprotocol = "pulsechat";

struct WebSocketPolicy {
    // Origins a browser page may connect from ("https://chat.example.org"),
    // compared exactly as the browser sends them; empty: same origin only
    // (the Origin's host and port are the Host header's). A view: the list
    // lives in the server's config, so a handshake copies nothing.
    std::span<const std::string> allowed_origins;
};

struct HandshakeAnswer {
    bool accepted = false;
    int status = 400;       // 101 when accepted
    std::string response;   // the whole HTTP response to write
    std::string reason;     // why it was refused, for the log (and the body)
};

// base64(SHA-1(key + the RFC's GUID)).
std::string websocket_accept_key(std::string_view key);

HandshakeAnswer websocket_handshake(const HttpRequest& request, const WebSocketPolicy& policy);

}  // namespace chat
