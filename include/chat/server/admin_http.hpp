// The admin listener (--admin-port): GET /metrics, /healthz and /readyz over
// HTTP/1.1, on the hub shard's io_context, for Prometheus and load balancers.
//
// HttpRequestReader is the sans-io half: bytes in, whole requests out,
// through libhttp-parser (Debian's libhttp-parser-dev, the parser Node.js
// used), with a bound on the head's size; it also tells an Upgrade request
// apart, which is what a WebSocket handshake needs. AdminListener is the
// I/O: one coroutine per connection, keep-alive, a read deadline.
#pragma once

#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <string_view>

#include <asio.hpp>
#include <spdlog/spdlog.h>

#include "pulsechat_config.h"

struct http_parser;

namespace chat {

struct HttpRequest {
    std::string method;  // "GET"
    std::string target;  // "/metrics?x=1", as sent
    bool keep_alive = false;
    bool upgrade = false;  // Connection: upgrade (a WebSocket handshake)
    std::string path() const { return target.substr(0, target.find('?')); }
};

class HttpRequestReader {
public:
    // Bytes of a request's head (request line and headers) at most; a body
    // is not expected here and counts against the same bound.
    static constexpr std::size_t max_request = 8 * 1024;

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
    static int on_headers_complete(http_parser* p);
    static int on_message_complete(http_parser* p);

private:
    void reset();

    std::unique_ptr<http_parser> parser_;
    HttpRequest current_;
    std::size_t seen_ = 0;  // bytes of the request under way
    bool complete_ = false;
    std::string error_;
};

// What the admin endpoints answer from; every call runs on the hub shard.
struct AdminHandlers {
    // The /metrics body (Prometheus text format 0.0.4).
    std::function<asio::awaitable<std::string>()> metrics;
    // /readyz: true while new connections are accepted.
    std::function<bool()> ready;
};

class AdminListener {
public:
    // Binds and listens (throws std::system_error when it cannot).
    AdminListener(asio::io_context& context, const asio::ip::tcp::endpoint& endpoint, AdminHandlers handlers,
                  std::shared_ptr<spdlog::logger> log, std::chrono::milliseconds read_timeout);
    asio::ip::tcp::endpoint local_endpoint() const { return acceptor_.local_endpoint(); }
    void start();
    // Stops accepting and closes every connection (a keep-alive one would
    // otherwise hold the shutdown for its read timeout).
    void close();

private:
    asio::awaitable<void> accept_loop();
    asio::awaitable<void> serve(asio::ip::tcp::socket socket, std::string peer);
    asio::awaitable<std::string> respond(const HttpRequest& request, bool& keep_alive);

    asio::ip::tcp::acceptor acceptor_;
    AdminHandlers handlers_;
    std::shared_ptr<spdlog::logger> log_;
    std::chrono::milliseconds read_timeout_;
    bool closed_ = false;
    std::set<asio::ip::tcp::socket*> connections_;  // being served; hub shard only
};

// An HTTP/1.1 response with Content-Length and the Connection header.
std::string http_response(int status, std::string_view reason, std::string_view content_type, std::string_view body,
                          bool keep_alive);

}  // namespace chat
