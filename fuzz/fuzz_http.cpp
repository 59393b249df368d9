// libFuzzer target for the HTTP upgrade: server/http_request (HttpRequestReader)
// and server/websocket_handshake. The input is one byte that picks how the
// rest is cut into reads (1 to 17 bytes, against all at once), then the bytes
// a client sent. For every input it checks that
//  - reading never crashes, leaks, throws or trips a sanitizer, whatever the bytes;
//  - how the bytes are cut changes neither the requests read (pipelined ones
//    one at a time), nor whether it ends in an error; a read that
//    needs more bytes has taken all it was given;
//  - every request read gets a handshake answer, with an Origin allow-list
//    and without, that is one whole HTTP
//    response: accepted is 101 with the Sec-WebSocket-Accept of the request's
//    key (proto's own SHA-1 and base64, not the server's OpenSSL code under test) and
//    Sec-WebSocket-Protocol: pulsechat exactly when the client offered it;
//    refused is 400, 403, 405 or 426 with a Content-Length that matches its body;
//  - the response's head is made of CRLF-separated "Name: value" lines with no
//    other CR or LF (nothing from the request can inject a header), and names
//    only headers the handshake is meant to send;
//  - with an allow-list, an accepted request with an Origin has one on the
//    list; without one, an accepted Origin names the request's Host (scheme's
//    default port aside, without case): the server's own page (PROTOCOL.md 13).
#include <array>
#include <cctype>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <string>
#include <string_view>
#include <vector>

#include "chat/server/http_request.hpp"
#include "chat/server/websocket_handshake.hpp"
#include "chat/proto/websocket_frame.hpp"

#include "fuzz_expect.hpp"

