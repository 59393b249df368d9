// RFC 6455 framing, sans-io: the reader of client frames (every rule it
// enforces, byte at a time as well as whole) and the writer of server frames.
#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "chat/proto/protocol.hpp"
#include "chat/proto/websocket_frame.hpp"

using namespace chat::ws;

namespace {

// A client frame as a browser sends it: masked with `key`.
std::string client_frame(std::uint8_t first_byte, std::string_view payload,
                         std::array<std::uint8_t, 4> key = {0x37, 0xfa, 0x21, 0x3d}) {
    std::string f;
    f.push_back(static_cast<char>(first_byte));
    if (payload.size() < 126) {
        f.push_back(static_cast<char>(0x80 | payload.size()));
    } else if (payload.size() <= 0xFFFF) {
        f.push_back(static_cast<char>(0x80 | 126));
        f.push_back(static_cast<char>(payload.size() >> 8));
        f.push_back(static_cast<char>(payload.size() & 0xFF));
    } else {
        f.push_back(static_cast<char>(0x80 | 127));
        for (int i = 7; i >= 0; --i) f.push_back(static_cast<char>((static_cast<std::uint64_t>(payload.size()) >> (8 * i)) & 0xFF));
    }
    for (auto k : key) f.push_back(static_cast<char>(k));
    for (std::size_t i = 0; i < payload.size(); ++i) f.push_back(static_cast<char>(payload[i] ^ key[i % 4]));
    return f;
}

struct Read {
    std::string data;          // binary bytes, concatenated
    std::vector<bool> lasts;   // `last` of each data event
    std::vector<std::string> pings;
    int pongs = 0;
    bool closed = false;
    bool error = false;
    CloseCode code = CloseCode::normal;
    std::string reason;
};

Read read_all(Reader& r) {
    Read out;
    Reader::Event e;
    while (r.next(e)) {
        const std::string payload(reinterpret_cast<const char*>(e.payload.data()), e.payload.size());
        switch (e.kind) {
            case Reader::Event::Kind::data:
                out.data += payload;
                out.lasts.push_back(e.last);
                break;
            case Reader::Event::Kind::ping: out.pings.push_back(payload); break;
            case Reader::Event::Kind::pong: ++out.pongs; break;
            case Reader::Event::Kind::close:
                out.closed = true;
                out.code = e.code;
                out.reason = e.reason;
                break;
            case Reader::Event::Kind::error:
                out.error = true;
                out.code = e.code;
                out.reason = e.reason;
                break;
        }
    }
    return out;
}

// Whole, then one byte at a time: the same events either way.
Read read_bytes(const std::string& bytes, std::size_t max = 1 << 20) {
    Reader whole(max);
    whole.feed(bytes);
    Read a = read_all(whole);
    Reader split(max);
    Read b;
    for (char c : bytes) {
        split.feed(std::string_view(&c, 1));
        Read part = read_all(split);
        b.data += part.data;
        b.lasts.insert(b.lasts.end(), part.lasts.begin(), part.lasts.end());
        b.pings.insert(b.pings.end(), part.pings.begin(), part.pings.end());
        b.pongs += part.pongs;
        if (part.closed || part.error) {
            b.closed = part.closed;
            b.error = part.error;
            b.code = part.code;
            b.reason = part.reason;
        }
    }
    CHECK(a.data == b.data);
    CHECK(a.pings == b.pings);
    CHECK(a.closed == b.closed);
    CHECK(a.error == b.error);
    CHECK(a.code == b.code);
    return a;
}

}  // namespace

