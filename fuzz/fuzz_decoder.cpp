// libFuzzer target for the wire decoder. For every input it checks that
//  - decoding does not crash, leak or trip a sanitizer, whatever the bytes;
//  - how the bytes are cut into chunks changes neither the messages nor the error;
//  - a decoded frame re-encodes to the same payload and decodes to an equal message;
//  - is_valid_utf8 agrees with a slow, obviously correct reference, and the
//    name and text validators nest as documented.
// Any disagreement aborts, which libFuzzer reports as a crash with the input saved.
#include "chat/proto/protocol.hpp"

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "fuzz_expect.hpp"

namespace {

using fuzz::expect;
using fuzz::fail;

// Decodes UTF-8 one code point at a time, the way the standard words it.
bool reference_is_valid_utf8(std::string_view s) {
    for (std::size_t i = 0; i < s.size();) {
        const auto lead = static_cast<unsigned char>(s[i]);
        std::size_t length = 0;
        std::uint32_t code_point = 0;
        if (lead < 0x80) {
            length = 1;
            code_point = lead;
        } else if ((lead & 0xE0) == 0xC0) {
            length = 2;
            code_point = lead & 0x1Fu;
        } else if ((lead & 0xF0) == 0xE0) {
            length = 3;
            code_point = lead & 0x0Fu;
        } else if ((lead & 0xF8) == 0xF0) {
            length = 4;
            code_point = lead & 0x07u;
        } else {
            return false;
        }
        if (i + length > s.size()) return false;
        for (std::size_t k = 1; k < length; ++k) {
            const auto c = static_cast<unsigned char>(s[i + k]);
            if ((c & 0xC0) != 0x80) return false;
            code_point = (code_point << 6) | (c & 0x3Fu);
        }
        static constexpr std::uint32_t smallest[] = {0, 0, 0x80, 0x800, 0x10000};
        if (code_point < smallest[length]) return false;                     // overlong
        if (code_point >= 0xD800 && code_point <= 0xDFFF) return false;      // surrogate
        if (code_point > 0x10FFFF) return false;                             // beyond Unicode
        i += length;
    }
    return true;
}

struct Frame {
    chat::Message message;
    std::span<const std::uint8_t> bytes;  // header and payload as they arrived
};

struct Outcome {
    std::vector<chat::Message> messages;
    chat::DecodeError error = chat::DecodeError::none;
};

bool has_flag_field(chat::FrameType type) {
    return type == chat::FrameType::deliver || type == chat::FrameType::whisper || type == chat::FrameType::error ||
           type == chat::FrameType::joined;
}

// A decoded frame must come back from the encoder byte for byte, except for the
// reserved flag bits the decoder ignores; and decode again to an equal message.
void check_reencoding(const Frame& frame) {
    const std::string again = chat::encode(frame.message);
    expect(again.size() == frame.bytes.size(), "re-encoded frame has another length");
    const auto* original = frame.bytes.data();
    const auto* encoded = reinterpret_cast<const std::uint8_t*>(again.data());
    expect(std::memcmp(encoded, original, 2) == 0, "re-encoded version or type differ");
    const auto type = static_cast<chat::FrameType>(original[1]);
    const std::uint8_t kept_bits = has_flag_field(type) ? 0x01 : 0x00;
    expect(encoded[2] == 0 && encoded[3] == (original[3] & kept_bits), "re-encoded flags differ");
    expect(std::memcmp(encoded + 4, original + 4, frame.bytes.size() - 4) == 0, "re-encoded payload differs");

    chat::Decoder decoder;
    decoder.feed(again);
    chat::Message decoded;
    expect(decoder.next(decoded) == chat::Decoder::Status::message, "re-encoded frame does not decode");
    expect(decoded == frame.message, "re-decoded message differs");
    expect(decoder.buffered() == 0, "re-encoded frame leaves bytes behind");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const std::span<const std::uint8_t> input(data, size);
    const std::string_view text(reinterpret_cast<const char*>(data), size);
    expect(chat::is_valid_utf8(text) == reference_is_valid_utf8(text), "is_valid_utf8 disagrees with the reference");
    // The validators nest: a nick is a valid room name and valid text; text is UTF-8.
    if (chat::is_valid_nick(text)) expect(chat::is_valid_room(text) && chat::is_valid_text(text), "nick rules leak");
    if (chat::is_valid_text(text)) expect(chat::is_valid_utf8(text), "text that is not UTF-8");

    // All at once: frame boundaries are known from how much each message consumed.
    Outcome whole;
    {
        chat::Decoder decoder;
        decoder.feed(input);
        std::size_t offset = 0;
        Frame frame;
        while (true) {
            const std::size_t before = decoder.buffered();
            const auto status = decoder.next(frame.message);
            if (status != chat::Decoder::Status::message) break;
            const std::size_t consumed = before - decoder.buffered();
            frame.bytes = input.subspan(offset, consumed);
            offset += consumed;
            check_reencoding(frame);
            whole.messages.push_back(frame.message);
        }
        whole.error = decoder.error();
        chat::Message after;
        if (whole.error != chat::DecodeError::none) {
            expect(decoder.next(after) == chat::Decoder::Status::error, "decoder error is not sticky");
        }
    }

    // In chunks whose sizes the input's first bytes choose, through both feed
    // paths, draining after every chunk.
    Outcome chunked;
    {
        chat::Decoder decoder;
        chat::Message message;
        const std::size_t seeds = size < 4 ? size : 4;
        std::size_t at = 0;
        for (std::size_t i = 0; at < size; ++i) {
            const std::size_t wish = seeds == 0 ? 1 : 1 + (data[i % seeds] + i) % 23;
            const std::size_t n = wish < size - at ? wish : size - at;
            if (i % 2 == 0) {
                decoder.feed(input.subspan(at, n));
            } else {
                // Asking for more room than arrives, sometimes much more, drives the
                // buffer through both compaction and growth.
                auto space = decoder.prepare(n + (data[(i + 1) % seeds] & 0x0F) * 256);
                std::memcpy(space.data(), data + at, n);
                decoder.commit(n);
            }
            at += n;
            while (decoder.next(message) == chat::Decoder::Status::message) chunked.messages.push_back(message);
        }
        chunked.error = decoder.error();
    }

    expect(chunked.messages == whole.messages, "chunking changed the messages");
    // A stream cut short is not an error yet, so only a stream that failed whole
    // must fail the same way chunked (and vice versa).
    expect(chunked.error == whole.error, "chunking changed the error");
    return 0;
}
