// The server's TLS context from PEM files, and its reload on SIGHUP.
#pragma once

#include <memory>
#include <string>

#include "chat/common/tls.hpp"

#if PULSECHAT_HAVE_OPENSSL
namespace chat {

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

}  // namespace chat
#endif  // PULSECHAT_HAVE_OPENSSL