TEST_CASE("RFC 6455 5.7: the masked examples read back; an unmasked client frame is refused") {
    // "A single-frame masked text message": valid UTF-8, refused as text.
    const std::string hello_text("\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58", 11);
    auto r = read_bytes(hello_text);
    CHECK(r.error);
    CHECK(r.code == CloseCode::unsupported);
    CHECK(client_frame(0x81, "Hello") == hello_text);
    // "A single-frame unmasked text message": a client must mask.
    r = read_bytes(std::string("\x81\x05\x48\x65\x6c\x6c\x6f", 7));
    CHECK(r.error);
    CHECK(r.code == CloseCode::protocol_error);
    // The same as binary: the bytes, one message.
    r = read_bytes(client_frame(0x82, "Hello"));
    CHECK_FALSE(r.error);
    CHECK(r.data == "Hello");
    CHECK(r.lasts.back());
    // "Unmasked Ping request" masked as a client sends it: a ping with its payload.
    r = read_bytes(client_frame(0x89, "Hello"));
    REQUIRE(r.pings.size() == 1);
    CHECK(r.pings[0] == "Hello");
    // "256 bytes binary message in a single unmasked frame" (7E 0100), and 64 KiB (7F ...).
    r = read_bytes(client_frame(0x82, std::string(256, 'x')));
    CHECK(r.data == std::string(256, 'x'));
    r = read_bytes(client_frame(0x82, std::string(65536, 'y')));
    CHECK(r.data.size() == 65536);
    CHECK_FALSE(r.error);
}

TEST_CASE("fragments make one message; control frames may come between them") {
    std::string bytes = client_frame(0x02, "Hel") + client_frame(0x89, "p") + client_frame(0x00, "") +
                        client_frame(0x80, "lo");
    auto r = read_bytes(bytes);
    CHECK_FALSE(r.error);
    CHECK(r.data == "Hello");
    CHECK(r.pings == std::vector<std::string>{"p"});
    CHECK(r.lasts.back());
    // The message bound counts every fragment.
    auto big = read_bytes(client_frame(0x02, std::string(60, 'a')) + client_frame(0x80, std::string(60, 'b')), 100);
    CHECK(big.error);
    CHECK(big.code == CloseCode::too_big);
    auto fits = read_bytes(client_frame(0x02, std::string(50, 'a')) + client_frame(0x80, std::string(50, 'b')), 100);
    CHECK_FALSE(fits.error);
    CHECK(fits.data.size() == 100);
}

TEST_CASE("every framing rule: the violation and its close code") {
    struct Case {
        const char* what;
        std::string bytes;
        CloseCode code;
    };
    std::string long_126 = client_frame(0x82, std::string(10, 'z'));
    // The same 10 bytes with a 16-bit length: not the shortest form.
    std::string not_shortest("\x82\xFE\x00\x0A\x00\x00\x00\x00", 8);
    not_shortest += std::string(10, 'z');
    std::string not_shortest64("\x82\xFF\x00\x00\x00\x00\x00\x00\x01\x00\x00\x00\x00\x00", 14);
    std::string over_63("\x82\xFF\x80\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00", 14);
    const std::vector<Case> cases = {
        {"RSV1 set", client_frame(0xC2, "x"), CloseCode::protocol_error},
        {"RSV3 set", client_frame(0x92, "x"), CloseCode::protocol_error},
        {"opcode 3", client_frame(0x83, "x"), CloseCode::protocol_error},
        {"opcode 0xB", client_frame(0x8B, "x"), CloseCode::protocol_error},
        {"a fragmented ping", client_frame(0x09, "x"), CloseCode::protocol_error},
        {"a ping of 126 bytes", client_frame(0x89, std::string(126, 'p')), CloseCode::protocol_error},
        {"a continuation first", client_frame(0x80, "x"), CloseCode::protocol_error},
        {"a message inside a message", client_frame(0x02, "x") + client_frame(0x82, "y"), CloseCode::protocol_error},
        {"16-bit length for 10 bytes", not_shortest, CloseCode::protocol_error},
        {"64-bit length for 256 bytes", not_shortest64, CloseCode::protocol_error},
        {"length with bit 63", over_63, CloseCode::protocol_error},
        {"over the bound", client_frame(0x82, std::string(2000, 'q')), CloseCode::too_big},
        {"text that is not UTF-8", client_frame(0x81, "\xC3\x28"), CloseCode::invalid_payload},
        {"text split mid-character", client_frame(0x01, "\xC3") + client_frame(0x80, "\xA9"), CloseCode::unsupported},
        {"close of one byte", client_frame(0x88, "\x03"), CloseCode::protocol_error},
        {"close code 1005", client_frame(0x88, std::string("\x03\xED", 2)), CloseCode::protocol_error},
        {"close code 999", client_frame(0x88, std::string("\x03\xE7", 2)), CloseCode::protocol_error},
        {"close code 5000", client_frame(0x88, std::string("\x13\x88", 2)), CloseCode::protocol_error},
        {"close reason not UTF-8", client_frame(0x88, std::string("\x03\xE8\xFF", 3)), CloseCode::invalid_payload},
    };
    for (const auto& c : cases) {
        CAPTURE(c.what);
        auto r = read_bytes(c.bytes, 1024);
        CHECK(r.error);
        CHECK(r.code == c.code);
        CHECK_FALSE(r.reason.empty());
    }
    // After an error nothing more is read.
    Reader reader(1024);
    reader.feed(client_frame(0xC2, "x") + client_frame(0x82, "fine"));
    Reader::Event e;
    REQUIRE(reader.next(e));
    CHECK(e.kind == Reader::Event::Kind::error);
    CHECK_FALSE(reader.next(e));
    CHECK(reader.failed());
}

