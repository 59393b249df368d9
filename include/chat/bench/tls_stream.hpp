// chat_bench's TLS link: a client TlsSocket (an OpenSSL SSL on the socket's
// own descriptor, as the server's sessions use) with the asynchronous stream
// operations asio's composed operations need (async_write, async_read_until),
// plus read_now() for the reads a link makes without going back to the event
// loop.
//
// Why not asio::ssl::stream, which chat_bench used before: its BIO pair
// copies every record once more on the way in, one composed operation per
// record costs a posted completion, and a record is the most one read gets.
// The load generator decrypts every delivery of a TLS run on one core and
// was the limit of the chatty TLS room; here one recv() takes up to
// read_buffer bytes (several records) and a link reads on synchronously
// until OpenSSL would block.
#pragma once

#include "chat/common/tls.hpp"

#if PULSECHAT_HAVE_OPENSSL

#include <cstddef>
#include <string>
#include <utility>

#include <asio.hpp>
#include <asio/ssl.hpp>

#include "chat/common/tls_socket.hpp"

namespace chat::bench {

class TlsStream {
public:
    using executor_type = asio::ip::tcp::socket::executor_type;

    // OpenSSL's read-ahead buffer: four full records per recv().
    static constexpr std::size_t read_buffer = 4 * (16 * 1024 + 512);

    // Takes the connected socket; SNI and, when `verify`, the certificate
    // check against `host` (tls_client_context.hpp). Throws TlsError or
    // std::system_error.
    TlsStream(asio::ip::tcp::socket socket, asio::ssl::context& context, const std::string& host, bool verify);

    executor_type get_executor() noexcept { return tls_.get_executor(); }
    asio::ip::tcp::socket& lowest_layer() noexcept { return tls_.lowest_layer(); }
    ssl_st* native_handle() noexcept { return tls_.native_handle(); }

    // The client handshake, one step per readiness.
    template <class Handler>
    void async_handshake(Handler handler) {
        const auto r = tls_.handshake();
        if (waits(r)) {
            tls_.async_wait(wait_type(r), [this, h = std::move(handler)](const asio::error_code& ec) mutable {
                if (ec)
                    h(ec);
                else
                    async_handshake(std::move(h));
            });
            return;
        }
        asio::post(get_executor(), [h = std::move(handler), e = outcome(r)]() mutable { h(e); });
    }

    // As many decrypted bytes as there are, up to `buffer`'s size, waiting
    // for readability only when there are none. Completes like a socket's
    // read: eof for the peer's close_notify, stream_truncated for a TCP close
    // without one.
    template <class Handler>
    void async_read_some(const asio::mutable_buffer& buffer, Handler handler) {
        finish_or_wait(tls_.read(buffer.data(), buffer.size()), std::move(handler),
                       [this, buffer](Handler h) { async_read_some(buffer, std::move(h)); });
    }

    // The same, for a caller that has just seen read_now() say would_block:
    // unless OpenSSL holds bytes, it waits for readability first instead of
    // asking the socket again only to hear EAGAIN.
    template <class Handler>
    void async_read_when_readable(const asio::mutable_buffer& buffer, Handler handler) {
        if (tls_.has_pending()) {
            async_read_some(buffer, std::move(handler));
            return;
        }
        tls_.async_wait(asio::socket_base::wait_read,
                        [this, buffer, h = std::move(handler)](const asio::error_code& ec) mutable {
                            if (ec) {
                                h(ec, std::size_t{0});
                                return;
                            }
                            const auto r = tls_.read(buffer.data(), buffer.size());
                            if (waits(r)) {  // readable, but not a whole record yet
                                finish_or_wait(r, std::move(h), [this, buffer](Handler again) {
                                    async_read_some(buffer, std::move(again));
                                });
                                return;
                            }
                            // Already a completion: the handler runs here, not posted.
                            h(outcome(r), r.bytes);
                        });
    }

    // Encrypts and sends a record's worth (or less) of `buffer`.
    template <class Handler>
    void async_write_some(const asio::const_buffer& buffer, Handler handler) {
        finish_or_wait(tls_.write(buffer.data(), buffer.size()), std::move(handler),
                       [this, buffer](Handler h) { async_write_some(buffer, std::move(h)); });
    }

    // A read now, without waiting: bytes > 0, or 0 with would_block when
    // OpenSSL has nothing and the socket nothing more, or 0 with the error
    // that ended the stream (as async_read_some says it).
    std::size_t read_now(void* data, std::size_t size, asio::error_code& ec);

private:
    static bool waits(const TlsSocket::Result& r) noexcept {
        return r.status == TlsSocket::Status::want_read || r.status == TlsSocket::Status::want_write;
    }
    static asio::socket_base::wait_type wait_type(const TlsSocket::Result& r) noexcept {
        return r.status == TlsSocket::Status::want_read ? asio::socket_base::wait_read : asio::socket_base::wait_write;
    }
    // What a finished step says: nothing for done, eof or stream_truncated
    // for a close, else the failure.
    static asio::error_code outcome(const TlsSocket::Result& r) noexcept {
        if (r.status == TlsSocket::Status::closed && !r.error) return asio::error::eof;
        return r.error;
    }

    // A read's or write's step `r`: complete the handler (posted, never
    // inline, as asio requires of an initiating function), or wait for what
    // OpenSSL wants and then `again(handler)`.
    template <class Handler, class Again>
    void finish_or_wait(const TlsSocket::Result& r, Handler handler, Again again) {
        if (waits(r)) {
            tls_.async_wait(wait_type(r), [again = std::move(again), h = std::move(handler)](
                                              const asio::error_code& ec) mutable {
                if (ec)
                    h(ec, std::size_t{0});
                else
                    again(std::move(h));
            });
            return;
        }
        asio::post(get_executor(), [h = std::move(handler), e = outcome(r), n = r.bytes]() mutable { h(e, n); });
    }

    TlsSocket tls_;
};

}  // namespace chat::bench

#endif  // PULSECHAT_HAVE_OPENSSL
