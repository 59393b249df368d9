#include <doctest/doctest.h>

#include <cstdint>
#include <random>
#include <string>

#include "chat/bench/wire.hpp"

using namespace chat::bench;

TEST_CASE("wire: a stamp reads back as written, for extreme and random values") {
    std::string text;
    const Stamp extremes[] = {
        {},
        {~std::uint64_t{0}, ~std::uint32_t{0}, ~std::uint32_t{0}, ~std::uint32_t{0}},
        {0x0123456789abcdefULL, 0x89abcdef, 0x01234567, 0xfedcba98},
        {std::uint64_t{1} << 63, 1, std::uint32_t{1} << 31, 0x10},
    };
    for (const auto& s : extremes) {
        make_text(s, text, 64);
        const auto back = read_stamp(text);
        REQUIRE(back.has_value());
        CHECK(*back == s);
    }
    std::mt19937_64 random(7);
    for (int i = 0; i < 10000; ++i) {
        const Stamp s{random(), static_cast<std::uint32_t>(random()), static_cast<std::uint32_t>(random()),
                      static_cast<std::uint32_t>(random())};
        make_text(s, text, stamp_size);
        const auto back = read_stamp(text);
        REQUIRE(back.has_value());
        CHECK(*back == s);
    }
}

TEST_CASE("wire: a stamp with any byte that is not a lowercase hex digit is refused") {
    std::string text;
    make_text(Stamp{0x0123456789abcdefULL, 1, 2, 3}, text, 64);
    REQUIRE(read_stamp(text).has_value());
    // Neighbours of the digit ranges, uppercase, and bytes with the top bit set.
    const char bad[] = {'/', ':', '`', 'g', 'A', 'F', ' ', '\0', '\x7f', '\x80', '\xb0', '\xe1', '\xff'};
    for (std::size_t at = 0; at < stamp_size; ++at) {
        for (const char c : bad) {
            std::string broken = text;
            broken[at] = c;
            CHECK_MESSAGE(!read_stamp(broken).has_value(), "byte ", at, " = ", static_cast<int>(c));
        }
    }
    CHECK_FALSE(read_stamp(std::string_view(text).substr(0, stamp_size - 1)).has_value());
    // The filler after the stamp is not part of it.
    text[stamp_size] = '!';
    CHECK(read_stamp(text).has_value());
}
