// The WebSocket transport, live (--ws-port, --wss-port): the upgrade, the
// pulsechat protocol inside binary messages next to TCP members, framing
// (fragments, several frames per message, one frame over several
// messages), pings, every close path's close code, a backlog through a full
// socket, the pages the port serves, and the same over TLS.
#include <doctest/doctest.h>

#include <cstdlib>
#include <filesystem>

#include "chat/server/web_files.hpp"
#include "utils/live.hpp"
#include "utils/websocket_client.hpp"

#if PULSECHAT_HAVE_HTTP_PARSER

using namespace chat;
using namespace chat::test;

namespace {

ServerConfig ws_config() {
    ServerConfig cfg = fast_config();
    cfg.heartbeat_interval = 2000ms;  // the tests' clients send no heartbeats
    cfg.heartbeat_timeout = 6000ms;
    cfg.ws_port = 0;
    return cfg;
}

struct WsServer {
    explicit WsServer(ServerConfig cfg = ws_config()) : server(std::move(cfg)) {
        ws_port = server.server().ws_endpoint()->port();
    }
    std::unique_ptr<WsTcpClient> upgraded(std::string extra = "") {
        auto c = ws_connect(ws_port);
        const int status = c->upgrade(host(), std::move(extra));
        REQUIRE_MESSAGE(status == 101, c->response());
        return c;
    }
    std::string host() const { return "127.0.0.1:" + std::to_string(ws_port); }
    TestServer server;
    std::uint16_t ws_port = 0;
};

std::optional<Error> last_error(const std::vector<Message>& got) {
    std::optional<Error> last;
    for (const auto& m : got)
        if (const auto* e = std::get_if<Error>(&m)) last = *e;
    return last;
}

}  // namespace

