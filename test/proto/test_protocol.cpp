// Unit tests of the wire codec: layouts, the incremental decoder, its errors and the validators.
#include <doctest/doctest.h>

#include "chat/proto/protocol.hpp"

#include <algorithm>
#include <cstdint>
#include <limits>
#include <set>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace {

using chat::DecodeError;
using chat::Decoder;
using chat::ErrorCode;
using chat::FrameType;
using chat::Message;

constexpr auto u64_max = std::numeric_limits<std::uint64_t>::max();
constexpr auto u32_max = std::numeric_limits<std::uint32_t>::max();

// "01 0a ff" -> the three bytes; spaces and newlines are ignored.
std::string from_hex(std::string_view hex) {
    std::string out;
    int high = -1;
    for (char c : hex) {
        int nibble = -1;
        if (c >= '0' && c <= '9') nibble = c - '0';
        if (c >= 'a' && c <= 'f') nibble = c - 'a' + 10;
        if (c >= 'A' && c <= 'F') nibble = c - 'A' + 10;
        if (nibble < 0) continue;
        if (high < 0) {
            high = nibble;
        } else {
            out.push_back(static_cast<char>(high * 16 + nibble));
            high = -1;
        }
    }
    REQUIRE(high < 0);
    return out;
}

std::string be(std::uint64_t value, int bytes) {
    std::string out;
    for (int i = bytes - 1; i >= 0; --i) out.push_back(static_cast<char>((value >> (8 * i)) & 0xFF));
    return out;
}
std::string u8(std::uint64_t v) { return be(v, 1); }
std::string u16(std::uint64_t v) { return be(v, 2); }
std::string u32(std::uint64_t v) { return be(v, 4); }
std::string u64(std::uint64_t v) { return be(v, 8); }
std::string short_string(std::string_view s) { return u16(s.size()) + std::string(s); }
std::string text(std::string_view s) { return u32(s.size()) + std::string(s); }

// A hand-built frame; `length` overrides the payload's real length.
std::string frame(std::uint8_t type, const std::string& payload, std::uint16_t flags = 0,
                  std::uint64_t length = std::numeric_limits<std::uint64_t>::max()) {
    if (length == std::numeric_limits<std::uint64_t>::max()) length = payload.size();
    return u8(chat::protocol_version) + u8(type) + u16(flags) + u32(length) + payload;
}
std::string frame(FrameType type, const std::string& payload, std::uint16_t flags = 0,
                  std::uint64_t length = std::numeric_limits<std::uint64_t>::max()) {
    return frame(static_cast<std::uint8_t>(type), payload, flags, length);
}

// Takes every complete message out; stops at need_more or error.
std::vector<Message> drain(Decoder& decoder) {
    std::vector<Message> out;
    // One reused message, as a session would use it, so reuse is exercised too.
    Message message;
    while (decoder.next(message) == Decoder::Status::message) out.push_back(message);
    return out;
}

// Decodes `bytes` fed at once and expects exactly one failure, returning it.
DecodeError error_of(const std::string& bytes, std::uint32_t max_payload = chat::default_max_frame) {
    Decoder decoder(max_payload);
    decoder.feed(bytes);
    Message message;
    REQUIRE(decoder.next(message) == Decoder::Status::error);
    return decoder.error();
}

Message decode_one(const std::string& bytes, std::uint32_t max_payload = chat::default_max_frame) {
    Decoder decoder(max_payload);
    decoder.feed(bytes);
    Message message;
    REQUIRE(decoder.next(message) == Decoder::Status::message);
    CHECK(decoder.buffered() == 0);
    return message;
}

