// libFuzzer target for the RFC 6455 frame reader (proto/websocket_frame). For
// every input it checks that
//  - reading never crashes, leaks or trips a sanitizer, whatever the bytes;
//  - how the bytes are cut into chunks (the first byte picks the cut) changes
//    neither the binary bytes read, nor the pings, nor how it ends;
//  - no message is longer than the bound, control payloads are at most 125
//    bytes, and after an error or a close nothing more comes out.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "chat/proto/websocket_frame.hpp"

#include "fuzz_expect.hpp"

namespace {

using fuzz::expect;
using fuzz::fail;

constexpr std::size_t max_message = 4096;

struct Outcome {
    std::string data;
    std::vector<std::string> pings;
    int ending = 0;  // 0 none, 1 close, 2 error
    int code = 0;
};

void drain(chat::ws::Reader& reader, Outcome& out, std::size_t& message) {
    chat::ws::Reader::Event e;
    while (reader.next(e)) {
        expect(out.ending == 0, "an event after the end");
        using Kind = chat::ws::Reader::Event::Kind;
        const std::string payload(reinterpret_cast<const char*>(e.payload.data()), e.payload.size());
        switch (e.kind) {
            case Kind::data:
                message += payload.size();
                expect(message <= max_message, "a message over the bound");
                if (e.last) message = 0;
                out.data += payload;
                break;
            case Kind::ping:
                expect(payload.size() <= 125, "a ping over 125 bytes");
                out.pings.push_back(payload);
                break;
            case Kind::pong:
                expect(payload.size() <= 125, "a pong over 125 bytes");
                break;
            case Kind::close:
                out.ending = 1;
                out.code = static_cast<int>(e.code);
                break;
            case Kind::error:
                expect(!e.reason.empty(), "an error without a reason");
                out.ending = 2;
                out.code = static_cast<int>(e.code);
                break;
        }
    }
}

Outcome read(const std::uint8_t* data, std::size_t size, std::size_t chunk) {
    chat::ws::Reader reader(max_message);
    Outcome out;
    std::size_t message = 0;
    for (std::size_t at = 0; at < size; at += chunk) {
        reader.feed(std::span<const std::uint8_t>(data + at, std::min(chunk, size - at)));
        drain(reader, out, message);
    }
    return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size == 0) return 0;
    const std::size_t chunk = 1 + data[0] % 17;
    const Outcome whole = read(data + 1, size - 1, size);
    const Outcome cut = read(data + 1, size - 1, chunk);
    expect(whole.data == cut.data, "chunking changed the data");
    expect(whole.pings == cut.pings, "chunking changed the pings");
    expect(whole.ending == cut.ending && whole.code == cut.code, "chunking changed how it ended");
    return 0;
}
