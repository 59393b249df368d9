#include "chat/server/admin_http.hpp"

#if PULSECHAT_HAVE_HTTP_PARSER

#include <asio/experimental/as_tuple.hpp>
#include <asio/experimental/awaitable_operators.hpp>
#include <fmt/format.h>

#include "chat/common/logging.hpp"

namespace chat {

AdminListener::AdminListener(asio::io_context& context, const asio::ip::tcp::endpoint& endpoint,
                             AdminHandlers handlers, std::shared_ptr<spdlog::logger> log,
                             std::chrono::milliseconds read_timeout)
    : acceptor_(context), handlers_(std::move(handlers)), log_(std::move(log)), read_timeout_(read_timeout) {
    acceptor_.open(endpoint.protocol());
    acceptor_.set_option(asio::socket_base::reuse_address(true));
    acceptor_.bind(endpoint);
    acceptor_.listen(asio::socket_base::max_listen_connections);
}

void AdminListener::start() {
    asio::co_spawn(acceptor_.get_executor(), accept_loop(), [log = log_](std::exception_ptr e) {
        if (!e) return;
        try {
            std::rethrow_exception(e);
        } catch (const std::exception& ex) {
            log->error("admin listener: bug: {}", ex.what());
        }
    });
}

void AdminListener::close() {
    closed_ = true;
    asio::error_code ignored;
    acceptor_.close(ignored);
    for (auto* socket : connections_) socket->close(ignored);  // their reads end at once
}

asio::awaitable<void> AdminListener::accept_loop() {
    using asio::experimental::as_tuple;
    while (!closed_) {
        auto [ec, socket] = co_await acceptor_.async_accept(as_tuple(asio::use_awaitable));
        if (ec) {
            if (closed_ || ec == asio::error::operation_aborted) co_return;
            // Out of descriptors and the like: the chat listeners log it too;
            // try again shortly rather than spin.
            log_->warn("admin listener: accept failed: {}", ec.message());
            asio::steady_timer pause(acceptor_.get_executor(), std::chrono::milliseconds(100));
            co_await pause.async_wait(as_tuple(asio::use_awaitable));
            continue;
        }
        asio::error_code peer_ec;
        const auto remote = socket.remote_endpoint(peer_ec);
        std::string peer = peer_ec ? std::string("?") : fmt::format("{}:{}", remote.address().to_string(), remote.port());
        asio::co_spawn(acceptor_.get_executor(), serve(std::move(socket), std::move(peer)), asio::detached);
    }
}

asio::awaitable<std::string> AdminListener::respond(const HttpRequest& request, bool& keep_alive) {
    const std::string path = request.path();
    const bool get = request.method == "GET" || request.method == "HEAD";
    std::string response;
    if (path == "/metrics" || path == "/healthz" || path == "/readyz") {
        if (!get) {
            keep_alive = false;
            co_return http_response(405, "Method Not Allowed", "text/plain; charset=utf-8", "GET only\n", false);
        }
        if (path == "/metrics") {
            response = http_response(200, "OK", "text/plain; version=0.0.4; charset=utf-8", co_await handlers_.metrics(),
                                     keep_alive);
        } else if (path == "/healthz") {
            // Answering at all is the proof: this runs on the hub shard's loop.
            response = http_response(200, "OK", "text/plain; charset=utf-8", "ok\n", keep_alive);
        } else if (handlers_.ready()) {
            response = http_response(200, "OK", "text/plain; charset=utf-8", "ready\n", keep_alive);
        } else {
            response = http_response(503, "Service Unavailable", "text/plain; charset=utf-8", "draining\n", keep_alive);
        }
    } else {
        response = http_response(404, "Not Found", "text/plain; charset=utf-8",
                                 "not found; try /metrics, /healthz or /readyz\n", keep_alive);
    }
    if (request.method == "HEAD") response.resize(response.find("\r\n\r\n") + 4);
    co_return response;
}

// One connection: requests one after the other (keep-alive), each read
// within the read timeout; a bad request gets a 400 and the close.
asio::awaitable<void> AdminListener::serve(asio::ip::tcp::socket socket, std::string peer) {
    using asio::experimental::as_tuple;
    using namespace asio::experimental::awaitable_operators;
    HttpRequestReader reader;
    std::string buffer;
    std::array<char, 4096> chunk{};
    asio::steady_timer deadline(socket.get_executor());
    if (closed_) co_return;
    connections_.insert(&socket);
    try {
        for (;;) {
            std::size_t consumed = 0;
            auto status = reader.feed(buffer, consumed);
            buffer.erase(0, consumed);
            if (status == HttpRequestReader::Status::need_more) {
                deadline.expires_after(read_timeout_);
                auto result = co_await (socket.async_read_some(asio::buffer(chunk), as_tuple(asio::use_awaitable)) ||
                                        deadline.async_wait(as_tuple(asio::use_awaitable)));
                if (result.index() == 1) {
                    // Slow or idle: a keep-alive connection between requests
                    // just closes; one in the middle of a request hears why.
                    if (!buffer.empty() || reader.in_request()) {
                        const auto reply = http_response(408, "Request Timeout", "text/plain; charset=utf-8",
                                                         "request not complete in time\n", false);
                        co_await asio::async_write(socket, asio::buffer(reply), as_tuple(asio::use_awaitable));
                    }
                    break;
                }
                auto [ec, n] = std::get<0>(result);
                if (ec) break;  // closed by the peer
                buffer.append(chunk.data(), n);
                continue;
            }
            if (status == HttpRequestReader::Status::error) {
                log_->info("admin {}: bad request: {}", peer, reader.error());
                const auto reply = http_response(400, "Bad Request", "text/plain; charset=utf-8",
                                                 reader.error() + "\n", false);
                co_await asio::async_write(socket, asio::buffer(reply), as_tuple(asio::use_awaitable));
                break;
            }
            const HttpRequest request = reader.take();
            bool keep_alive = request.keep_alive && !request.upgrade && !closed_;
            const std::string reply = co_await respond(request, keep_alive);
            auto [ec, n] = co_await asio::async_write(socket, asio::buffer(reply), as_tuple(asio::use_awaitable));
            if (ec || !keep_alive) break;
        }
    } catch (const std::exception& e) {
        log_->error("admin {}: bug: {}", peer, e.what());
    }
    connections_.erase(&socket);
    asio::error_code ignored;
    socket.shutdown(asio::socket_base::shutdown_both, ignored);
    socket.close(ignored);
}

}  // namespace chat

#endif  // PULSECHAT_HAVE_HTTP_PARSER
