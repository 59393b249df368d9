// A session as the server's registries see it, and how one is made for each
// transport (the Session template is instantiated in src/server/session.cpp).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>

#include <asio/ip/tcp.hpp>
#include <asio/local/stream_protocol.hpp>

#include "chat/common/tls_socket.hpp"
#include "chat/server/websocket_stream.hpp"
#include "chat/proto/protocol.hpp"
#include "chat/server/flush_list.hpp"
#include "chat/server/participant.hpp"

namespace chat {

struct SessionEnv;

// The transport-independent face of a session, for the server's registries.
class SessionBase : public Participant, public Flushable {
public:
    // Starts the coroutines. `rejection`, when set, is sent as a fatal ERROR
    // before anything is read (connection limits).
    virtual void start(std::optional<std::pair<ErrorCode, std::string>> rejection) = 0;
    // Keeps something the stream depends on (a TLS context that a reload
    // replaced) alive as long as the session.
    virtual void hold(std::shared_ptr<const void> resource) = 0;
    // Server shutdown: send BYE after what is queued, then close.
    virtual void shutdown(const std::string& reason) = 0;
    // Close now, queued or not.
    virtual void abort(const std::string& reason) = 0;
    virtual const std::string& peer() const noexcept = 0;
    // Bytes held for the peer now (queued and in flight); on its shard only.
    virtual std::size_t queued_bytes() const noexcept = 0;
};

std::shared_ptr<SessionBase> make_session(asio::ip::tcp::socket stream, std::uint64_t id, std::size_t shard,
                                          std::string peer, SessionEnv& env);
std::shared_ptr<SessionBase> make_session(asio::local::stream_protocol::socket stream, std::uint64_t id,
                                          std::size_t shard, std::string peer, SessionEnv& env);
#if PULSECHAT_HAVE_OPENSSL
std::shared_ptr<SessionBase> make_session(TlsSocket stream, std::uint64_t id, std::size_t shard, std::string peer,
                                          SessionEnv& env);
#endif
#if PULSECHAT_HAVE_HTTP_PARSER
std::shared_ptr<SessionBase> make_session(WebSocketStream<asio::ip::tcp::socket> stream, std::uint64_t id,
                                          std::size_t shard, std::string peer, SessionEnv& env);
#if PULSECHAT_HAVE_OPENSSL
std::shared_ptr<SessionBase> make_session(WebSocketStream<TlsSocket> stream, std::uint64_t id, std::size_t shard,
                                          std::string peer, SessionEnv& env);
#endif
#endif

}  // namespace chat
