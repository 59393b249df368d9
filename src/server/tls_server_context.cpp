#include "chat/server/tls_server_context.hpp"

#if PULSECHAT_HAVE_OPENSSL
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509_vfy.h>

namespace chat {

using namespace tls_detail;

std::shared_ptr<TlsContext> make_server_context(const TlsServerFiles& files) {
    auto ctx = std::make_shared<TlsContext>(TlsContext::tls_server);
    restrict_versions(*ctx);
    SSL_CTX_set_options(ctx->native_handle(), SSL_OP_CIPHER_SERVER_PREFERENCE);
    // An idle connection gives OpenSSL's record buffers (about 34 KiB) back
    // and gets them again for its next read or write (TlsSocket makes its SSL
    // from this context).
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

}  // namespace chat
#endif  // PULSECHAT_HAVE_OPENSSL
