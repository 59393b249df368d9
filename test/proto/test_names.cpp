// Validated names (RoomName, NickName), the clipping builders and log escaping: PROTOCOL.md section 4.
#include <doctest/doctest.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_set>
#include <utility>
#include <variant>
#include <vector>

#include "chat/proto/names.hpp"
#include "chat/proto/protocol.hpp"

using namespace chat;
using namespace std::string_literals;

namespace {

// PROTOCOL.md section 4, written out independently of the code under test.
bool alnum(unsigned char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'); }
bool nick_char(unsigned char c) { return alnum(c) || c == '_' || c == '-' || c == '.'; }
bool room_char(unsigned char c) { return nick_char(c) || c == '#'; }
bool room_first(unsigned char c) { return alnum(c) || c == '#'; }

// A 2-, 3- and 4-byte UTF-8 character.
const std::string two = "\xC3\xA9";             // é
const std::string three = "\xE2\x82\xAC";       // €
const std::string four = "\xF0\x9F\x98\x80";    // 😀

bool has_control_byte(std::string_view s) {
    for (char ch : s) {
        const auto c = static_cast<unsigned char>(ch);
        if (c < 0x20 || c == 0x7F) return true;
    }
    return false;
}

}  // namespace

TEST_SUITE("names") {
    TEST_CASE("a room name is 1 to 64 bytes: 64 is accepted, 65 and empty are not") {
        CHECK(RoomName::parse("a"));
        CHECK(RoomName::parse(std::string(64, 'a')));
        CHECK(RoomName::parse("#" + std::string(63, '#')));
        CHECK_FALSE(RoomName::parse(std::string(65, 'a')));
        CHECK_FALSE(RoomName::parse(""));
        auto r = RoomName::parse(std::string(64, 'z'));
        REQUIRE(r);
        CHECK(r->view() == std::string(64, 'z'));
        CHECK(r->size() == 64);
    }

    TEST_CASE("a nickname is 1 to 32 bytes: 32 is accepted, 33 and empty are not") {
        CHECK(NickName::parse("a"));
        CHECK(NickName::parse(std::string(32, 'a')));
        CHECK_FALSE(NickName::parse(std::string(33, 'a')));
        CHECK_FALSE(NickName::parse(""));
        auto n = NickName::parse(std::string(32, '7'));
        REQUIRE(n);
        CHECK(n->str() == std::string(32, '7'));
        CHECK(n->size() == 32);
    }

    TEST_CASE("a room name takes letters, digits, '_', '-', '.', '#' and starts with a letter, digit or '#'") {
        for (int b = 0; b < 256; ++b) {
            const auto c = static_cast<unsigned char>(b);
            const std::string ch(1, static_cast<char>(c));
            CAPTURE(b);
            CHECK(RoomName::parse(ch).has_value() == room_first(c));
            CHECK(RoomName::parse("a" + ch + "b").has_value() == room_char(c));
            CHECK(RoomName::parse("ab" + ch).has_value() == room_char(c));
        }
        CHECK(RoomName::parse("#general"));
        CHECK(RoomName::parse("A-b_c.d#e9"));
        CHECK_FALSE(RoomName::parse("_x"));
        CHECK_FALSE(RoomName::parse("-x"));
        CHECK_FALSE(RoomName::parse(".x"));
        CHECK_FALSE(RoomName::parse("a b"));
    }

    TEST_CASE("a nickname takes letters, digits, '_', '-', '.' and starts with a letter or digit") {
        for (int b = 0; b < 256; ++b) {
            const auto c = static_cast<unsigned char>(b);
            const std::string ch(1, static_cast<char>(c));
            CAPTURE(b);
            CHECK(NickName::parse(ch).has_value() == alnum(c));
            CHECK(NickName::parse("a" + ch + "b").has_value() == nick_char(c));
            CHECK(NickName::parse("ab" + ch).has_value() == nick_char(c));
        }
        CHECK(NickName::parse("a_b-c.D9"));
        CHECK_FALSE(NickName::parse("#alice"));
        CHECK_FALSE(NickName::parse("al#ice"));
        CHECK_FALSE(NickName::parse("_alice"));
        CHECK_FALSE(NickName::parse(".alice"));
    }

    TEST_CASE("names with non-ASCII bytes or NUL are refused") {
        for (const std::string& s : {"zo\xC3\xAB"s, "caf\xC3\xA9"s, two, three, four, "a\xFF"s, "\xEF\xBC\xA1"s,
                                     std::string("a\0b", 3), std::string(1, '\0')}) {
            CAPTURE(s);
            CHECK_FALSE(RoomName::parse(s));
            CHECK_FALSE(NickName::parse(s));
        }
    }

    TEST_CASE("names compare and hash by their text, case-sensitively") {
        const std::string a1 = "lobby";
        const std::string a2 = std::string("lob") + "by";
        auto r1 = RoomName::parse(a1);
        auto r2 = RoomName::parse(a2);
        auto upper = RoomName::parse("Lobby");
        auto longer = RoomName::parse("lobby2");
        REQUIRE(r1);
        REQUIRE(r2);
        REQUIRE(upper);
        REQUIRE(longer);
        CHECK(*r1 == *r2);
        CHECK_FALSE(*r1 == *upper);
        CHECK_FALSE(*r1 == *longer);
        CHECK(*r1 == std::string_view("lobby"));
        CHECK(*r1 < *longer);
        CHECK(*upper < *r1);
        CHECK(std::hash<RoomName>{}(*r1) == std::hash<RoomName>{}(*r2));
        CHECK(std::hash<RoomName>{}(*r1) == std::hash<std::string_view>{}("lobby"));

        std::unordered_set<NickName> nicks;
        for (const char* s : {"alice", "bob", "Alice"}) nicks.insert(*NickName::parse(s));
        CHECK(nicks.size() == 3);
        CHECK(nicks.contains(*NickName::parse(std::string("ali") + "ce")));
        CHECK_FALSE(nicks.contains(*NickName::parse("carol")));

        // A copy is the same name; a shorter name parsed later is not confused with a longer one.
        const NickName copy = *NickName::parse("alice");
        CHECK(copy == *NickName::parse("alice"));
        CHECK_FALSE(*NickName::parse("ali") == copy);
    }

    // --- clip_utf8 / clip_reason ---

    TEST_CASE("clip_utf8 never splits a 2-, 3- or 4-byte sequence and keeps the longest prefix that fits") {
        for (const std::string& ch : {two, three, four}) {
            const std::string text = "ab" + ch + "c" + ch + ch + "d" + ch;
            for (std::size_t limit = 0; limit <= text.size() + 2; ++limit) {
                CAPTURE(ch.size());
                CAPTURE(limit);
                const auto out = clip_utf8(text, limit);
                CHECK(out.size() <= limit);
                CHECK(is_valid_utf8(out));
                CHECK(std::string_view(text).starts_with(out));
                CHECK(out.data() == text.data());
                if (limit >= text.size())
                    CHECK(out == text);
                else
                    CHECK(out.size() + ch.size() > limit);  // drops at most the sequence the cut would split
            }
        }
    }

    TEST_CASE("clip_reason leaves a text within the limit as it is and marks a cut one with '...'") {
        const std::string fits(max_reason_length, 'r');
        CHECK(clip_reason(fits) == fits);
        CHECK(clip_reason("") == "");
        CHECK(clip_reason("short") == "short");

        const std::string over(max_reason_length + 1, 'r');
        const auto cut = clip_reason(over);
        CHECK(cut.size() <= max_reason_length);
        CHECK(cut.ends_with("..."));
        CHECK(cut == std::string(max_reason_length - 3, 'r') + "...");

        CHECK(clip_reason("abcdefghij", 10) == "abcdefghij");
        CHECK(clip_reason("abcdefghijk", 10) == "abcdefg...");
    }

    TEST_CASE("clip_reason of multibyte text stays within the limit and valid UTF-8 at every limit") {
        for (const std::string& ch : {two, three, four}) {
            std::string text;
            for (int i = 0; i < 20; ++i) text += ch;
            for (std::size_t limit = 3; limit <= text.size() + 1; ++limit) {
                CAPTURE(ch.size());
                CAPTURE(limit);
                const auto out = clip_reason(text, limit);
                CHECK(out.size() <= limit);
                CHECK(is_valid_utf8(out));
                CHECK(out.ends_with("...") == (text.size() > limit));
            }
        }
    }

    TEST_CASE("clip_reason stays within limits smaller than its '...' marker") {
        for (std::size_t limit = 0; limit < 3; ++limit) {
            CAPTURE(limit);
            CHECK(clip_reason("abcdef", limit).size() <= limit);
        }
    }

    // --- log_safe ---

    TEST_CASE("log_safe escapes newline, CR, tab, ESC, DEL, NUL, C1 controls and backslash") {
        CHECK(log_safe("a\nb") == "a\\nb");
        CHECK(log_safe("a\rb") == "a\\rb");
        CHECK(log_safe("a\tb") == "a\\tb");
        CHECK(log_safe("\x1b[31mred") == "\\x1b[31mred");
        CHECK(log_safe("a\x7f") == "a\\x7f");
        CHECK(log_safe(std::string("a\0b", 3)) == "a\\x00b");
        CHECK(log_safe("\x01\x1f") == "\\x01\\x1f");
        CHECK(log_safe("\xC2\x80") == "\\xc2\\x80");
        CHECK(log_safe("a\xC2\x85z") == "a\\xc2\\x85z");
        CHECK(log_safe("\xC2\x9F") == "\\xc2\\x9f");
        CHECK(log_safe("a\\b") == "a\\\\b");
        CHECK(log_safe("\\n") == "\\\\n");  // a literal backslash-n stays distinguishable from a newline
    }

    TEST_CASE("log_safe keeps printable ASCII and UTF-8 and escapes bytes that are not UTF-8") {
        CHECK(log_safe("hello, world!") == "hello, world!");
        CHECK(log_safe("zo\xC3\xAB") == "zo\xC3\xAB");
        CHECK(log_safe(three) == three);
        CHECK(log_safe(four) == four);
        CHECK(log_safe("\xC2\xA0") == "\xC2\xA0");  // U+00A0 is past the C1 block
        CHECK(log_safe("\xFF") == "\\xff");
        CHECK(log_safe("a\xE2\x82") == "a\\xe2\\x82");  // truncated sequence
        CHECK(log_safe("\xC0\xAF") == "\\xc0\\xaf");    // overlong
        CHECK(log_safe("\xED\xA0\x80") == "\\xed\\xa0\\x80");  // surrogate
    }

    TEST_CASE("log_safe cuts after the limit with '...' and only then") {
        CHECK(log_safe(std::string(max_logged_length, 'a')) == std::string(max_logged_length, 'a'));
        CHECK(log_safe(std::string(max_logged_length + 1, 'a')) == std::string(max_logged_length, 'a') + "...");
        CHECK(log_safe(std::string(100000, 'a')) == std::string(max_logged_length, 'a') + "...");
        CHECK(log_safe("abcdefgh", 5) == "abcde...");
        CHECK(log_safe("abcde", 5) == "abcde");
        CHECK(log_safe(three + three + three, 4) == three + "...");  // not in the middle of a character
    }

    TEST_CASE("log_safe output never holds a control byte and is valid UTF-8, for every byte pair") {
        std::size_t bad = 0;
        std::string first_bad;
        for (int x = 0; x < 256; ++x) {
            for (int y = 0; y < 256; ++y) {
                std::string in;
                in += static_cast<char>(x);
                in += static_cast<char>(y);
                for (const auto& input : {in, "a" + in + "\xE2\x82", in + in}) {
                    const auto out = log_safe(input);
                    if (has_control_byte(out) || !is_valid_utf8(out)) {
                        if (bad++ == 0) first_bad = input;
                    }
                }
            }
        }
        CAPTURE(log_safe(first_bad));
        CHECK(bad == 0);
        // And with a cut in the middle of everything.
        std::string all;
        for (int i = 0; i < 256; ++i) all += static_cast<char>(i);
        for (std::size_t limit = 0; limit <= all.size(); ++limit) {
            const auto out = log_safe(all, limit);
            if (has_control_byte(out) || !is_valid_utf8(out)) ++bad;
        }
        CHECK(bad == 0);
    }

    // --- builders ---

    TEST_CASE("make_error, make_presence and make_bye clip to max_reason_length and encode even 65,535-byte inputs") {
        auto room = RoomName::parse("r");
        auto who = NickName::parse("bob");
        REQUIRE(room);
        REQUIRE(who);
        for (const std::size_t size : {std::size_t{0}, std::size_t{1}, max_reason_length, max_reason_length + 1,
                                       std::size_t{65534}, std::size_t{65535}, std::size_t{65536}, std::size_t{200000}}) {
            CAPTURE(size);
            const std::string text(size, 'x');

            const auto e = make_error(ErrorCode::not_in_room, text, true);
            CHECK(e.code == ErrorCode::not_in_room);
            CHECK(e.fatal);
            CHECK(e.reason.size() <= max_reason_length);
            CHECK((e.reason == text) == (size <= max_reason_length));

            const auto p = make_presence(*room, *who, PresenceEvent::disconnected, text);
            CHECK(p.room == "r");
            CHECK(p.nick == "bob");
            CHECK(p.event == PresenceEvent::disconnected);
            CHECK(p.detail.size() <= max_reason_length);
            CHECK((p.detail == text) == (size <= max_reason_length));

            const auto b = make_bye(text);
            CHECK(b.reason.size() <= max_reason_length);
            CHECK((b.reason == text) == (size <= max_reason_length));

            for (const Message& m : {Message{e}, Message{p}, Message{b}}) {
                std::string frame;
                CHECK_NOTHROW(frame = encode(m));
                Decoder decoder;
                decoder.feed(frame);
                Message back;
                REQUIRE(decoder.next(back) == Decoder::Status::message);
                CHECK(back == m);
            }
        }
        CHECK_FALSE(make_error(ErrorCode::internal, "x").fatal);
    }

    TEST_CASE("the builders clip multibyte text to valid UTF-8") {
        std::string text;
        for (int i = 0; i < 30000; ++i) text += four;
        CHECK(is_valid_utf8(make_error(ErrorCode::internal, text).reason));
        CHECK(is_valid_utf8(make_bye(text).reason));
        CHECK_NOTHROW(encode(Message{make_bye(text)}));
    }
}