// Every frame type at least once, with edge values: empty strings and lists where
// allowed, multi-byte UTF-8, the maxima of the integer fields. Same-type pairs are
// ordered so that decoding the second into the reused first must reset fields.
std::vector<Message> sample_messages() {
    return {
        chat::Hello{"ada", "s3cret-token", ""},
        chat::Hello{"bob.b-2", "", "r\xC3\xA9sum\xC3\xA9"},
        chat::Welcome{u64_max, 15000, 45000, chat::default_max_frame, "ada", "resume-\xF0\x9F\x94\x91",
                      "pulse \xE2\x9C\x93", "0.1.0"},
        chat::Welcome{0, 0, 0, 0, "", "", "", ""},
        chat::Join{"#general", true, {u64_max, 12345}},
        chat::Join{"#general", false, {}},
        chat::Joined{"#general", 7, 99, 3, u32_max, true, {"ada", "bob", "zo\xC3\xAB"}},
        chat::Joined{"empty", 1, 0, 0, 0, false, {}},
        chat::Leave{"#general"},
        chat::Say{"#general", "h\xC3\xA9llo w\xC3\xB6rld \xE2\x9C\x93 \xF0\x9F\x91\x8B\ttab"},
        chat::Deliver{"#general", "ada", 1700000000000, {7, 100}, "replayed", true},
        chat::Deliver{"r", "b", u64_max, {u64_max, u64_max}, "\xF4\x8F\xBF\xBF", false},
        chat::Whisper{"bob", 1, "psst", true},
        chat::Whisper{"bob", 2, "", false},
        chat::Presence{"#general", "ada", chat::PresenceEvent::renamed, "ada2"},
        chat::Presence{"#general", "bob", chat::PresenceEvent::joined, ""},
        chat::Presence{"#general", "cy", chat::PresenceEvent::left, ""},
        chat::Presence{"#general", "dee", chat::PresenceEvent::timed_out, ""},
        chat::Presence{"#general", "eve", chat::PresenceEvent::disconnected, "connection reset"},
        chat::Nick{"", "ada2"},
        chat::Nick{"ada", "ada2"},
        chat::List{},
        chat::Rooms{{{"#a", 0}, {"b\xE2\x82\xAC", u32_max}}},
        chat::Rooms{{}},
        chat::Who{"#general"},
        chat::Members{"#general", {"ada", "bob"}},
        chat::Members{"x", {}},
        chat::Heartbeat{},
        chat::Ping{0},
        chat::Ping{u64_max},
        chat::Pong{0x0123456789ABCDEFULL},
        chat::Error{ErrorCode::nick_taken, "nick \"ada\" is taken", true},
        chat::Error{ErrorCode::rate_limited, "", false},
        chat::Bye{"server shutting down"},
        chat::Bye{""},
    };
}

std::string encode_all(const std::vector<Message>& messages) {
    std::string out;
    for (const auto& m : messages) chat::encode(m, out);
    return out;
}

}  // namespace

