// TLS through asio::ssl: the server's and the client's contexts made from PEM files, and their reload.
//
// Everything OpenSSL-specific is behind PULSECHAT_HAVE_OPENSSL (meson option
// `tls`); the trait and the two helpers at the top exist either way, so that
// the session template can name them without an #if of its own.
#pragma once

#include <memory>
#include <string>
#include <system_error>

#include <asio.hpp>

#include "pulsechat_config.h"

#if PULSECHAT_HAVE_OPENSSL
#include <asio/ssl.hpp>
#endif

struct ssl_st;  // OpenSSL's SSL

namespace chat {

// True for asio::ssl::stream<...>: the session does a handshake first and a
// close_notify last on such a stream.
template <class Stream>
inline constexpr bool is_tls_stream = false;

// A TLS peer that closed the TCP connection without a close_notify: for a chat
// session that is the same as an EOF (nothing is lost that a frame would not
// have shown), so the session treats it as one.
bool is_tls_truncation(const std::error_code& ec) noexcept;

// Why a handshake failed, in words: OpenSSL's reason, and the certificate
// check's verdict when that is what failed (e.g. "certificate verify failed:
// unable to get local issuer certificate").
std::string describe_tls_failure(const std::error_code& ec, ssl_st* ssl);
// The negotiated protocol and cipher, e.g. "TLSv1.3 TLS_AES_256_GCM_SHA384".
std::string describe_tls_session(ssl_st* ssl);

#if PULSECHAT_HAVE_OPENSSL

template <class Lower>
inline constexpr bool is_tls_stream<asio::ssl::stream<Lower>> = true;

using TlsStream = asio::ssl::stream<asio::ip::tcp::socket>;
using TlsContext = asio::ssl::context;

// A file or setting that cannot be used; the message names the file and OpenSSL's reason.
class TlsError : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

struct TlsServerFiles {
    std::string cert;       // PEM: the certificate, then any intermediates
    std::string key;        // PEM: its private key
    std::string client_ca;  // PEM: CAs whose client certificates are accepted; empty: none asked for
};

// TLS 1.2 at least (1.3 when the peer has it: OpenSSL picks the highest both
// speak). Throws TlsError.
std::shared_ptr<TlsContext> make_server_context(const TlsServerFiles& files);

// The server's current context. New connections take the current one; a
// reload makes a new context, and the sessions that started on the old one
// keep it alive through their shared_ptr. Used on the hub shard only.
class TlsServerContext {
public:
    explicit TlsServerContext(TlsServerFiles files);  // throws TlsError
    const std::shared_ptr<TlsContext>& current() const noexcept { return current_; }
    // Loads the files again. On failure the old context stays and the reason
    // comes back; an empty string means the new files are in use.
    std::string reload();
    const TlsServerFiles& files() const noexcept { return files_; }

private:
    TlsServerFiles files_;
    std::shared_ptr<TlsContext> current_;
};

struct TlsClientOptions {
    std::string ca;         // PEM bundle to trust; empty: the system's trust store
    std::string cert;       // client certificate (PEM), for servers that ask for one
    std::string key;        // its private key (PEM)
    bool insecure = false;  // no certificate or host-name check at all
};

// Throws TlsError.
std::shared_ptr<TlsContext> make_client_context(const TlsClientOptions& options);

// SNI for a client handshake: the host name (RFC 6066 sends none for an address).
void set_server_name(ssl_st* ssl, const std::string& host);
// The certificate check's callback: what OpenSSL decided, and for the server's
// own certificate also that it names `host`. A mismatch is recorded as the
// verdict, so describe_tls_failure() can say so.
bool verify_host_name(const std::string& host, bool preverified, asio::ssl::verify_context& ctx);

// Before a client handshake: SNI and, when `verify`, the check that the
// certificate names `host`. For any stream over TCP (owned or by reference).
template <class Lower>
void prepare_client_stream(asio::ssl::stream<Lower>& stream, const std::string& host, bool verify) {
    set_server_name(stream.native_handle(), host);
    if (!verify) return;
    stream.set_verify_mode(asio::ssl::verify_peer);
    stream.set_verify_callback([host](bool preverified, asio::ssl::verify_context& ctx) {
        return verify_host_name(host, preverified, ctx);
    });
}

#endif  // PULSECHAT_HAVE_OPENSSL

}  // namespace chat
