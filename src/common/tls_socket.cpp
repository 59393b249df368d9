#include "chat/common/tls_socket.hpp"

#if PULSECHAT_HAVE_OPENSSL

#include <cerrno>
#include <climits>
#include <system_error>

#include <openssl/err.h>
#include <openssl/ssl.h>

namespace chat {

TlsSocket::TlsSocket(asio::ip::tcp::socket socket, asio::ssl::context& context, Role role)
    : socket_(std::move(socket)) {
    ssl_ = SSL_new(context.native_handle());
    if (ssl_ == nullptr) {
        ERR_clear_error();
        throw std::system_error(std::make_error_code(std::errc::not_enough_memory), "SSL_new");
    }
    asio::error_code ignored;
    socket_.non_blocking(true, ignored);
    // A socket BIO without ownership: asio's socket closes the descriptor.
    SSL_set_fd(ssl_, socket_.native_handle());
    if (role == Role::server)
        SSL_set_accept_state(ssl_);
    else
        SSL_set_connect_state(ssl_);
    // Partial writes: SSL_write returns after each record, so a full socket
    // costs a retry of the rest, not of the whole buffer. Moving buffer: a
    // retry may come from a staging buffer at another address.
    SSL_set_mode(ssl_, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    // Read ahead: one recv() takes what is there (several records), instead
    // of one for each record's header and one for its body.
    SSL_set_read_ahead(ssl_, 1);
}

TlsSocket::TlsSocket(TlsSocket&& other) noexcept
    : socket_(std::move(other.socket_)), ssl_(std::exchange(other.ssl_, nullptr)), failed_(other.failed_) {}

TlsSocket::~TlsSocket() {
    if (ssl_ != nullptr) SSL_free(ssl_);
}

TlsSocket::Result TlsSocket::outcome(int ret, int saved_errno) {
    switch (SSL_get_error(ssl_, ret)) {
    case SSL_ERROR_WANT_READ: return {Status::want_read};
    case SSL_ERROR_WANT_WRITE: return {Status::want_write};
    case SSL_ERROR_ZERO_RETURN: return {Status::closed, 0, asio::error::eof};
    case SSL_ERROR_SYSCALL: {
        failed_ = true;
        if (const unsigned long e = ERR_get_error(); e != 0) {
            ERR_clear_error();
            return {Status::failed, 0, asio::error_code(static_cast<int>(e), asio::error::get_ssl_category())};
        }
        if (saved_errno == 0) return {Status::closed, 0, asio::ssl::error::stream_truncated};
        return {Status::failed, 0, asio::error_code(saved_errno, asio::error::get_system_category())};
    }
    case SSL_ERROR_SSL: {
        failed_ = true;
        const unsigned long e = ERR_get_error();
        ERR_clear_error();
        // OpenSSL 3 reports a TCP close without close_notify this way.
        if (ERR_GET_LIB(e) == ERR_LIB_SSL && ERR_GET_REASON(e) == SSL_R_UNEXPECTED_EOF_WHILE_READING)
            return {Status::closed, 0, asio::ssl::error::stream_truncated};
        return {Status::failed, 0, asio::error_code(static_cast<int>(e), asio::error::get_ssl_category())};
    }
    default:
        failed_ = true;
        ERR_clear_error();
        return {Status::failed, 0, asio::error::operation_not_supported};
    }
}

// One OpenSSL call: it starts with an empty error queue (the queue is per
// thread, and shared by every session on it) and errno is read at once,
// before anything can change it. `succeeded(ret)` says which returns are done.
template <class Call, class Succeeded>
TlsSocket::Result TlsSocket::step(Call call, Succeeded succeeded, std::size_t* bytes) {
    if (failed_) return {Status::failed, 0, asio::error::broken_pipe};
    ERR_clear_error();
    errno = 0;
    const int ret = call();
    const int saved_errno = errno;
    if (succeeded(ret)) return {Status::done, bytes != nullptr ? *bytes : 0};
    return outcome(ret, saved_errno);
}

TlsSocket::Result TlsSocket::handshake() {
    return step([this] { return SSL_do_handshake(ssl_); }, [](int ret) { return ret == 1; }, nullptr);
}

TlsSocket::Result TlsSocket::read(void* data, std::size_t size) {
    std::size_t n = 0;
    return step([&] { return SSL_read_ex(ssl_, data, size, &n); }, [](int ret) { return ret == 1; }, &n);
}

TlsSocket::Result TlsSocket::write(const void* data, std::size_t size) {
    std::size_t n = 0;
    return step([&] { return SSL_write_ex(ssl_, data, size, &n); }, [](int ret) { return ret == 1; }, &n);
}

TlsSocket::Result TlsSocket::shutdown() {
    // 0: ours is sent; 1: theirs came too.
    return step([this] { return SSL_shutdown(ssl_); }, [](int ret) { return ret >= 0; }, nullptr);
}

bool TlsSocket::has_pending() const noexcept { return ssl_ != nullptr && SSL_has_pending(ssl_) == 1; }

}  // namespace chat

#endif  // PULSECHAT_HAVE_OPENSSL
