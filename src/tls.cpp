#include "chat/tls.hpp"

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

namespace {

// OpenSSL's own message for a missing file is "system lib"; this says which
// file and why.
void require_readable(const std::string& path, const char* what) {
    std::ifstream in(path);
    if (!in) throw TlsError(std::string("cannot read ") + what + " '" + path + "': " + std::strerror(errno));
}

std::string reason(const asio::error_code& ec) {
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

}  // namespace

std::shared_ptr<TlsContext> make_server_context(const TlsServerFiles& files) {
    auto ctx = std::make_shared<TlsContext>(TlsContext::tls_server);
    restrict_versions(*ctx);
    SSL_CTX_set_options(ctx->native_handle(), SSL_OP_CIPHER_SERVER_PREFERENCE);
    // An idle connection gives OpenSSL's record buffers (about 34 KiB) back
    // and gets them again for its next read or write. asio's engine sets it on
    // every SSL it makes too; on the context it holds for any SSL made from it.
    SSL_CTX_set_mode(ctx->native_handle(), SSL_MODE_RELEASE_BUFFERS);
    use_certificate(*ctx, files.cert, files.key);
    if (!files.client_ca.empty()) {
        require_readable(files.client_ca, "client CA file");
        asio::error_code ec;
        ctx->load_verify_file(files.client_ca, ec);
        if (ec) throw TlsError("client CA file '" + files.client_ca + "': " + reason(ec));
        ctx->set_verify_mode(asio::ssl::verify_peer | asio::ssl::verify_fail_if_no_peer_cert);
        // Tells clients which CAs count, so one with several certificates picks the right one.
        if (STACK_OF(X509_NAME)* names = SSL_load_client_CA_file(files.client_ca.c_str()))
            SSL_CTX_set_client_CA_list(ctx->native_handle(), names);
        ERR_clear_error();
    }
    // Session resumption with client certificates needs a context id, or
    // OpenSSL fails the resumed handshake.
    static const unsigned char id[] = "pulsechat";
    SSL_CTX_set_session_id_context(ctx->native_handle(), id, sizeof id - 1);
    return ctx;
}

TlsServerContext::TlsServerContext(TlsServerFiles files)
    : files_(std::move(files)), current_(make_server_context(files_)) {}

std::string TlsServerContext::reload() {
    try {
        current_ = make_server_context(files_);
        return {};
    } catch (const TlsError& e) {
        return e.what();
    }
}

std::shared_ptr<TlsContext> make_client_context(const TlsClientOptions& options) {
    auto ctx = std::make_shared<TlsContext>(TlsContext::tls_client);
    restrict_versions(*ctx);
    asio::error_code ec;
    if (options.insecure) {
        ctx->set_verify_mode(asio::ssl::verify_none);
    } else {
        ctx->set_verify_mode(asio::ssl::verify_peer);
        if (options.ca.empty()) {
            ctx->set_default_verify_paths(ec);
            if (ec) throw TlsError("the system's trust store: " + reason(ec));
        } else {
            require_readable(options.ca, "CA file");
            ctx->load_verify_file(options.ca, ec);
            if (ec) throw TlsError("CA file '" + options.ca + "': " + reason(ec));
        }
    }
    if (!options.cert.empty() || !options.key.empty()) {
        if (options.cert.empty() || options.key.empty())
            throw TlsError("a client certificate needs both --cert and --key");
        use_certificate(*ctx, options.cert, options.key);
    }
    return ctx;
}

namespace {
bool is_address(const std::string& host) {
    asio::error_code ec;
    asio::ip::make_address(host, ec);
    return !ec;
}
}  // namespace

void set_server_name(ssl_st* ssl, const std::string& host) {
    if (!is_address(host)) SSL_set_tlsext_host_name(ssl, host.c_str());
}

bool verify_host_name(const std::string& host, bool preverified, asio::ssl::verify_context& ctx) {
    if (!preverified) return false;
    if (asio::ssl::host_name_verification(host)(true, ctx)) return true;
    // asio's check leaves the verdict at "ok"; this names the failure.
    X509_STORE_CTX_set_error(ctx.native_handle(),
                             is_address(host) ? X509_V_ERR_IP_ADDRESS_MISMATCH : X509_V_ERR_HOSTNAME_MISMATCH);
    return false;
}

#else  // PULSECHAT_HAVE_OPENSSL

bool is_tls_truncation(const std::error_code&) noexcept { return false; }
std::string describe_tls_failure(const std::error_code& ec, ssl_st*) { return ec.message(); }
std::string describe_tls_session(ssl_st*) { return {}; }

#endif  // PULSECHAT_HAVE_OPENSSL

}  // namespace chat