TEST_CASE("a WebSocket member and a TCP member chat in one room, in one order") {
    WsServer s;
    auto ws = s.upgraded();
    CHECK(ws->header("sec-websocket-protocol") == "pulsechat");
    CHECK(ws->header("sec-websocket-accept") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    REQUIRE(ws->login("web"));
    REQUIRE(ws->join("lobby"));
    TestClient tcp(s.server.port());
    REQUIRE(tcp.login("term"));
    REQUIRE(tcp.join("lobby"));

    for (int i = 0; i < 20; ++i) {
        if (i % 2 == 0)
            ws->send(Say{"lobby", "from web " + std::to_string(i)});
        else
            tcp.send(Say{"lobby", "from term " + std::to_string(i)});
    }
    const auto texts = [](auto& client) {
        std::vector<std::pair<std::uint64_t, std::string>> got;
        while (got.size() < 20) {
            auto d = client.template read_until<Deliver>();
            if (!d) break;
            got.emplace_back(d->position.seq, d->text);
        }
        return got;
    };
    const auto on_ws = texts(*ws);
    const auto on_tcp = texts(tcp);
    CHECK(on_ws.size() == 20);
    CHECK(on_ws == on_tcp);
    CHECK(ws->fault().empty());
}

TEST_CASE("framing: frames behind the upgrade request, a frame over two messages, two frames in one, fragments") {
    WsServer s;
    auto ws = ws_connect(s.ws_port);
    // The client's HELLO in the same packet as its upgrade request.
    REQUIRE(ws->upgrade(s.host(), "", "/ws", ws_frame(0x2, encode(Hello{"eager", {}, {}}))) == 101);
    REQUIRE(ws->read_until<Welcome>());
    // One JOIN split over two messages.
    const std::string join = encode(Join{"r", false, {}});
    ws->write_raw(ws_frame(0x2, join.substr(0, 5)));
    ws->write_raw(ws_frame(0x2, join.substr(5)));
    REQUIRE(ws->read_until<Joined>());
    // Two SAYs in one message; then one message in three fragments with a ping between them.
    ws->send_in_one({Say{"r", "one"}, Say{"r", "two"}});
    const std::string three = encode(Say{"r", "three"});
    ws->write_raw(ws_frame(0x2, three.substr(0, 3), false) + ws_frame(0x0, three.substr(3, 4), false) +
                  ws_frame(0x9, "between") + ws_frame(0x0, three.substr(7), true));
    for (const char* text : {"one", "two", "three"}) {
        auto d = ws->read_until<Deliver>();
        REQUIRE(d);
        CHECK(d->text == text);
    }
    CHECK(TestServer::eventually([&] {
        ws->read(20ms);
        return !ws->pongs().empty();
    }));
    CHECK(ws->pongs().front() == "between");
    CHECK(ws->fault().empty());
}

TEST_CASE("a framing violation: an ERROR, then the close code RFC 6455 names, then the TCP close") {
    struct Case {
        const char* what;
        std::string bytes;
        std::uint16_t code;
    };
    const std::vector<Case> cases = {
        {"an unmasked client frame", ws_frame(0x2, encode(Heartbeat{}), true, false), 1002},
        {"a text message", ws_frame(0x1, "hello"), 1003},
        {"text that is not UTF-8", ws_frame(0x1, "\xC3\x28"), 1007},
        {"a reserved opcode", ws_frame(0x3, "x"), 1002},
        {"a continuation outside a message", ws_frame(0x0, "x"), 1002},
        {"a message over --max-frame", ws_frame(0x2, std::string(70 * 1024, 'x')), 1009},
    };
    for (const auto& c : cases) {
        CAPTURE(c.what);
        WsServer s;
        auto ws = s.upgraded();
        REQUIRE(ws->login("x"));
        ws->write_raw(c.bytes);
        const auto got = ws->read_until_closed();
        const auto error = last_error(got);
        REQUIRE(error);
        CHECK(error->fatal);
        CHECK(error->code == ErrorCode::malformed_frame);
        CHECK(error->reason.find("websocket") != std::string::npos);
        CHECK(ws->close_code() == c.code);
        CHECK(ws->wait_tcp_close(3000ms));
    }
}

TEST_CASE("the message bound is --max-frame + 8 bytes; frames before a violation or a close still count") {
    ServerConfig cfg = ws_config();
    cfg.max_frame = 4096;
    SUBCASE("a message of exactly the bound is taken, one byte more is 1009") {
        WsServer s(cfg);
        auto ws = s.upgraded();
        REQUIRE(ws->login("edge"));
        std::string beats;
        while (beats.size() < 4096 + 8) beats += encode(Heartbeat{});
        REQUIRE(beats.size() == 4096 + 8);
        ws->write_raw(ws_frame(0x2, beats));
        ws->send(List{});
        CHECK(ws->read_until<Rooms>());
        ws->write_raw(ws_frame(0x2, beats + std::string(1, '\0')));
        ws->read_until_closed();
        CHECK(ws->close_code() == 1009);
    }
    SUBCASE("a SAY, then a text message, in one write: the SAY is delivered, then the close") {
        WsServer s(cfg);
        TestClient tcp(s.server.port());
        REQUIRE(tcp.login("listener"));
        REQUIRE(tcp.join("r"));
        auto ws = s.upgraded();
        REQUIRE(ws->login("last-words"));
        REQUIRE(ws->join("r"));
        ws->write_raw(ws_frame(0x2, encode(Say{"r", "said before"})) + ws_frame(0x1, "text"));
        auto d = tcp.read_until<Deliver>();
        REQUIRE(d);
        CHECK(d->text == "said before");
        ws->read_until_closed();
        CHECK(ws->close_code() == 1003);
    }
    SUBCASE("a SAY and the close frame in one write: the SAY is delivered") {
        WsServer s(cfg);
        TestClient tcp(s.server.port());
        REQUIRE(tcp.login("listener"));
        REQUIRE(tcp.join("r"));
        auto ws = s.upgraded();
        REQUIRE(ws->login("leaving"));
        REQUIRE(ws->join("r"));
        ws->write_raw(ws_frame(0x2, encode(Say{"r", "goodbye all"})) + ws_frame(0x8, std::string("\x03\xE8", 2)));
        auto d = tcp.read_until<Deliver>();
        REQUIRE(d);
        CHECK(d->text == "goodbye all");
        CHECK(ws->wait_tcp_close(3000ms));
    }
}

TEST_CASE("close codes: a pulsechat violation 1008, shutdown 1001, a BYE 1000, heartbeat expiry 1008") {
    SUBCASE("a malformed pulsechat frame") {
        WsServer s;
        auto ws = s.upgraded();
        REQUIRE(ws->login("x"));
        ws->write_raw(ws_frame(0x2, std::string("\x07\x01\x00\x00\x00\x00\x00\x00", 8)));  // bad version
        const auto error = last_error(ws->read_until_closed());
        REQUIRE(error);
        CHECK(error->fatal);
        CHECK(ws->close_code() == 1008);
        CHECK_FALSE(ws->close_reason().empty());
    }
    SUBCASE("the server shuts down") {
        WsServer s;
        auto ws = s.upgraded();
        REQUIRE(ws->login("x"));
        s.server.server().request_shutdown();
        bool bye = false;
        for (const auto& m : ws->read_until_closed()) bye = bye || std::holds_alternative<Bye>(m);
        CHECK(bye);  // what was queued, then BYE, then the close
        CHECK(ws->close_code() == 1001);
    }
    SUBCASE("the client says BYE") {
        WsServer s;
        auto ws = s.upgraded();
        REQUIRE(ws->login("x"));
        ws->send(Bye{"done"});
        ws->read_until_closed();
        CHECK(ws->close_code() == 1000);
    }
    SUBCASE("nothing received within the heartbeat timeout") {
        ServerConfig cfg = ws_config();
        cfg.heartbeat_interval = 100ms;
        cfg.heartbeat_timeout = 400ms;
        WsServer s(cfg);
        auto ws = s.upgraded();
        REQUIRE(ws->login("quiet"));
        const auto started = Clock::now();
        const auto error = last_error(ws->read_until_closed(3000ms));  // PINGs are not answered
        REQUIRE(error);
        CHECK(error->code == ErrorCode::heartbeat_timeout);
        CHECK(ws->close_code() == 1008);
        CHECK(Clock::now() - started < 2000ms);
    }
    SUBCASE("the client closes in the middle of a pulsechat frame: the ERROR, then 1008, nothing after it") {
        WsServer s;
        auto ws = s.upgraded();
        REQUIRE(ws->login("x"));
        const std::string say = encode(Say{"r", "cut short"});
        ws->write_raw(ws_frame(0x2, say.substr(0, 5)) + ws_frame(0x8, std::string("\x03\xE8", 2)));
        const auto error = last_error(ws->read_until_closed());
        REQUIRE(error);
        CHECK(error->code == ErrorCode::malformed_frame);
        CHECK(ws->close_code() == 1008);
        CHECK(ws->wait_tcp_close(3000ms));
        CHECK(ws->fault().empty());
    }
    SUBCASE("the client closes first: its close is answered, the session ends as a disconnect") {
        WsServer s;
        auto ws = s.upgraded();
        REQUIRE(ws->login("x"));
        ws->write_raw(ws_frame(0x8, std::string("\x03\xE8", 2) + "bye"));
        CHECK(ws->wait_tcp_close(3000ms));
        ws->read(10ms);
        CHECK(ws->close_code() == 1000);
    }
}

TEST_CASE("a backlog through a small receive window arrives whole, in order, in well-formed messages") {
    ServerConfig cfg = ws_config();
    cfg.write_timeout = 5000ms;
    WsServer s(cfg);
    auto ws = ws_connect(s.ws_port);
    ws->socket().set_option(asio::socket_base::receive_buffer_size(4096));
    REQUIRE(ws->upgrade(s.host()) == 101);
    REQUIRE(ws->login("slow"));
    REQUIRE(ws->join("big"));
    TestClient tcp(s.server.port());
    REQUIRE(tcp.login("fast"));
    REQUIRE(tcp.join("big"));
    constexpr int count = 300;
    for (int i = 0; i < count; ++i) tcp.send(Say{"big", std::to_string(i) + ":" + std::string(6000, 'a' + i % 26)});
    int next = 0;
    while (next < count) {
        auto d = ws->read_until<Deliver>(5000ms);
        if (!d) break;
        if (d->sender != "fast") continue;
        CHECK(d->text == std::to_string(next) + ":" + std::string(6000, 'a' + next % 26));
        ++next;
    }
    CHECK(next == count);
    CHECK(ws->fault().empty());
    // Several frames shared one message (one write batch each).
    CHECK(ws->binary_messages() < static_cast<std::size_t>(count) + 3);
}

TEST_CASE("the upgrade is refused with the status a client can act on") {
    SUBCASE("another site's page (no allow-list: same origin only)") {
        WsServer s;
        auto ws = ws_connect(s.ws_port);
        CHECK(ws->upgrade(s.host(), "Origin: http://evil.example\r\n") == 403);
        CHECK(ws->wait_tcp_close(3000ms));
    }
    SUBCASE("the server's own page") {
        WsServer s;
        auto ws = ws_connect(s.ws_port);
        CHECK(ws->upgrade(s.host(), "Origin: http://" + s.host() + "\r\n") == 101);
    }
    SUBCASE("an allow-list") {
        ServerConfig cfg = ws_config();
        cfg.ws_allow_origins = {"https://chat.example.org"};
        WsServer s(cfg);
        CHECK(ws_connect(s.ws_port)->upgrade(s.host(), "Origin: https://chat.example.org\r\n") == 101);
        CHECK(ws_connect(s.ws_port)->upgrade(s.host(), "Origin: http://" + s.host() + "\r\n") == 403);
    }
    SUBCASE("another path") {
        WsServer s;
        CHECK(ws_connect(s.ws_port)->upgrade(s.host(), "", "/chat") == 404);
    }
    SUBCASE("a request that never ends: the handshake timeout") {
        WsServer s;
        auto ws = ws_connect(s.ws_port);
        ws->write_raw("GET /ws HTTP/1.1\r\nHost: x\r\n");
        const auto started = Clock::now();
        CHECK(ws->wait_tcp_close(3000ms));
        CHECK(Clock::now() - started < 2500ms);  // handshake_timeout is 1 s
    }
}

TEST_CASE("the port serves the web client: files with their types and a CSP, 404, 405, keep-alive, then the upgrade") {
    WsServer s;
    auto c = ws_connect(s.ws_port);
    const std::string host = "Host: " + s.host() + "\r\n";
    for (const auto& file : web_files()) {
        CAPTURE(file.path);
        REQUIRE(c->http("GET " + std::string(file.path) + " HTTP/1.1\r\n" + host + "\r\n") == 200);
        CHECK(c->header("content-type") == std::string(file.content_type));
        CHECK(c->header("content-security-policy")->find("script-src 'self'") != std::string::npos);
        CHECK(c->header("x-content-type-options") == "nosniff");
        CHECK(c->body() == file.body);
    }
    REQUIRE(c->http("GET /protocol.js?v=1 HTTP/1.1\r\n" + host + "\r\n") == 200);  // a query is ignored
    CHECK(c->header("content-type") == "text/javascript; charset=utf-8");
    REQUIRE(c->http("HEAD /protocol.js HTTP/1.1\r\n" + host + "\r\n") == 200);
    CHECK(c->body().empty());
    CHECK(c->http("GET /../../etc/passwd HTTP/1.1\r\n" + host + "\r\n") == 404);
    // Still the same connection (keep-alive): now the upgrade, and a chat on it.
    REQUIRE(c->upgrade(s.host()) == 101);
    REQUIRE(c->login("after-pages"));
    auto other = ws_connect(s.ws_port);
    CHECK(other->http("POST / HTTP/1.1\r\n" + host + "Content-Length: 0\r\n\r\n") == 405);
    CHECK(other->wait_tcp_close(3000ms));
}

TEST_CASE("the page is served at /") {
    const WebFile* index = find_web_file("/");
    REQUIRE(index != nullptr);  // web/index.html is embedded
    CHECK(index->content_type == "text/html; charset=utf-8");
    CHECK(find_web_file("/index.html") == index);
    CHECK(find_web_file("/nope") == nullptr);
}

#if PULSECHAT_HAVE_OPENSSL
TEST_CASE("wss: the same over TLS") {
    namespace fs = std::filesystem;
    const fs::path dir = fs::temp_directory_path() / ("pulsechat_wss_" + std::to_string(::getpid()));
    fs::create_directories(dir);
    const std::string cert = (dir / "cert.pem").string();
    const std::string key = (dir / "key.pem").string();
    const std::string make = "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj "
                             "/CN=localhost -keyout '" +
                             key + "' -out '" + cert + "' >/dev/null 2>&1";
    REQUIRE_MESSAGE(std::system(make.c_str()) == 0, "the openssl command made no certificate");
    ServerConfig cfg = ws_config();
    cfg.ws_port.reset();
    cfg.wss_port = 0;
    cfg.tls_cert = cert;
    cfg.tls_key = key;
    {
        TestServer server(cfg);
        const auto port = server.server().wss_endpoint()->port();
        asio::ssl::context context(asio::ssl::context::tls_client);
        context.set_verify_mode(asio::ssl::verify_none);
        WsClient<asio::ssl::stream<asio::ip::tcp::socket>> ws(context);
        ws.socket().connect(asio::ip::tcp::endpoint(asio::ip::make_address("127.0.0.1"), port));
        bool done = false;
        asio::error_code handshake;
        ws.stream().async_handshake(asio::ssl::stream_base::client, [&](const asio::error_code& ec) {
            handshake = ec;
            done = true;
        });
        REQUIRE(ws.wait(done, 3000ms));
        REQUIRE_FALSE(handshake);
        REQUIRE(ws.upgrade("127.0.0.1:" + std::to_string(port)) == 101);
        REQUIRE(ws.login("secure"));
        REQUIRE(ws.join("vault"));
        TestClient tcp(server.port());
        REQUIRE(tcp.login("plain"));
        REQUIRE(tcp.join("vault"));
        for (int i = 0; i < 50; ++i) tcp.send(Say{"vault", "m" + std::to_string(i)});
        int seen = 0;
        while (seen < 50) {
            auto d = ws.read_until<Deliver>();
            if (!d) break;
            if (d->sender == "plain") CHECK(d->text == "m" + std::to_string(seen++));
        }
        CHECK(seen == 50);
        ws.send(Bye{"done"});
        ws.read_until_closed();
        CHECK(ws.close_code() == 1000);
    }
    fs::remove_all(dir);
}
#endif

#endif  // PULSECHAT_HAVE_HTTP_PARSER
