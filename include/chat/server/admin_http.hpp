// The admin listener (--admin-port): GET /metrics, /healthz and /readyz over
// HTTP/1.1, on the hub shard's io_context, for Prometheus and load balancers.
//
// The sans-io half is HttpRequestReader (server/http_request.hpp).
// AdminListener is the I/O: one coroutine per connection, keep-alive, a
// read deadline.
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

#include "chat/server/http_request.hpp"
#include "pulsechat_config.h"

namespace chat {

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

}  // namespace chat
