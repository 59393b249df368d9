// HTTP/1.1 requests, sans-io: bytes in, whole requests out, through
// libhttp-parser (Debian's libhttp-parser-dev, the parser Node.js used), with
// a bound on the head's size. It keeps the headers (names lowercased) and
// tells an Upgrade request apart: the admin listener and the WebSocket
// handshake (server/websocket_handshake.hpp) both read requests with it.
#pragma once

#include <cstddef>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

struct http_parser;

namespace chat {

struct HttpRequest {
    std::string method;  // "GET"
    std::string target;  // "/metrics?x=1", as sent
    bool keep_alive = false;
    bool upgrade = false;  // Connection: upgrade (a WebSocket handshake)
    // In the order sent, names lowercased, values as sent (no folding).
    std::vector<std::pair<std::string, std::string>> headers;
    std::string path() const { return target.substr(0, target.find('?')); }
    // The value of header `name` (lowercase); repeated ones joined with ", ".
    std::optional<std::string> header(std::string_view name) const;
    // Whether the comma-separated list in header `name` holds `token` (case-insensitive).
    bool header_has_token(std::string_view name, std::string_view token) const;
};

class HttpRequestReader {
public:
    // Bytes of a request's head (request line and headers) at most; a body
    // is not expected here and counts against the same bound.
    static constexpr std::size_t max_request = 8 * 1024;
    static constexpr std::size_t max_headers = 256;  // (the byte bound usually comes first)

    enum class Status { need_more, request, error };

    HttpRequestReader();
    ~HttpRequestReader();
    HttpRequestReader(const HttpRequestReader&) = delete;
    HttpRequestReader& operator=(const HttpRequestReader&) = delete;

    // Feeds bytes; stops after the first whole request (the rest stays for
    // the next call, so pipelined requests come one at a time).
    // `consumed` says how much of `bytes` was taken.
    Status feed(std::string_view bytes, std::size_t& consumed);
    // After Status::request: the request, and the reader is ready for the next.
    HttpRequest take();
    // After Status::error: why, for the 400's body.
    const std::string& error() const noexcept { return error_; }
    // Whether part of a request has arrived (a timeout then earns a 408).
    bool in_request() const noexcept { return seen_ > 0; }

    // libhttp-parser's callbacks (public for its settings table only).
    static int on_url(http_parser* p, const char* at, std::size_t length);
    static int on_header_field(http_parser* p, const char* at, std::size_t length);
    static int on_header_value(http_parser* p, const char* at, std::size_t length);
    static int on_headers_complete(http_parser* p);
    static int on_message_complete(http_parser* p);

private:
    void reset();

    std::unique_ptr<http_parser> parser_;
    HttpRequest current_;
    bool in_value_ = false;  // the last header callback was a value
    std::size_t seen_ = 0;  // bytes of the request under way
    bool complete_ = false;
    std::string error_;
};

// An HTTP/1.1 response with Content-Length and the Connection header.
std::string http_response(int status, std::string_view reason, std::string_view content_type, std::string_view body,
                          bool keep_alive);

}  // namespace chat
