// chat_bench's client side of RFC 6455 (bench/ws_client): the handshake's
// request and answer check, masked frames (read back by the server's own
// Reader) and the in-place reader of server frames, cut at every point.
#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "chat/bench/ws_client.hpp"
#include "chat/proto/websocket_frame.hpp"

namespace ws = chat::bench::ws;

namespace {

// A server frame (unmasked, FIN unless told otherwise).
std::string server_frame(std::uint8_t opcode, std::string_view payload, bool fin = true) {
    std::array<std::uint8_t, 10> header{};
    const std::size_t n = chat::ws::encode_header(static_cast<chat::ws::Opcode>(opcode), payload.size(), header);
    std::string out(reinterpret_cast<const char*>(header.data()), n);
    if (!fin) out[0] = static_cast<char>(out[0] & 0x7F);
    out += payload;
    return out;
}

struct Read {
    std::string data;
    std::vector<std::string> pings;
};

// Feeds `bytes` in reads of `chunk` bytes, as the generator does: each read
// filtered in place, its data taken from the front.
Read read_in_chunks(ws::Reader& reader, const std::string& bytes, std::size_t chunk) {
    Read out;
    for (std::size_t at = 0; at < bytes.size(); at += chunk) {
        std::string piece = bytes.substr(at, chunk);
        const auto r = reader.filter(std::span(reinterpret_cast<std::uint8_t*>(piece.data()), piece.size()));
        out.data.append(piece.data(), r.data);
        if (r.ping) out.pings.emplace_back(reader.ping());
    }
    return out;
}

}  // namespace

