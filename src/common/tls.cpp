#include "chat/common/tls.hpp"

#include <cerrno>
#include <cstring>
#include <fstream>

#if PULSECHAT_HAVE_OPENSSL
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509_vfy.h>
#include <openssl/x509err.h>
#endif

namespace chat {

#if PULSECHAT_HAVE_OPENSSL

bool is_tls_truncation(const std::error_code& ec) noexcept { return ec == asio::ssl::error::stream_truncated; }

std::string describe_tls_failure(const std::error_code& ec, ssl_st* ssl) {
    std::string text = ec.message();
    if (ssl != nullptr) {
        const long verdict = SSL_get_verify_result(ssl);
        if (verdict != X509_V_OK) text += std::string(": ") + X509_verify_cert_error_string(verdict);
    }
    return text;
}

std::string describe_tls_session(ssl_st* ssl) {
    if (ssl == nullptr) return {};
    return std::string(SSL_get_version(ssl)) + " " + SSL_get_cipher_name(ssl);
}

namespace tls_detail {

// OpenSSL's own message for a missing file is "system lib"; this says which
// file and why.
void require_readable(const std::string& path, const char* what) {
    std::ifstream in(path);
    if (!in) throw TlsError(std::string("cannot read ") + what + " '" + path + "': " + std::strerror(errno));
}

std::string reason(const std::error_code& ec) {
    ERR_clear_error();  // what asio did not take off the queue would confuse the next call
    return ec.message();
}

void restrict_versions(TlsContext& ctx) {
    ctx.set_options(TlsContext::default_workarounds | TlsContext::no_sslv2 | TlsContext::no_sslv3 |
                    TlsContext::no_tlsv1 | TlsContext::no_tlsv1_1 | TlsContext::single_dh_use);
    // TLS 1.2 at least; without a maximum OpenSSL negotiates the highest both
    // sides speak, which is 1.3 for any current peer.
    SSL_CTX_set_min_proto_version(ctx.native_handle(), TLS1_2_VERSION);
    // TLS 1.3 has no renegotiation; in 1.2 a chat peer has no use for it.
    SSL_CTX_set_options(ctx.native_handle(), SSL_OP_NO_RENEGOTIATION);
}

void use_certificate(TlsContext& ctx, const std::string& cert, const std::string& key) {
    require_readable(cert, "certificate");
    require_readable(key, "private key");
    asio::error_code ec;
    ctx.use_certificate_chain_file(cert, ec);
    if (ec) throw TlsError("certificate '" + cert + "': " + reason(ec));
    ctx.use_private_key_file(key, TlsContext::pem, ec);
    const bool mismatch = ec && ec.category() == asio::error::get_ssl_category() &&
                          ERR_GET_REASON(static_cast<unsigned long>(ec.value())) == X509_R_KEY_VALUES_MISMATCH;
    if (ec && !mismatch) throw TlsError("private key '" + key + "': " + reason(ec));
    if (mismatch || SSL_CTX_check_private_key(ctx.native_handle()) != 1) {
        ERR_clear_error();
        throw TlsError("private key '" + key + "' does not belong to certificate '" + cert + "'");
    }
}

}  // namespace tls_detail

#else  // PULSECHAT_HAVE_OPENSSL

bool is_tls_truncation(const std::error_code&) noexcept { return false; }
std::string describe_tls_failure(const std::error_code& ec, ssl_st*) { return ec.message(); }
std::string describe_tls_session(ssl_st*) { return {}; }

#endif  // PULSECHAT_HAVE_OPENSSL

}  // namespace chat
