#include "chat/server/admin_http.hpp"

#if PULSECHAT_HAVE_HTTP_PARSER

#include <asio/experimental/as_tuple.hpp>
#include <asio/experimental/awaitable_operators.hpp>
#include <fmt/format.h>
#include <http_parser.h>

#include "chat/common/logging.hpp"

namespace chat {

namespace {

http_parser_settings make_settings();

const http_parser_settings& settings() {
    static const http_parser_settings s = make_settings();
    return s;
}

}  // namespace

namespace {

}  // namespace

HttpRequestReader::HttpRequestReader() : parser_(std::make_unique<http_parser>()) { reset(); }
HttpRequestReader::~HttpRequestReader() = default;

void HttpRequestReader::reset() {
    http_parser_init(parser_.get(), HTTP_REQUEST);
    parser_->data = this;
    current_ = HttpRequest{};
    seen_ = 0;
    complete_ = false;
}

int HttpRequestReader::on_url(http_parser* p, const char* at, std::size_t length) {
    auto& self = *static_cast<HttpRequestReader*>(p->data);
    if (self.current_.target.size() + length > max_request) return 1;
    self.current_.target.append(at, length);
    return 0;
}

int HttpRequestReader::on_headers_complete(http_parser* p) {
    auto& self = *static_cast<HttpRequestReader*>(p->data);
    self.current_.method = http_method_str(static_cast<http_method>(p->method));
    self.current_.keep_alive = http_should_keep_alive(p) != 0;
    self.current_.upgrade = p->upgrade != 0;
    return 0;
}

int HttpRequestReader::on_message_complete(http_parser* p) {
    auto& self = *static_cast<HttpRequestReader*>(p->data);
    self.complete_ = true;
    http_parser_pause(p, 1);  // one request at a time: the rest waits for the next feed()
    return 0;
}

HttpRequestReader::Status HttpRequestReader::feed(std::string_view bytes, std::size_t& consumed) {
    consumed = 0;
    if (!error_.empty()) return Status::error;
    if (bytes.empty()) return Status::need_more;  // a length of 0 would tell the parser the stream ended
    // The bound counts the whole request, so a head that never ends cannot
    // grow without limit however it is split into reads.
    const std::size_t room = max_request - std::min(seen_, max_request);
    const std::size_t n = std::min(bytes.size(), room + 1);
    const std::size_t parsed = http_parser_execute(parser_.get(), &settings(), bytes.data(), n);
    const auto err = HTTP_PARSER_ERRNO(parser_.get());
    if (complete_) {
        // A paused parser stops at the end of the request; an Upgrade ends the
        // HTTP part there too (what follows is the new protocol's).
        consumed = parsed;
        return Status::request;
    }
    if (err != HPE_OK) {
        error_ = err == HPE_CB_url ? std::string("request target too long")
                                   : fmt::format("malformed request: {}", http_errno_description(err));
        return Status::error;
    }
    consumed = parsed;
    seen_ += parsed;
    if (seen_ > max_request) {
        error_ = fmt::format("request head over {} bytes", max_request);
        return Status::error;
    }
    return Status::need_more;
}

HttpRequest HttpRequestReader::take() {
    HttpRequest request = std::move(current_);
    const bool upgrade = request.upgrade;
    reset();
    // After an Upgrade the connection is no longer HTTP: the next feed() is
    // an error rather than a request.
    if (upgrade) error_ = "the connection was upgraded";
    return request;
}

namespace {

http_parser_settings make_settings() {
    http_parser_settings s{};
    s.on_url = &HttpRequestReader::on_url;
    s.on_headers_complete = &HttpRequestReader::on_headers_complete;
    s.on_message_complete = &HttpRequestReader::on_message_complete;
    return s;
}

}  // namespace

std::string http_response(int status, std::string_view reason, std::string_view content_type, std::string_view body,
                          bool keep_alive) {
    return fmt::format("HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: {}\r\n"
                       "Cache-Control: no-store\r\n\r\n{}",
                       status, reason, content_type, body.size(), keep_alive ? "keep-alive" : "close", body);
}

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
