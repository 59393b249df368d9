#include "chat/common/tls_client_context.hpp"

#if PULSECHAT_HAVE_OPENSSL
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509_vfy.h>

namespace chat {

using namespace tls_detail;

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

void prepare_client_ssl(ssl_st* ssl, const std::string& host, bool verify) {
    set_server_name(ssl, host);
    if (!verify) {
        SSL_set_verify(ssl, SSL_VERIFY_NONE, nullptr);
        return;
    }
    SSL_set_verify(ssl, SSL_VERIFY_PEER, nullptr);
    X509_VERIFY_PARAM* param = SSL_get0_param(ssl);
    const int set = is_address(host) ? X509_VERIFY_PARAM_set1_ip_asc(param, host.c_str())
                                     : X509_VERIFY_PARAM_set1_host(param, host.c_str(), host.size());
    if (set != 1) {
        ERR_clear_error();
        throw TlsError("cannot check the server's certificate for '" + host + "'");
    }
}

}  // namespace chat
#endif  // PULSECHAT_HAVE_OPENSSL