TEST_SUITE("protocol") {

TEST_CASE("the sample set covers every frame type") {
    std::set<FrameType> types;
    for (const auto& m : sample_messages()) types.insert(chat::frame_type(m));
    CHECK(types.size() == std::variant_size_v<Message>);
    CHECK(*types.begin() == FrameType::hello);
    CHECK(*types.rbegin() == FrameType::bye);
}

TEST_CASE("every frame type survives an encode and decode round trip") {
    for (const auto& original : sample_messages()) {
        CAPTURE(chat::to_string(chat::frame_type(original)));
        const std::string bytes = chat::encode(original);
        REQUIRE(bytes.size() >= chat::header_size);
        CHECK(static_cast<std::uint8_t>(bytes[0]) == chat::protocol_version);
        CHECK(static_cast<std::uint8_t>(bytes[1]) == static_cast<std::uint8_t>(chat::frame_type(original)));
        const Message decoded = decode_one(bytes);
        CHECK(decoded.index() == original.index());
        CHECK(decoded == original);
    }
}

TEST_CASE("the header holds version, type, flags and the big-endian payload length") {
    const std::string bytes = chat::encode(chat::Deliver{"lobby", "ada", 5, {1, 2}, "hi", true});
    const std::size_t payload = 2 + 5 + 2 + 3 + 8 + 8 + 8 + 4 + 2;
    REQUIRE(bytes.size() == chat::header_size + payload);
    CHECK(bytes.substr(0, 8) == from_hex("01 07 00 01") + u32(payload));

    CHECK(chat::encode(chat::Error{ErrorCode::internal, "x", true}).substr(0, 4) == from_hex("01 12 00 01"));
    CHECK(chat::encode(chat::Error{ErrorCode::internal, "x", false}).substr(0, 4) == from_hex("01 12 00 00"));
    CHECK(chat::encode(chat::Whisper{"a", 0, "x", true}).substr(0, 4) == from_hex("01 08 00 01"));
    CHECK(chat::encode(chat::Heartbeat{}) == from_hex("01 0f 00 00 00 00 00 00"));
    CHECK(chat::encode(chat::List{}) == from_hex("01 0b 00 00 00 00 00 00"));
}

TEST_CASE("encode appends to what the buffer already holds") {
    std::string out = "prefix";
    chat::encode(chat::Ping{1}, out);
    CHECK(out == "prefix" + from_hex("01 10 00 00 00 00 00 08 00 00 00 00 00 00 00 01"));
}

TEST_CASE("a fresh JOIN carries no position and a resuming JOIN carries epoch and seq") {
    CHECK(chat::encode(chat::Join{"r", false, {}}) == frame(FrameType::join, short_string("r") + u8(0)));
    CHECK(chat::encode(chat::Join{"r", true, {3, 4}}) ==
          frame(FrameType::join, short_string("r") + u8(1) + u64(3) + u64(4)));
    // A position set without resume is not sent, so it does not come back.
    const Message decoded = decode_one(chat::encode(chat::Join{"r", false, {3, 4}}));
    CHECK(decoded == Message{chat::Join{"r", false, {}}});
}

TEST_CASE("reserved flag bits are ignored by the decoder") {
    const std::string deliver_payload = short_string("r") + short_string("s") + u64(1) + u64(2) + u64(3) + text("t");
    CHECK(decode_one(frame(FrameType::deliver, deliver_payload, 0x8001)) ==
          Message{chat::Deliver{"r", "s", 1, {2, 3}, "t", true}});
    CHECK(decode_one(frame(FrameType::deliver, deliver_payload, 0xFFFE)) ==
          Message{chat::Deliver{"r", "s", 1, {2, 3}, "t", false}});
    CHECK(decode_one(frame(FrameType::say, short_string("r") + text("t"), 0xFFFF)) == Message{chat::Say{"r", "t"}});
}

TEST_CASE("the worked SAY example of PROTOCOL.md is what the encoder produces") {
    const std::string documented = from_hex(
        "01 06 00 00 00 00 00 11"
        "00 05 6c 6f 62 62 79"
        "00 00 00 06 68 c3 a9 6c 6c 6f");
    const chat::Say say{"lobby", "h\xC3\xA9llo"};
    CHECK(chat::encode(say) == documented);
    CHECK(decode_one(documented) == Message{say});
}

TEST_CASE("the worked DELIVER example of PROTOCOL.md is what the encoder produces") {
    const std::string documented = from_hex(
        "01 07 00 00 00 00 00 2e"
        "00 05 6c 6f 62 62 79"
        "00 03 61 64 61"
        "00 00 01 8b cf e5 68 00"
        "00 00 00 00 00 00 00 03"
        "00 00 00 00 00 00 00 2a"
        "00 00 00 06 68 c3 a9 6c 6c 6f");
    const chat::Deliver deliver{"lobby", "ada", 1700000000000, {3, 42}, "h\xC3\xA9llo", false};
    CHECK(chat::encode(deliver) == documented);
    CHECK(decode_one(documented) == Message{deliver});
}

TEST_CASE("the ERROR and BYE layouts of PROTOCOL.md are what the encoder produces") {
    CHECK(chat::encode(chat::Error{ErrorCode::unsupported_version, "v1", true}) ==
          from_hex("01 12 00 01 00 00 00 06  00 02  00 02 76 31"));
    CHECK(chat::encode(chat::Bye{"bye"}) == from_hex("01 13 00 00 00 00 00 05  00 03 62 79 65"));
}

TEST_CASE("a stream decodes to the same messages however it is split") {
    const auto messages = sample_messages();
    const std::string stream = encode_all(messages);

    SUBCASE("all at once") {
        Decoder decoder;
        decoder.feed(stream);
        CHECK(drain(decoder) == messages);
        CHECK(decoder.buffered() == 0);
        CHECK(decoder.error() == DecodeError::none);
    }
    SUBCASE("one byte at a time") {
        Decoder decoder;
        std::vector<Message> got;
        for (char c : stream) {
            decoder.feed(std::string_view(&c, 1));
            for (auto& m : drain(decoder)) got.push_back(std::move(m));
        }
        CHECK(got == messages);
        CHECK(decoder.buffered() == 0);
    }
    SUBCASE("in two pieces at every split point") {
        for (std::size_t split = 0; split <= stream.size(); ++split) {
            CAPTURE(split);
            Decoder decoder;
            decoder.feed(std::string_view(stream).substr(0, split));
            auto got = drain(decoder);
            REQUIRE(decoder.error() == DecodeError::none);
            decoder.feed(std::string_view(stream).substr(split));
            for (auto& m : drain(decoder)) got.push_back(std::move(m));
            REQUIRE(got == messages);
            REQUIRE(decoder.buffered() == 0);
        }
    }
    SUBCASE("through prepare and commit in odd-sized reads") {
        for (std::size_t chunk : {1u, 3u, 7u, 64u, 1000u}) {
            CAPTURE(chunk);
            Decoder decoder;
            std::vector<Message> got;
            for (std::size_t at = 0; at < stream.size();) {
                // Ask for more than will arrive, as a socket read does.
                auto space = decoder.prepare(chunk + 5);
                REQUIRE(space.size() == chunk + 5);
                const std::size_t n = std::min(chunk, stream.size() - at);
                std::copy_n(stream.begin() + static_cast<std::ptrdiff_t>(at), n, space.begin());
                decoder.commit(n);
                at += n;
                for (auto& m : drain(decoder)) got.push_back(std::move(m));
            }
            CHECK(got == messages);
            CHECK(decoder.buffered() == 0);
        }
    }
}

TEST_CASE("big frames between small ones decode through pseudo-random chunking") {
    std::vector<Message> messages;
    for (int i = 0; i < 200; ++i) {
        if (i % 17 == 0) {
            messages.push_back(chat::Say{"big", std::string(60000 + static_cast<std::size_t>(i), 'x')});
        } else {
            messages.push_back(chat::Ping{static_cast<std::uint64_t>(i)});
        }
    }
    const std::string stream = encode_all(messages);
    Decoder decoder;
    std::vector<Message> got;
    std::uint32_t state = 12345;
    for (std::size_t at = 0; at < stream.size();) {
        state = state * 1103515245u + 12345u;
        const std::size_t n = std::min<std::size_t>(1 + (state >> 16) % 9000, stream.size() - at);
        decoder.feed(std::string_view(stream).substr(at, n));
        at += n;
        for (auto& m : drain(decoder)) got.push_back(std::move(m));
    }
    CHECK(decoder.error() == DecodeError::none);
    CHECK(got.size() == messages.size());
    CHECK(got == messages);
    CHECK(decoder.buffered() == 0);
}

TEST_CASE("next reports need_more for a partial frame and keeps the bytes") {
    const std::string bytes = chat::encode(chat::Say{"r", "hello"});
    Decoder decoder;
    Message message;
    CHECK(decoder.next(message) == Decoder::Status::need_more);
    decoder.feed(std::string_view(bytes).substr(0, 5));
    CHECK(decoder.next(message) == Decoder::Status::need_more);
    decoder.feed(std::string_view(bytes).substr(5, 6));
    CHECK(decoder.next(message) == Decoder::Status::need_more);
    CHECK(decoder.buffered() == 11);
    decoder.feed(std::string_view(bytes).substr(11));
    REQUIRE(decoder.next(message) == Decoder::Status::message);
    CHECK(message == Message{chat::Say{"r", "hello"}});
    CHECK(decoder.next(message) == Decoder::Status::need_more);
}

TEST_CASE("decoding into a reused message resets the fields absent from the wire") {
    Message message = chat::Join{"old-room", true, {9, 9}};
    REQUIRE(chat::decode_payload(FrameType::join, 0, {}, message) == DecodeError::truncated_field);
    const std::string payload = short_string("new") + u8(0);
    const auto* p = reinterpret_cast<const std::uint8_t*>(payload.data());
    REQUIRE(chat::decode_payload(FrameType::join, 0, {p, payload.size()}, message) == DecodeError::none);
    CHECK(message == Message{chat::Join{"new", false, {}}});

    message = chat::Members{"r", {"a", "b", "c"}};
    const std::string fewer = short_string("r") + u16(1) + short_string("z");
    const auto* q = reinterpret_cast<const std::uint8_t*>(fewer.data());
    REQUIRE(chat::decode_payload(FrameType::members, 0, {q, fewer.size()}, message) == DecodeError::none);
    CHECK(message == Message{chat::Members{"r", {"z"}}});
}

TEST_CASE("an unsupported version is reported from the first byte") {
    Decoder decoder;
    decoder.feed(from_hex("02"));
    Message message;
    CHECK(decoder.next(message) == Decoder::Status::error);
    CHECK(decoder.error() == DecodeError::unsupported_version);

    CHECK(error_of(from_hex("00 06 00 00 00 00 00 00")) == DecodeError::unsupported_version);
    CHECK(error_of("GET / HTTP/1.1\r\n") == DecodeError::unsupported_version);
    // Even when the rest of the header would be wrong too.
    CHECK(error_of(from_hex("02 ff 00 00 ff ff ff ff")) == DecodeError::unsupported_version);
}

TEST_CASE("an oversized frame is refused as soon as its header is complete") {
    Decoder decoder(100);
    Message message;
    decoder.feed(from_hex("01 06 00 00 00 00 00"));
    CHECK(decoder.next(message) == Decoder::Status::need_more);
    decoder.feed(from_hex("65"));  // 101: one over, and no payload has arrived
    CHECK(decoder.next(message) == Decoder::Status::error);
    CHECK(decoder.error() == DecodeError::frame_too_large);
    CHECK(decoder.failed_type() == 0x06);

    // Exactly the maximum is fine.
    const std::string exact = frame(FrameType::say, short_string("r") + text(std::string(100 - 3 - 4, 'x')));
    REQUIRE(exact.size() == chat::header_size + 100);
    CHECK(decode_one(exact, 100) == Message{chat::Say{"r", std::string(93, 'x')}});

    CHECK(error_of(frame(FrameType::ping, "", 0, chat::default_max_frame + 1)) == DecodeError::frame_too_large);
    CHECK(error_of(frame(FrameType::ping, "", 0, u32_max)) == DecodeError::frame_too_large);
}

TEST_CASE("a lowered maximum applies to the next frame") {
    Decoder decoder;
    decoder.set_max_payload(10);
    CHECK(decoder.max_payload() == 10);
    decoder.feed(chat::encode(chat::Say{"r", "0123456789"}));
    Message message;
    CHECK(decoder.next(message) == Decoder::Status::error);
    CHECK(decoder.error() == DecodeError::frame_too_large);
}

TEST_CASE("an unknown type is refused as soon as its header is complete") {
    for (std::uint8_t type : {0x00, 0x14, 0x7f, 0xff}) {
        CAPTURE(int{type});
        Decoder decoder;
        decoder.feed(frame(type, "", 0, 1000));  // payload never arrives
        Message message;
        CHECK(decoder.next(message) == Decoder::Status::error);
        CHECK(decoder.error() == DecodeError::unknown_type);
        CHECK(decoder.failed_type() == type);
    }
    Message message;
    CHECK(chat::decode_payload(static_cast<FrameType>(0x20), 0, {}, message) == DecodeError::unknown_type);
}

TEST_CASE("a field running past the payload is a truncated field") {
    CHECK(error_of(frame(FrameType::say, u16(10) + "abc")) == DecodeError::truncated_field);
    CHECK(error_of(frame(FrameType::say, short_string("r") + u32(5) + "abcd")) == DecodeError::truncated_field);
    CHECK(error_of(frame(FrameType::say, u8(0))) == DecodeError::truncated_field);
    CHECK(error_of(frame(FrameType::ping, u64(1).substr(0, 7))) == DecodeError::truncated_field);
    CHECK(error_of(frame(FrameType::hello, "")) == DecodeError::truncated_field);
    CHECK(error_of(frame(FrameType::join, short_string("r") + u8(1) + u64(1))) == DecodeError::truncated_field);
    CHECK(error_of(frame(FrameType::join, short_string("r"))) == DecodeError::truncated_field);
    CHECK(error_of(frame(FrameType::members, short_string("r") + u16(3) + short_string("a") + short_string("b"))) ==
          DecodeError::truncated_field);
    // A count far beyond what the payload could hold is refused before allocating.
    CHECK(error_of(frame(FrameType::members, short_string("r") + u16(0xFFFF))) == DecodeError::truncated_field);
    CHECK(error_of(frame(FrameType::rooms, u16(1) + short_string("a") + u16(7))) == DecodeError::truncated_field);
    CHECK(error_of(frame(FrameType::welcome, u64(1) + u32(2) + u32(3))) == DecodeError::truncated_field);
}

TEST_CASE("a string that is not UTF-8 is refused in every string field") {
    const std::string overlong = "\xC0\xAF";
    const std::string overlong3 = "\xE0\x80\xAF";
    const std::string surrogate = "\xED\xA0\x80";
    const std::string too_high = "\xF4\x90\x80\x80";
    const std::string stray = "a\x80z";
    for (const auto& bad : {overlong, overlong3, surrogate, too_high, stray}) {
        CHECK(error_of(frame(FrameType::say, short_string("r") + text(bad))) == DecodeError::invalid_utf8);
        CHECK(error_of(frame(FrameType::say, short_string(bad) + text("t"))) == DecodeError::invalid_utf8);
        CHECK(error_of(frame(FrameType::hello, short_string("a") + short_string("") + short_string(bad))) ==
              DecodeError::invalid_utf8);
        CHECK(error_of(frame(FrameType::joined, short_string("r") + u64(1) + u64(1) + u64(0) + u32(0) + u8(0) +
                                                    u16(2) + short_string("a") + short_string(bad))) ==
              DecodeError::invalid_utf8);
        CHECK(error_of(frame(FrameType::rooms, u16(1) + short_string(bad) + u32(1))) == DecodeError::invalid_utf8);
        CHECK(error_of(frame(FrameType::error, u16(1) + short_string(bad))) == DecodeError::invalid_utf8);
        CHECK(error_of(frame(FrameType::presence, short_string("r") + short_string("n") + u8(4) + short_string(bad))) ==
              DecodeError::invalid_utf8);
        CHECK(error_of(frame(FrameType::whisper, short_string("p") + u64(0) + text(bad))) == DecodeError::invalid_utf8);
    }
}

TEST_CASE("a payload longer than its fields has trailing bytes") {
    CHECK(error_of(frame(FrameType::heartbeat, u8(0))) == DecodeError::trailing_bytes);
    CHECK(error_of(frame(FrameType::list, "xyz")) == DecodeError::trailing_bytes);
    CHECK(error_of(frame(FrameType::ping, u64(1) + u8(0))) == DecodeError::trailing_bytes);
    // A fresh JOIN followed by a position it did not announce.
    CHECK(error_of(frame(FrameType::join, short_string("r") + u8(0) + u64(1) + u64(2))) ==
          DecodeError::trailing_bytes);
    CHECK(error_of(frame(FrameType::bye, short_string("a") + "b")) == DecodeError::trailing_bytes);
}

TEST_CASE("a field outside its domain is an invalid value") {
    const auto presence = [](int event) {
        return frame(FrameType::presence, short_string("r") + short_string("n") + u8(static_cast<std::uint64_t>(event)) +
                                              short_string(""));
    };
    CHECK(error_of(presence(0)) == DecodeError::invalid_value);
    CHECK(error_of(presence(6)) == DecodeError::invalid_value);
    CHECK(error_of(presence(255)) == DecodeError::invalid_value);
    CHECK(decode_one(presence(5)) == Message{chat::Presence{"r", "n", chat::PresenceEvent::renamed, ""}});

    CHECK(error_of(frame(FrameType::join, short_string("r") + u8(2) + u64(1) + u64(2))) ==
          DecodeError::invalid_value);
    CHECK(error_of(frame(FrameType::joined, short_string("r") + u64(1) + u64(1) + u64(0) + u32(0) + u8(7) + u16(0))) ==
          DecodeError::invalid_value);
    CHECK(error_of(frame(FrameType::error, u16(0) + short_string("zero"))) == DecodeError::invalid_value);
}

TEST_CASE("an error code unknown to this version still decodes") {
    const Message decoded = decode_one(frame(FrameType::error, u16(999) + short_string("future"), chat::flag_fatal));
    const auto* error = std::get_if<chat::Error>(&decoded);
    REQUIRE(error != nullptr);
    CHECK(static_cast<int>(error->code) == 999);
    CHECK(error->fatal);
    CHECK(chat::to_string(error->code) == "unknown");
}

TEST_CASE("a decoding error is sticky") {
    Decoder decoder;
    decoder.feed(chat::encode(chat::Ping{1}));
    decoder.feed(frame(FrameType::ping, u64(2) + u8(0)));
    decoder.feed(chat::encode(chat::Ping{3}));
    Message message;
    REQUIRE(decoder.next(message) == Decoder::Status::message);
    CHECK(message == Message{chat::Ping{1}});
    CHECK(decoder.next(message) == Decoder::Status::error);
    CHECK(decoder.error() == DecodeError::trailing_bytes);
    CHECK(decoder.failed_type() == static_cast<std::uint8_t>(FrameType::ping));

    const std::size_t buffered = decoder.buffered();
    decoder.feed(chat::encode(chat::Ping{4}));
    auto space = decoder.prepare(16);
    REQUIRE(space.size() == 16);
    decoder.commit(16);
    CHECK(decoder.buffered() == buffered);  // nothing more is kept for a dead stream
    CHECK(decoder.next(message) == Decoder::Status::error);
    CHECK(decoder.next(message) == Decoder::Status::error);
    CHECK(decoder.error() == DecodeError::trailing_bytes);
}

TEST_CASE("committing more than was prepared is a bug that throws") {
    Decoder decoder;
    REQUIRE(decoder.prepare(10).size() == 10);
    CHECK_THROWS_AS(decoder.commit(std::size_t{1} << 30), std::out_of_range);
    CHECK(decoder.buffered() == 0);
}

TEST_CASE("short strings and lists at the u16 limit round-trip and one over throws") {
    const std::string longest(0xFFFF, 'n');
    const Message bye = chat::Bye{longest};
    CHECK(decode_one(chat::encode(bye), 1 << 20) == bye);
    CHECK_THROWS_AS(chat::encode(chat::Bye{longest + "n"}), std::length_error);

    const Message members = chat::Members{"r", std::vector<std::string>(0xFFFF, "a")};
    CHECK(decode_one(chat::encode(members), 1 << 20) == members);
    CHECK_THROWS_AS(chat::encode(chat::Members{"r", std::vector<std::string>(0x10000, "a")}), std::length_error);

    std::string out = "kept";
    CHECK_THROWS_AS(chat::encode(chat::Rooms{std::vector<chat::RoomInfo>(0x10000)}, out), std::length_error);
    CHECK(out == "kept");  // nothing half-written
}

TEST_CASE("text longer than a short string travels in SAY and DELIVER") {
    const Message say = chat::Say{"r", std::string(200000, 'y')};
    CHECK(decode_one(chat::encode(say), 1 << 20) == say);
    const Message deliver = chat::Deliver{"r", "s", 1, {1, 1}, std::string(70000, 'z'), true};
    CHECK(decode_one(chat::encode(deliver), 1 << 20) == deliver);
}

TEST_CASE("decode errors map to wire error codes") {
    CHECK(chat::to_error_code(DecodeError::unsupported_version) == ErrorCode::unsupported_version);
    CHECK(chat::to_error_code(DecodeError::frame_too_large) == ErrorCode::frame_too_large);
    CHECK(chat::to_error_code(DecodeError::unknown_type) == ErrorCode::unknown_type);
    CHECK(chat::to_error_code(DecodeError::invalid_utf8) == ErrorCode::invalid_utf8);
    CHECK(chat::to_error_code(DecodeError::truncated_field) == ErrorCode::malformed_frame);
    CHECK(chat::to_error_code(DecodeError::trailing_bytes) == ErrorCode::malformed_frame);
    CHECK(chat::to_error_code(DecodeError::invalid_value) == ErrorCode::malformed_frame);
    CHECK(chat::to_error_code(DecodeError::none) == ErrorCode::internal);
}

TEST_CASE("names are stable") {
    CHECK(chat::to_string(FrameType::hello) == "HELLO");
    CHECK(chat::to_string(FrameType::deliver) == "DELIVER");
    CHECK(chat::to_string(FrameType::heartbeat) == "HEARTBEAT");
    CHECK(chat::to_string(FrameType::bye) == "BYE");
    CHECK(chat::to_string(static_cast<FrameType>(0x55)) == "UNKNOWN");

    CHECK(chat::to_string(ErrorCode::malformed_frame) == "malformed_frame");
    CHECK(chat::to_string(ErrorCode::nick_taken) == "nick_taken");
    CHECK(chat::to_string(ErrorCode::too_many_connections_from_address) == "too_many_connections_from_address");
    CHECK(chat::to_string(ErrorCode::internal) == "internal");
    CHECK(chat::to_string(static_cast<ErrorCode>(0)) == "unknown");

    CHECK(chat::to_string(chat::PresenceEvent::timed_out) == "timed_out");
    CHECK(chat::to_string(chat::PresenceEvent::renamed) == "renamed");
    CHECK(chat::to_string(DecodeError::none) == "none");
    CHECK(chat::to_string(DecodeError::frame_too_large) == "frame_too_large");
    CHECK(chat::to_string(DecodeError::invalid_value) == "invalid_value");

    // Every type and every error code has its own name.
    std::set<std::string_view> names;
    for (int t = 1; t <= 0x13; ++t) names.insert(chat::to_string(static_cast<FrameType>(t)));
    CHECK(names.size() == 0x13);
    names.clear();
    for (int c = 1; c <= 24; ++c) names.insert(chat::to_string(static_cast<ErrorCode>(c)));
    CHECK(names.size() == 24);
    CHECK(names.count("unknown") == 0);
}

TEST_CASE("UTF-8 validation accepts exactly the well-formed sequences") {
    CHECK(chat::is_valid_utf8(""));
    CHECK(chat::is_valid_utf8(std::string_view("\0", 1)));
    CHECK(chat::is_valid_utf8("plain ascii longer than eight bytes"));
    CHECK(chat::is_valid_utf8("\x7F"));
    CHECK(chat::is_valid_utf8("\xC2\x80"));          // U+0080
    CHECK(chat::is_valid_utf8("\xDF\xBF"));          // U+07FF
    CHECK(chat::is_valid_utf8("\xE0\xA0\x80"));      // U+0800
    CHECK(chat::is_valid_utf8("\xED\x9F\xBF"));      // U+D7FF
    CHECK(chat::is_valid_utf8("\xEE\x80\x80"));      // U+E000
    CHECK(chat::is_valid_utf8("\xEF\xBF\xBF"));      // U+FFFF
    CHECK(chat::is_valid_utf8("\xF0\x90\x80\x80"));  // U+10000
    CHECK(chat::is_valid_utf8("\xF4\x8F\xBF\xBF"));  // U+10FFFF
    CHECK(chat::is_valid_utf8("abcdefgh\xE2\x82\xAC" "abcdefgh"));

    CHECK_FALSE(chat::is_valid_utf8("\x80"));
    CHECK_FALSE(chat::is_valid_utf8("\xBF"));
    CHECK_FALSE(chat::is_valid_utf8("\xC0\x80"));          // overlong NUL
    CHECK_FALSE(chat::is_valid_utf8("\xC1\xBF"));          // overlong
    CHECK_FALSE(chat::is_valid_utf8("\xE0\x9F\xBF"));      // overlong
    CHECK_FALSE(chat::is_valid_utf8("\xF0\x8F\xBF\xBF"));  // overlong
    CHECK_FALSE(chat::is_valid_utf8("\xED\xA0\x80"));      // U+D800
    CHECK_FALSE(chat::is_valid_utf8("\xED\xBF\xBF"));      // U+DFFF
    CHECK_FALSE(chat::is_valid_utf8("\xF4\x90\x80\x80"));  // U+110000
    CHECK_FALSE(chat::is_valid_utf8("\xF5\x80\x80\x80"));
    CHECK_FALSE(chat::is_valid_utf8("\xFF"));
    CHECK_FALSE(chat::is_valid_utf8("\xE2\x82"));            // cut short
    CHECK_FALSE(chat::is_valid_utf8("\xE2\x82x"));           // cut short by ASCII
    CHECK_FALSE(chat::is_valid_utf8("\xF0\x9F\x91"));        // cut short
    CHECK_FALSE(chat::is_valid_utf8("abcdefgh\x80"));       // after the word-at-a-time path
    CHECK_FALSE(chat::is_valid_utf8("abcdefghijklmno\xC3"));
    CHECK_FALSE(chat::is_valid_utf8("\xC3\xA9\xC3"));
}

TEST_CASE("nicknames follow the documented rules") {
    CHECK(chat::is_valid_nick("a"));
    CHECK(chat::is_valid_nick("Ada_Lovelace-1.0"));
    CHECK(chat::is_valid_nick("9lives"));
    CHECK(chat::is_valid_nick(std::string(32, 'n')));
    CHECK_FALSE(chat::is_valid_nick(""));
    CHECK_FALSE(chat::is_valid_nick(std::string(33, 'n')));
    CHECK_FALSE(chat::is_valid_nick("_ada"));
    CHECK_FALSE(chat::is_valid_nick("-ada"));
    CHECK_FALSE(chat::is_valid_nick(".ada"));
    CHECK_FALSE(chat::is_valid_nick("a b"));
    CHECK_FALSE(chat::is_valid_nick("#ada"));
    CHECK_FALSE(chat::is_valid_nick("zo\xC3\xAB"));
    CHECK_FALSE(chat::is_valid_nick("ada\n"));
    CHECK_FALSE(chat::is_valid_nick(std::string_view("ada\0", 4)));
}

TEST_CASE("room names follow the documented rules") {
    CHECK(chat::is_valid_room("#general"));
    CHECK(chat::is_valid_room("#"));
    CHECK(chat::is_valid_room("lobby"));
    CHECK(chat::is_valid_room("a#b_c-d.e"));
    CHECK(chat::is_valid_room("#" + std::string(63, 'r')));
    CHECK_FALSE(chat::is_valid_room(""));
    CHECK_FALSE(chat::is_valid_room("#" + std::string(64, 'r')));
    CHECK_FALSE(chat::is_valid_room("_room"));
    CHECK_FALSE(chat::is_valid_room(".room"));
    CHECK_FALSE(chat::is_valid_room("my room"));
    CHECK_FALSE(chat::is_valid_room("r\xC3\xA9"));
    CHECK_FALSE(chat::is_valid_room("room/1"));
}

TEST_CASE("text must be non-empty UTF-8 without control characters but tab") {
    CHECK(chat::is_valid_text("hello"));
    CHECK(chat::is_valid_text("\t"));
    CHECK(chat::is_valid_text("col1\tcol2"));
    CHECK(chat::is_valid_text("h\xC3\xA9llo \xF0\x9F\x91\x8B"));
    CHECK(chat::is_valid_text("\xC2\xA0"));  // no-break space is printable
    CHECK_FALSE(chat::is_valid_text(""));
    CHECK_FALSE(chat::is_valid_text("line\nbreak"));
    CHECK_FALSE(chat::is_valid_text("cr\r"));
    CHECK_FALSE(chat::is_valid_text("\x1B[31mred"));
    CHECK_FALSE(chat::is_valid_text("del\x7F"));
    CHECK_FALSE(chat::is_valid_text(std::string_view("nul\0", 4)));
    CHECK_FALSE(chat::is_valid_text("\xC2\x85"));  // NEL, a C1 control
    CHECK_FALSE(chat::is_valid_text("\xC2\x9F"));
    CHECK_FALSE(chat::is_valid_text("\xC0\xAF"));
}

}  // TEST_SUITE
