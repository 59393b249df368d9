#include "chat/server/websocket_handshake.hpp"

#include <cctype>

#include "pulsechat_config.h"

#if PULSECHAT_HAVE_HTTP_PARSER

#include <algorithm>
#include <array>

#include <fmt/format.h>
#include <openssl/evp.h>
#include <openssl/sha.h>

namespace chat {

namespace {

constexpr std::string_view guid = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

HandshakeAnswer refuse(int status, std::string_view status_text, std::string reason, std::string_view extra = {}) {
    HandshakeAnswer answer;
    answer.status = status;
    const std::string body = reason + "\n";
    answer.response = fmt::format(
        "HTTP/1.1 {} {}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n{}Connection: close\r\n"
        "Cache-Control: no-store\r\n\r\n{}",
        status, status_text, body.size(), extra, body);
    answer.reason = std::move(reason);
    return answer;
}

// Whether `key` is base64 of exactly 16 bytes: 22 characters and "==".
bool valid_key(std::string_view key) {
    if (key.size() != 24 || key.substr(22) != "==") return false;
    std::array<unsigned char, 18> out{};
    if (EVP_DecodeBlock(out.data(), reinterpret_cast<const unsigned char*>(key.data()), 24) != 18) return false;
    // The last character before "==" carries only 2 bits of the 16th byte.
    static constexpr std::string_view last_ok = "AQgw";
    return last_ok.find(key[21]) != std::string_view::npos;
}

std::string trimmed(std::string_view s) {
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
    return std::string(s);
}

std::string lowercase(std::string_view s) {
    std::string out(s);
    for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return out;
}

// Whether a browser's Origin ("https://chat.example.org:8443") names the
// host the request was sent to (its Host header): the page came from this
// server. Default ports are left out by browsers in both; compared without case.
bool same_origin(std::string_view origin, const std::optional<std::string>& host_header) {
    if (!host_header) return false;
    const auto scheme_end = origin.find("://");
    if (scheme_end == std::string_view::npos) return false;  // "null": a sandboxed or file: page
    const std::string scheme = lowercase(origin.substr(0, scheme_end));
    std::string authority = lowercase(origin.substr(scheme_end + 3));
    std::string host = lowercase(trimmed(*host_header));
    const std::string default_port = scheme == "https" ? ":443" : scheme == "http" ? ":80" : "";
    for (std::string* s : {&authority, &host})
        if (!default_port.empty() && s->ends_with(default_port)) s->resize(s->size() - default_port.size());
    return !authority.empty() && authority == host;
}

}  // namespace

std::string websocket_accept_key(std::string_view key) {
    std::string input(key);
    input += guid;
    std::array<unsigned char, SHA_DIGEST_LENGTH> digest{};
    SHA1(reinterpret_cast<const unsigned char*>(input.data()), input.size(), digest.data());
    std::array<unsigned char, 4 * ((SHA_DIGEST_LENGTH + 2) / 3) + 1> encoded{};
    const int n = EVP_EncodeBlock(encoded.data(), digest.data(), SHA_DIGEST_LENGTH);
    return std::string(reinterpret_cast<const char*>(encoded.data()), static_cast<std::size_t>(n));
}

HandshakeAnswer websocket_handshake(const HttpRequest& request, const WebSocketPolicy& policy) {
    if (request.method != "GET") return refuse(405, "Method Not Allowed", "a WebSocket handshake is a GET");
    if (!request.header_has_token("upgrade", "websocket") || !request.header_has_token("connection", "upgrade"))
        return refuse(426, "Upgrade Required", "this port speaks WebSocket: send Upgrade: websocket",
                      "Upgrade: websocket\r\n");
    const auto version = request.header("sec-websocket-version");
    if (!version || trimmed(*version) != "13")
        return refuse(426, "Upgrade Required", "WebSocket version 13 only", "Sec-WebSocket-Version: 13\r\n");
    const auto key = request.header("sec-websocket-key");
    const std::string key_text = key ? trimmed(*key) : std::string();
    if (!valid_key(key_text)) return refuse(400, "Bad Request", "Sec-WebSocket-Key is not the base64 of 16 bytes");
    // Origin and Host are single values (RFC 6454 7.3, RFC 9112 3.2): joined
    // as a list, a repeated one could pass the same-origin check on its last
    // item ("Origin: x" twice, the second "https://this.host").
    for (const std::string_view single : {"origin", "host"}) {
        const auto n = std::count_if(request.headers.begin(), request.headers.end(),
                                     [single](const auto& h) { return h.first == single; });
        if (n > 1)
            return refuse(400, "Bad Request", fmt::format("more than one {} header", single == "host" ? "Host" : "Origin"));
    }
    if (const auto origin = request.header("origin")) {
        const std::string o = trimmed(*origin);
        if (!policy.allowed_origins.empty()) {
            if (std::find(policy.allowed_origins.begin(), policy.allowed_origins.end(), o) ==
                policy.allowed_origins.end())
                return refuse(403, "Forbidden", "origin not allowed (--ws-allow-origin)");
        } else if (!same_origin(o, request.header("host"))) {
            // Without a list only this server's own pages may connect: a
            // page of another site must not chat with its visitors' sessions.
            return refuse(403, "Forbidden",
                          "origin not allowed: only this server's own pages may connect unless --ws-allow-origin "
                          "lists other origins");
        }
    }
    std::string protocol_line;
    if (request.header("sec-websocket-protocol")) {
        if (!request.header_has_token("sec-websocket-protocol", websocket_subprotocol))
            return refuse(400, "Bad Request", "the subprotocol offered is not 'pulsechat'");
        protocol_line = fmt::format("Sec-WebSocket-Protocol: {}\r\n", websocket_subprotocol);
    }
    HandshakeAnswer answer;
    answer.accepted = true;
    answer.status = 101;
    answer.response = fmt::format(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Accept: {}\r\n{}\r\n",
        websocket_accept_key(key_text), protocol_line);
    return answer;
}

}  // namespace chat

#endif  // PULSECHAT_HAVE_HTTP_PARSER
