// WebSocketStream's bookkeeping without sockets: the message header of a
// batch, control frames waiting for a boundary, and the close code chosen
// for each way a session ends.
#include <doctest/doctest.h>

#include "chat/server/websocket_stream.hpp"

using namespace chat;

namespace {
struct NoSocket {};
}  // namespace

TEST_CASE("a batch's message header: its size in the shortest form, handed out as it is written") {
    WebSocketStream<NoSocket> s(NoSocket{});
    CHECK_FALSE(s.header_left());
    CHECK_FALSE(s.message_started());
    s.start_message(125);
    REQUIRE(s.header_rest().size() == 2);
    CHECK(s.header_rest()[0] == 0x82);  // FIN, binary
    CHECK(s.header_rest()[1] == 125);   // unmasked
    s.start_message(126);
    REQUIRE(s.header_rest().size() == 4);
    CHECK(s.header_rest()[1] == 126);
    CHECK(s.header_rest()[2] == 0);
    CHECK(s.header_rest()[3] == 126);
    s.start_message(70000);
    REQUIRE(s.header_rest().size() == 10);
    CHECK(s.header_rest()[1] == 127);
    s.header_consumed(3);
    CHECK(s.message_started());
    CHECK(s.header_left());
    CHECK(s.header_rest().size() == 7);
    s.header_consumed(7);
    CHECK_FALSE(s.header_left());
    CHECK(s.header_rest().empty());
}

TEST_CASE("control frames wait in order and give their memory back once written") {
    WebSocketStream<NoSocket> s(NoSocket{});
    CHECK_FALSE(s.control_left());
    s.queue_control(ws::encode_control(ws::Opcode::pong, "a"));
    s.queue_control(ws::encode_control(ws::Opcode::pong, "bc"));
    CHECK(s.control_rest().size() == 3 + 4);
    s.control_consumed(2);
    CHECK(s.control_started());
    CHECK(s.control_rest().size() == 5);
    CHECK(static_cast<unsigned char>(s.control_rest()[1]) == 0x8A);  // the second pong's header
    s.control_consumed(5);
    CHECK_FALSE(s.control_left());
    CHECK_FALSE(s.control_started());
    CHECK(s.control_rest().empty());
}

TEST_CASE("the close code for each cause; a framing failure's own code wins") {
    CHECK(websocket_close_code(CloseCause::client_quit) == ws::CloseCode::normal);
    CHECK(websocket_close_code(CloseCause::peer_closed) == ws::CloseCode::normal);
    CHECK(websocket_close_code(CloseCause::shutdown) == ws::CloseCode::going_away);
    CHECK(websocket_close_code(CloseCause::refused) == ws::CloseCode::try_again_later);
    CHECK(websocket_close_code(CloseCause::internal) == ws::CloseCode::internal);
    for (auto cause : {CloseCause::heartbeat_timeout, CloseCause::handshake_timeout, CloseCause::slow_consumer,
                       CloseCause::protocol_error, CloseCause::rate_limit, CloseCause::auth_failed,
                       CloseCause::replaced, CloseCause::connection_error})
        CHECK(websocket_close_code(cause) == ws::CloseCode::policy);
    WebSocketStream<NoSocket> s(NoSocket{});
    CHECK_FALSE(s.failure());
    s.set_failure(ws::CloseCode::too_big);
    CHECK(s.failure() == ws::CloseCode::too_big);
    CHECK_FALSE(s.close_sent());
    s.mark_close_sent();
    CHECK(s.close_sent());
}
