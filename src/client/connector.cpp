#include "chat/client/connector.hpp"

#include <asio/experimental/as_tuple.hpp>

namespace chat {

asio::awaitable<ConnectResult<TcpConnector::Stream>> TcpConnector::connect(asio::any_io_executor executor) const {
    using asio::experimental::as_tuple;
    ConnectResult<Stream> result;
    asio::ip::tcp::resolver resolver(executor);
    auto [resolve_error, endpoints] =
        co_await resolver.async_resolve(host, std::to_string(port), as_tuple(asio::use_awaitable));
    if (resolve_error) {
        result.error = resolve_error;
        result.what = "cannot resolve '" + host + "': " + resolve_error.message();
        co_return result;
    }
    Stream socket(executor);
    auto [connect_error, endpoint] = co_await asio::async_connect(socket, endpoints, as_tuple(asio::use_awaitable));
    if (connect_error) {
        result.error = connect_error;
        result.what = connect_error.message();
        co_return result;
    }
    asio::error_code ignored;
    socket.set_option(asio::ip::tcp::no_delay(true), ignored);
    result.stream.emplace(std::move(socket));
    co_return result;
}

std::string TcpConnector::describe() const {
    if (host.find(':') != std::string::npos) return "[" + host + "]:" + std::to_string(port);
    return host + ":" + std::to_string(port);
}

asio::awaitable<ConnectResult<UnixConnector::Stream>> UnixConnector::connect(asio::any_io_executor executor) const {
    using asio::experimental::as_tuple;
    ConnectResult<Stream> result;
    Stream socket(executor);
    auto [ec] = co_await socket.async_connect(asio::local::stream_protocol::endpoint(path),
                                              as_tuple(asio::use_awaitable));
    if (ec) {
        result.error = ec;
        result.what = ec.message();
        co_return result;
    }
    result.stream.emplace(std::move(socket));
    co_return result;
}

std::string UnixConnector::describe() const { return "unix:" + path; }

#if PULSECHAT_HAVE_OPENSSL
// GCC 12 with -fsanitize=address reports the frame's own operator delete here
// as mismatched with its operator new (both are asio's awaitable_frame_base):
// a false positive that only this coroutine triggers.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
#endif
asio::awaitable<ConnectResult<TlsConnector::Stream>> TlsConnector::connect(asio::any_io_executor executor) const {
    using asio::experimental::as_tuple;
    ConnectResult<Stream> result;
    // Resolved and connected here rather than by awaiting a TcpConnector:
    // GCC 12 destroyed that temporary connector twice.
    asio::ip::tcp::resolver resolver(executor);
    auto [resolve_error, endpoints] =
        co_await resolver.async_resolve(host, std::to_string(port), as_tuple(asio::use_awaitable));
    if (resolve_error) {
        result.error = resolve_error;
        result.what = "cannot resolve '" + host + "': " + resolve_error.message();
        co_return result;
    }
    asio::ip::tcp::socket socket(executor);
    auto [connect_error, endpoint] = co_await asio::async_connect(socket, endpoints, as_tuple(asio::use_awaitable));
    if (connect_error) {
        result.error = connect_error;
        result.what = connect_error.message();
        co_return result;
    }
    asio::error_code ignored;
    socket.set_option(asio::ip::tcp::no_delay(true), ignored);
    Stream stream(std::move(socket), *context);
    prepare_client_stream(stream, host, verify);
    auto [ec] = co_await stream.async_handshake(Stream::client, as_tuple(asio::use_awaitable));
    if (ec) {
        result.error = ec;
        result.what = "TLS handshake failed: " + describe_tls_failure(ec, stream.native_handle());
        co_return result;
    }
    result.stream.emplace(std::move(stream));
    co_return result;
}

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

std::string TlsConnector::describe() const { return TcpConnector{host, port}.describe() + " (tls)"; }
#endif

}  // namespace chat