TEST_CASE("a client's close: its code and reason, or none; then nothing more") {
    auto r = read_bytes(client_frame(0x88, std::string("\x03\xE8", 2) + "bye") + client_frame(0x82, "late"));
    CHECK(r.closed);
    CHECK(r.code == CloseCode::normal);
    CHECK(r.reason == "bye");
    CHECK(r.data.empty());
    r = read_bytes(client_frame(0x88, ""));
    CHECK(r.closed);
    CHECK(r.code == CloseCode::no_status);
    r = read_bytes(client_frame(0x88, std::string("\x0F\xA0", 2)));  // 4000: an application's own
    CHECK(r.closed);
    CHECK(static_cast<int>(r.code) == 4000);
}

TEST_CASE("server frames: the shortest header at each length bound; close reasons clipped on a character") {
    std::array<std::uint8_t, 10> h{};
    CHECK(encode_header(Opcode::binary, 125, h) == 2);
    CHECK(h[0] == 0x82);
    CHECK(h[1] == 125);
    CHECK(encode_header(Opcode::binary, 126, h) == 4);
    CHECK(h[1] == 126);
    CHECK(h[2] == 0);
    CHECK(h[3] == 126);
    CHECK(encode_header(Opcode::binary, 65535, h) == 4);
    CHECK(encode_header(Opcode::binary, 65536, h) == 10);
    CHECK(h[1] == 127);
    CHECK(h[7] == 1);
    CHECK(h[8] == 0);
    CHECK(encode_control(Opcode::pong, "Hello") == std::string("\x8A\x05Hello", 7));
    const auto close = encode_close(CloseCode::policy, "nick_taken: that nickname is in use");
    CHECK(static_cast<unsigned char>(close[0]) == 0x88);
    CHECK(close.substr(2, 2) == std::string("\x03\xF0", 2));  // 1008
    CHECK(close.substr(4) == "nick_taken: that nickname is in use");
    std::string accents;
    for (int i = 0; i < 100; ++i) accents += "\xC3\xA9";  // é, two bytes each
    const auto clipped = encode_close(CloseCode::going_away, accents);
    CHECK(clipped.size() <= 2 + 125);
    CHECK(chat::is_valid_utf8(std::string_view(clipped).substr(4)));
    CHECK((clipped.size() - 4) % 2 == 0);
    CHECK(is_valid_close_code(1000));
    CHECK(is_valid_close_code(1011));
    CHECK_FALSE(is_valid_close_code(1006));
    CHECK_FALSE(is_valid_close_code(1015));
    CHECK(is_valid_close_code(4999));
}

TEST_CASE("base64 and the accept key without OpenSSL: RFC 4648's and RFC 6455's examples") {
    const auto b64 = [](std::string_view s) {
        return chat::ws::base64(std::span<const std::uint8_t>(reinterpret_cast<const std::uint8_t*>(s.data()), s.size()));
    };
    CHECK(b64("") == "");
    CHECK(b64("f") == "Zg==");
    CHECK(b64("fo") == "Zm8=");
    CHECK(b64("foo") == "Zm9v");
    CHECK(b64("foobar") == "Zm9vYmFy");
    CHECK(chat::ws::accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
}
