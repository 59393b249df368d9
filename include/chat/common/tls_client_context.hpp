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
// Before a client handshake on `ssl`: SNI and, when `verify`, OpenSSL's own
// check that the certificate names `host` (as an address or as a DNS name),
// whose failure is the verdict describe_tls_failure() names. For a client
// TlsSocket (chat_bench) and, below, an asio::ssl::stream (chat_client).
void prepare_client_ssl(ssl_st* ssl, const std::string& host, bool verify);

// The same for any asio::ssl::stream over TCP (owned or by reference).
template <class Lower>
void prepare_client_stream(asio::ssl::stream<Lower>& stream, const std::string& host, bool verify) {
    prepare_client_ssl(stream.native_handle(), host, verify);
}

}  // namespace chat
#endif  // PULSECHAT_HAVE_OPENSSL
