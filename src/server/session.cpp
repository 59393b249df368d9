// The session template, compiled once for each transport here rather than in
// every file that includes server.hpp.
#include "chat/server/session.hpp"

namespace chat {

template class Session<asio::ip::tcp::socket>;
template class Session<asio::local::stream_protocol::socket>;
#if PULSECHAT_HAVE_OPENSSL
template class Session<TlsSocket>;
#endif
#if PULSECHAT_HAVE_HTTP_PARSER
template class Session<WebSocketStream<asio::ip::tcp::socket>>;
#if PULSECHAT_HAVE_OPENSSL
template class Session<WebSocketStream<TlsSocket>>;
#endif
#endif

std::shared_ptr<SessionBase> make_session(asio::ip::tcp::socket stream, std::uint64_t id, std::size_t shard,
                                          std::string peer, SessionEnv& env) {
    return std::make_shared<Session<asio::ip::tcp::socket>>(std::move(stream), id, shard, std::move(peer), env);
}

std::shared_ptr<SessionBase> make_session(asio::local::stream_protocol::socket stream, std::uint64_t id,
                                          std::size_t shard, std::string peer, SessionEnv& env) {
    return std::make_shared<Session<asio::local::stream_protocol::socket>>(std::move(stream), id, shard,
                                                                          std::move(peer), env);
}

#if PULSECHAT_HAVE_OPENSSL
std::shared_ptr<SessionBase> make_session(TlsSocket stream, std::uint64_t id, std::size_t shard, std::string peer,
                                          SessionEnv& env) {
    return std::make_shared<Session<TlsSocket>>(std::move(stream), id, shard, std::move(peer), env);
}
#endif

#if PULSECHAT_HAVE_HTTP_PARSER
std::shared_ptr<SessionBase> make_session(WebSocketStream<asio::ip::tcp::socket> stream, std::uint64_t id,
                                          std::size_t shard, std::string peer, SessionEnv& env) {
    return std::make_shared<Session<WebSocketStream<asio::ip::tcp::socket>>>(std::move(stream), id, shard,
                                                                            std::move(peer), env);
}
#if PULSECHAT_HAVE_OPENSSL
std::shared_ptr<SessionBase> make_session(WebSocketStream<TlsSocket> stream, std::uint64_t id, std::size_t shard,
                                          std::string peer, SessionEnv& env) {
    return std::make_shared<Session<WebSocketStream<TlsSocket>>>(std::move(stream), id, shard, std::move(peer), env);
}
#endif
#endif

}  // namespace chat