namespace {

using fuzz::expect;
using fuzz::fail;

// The accept key computed by proto's own SHA-1 and base64, not by the
// server's OpenSSL code under test.
std::string expected_accept(std::string_view key) { return chat::ws::accept_key(key); }

// --- what the handshake saw, read here without its helpers ---

std::string_view trim(std::string_view s) {
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
    return s;
}

bool iequal(std::string_view a, std::string_view b) {
    if (a.size() != b.size()) return false;
    for (std::size_t i = 0; i < a.size(); ++i)
        if (std::tolower(static_cast<unsigned char>(a[i])) != std::tolower(static_cast<unsigned char>(b[i]))) return false;
    return true;
}

// Every value of header `name`, in order.
std::vector<std::string_view> values(const chat::HttpRequest& request, std::string_view name) {
    std::vector<std::string_view> out;
    for (const auto& [n, v] : request.headers)
        if (n == name) out.push_back(v);
    return out;
}

bool offers_token(const chat::HttpRequest& request, std::string_view name, std::string_view token) {
    for (std::string_view list : values(request, name)) {
        while (true) {
            const auto comma = list.find(',');
            if (iequal(trim(list.substr(0, comma)), token)) return true;
            if (comma == std::string_view::npos) break;
            list.remove_prefix(comma + 1);
        }
    }
    return false;
}

// "https" of "https://host:port"; empty without "://".
std::string scheme_of(std::string_view origin) {
    const auto at = origin.find("://");
    std::string out(at == std::string_view::npos ? std::string_view{} : origin.substr(0, at));
    for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return out;
}

// An origin's (or, given the origin's scheme, a Host header's) host[:port],
// lowercased, without the scheme's default port; "\n" (matching nothing) for
// an origin without "://".
std::string authority_of(std::string_view s, std::string scheme = {}) {
    if (scheme.empty()) {
        scheme = scheme_of(s);
        const auto at = s.find("://");
        if (at == std::string_view::npos) return "\n";
        s.remove_prefix(at + 3);
    }
    std::string out(s);
    for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    const std::string port = scheme == "https" ? ":443" : scheme == "http" ? ":80" : "";
    if (!port.empty() && out.size() >= port.size() && out.compare(out.size() - port.size(), port.size(), port) == 0)
        out.resize(out.size() - port.size());
    return out;
}

// --- the response ---

struct Head {
    std::string status_line;
    std::vector<std::pair<std::string_view, std::string_view>> fields;
    std::string_view body;
};

// Splits a response into its head's lines and its body; fails on anything
// that is not one well-formed HTTP/1.1 response head.
Head split(std::string_view response) {
    const auto end = response.find("\r\n\r\n");
    expect(end != std::string_view::npos, "a response without the end of its head");
    const std::string_view head = response.substr(0, end + 2);
    Head out;
    out.body = response.substr(end + 4);
    std::size_t at = 0;
    bool first = true;
    while (at < head.size()) {
        const auto eol = head.find("\r\n", at);
        expect(eol != std::string_view::npos, "a head line without CRLF");
        const std::string_view line = head.substr(at, eol - at);
        at = eol + 2;
        expect(line.find('\r') == std::string_view::npos && line.find('\n') == std::string_view::npos,
               "a bare CR or LF in the response head");
        for (char c : line) expect(static_cast<unsigned char>(c) >= 0x20 && c != 0x7F, "a control byte in the head");
        if (first) {
            out.status_line = std::string(line);
            first = false;
            continue;
        }
        const auto colon = line.find(": ");
        expect(colon != std::string_view::npos && colon > 0, "a head line that is not 'Name: value'");
        out.fields.emplace_back(line.substr(0, colon), line.substr(colon + 2));
    }
    return out;
}

std::string_view field(const Head& head, std::string_view name) {
    std::string_view found;
    int n = 0;
    for (const auto& [k, v] : head.fields)
        if (iequal(k, name)) {
            found = v;
            ++n;
        }
    expect(n <= 1, "a response header sent twice");
    return found;
}

// The headers a handshake answer may carry; one added to the handshake is added here.
bool known_field(std::string_view name) {
    static constexpr std::string_view known[] = {
        "Upgrade", "Connection", "Sec-WebSocket-Accept", "Sec-WebSocket-Protocol", "Sec-WebSocket-Version",
        "Content-Type", "Content-Length", "Cache-Control", "Vary",
    };
    for (auto k : known)
        if (iequal(k, name)) return true;
    return false;
}

const std::vector<std::string> allow_list = {"https://chat.example.org", "http://localhost:8080"};

void check_handshake(const chat::HttpRequest& request, bool with_allow_list) {
    chat::WebSocketPolicy policy;
    if (with_allow_list) policy.allowed_origins = allow_list;
    chat::HandshakeAnswer answer;
    try {
        answer = chat::websocket_handshake(request, policy);
    } catch (const std::exception&) {
        fail("websocket_handshake threw");
    }
    const Head head = split(answer.response);
    for (const auto& [name, value] : head.fields) expect(known_field(name), "a header the handshake is not meant to send");

    if (answer.accepted) {
        expect(answer.status == 101, "accepted without 101");
        expect(head.status_line == "HTTP/1.1 101 Switching Protocols", "accepted, but the status line is not 101");
        expect(head.body.empty(), "bytes after a 101's head");
        expect(request.method == "GET", "accepted a request that is not a GET");
        expect(offers_token(request, "upgrade", "websocket"), "accepted without Upgrade: websocket");
        expect(offers_token(request, "connection", "upgrade"), "accepted without Connection: upgrade");
        const auto keys = values(request, "sec-websocket-key");
        expect(keys.size() == 1, "accepted without exactly one Sec-WebSocket-Key");
        const std::string_view key = trim(keys.front());
        expect(key.size() == 24, "accepted a key that is not 24 characters");
        const std::string want = "Sec-WebSocket-Accept: " + expected_accept(key) + "\r\n";
        expect(answer.response.find(want) != std::string::npos, "accepted without the right Sec-WebSocket-Accept");
        const bool offered = !values(request, "sec-websocket-protocol").empty();
        expect(!offered || offers_token(request, "sec-websocket-protocol", "pulsechat"),
               "accepted an offer of subprotocols without pulsechat");
        const bool selected = answer.response.find("\r\nSec-WebSocket-Protocol: pulsechat\r\n") != std::string::npos;
        expect(selected == offered, "Sec-WebSocket-Protocol: pulsechat answered iff offered");
        if (!with_allow_list && !values(request, "origin").empty()) {
            const auto origins = values(request, "origin");
            expect(origins.size() == 1, "accepted several Origin headers as the same origin");
            const auto hosts = values(request, "host");
            expect(hosts.size() == 1, "accepted an Origin without exactly one Host");
            expect(authority_of(trim(origins.front())) == authority_of(trim(hosts.front()), scheme_of(trim(origins.front()))),
                   "accepted an Origin other than the Host without an allow-list");
        }
        if (with_allow_list) {
            const auto origins = values(request, "origin");
            if (!origins.empty()) {
                expect(origins.size() == 1, "accepted several Origin headers against an allow-list");
                const std::string_view origin = trim(origins.front());
                bool listed = false;
                for (const auto& o : allow_list) listed = listed || o == origin;
                expect(listed, "accepted an Origin that is not on the allow-list");
            }
        }
    } else {
        expect(answer.status == 400 || answer.status == 403 || answer.status == 405 || answer.status == 426,
               "refused with a status outside 400, 403, 405, 426");
        expect(head.status_line.rfind("HTTP/1.1 " + std::to_string(answer.status) + " ", 0) == 0,
               "the status line does not carry the answer's status");
        const std::string_view length = field(head, "Content-Length");
        expect(!length.empty(), "a refusal without Content-Length");
        std::size_t n = 0;
        for (char c : length) {
            expect(c >= '0' && c <= '9' && n < 1'000'000, "a Content-Length that is not a number");
            n = n * 10 + static_cast<std::size_t>(c - '0');
        }
        expect(n == head.body.size(), "Content-Length does not match the body");
        expect(answer.response.find("Sec-WebSocket-Accept") == std::string::npos, "a refusal with an accept key");
        expect(!answer.reason.empty(), "a refusal without a reason");
    }
}

// What a request read comes to, to compare two cuts of the same bytes.
std::string summary(const chat::HttpRequest& r) {
    std::string s = r.method + ' ' + r.target + (r.keep_alive ? " k" : " -") + (r.upgrade ? "u" : "-");
    for (const auto& [n, v] : r.headers) {
        for (char c : n) expect(!(c >= 'A' && c <= 'Z'), "a header name not lowercased");
        s += '\n' + n + '\0' + v;
    }
    return s;
}

struct Outcome {
    std::vector<std::string> requests;
    std::string error;  // empty: no error (yet)
};

Outcome read(std::string_view bytes, std::size_t chunk, bool handshake) {
    chat::HttpRequestReader reader;
    Outcome out;
    for (std::size_t at = 0; at < bytes.size() && out.error.empty(); at += chunk) {
        std::string_view piece = bytes.substr(at, chunk);
        while (!piece.empty()) {
            std::size_t consumed = 0;
            const auto status = reader.feed(piece, consumed);
            expect(consumed <= piece.size(), "consumed more than was fed");
            if (status == chat::HttpRequestReader::Status::error) {
                out.error = reader.error();
                expect(!out.error.empty(), "an error without a reason");
                break;
            }
            if (status == chat::HttpRequestReader::Status::need_more) {
                expect(consumed == piece.size(), "needs more but left bytes it was given");
                break;
            }
            expect(consumed > 0, "a request out of no bytes");
            piece.remove_prefix(consumed);
            const chat::HttpRequest request = reader.take();
            out.requests.push_back(summary(request));
            if (handshake) {
                check_handshake(request, false);
                check_handshake(request, true);
            }
        }
    }
    return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size == 0) return 0;
    const std::size_t chunk = 1 + data[0] % 17;
    const std::string_view bytes(reinterpret_cast<const char*>(data + 1), size - 1);
    const Outcome whole = read(bytes, bytes.size() + 1, true);
    const Outcome cut = read(bytes, chunk, false);
    expect(whole.requests == cut.requests, "chunking changed the requests read");
    // Whether it failed, not why: a cut inside a header name hands libhttp-parser's
    // callback the name's first part at once, so the 257th header can count
    // (more than 256 headers) before a bad byte later in that name is seen,
    // which the whole read reports instead (invalid character in header).
    expect(whole.error.empty() == cut.error.empty(), "chunking changed whether it failed");
    return 0;
}
