// A TLS client's context (trust store, optional client certificate) and the
// host-name check, for chat_client and chat_bench.
#pragma once

#include <memory>
#include <string>

#include "chat/common/tls.hpp"

#if PULSECHAT_HAVE_OPENSSL
namespace chat {

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

// The same for an SSL of its own (a client TlsSocket): SNI, and when
// `verify` OpenSSL's own check that the certificate names `host` (as an
// address or as a DNS name), whose failure is the verdict too.
void prepare_client_ssl(ssl_st* ssl, const std::string& host, bool verify);

}  // namespace chat
#endif  // PULSECHAT_HAVE_OPENSSL
