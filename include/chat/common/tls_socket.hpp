// A TLS connection as an OpenSSL SSL object on the socket's own descriptor,
// driven by readiness like the plain sockets: the server's TLS sessions and
// chat_bench's TLS links (bench/tls_stream.hpp) are both one of these.
//
// Why not asio::ssl::stream: it encrypts into a BIO pair and copies the
// records out into a vector of its own before every socket write (and the
// reverse for reads), holds two 17 KiB vectors and the pair's buffers for as
// long as the connection lives (most of an idle TLS session's memory), and
// takes one composed operation per record. Here SSL_read and SSL_write talk
// to the non-blocking descriptor directly: the owner waits for readability
// or writability on the socket, then calls read() or write(), which do what
// they can without blocking and say what they wait for. With
// SSL_MODE_RELEASE_BUFFERS (set on the server's context) an idle session
// holds no record buffer at all.
//
// The owner's thread only; nothing here is thread-safe.
#pragma once

#include "chat/common/tls.hpp"  // pulsechat_config.h, ssl_st

#if PULSECHAT_HAVE_OPENSSL

#include <cstddef>
#include <utility>

#include <asio.hpp>
#include <asio/ssl.hpp>

namespace chat {

class TlsSocket {
public:
    using executor_type = asio::ip::tcp::socket::executor_type;
    using lowest_layer_type = asio::ip::tcp::socket;

    // What one call did. `done`: `bytes` moved (handshake or shutdown: it is
    // complete). `want_read` / `want_write`: nothing more until the socket is
    // readable / writable, then call again with the same arguments. `closed`:
    // the peer ended the stream (close_notify: eof; a plain TCP close without
    // one: asio::ssl::error::stream_truncated). `failed`: `error` says why.
    enum class Status { done, want_read, want_write, closed, failed };
    struct Result {
        Status status = Status::done;
        std::size_t bytes = 0;
        asio::error_code error{};
    };

    enum class Role { server, client };

    // Takes the socket (accepted, or connected for a client; made
    // non-blocking here) and makes an SSL for `role` from `context`, which
    // the SSL keeps referenced. A client sets its server name and checks
    // (prepare_client_ssl in tls_client_context.hpp) before the first
    // handshake() step. Throws std::system_error if OpenSSL cannot make one.
    TlsSocket(asio::ip::tcp::socket socket, asio::ssl::context& context, Role role = Role::server);
    TlsSocket(TlsSocket&& other) noexcept;
    TlsSocket& operator=(TlsSocket&&) = delete;
    TlsSocket(const TlsSocket&) = delete;
    TlsSocket& operator=(const TlsSocket&) = delete;
    ~TlsSocket();

    executor_type get_executor() noexcept { return socket_.get_executor(); }
    asio::ip::tcp::socket& lowest_layer() noexcept { return socket_; }
    // OpenSSL's SSL, for describe_tls_session() and describe_tls_failure().
    ssl_st* native_handle() noexcept { return ssl_; }

    template <class Token>
    auto async_wait(asio::socket_base::wait_type what, Token&& token) {
        return socket_.async_wait(what, std::forward<Token>(token));
    }

    // One step of the handshake.
    Result handshake();
    // Decrypted bytes into [data, data + size): at most one record's worth.
    Result read(void* data, std::size_t size);
    // Encrypts and sends from [data, data + size): with partial writes on,
    // `bytes` is what went out, a record at a time (16 KiB of plaintext).
    // After want_write, call again with the same buffer.
    Result write(const void* data, std::size_t size);
    // Sends close_notify (done: it is out; whether the peer's came is the
    // reader's to see). Skipped after a failure, as OpenSSL requires.
    Result shutdown();
    // Whether OpenSSL holds received bytes not yet returned by read().
    bool has_pending() const noexcept;

private:
    Result outcome(int ret, int saved_errno);
    template <class Call, class Succeeded>
    Result step(Call call, Succeeded succeeded, std::size_t* bytes);

    asio::ip::tcp::socket socket_;
    ssl_st* ssl_ = nullptr;
    bool failed_ = false;  // a fatal error: no shutdown, no further I/O
};

}  // namespace chat

#endif  // PULSECHAT_HAVE_OPENSSL
