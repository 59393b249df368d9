#include "chat/bench/tls_stream.hpp"

#if PULSECHAT_HAVE_OPENSSL

#include <openssl/ssl.h>

#include "chat/common/tls_client_context.hpp"

namespace chat::bench {

TlsStream::TlsStream(asio::ip::tcp::socket socket, asio::ssl::context& context, const std::string& host,
                     bool verify)
    : tls_(std::move(socket), context, TlsSocket::Role::client) {
    prepare_client_ssl(tls_.native_handle(), host, verify);
    // With read-ahead on (TlsSocket), one recv() fills what this leaves room for.
    SSL_set_default_read_buffer_len(tls_.native_handle(), read_buffer);
}

std::size_t TlsStream::read_now(void* data, std::size_t size, asio::error_code& ec) {
    const auto r = tls_.read(data, size);
    switch (r.status) {
        case TlsSocket::Status::done: ec = {}; return r.bytes;
        case TlsSocket::Status::want_read:
        case TlsSocket::Status::want_write: ec = asio::error::would_block; return 0;
        case TlsSocket::Status::closed:
        case TlsSocket::Status::failed: ec = outcome(r); return 0;
    }
    ec = asio::error::operation_not_supported;
    return 0;
}

}  // namespace chat::bench

#endif  // PULSECHAT_HAVE_OPENSSL
