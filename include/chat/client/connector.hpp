// How the client opens its stream: TCP, a Unix-domain socket or TLS.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include <asio.hpp>

#include "chat/common/tls_client_context.hpp"

namespace chat {

template <class Stream>
struct ConnectResult {
    asio::error_code error;
    std::string what;  // the error in words, when there is one
    std::optional<Stream> stream;
};

// Opens TCP connections to host:port.
struct TcpConnector {
    using Stream = asio::ip::tcp::socket;

    std::string host;
    std::uint16_t port = 0;

    // Resolves and connects, with TCP_NODELAY; errors come back as values.
    asio::awaitable<ConnectResult<Stream>> connect(asio::any_io_executor executor) const;
    std::string describe() const;
};

// Opens connections to a Unix-domain socket.
struct UnixConnector {
    using Stream = asio::local::stream_protocol::socket;

    std::string path;

    asio::awaitable<ConnectResult<Stream>> connect(asio::any_io_executor executor) const;
    std::string describe() const;  // unix:PATH
};

#if PULSECHAT_HAVE_OPENSSL
// Opens TLS connections to host:port: TCP, then a handshake that checks the
// server's certificate and that it names `host`, unless `verify` is off.
struct TlsConnector {
    using Stream = TlsStream;

    std::string host;
    std::uint16_t port = 0;
    std::shared_ptr<TlsContext> context;  // make_client_context()
    bool verify = true;

    asio::awaitable<ConnectResult<Stream>> connect(asio::any_io_executor executor) const;
    std::string describe() const;  // host:port (tls)
};
#endif

}  // namespace chat
