// The WebSocket opening handshake without sockets: requests as bytes, read
// with HttpRequestReader (headers too), answered by websocket_handshake().
#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "pulsechat_config.h"

#if PULSECHAT_HAVE_HTTP_PARSER

#include "chat/server/websocket_handshake.hpp"

using namespace chat;

namespace {

HttpRequest parse(const std::string& bytes) {
    HttpRequestReader reader;
    std::size_t consumed = 0;
    const auto status = reader.feed(bytes, consumed);
    REQUIRE_MESSAGE(status == HttpRequestReader::Status::request, reader.error());
    return reader.take();
}

// RFC 6455 1.2's request (its page from the server's own host, so that it is
// same-origin), with `extra` header lines and `drop` removed.
std::string request(std::string extra = "", std::string drop = "") {
    std::string lines[] = {"Host: server.example.com", "Upgrade: websocket", "Connection: Upgrade",
                           "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", "Origin: http://server.example.com",
                           "Sec-WebSocket-Version: 13"};
    std::string r = "GET /chat HTTP/1.1\r\n";
    for (const auto& l : lines)
        if (drop.empty() || l.rfind(drop, 0) != 0) r += l + "\r\n";
    r += extra;
    return r + "\r\n";
}

}  // namespace

TEST_CASE("RFC 6455 1.3: the sample key's accept value; the sample request is accepted") {
    CHECK(websocket_accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    const auto req = parse(request());
    CHECK(req.upgrade);
    CHECK(req.header("sec-websocket-key") == "dGhlIHNhbXBsZSBub25jZQ==");
    CHECK(req.header_has_token("connection", "UPGRADE"));
    auto answer = websocket_handshake(req, {});
    CHECK(answer.accepted);
    CHECK(answer.status == 101);
    CHECK(answer.response.rfind("HTTP/1.1 101 Switching Protocols\r\n", 0) == 0);
    CHECK(answer.response.find("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n") != std::string::npos);
    CHECK(answer.response.find("Sec-WebSocket-Protocol") == std::string::npos);
    CHECK(answer.response.substr(answer.response.size() - 4) == "\r\n\r\n");
}

TEST_CASE("headers: names in any case, values split across reads, repeated ones joined as a list") {
    HttpRequestReader reader;
    const std::string bytes = "GET / HTTP/1.1\r\nHOST: a\r\nconnection: keep-alive\r\nConnection: Upgrade\r\n"
                              "Upgrade: WebSocket\r\n\r\n";
    HttpRequestReader::Status status = HttpRequestReader::Status::need_more;
    for (std::size_t i = 0; i < bytes.size() && status == HttpRequestReader::Status::need_more; ++i) {
        std::size_t consumed = 0;
        status = reader.feed(std::string_view(bytes).substr(i, 1), consumed);
    }
    REQUIRE(status == HttpRequestReader::Status::request);
    const auto req = reader.take();
    CHECK(req.header("host") == "a");
    CHECK(req.header("connection") == "keep-alive, Upgrade");
    CHECK(req.header_has_token("connection", "upgrade"));
    CHECK(req.header_has_token("upgrade", "websocket"));
    CHECK_FALSE(req.header_has_token("connection", "close"));
    CHECK_FALSE(req.header("origin"));
}

TEST_CASE("refusals a client can act on: the status, the header it needs, a reason") {
    SUBCASE("not GET") {
        std::string r = request();
        r.replace(0, 3, "PUT");
        auto a = websocket_handshake(parse(r), {});
        CHECK_FALSE(a.accepted);
        CHECK(a.status == 405);
    }
    SUBCASE("no Upgrade") {
        auto a = websocket_handshake(parse(request("", "Upgrade:")), {});
        CHECK(a.status == 426);
        CHECK(a.response.find("Upgrade: websocket\r\n") != std::string::npos);
    }
    SUBCASE("version 8") {
        std::string r = request("", "Sec-WebSocket-Version");
        r.insert(r.size() - 2, "Sec-WebSocket-Version: 8\r\n");
        auto a = websocket_handshake(parse(r), {});
        CHECK(a.status == 426);
        CHECK(a.response.find("Sec-WebSocket-Version: 13\r\n") != std::string::npos);
    }
    SUBCASE("keys that are not 16 bytes of base64") {
        for (const char* key : {"", "dGhlIHNhbXBsZSBub25jZQ=", "dGhlIHNhbXBsZSBub25jZR==", "dGhlIHNhbXBsZSBub25j!Q==",
                                "dGhlIHNhbXBsZSBub25jZQdG"}) {
            CAPTURE(key);
            std::string r = request("Sec-WebSocket-Key: " + std::string(key) + "\r\n", "Sec-WebSocket-Key");
            auto a = websocket_handshake(parse(r), {});
            CHECK(a.status == 400);
            CHECK_FALSE(a.reason.empty());
        }
    }
    SUBCASE("an origin off the allow-list; none at all; one on it") {
        const std::vector<std::string> allowed{"https://chat.example.org"};
        WebSocketPolicy policy{allowed};
        auto a = websocket_handshake(parse(request()), policy);
        CHECK(a.status == 403);
        CHECK(a.response.find("--ws-allow-origin") != std::string::npos);
        CHECK(websocket_handshake(parse(request("", "Origin")), policy).accepted);
        auto ok = request("Origin: https://chat.example.org\r\n", "Origin");
        CHECK(websocket_handshake(parse(ok), policy).accepted);
        CHECK_FALSE(websocket_handshake(parse(request()), policy).accepted);
    }
    SUBCASE("no allow-list: the server's own pages only (Origin's host is Host), and non-browsers") {
        CHECK(websocket_handshake(parse(request()), {}).accepted);
        CHECK(websocket_handshake(parse(request("", "Origin")), {}).accepted);  // no Origin: not a browser
        const auto with = [](std::string origin, std::string host) {
            std::string r = request("Origin: " + origin + "\r\nHost: " + host + "\r\n", "Origin");
            // drop the default Host line: the one given replaces it
            r.erase(r.find("Host: server.example.com\r\n"), std::string("Host: server.example.com\r\n").size());
            return websocket_handshake(parse(r), {});
        };
        CHECK(with("http://127.0.0.1:8080", "127.0.0.1:8080").accepted);
        CHECK(with("HTTPS://Chat.Example.org", "chat.example.org").accepted);
        CHECK(with("https://chat.example.org", "chat.example.org:443").accepted);  // default port either way
        CHECK(with("http://chat.example.org:80", "chat.example.org").accepted);
        auto other = with("http://evil.example.net", "chat.example.org");
        CHECK(other.status == 403);
        CHECK(other.response.find("--ws-allow-origin") != std::string::npos);
        CHECK(with("http://127.0.0.1:8081", "127.0.0.1:8080").status == 403);  // another port is another origin
        CHECK(with("https://chat.example.org", "chat.example.org:80").status == 403);
        CHECK(with("null", "chat.example.org").status == 403);  // a sandboxed or file: page
        CHECK(with("http://chat.example.org.evil.net", "chat.example.org").status == 403);
    }
    SUBCASE("a repeated Origin or Host is refused, whatever its last copy says (found by fuzz_http)") {
        const auto twice = websocket_handshake(parse(request("Origin: http://server.example.com\r\n")), {});
        CHECK(twice.status == 400);
        CHECK(twice.reason.find("Origin") != std::string::npos);
        auto r = request("Origin: https://evil.example, http://server.example.com\r\n", "Origin");
        CHECK(websocket_handshake(parse(r), {}).status == 403);  // one header holding a list: not same-origin
        CHECK(websocket_handshake(parse(request("Host: server.example.com\r\n")), {}).status == 400);
    }
    SUBCASE("subprotocols: pulsechat among them is selected; others alone are refused") {
        auto a = websocket_handshake(parse(request("Sec-WebSocket-Protocol: chat, pulsechat\r\n")), {});
        CHECK(a.accepted);
        CHECK(a.response.find("Sec-WebSocket-Protocol: pulsechat\r\n") != std::string::npos);
        auto b = websocket_handshake(parse(request("Sec-WebSocket-Protocol: mqtt\r\n")), {});
        CHECK(b.status == 400);
    }
}

#endif  // PULSECHAT_HAVE_HTTP_PARSER: the handshake is read with libhttp-parser