TEST_SUITE("bench ws_client") {
    TEST_CASE("the accept key is the RFC 6455 example's") {
        CHECK(ws::accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        std::array<std::uint8_t, 16> random{};
        for (std::size_t i = 0; i < random.size(); ++i) random[i] = static_cast<std::uint8_t>(i + 1);
        CHECK(ws::make_key(random) == "AQIDBAUGBwgJCgsMDQ4PEA==");
    }

    TEST_CASE("the upgrade request asks for websocket with the key and the subprotocol, and no Origin") {
        const auto request = ws::upgrade_request("127.0.0.1:9000", "/ws", "dGhlIHNhbXBsZSBub25jZQ==", "pulsechat");
        CHECK(request.rfind("GET /ws HTTP/1.1\r\n", 0) == 0);
        CHECK(request.find("\r\nHost: 127.0.0.1:9000\r\n") != std::string::npos);
        CHECK(request.find("\r\nUpgrade: websocket\r\n") != std::string::npos);
        CHECK(request.find("\r\nConnection: Upgrade\r\n") != std::string::npos);
        CHECK(request.find("\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n") != std::string::npos);
        CHECK(request.find("\r\nSec-WebSocket-Version: 13\r\n") != std::string::npos);
        CHECK(request.find("\r\nSec-WebSocket-Protocol: pulsechat\r\n") != std::string::npos);
        CHECK(request.find("Origin") == std::string::npos);
        CHECK(request.substr(request.size() - 4) == "\r\n\r\n");
    }

    TEST_CASE("a 101 with the right accept key and subprotocol is accepted, what follows it is WebSocket") {
        const std::string key = "dGhlIHNhbXBsZSBub25jZQ==";
        const std::string head =
            "HTTP/1.1 101 Switching Protocols\r\nupgrade: WebSocket\r\nConnection: upgrade\r\n"
            "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nSec-WebSocket-Protocol: pulsechat\r\n\r\n";
        for (std::size_t cut = 0; cut < head.size(); ++cut)
            CHECK(ws::check_upgrade_response(head.substr(0, cut), key, "pulsechat").status ==
                  ws::UpgradeResult::Status::need_more);
        const auto r = ws::check_upgrade_response(head + "\x82\x01x", key, "pulsechat");
        CHECK(r.status == ws::UpgradeResult::Status::accepted);
        CHECK(r.head_size == head.size());
    }

    TEST_CASE("a refusal, a wrong accept key or a missing subprotocol is refused with the reason") {
        const std::string key = "dGhlIHNhbXBsZSBub25jZQ==";
        auto r = ws::check_upgrade_response("HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n", key, "pulsechat");
        CHECK(r.status == ws::UpgradeResult::Status::refused);
        CHECK(r.reason.find("403 Forbidden") != std::string::npos);
        r = ws::check_upgrade_response(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA=\r\nSec-WebSocket-Protocol: pulsechat\r\n\r\n",
            key, "pulsechat");
        CHECK(r.status == ws::UpgradeResult::Status::refused);
        CHECK(r.reason.find("Accept") != std::string::npos);
        r = ws::check_upgrade_response(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n",
            key, "pulsechat");
        CHECK(r.status == ws::UpgradeResult::Status::refused);
        CHECK(r.reason.find("pulsechat") != std::string::npos);
    }

    TEST_CASE("masked frames of every length class read back through the server's Reader") {
        const std::array<std::uint8_t, 4> mask{0x37, 0xfa, 0x21, 0x3d};
        for (const std::size_t size : {0, 1, 7, 8, 9, 125, 126, 127, 65535, 65536, 70001}) {
            std::string payload(size, '\0');
            for (std::size_t i = 0; i < size; ++i) payload[i] = static_cast<char>(i * 31 + 7);
            std::string out;
            ws::append_masked(out, ws::op_binary, payload, mask);
            CHECK((static_cast<std::uint8_t>(out[1]) & 0x80) != 0);  // the mask bit
            chat::ws::Reader server(1 << 20);
            server.feed(out);
            std::string got;
            chat::ws::Reader::Event e;
            bool last = size == 0;
            while (server.next(e)) {
                REQUIRE(e.kind == chat::ws::Reader::Event::Kind::data);
                got.append(reinterpret_cast<const char*>(e.payload.data()), e.payload.size());
                last = e.last;
            }
            CHECK(!server.failed());
            CHECK(last);
            CHECK(got == payload);
        }
    }

    TEST_CASE("a masked close carries its code") {
        std::string out;
        ws::append_close(out, 1000, {1, 2, 3, 4});
        chat::ws::Reader server(1024);
        server.feed(out);
        chat::ws::Reader::Event e;
        REQUIRE(server.next(e));
        CHECK(e.kind == chat::ws::Reader::Event::Kind::close);
        CHECK(e.code == chat::ws::CloseCode::normal);
    }

    TEST_CASE("binary payloads come out in order however the reads cut them, pings apart") {
        const std::string big(70'000, 'b');
        const std::string stream = server_frame(ws::op_binary, "hello ") + server_frame(ws::op_ping, "p1") +
                                   server_frame(ws::op_binary, "frag", false) + server_frame(ws::op_ping, "p2") +
                                   server_frame(ws::op_continuation, "mented ", false) +
                                   server_frame(ws::op_continuation, "", true) + server_frame(ws::op_binary, "") +
                                   server_frame(ws::op_pong, "ignored") + server_frame(ws::op_binary, big);
        const std::string want = "hello fragmented " + big;
        for (const std::size_t chunk : {1, 2, 3, 5, 13, 64, 4096, 1 << 20}) {
            CAPTURE(chunk);
            ws::Reader reader(1 << 20);
            const auto got = read_in_chunks(reader, stream, chunk);
            CHECK(!reader.closed());
            CHECK(got.data == want);
            // Each read answers its latest ping; cut finely, both are seen.
            REQUIRE(!got.pings.empty());
            CHECK(got.pings.back() == "p2");
            if (chunk < 8) CHECK(got.pings == std::vector<std::string>{"p1", "p2"});
        }
    }

    TEST_CASE("a close ends the reading with its code and reason; data before it is kept") {
        const std::string stream = server_frame(ws::op_binary, "last words") +
                                   server_frame(ws::op_close, std::string("\x03\xf0", 2) + "ERROR 7") +
                                   server_frame(ws::op_binary, "after");
        for (const std::size_t chunk : {1, 4, 1000}) {
            ws::Reader reader(1024);
            const auto got = read_in_chunks(reader, stream, chunk);
            CHECK(got.data == "last words");
            CHECK(reader.closed());
            CHECK(!reader.failed());
            CHECK(reader.close_code() == 1008);
            CHECK(reader.close_reason() == "ERROR 7");
        }
        ws::Reader bare(1024);
        read_in_chunks(bare, server_frame(ws::op_close, ""), 10);
        CHECK(bare.close_code() == 1005);
    }

    TEST_CASE("a server breaking the framing fails the reader") {
        const auto fails = [](const std::string& bytes, std::string_view why) {
            ws::Reader reader(100);
            read_in_chunks(reader, bytes, 3);
            CHECK(reader.failed());
            CHECK(reader.closed());
            CHECK(reader.error().find(why) != std::string::npos);
        };
        std::string masked;
        ws::append_masked(masked, ws::op_binary, "x", {1, 2, 3, 4});
        fails(masked, "masked");
        fails(server_frame(ws::op_text, "hi"), "text");
        fails(server_frame(ws::op_continuation, "x"), "continuation");
        fails(server_frame(ws::op_binary, "a", false) + server_frame(ws::op_binary, "b"), "inside");
        fails(server_frame(ws::op_binary, std::string(101, 'x')), "bound");
        fails(std::string("\xC2\x00", 2), "RSV");
        fails(std::string("\x83\x00", 2), "opcode");
        fails(std::string("\x09\x00", 2), "control");  // a ping without FIN
        fails(std::string("\x82\x7e\x00\x10", 4), "shortest");
    }
}
