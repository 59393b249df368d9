// TLS through asio::ssl: what the server's and the client's contexts share.
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

// Shared by the server's and the client's contexts.
namespace tls_detail {
// TLS 1.2 at least (1.3 when the peer has it), no renegotiation.
void restrict_versions(TlsContext& ctx);
// Loads a PEM certificate chain and its key; throws TlsError naming the file.
void use_certificate(TlsContext& ctx, const std::string& cert, const std::string& key);
// Throws TlsError naming `what` and the file when it cannot be read.
void require_readable(const std::string& path, const char* what);
// asio's message for an OpenSSL error, with OpenSSL's queue cleared.
std::string reason(const std::error_code& ec);
}  // namespace tls_detail

#endif  // PULSECHAT_HAVE_OPENSSL

}  // namespace chat
