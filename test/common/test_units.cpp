#include <doctest/doctest.h>

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "chat/common/units.hpp"

using namespace chat;
using namespace std::chrono_literals;

TEST_SUITE("units") {
    TEST_CASE("durations parse with ms, s, m, min and h, a bare number being seconds") {
        CHECK(parse_duration("250ms") == Duration{250});
        CHECK(parse_duration("5s") == Duration{5000});
        CHECK(parse_duration("5") == Duration{5000});
        CHECK(parse_duration("1.5s") == Duration{1500});
        CHECK(parse_duration("2m") == Duration{120'000});
        CHECK(parse_duration("2min") == Duration{120'000});
        CHECK(parse_duration("1h") == Duration{3'600'000});
        CHECK(parse_duration(" 50ms ") == Duration{50});
        CHECK(parse_duration("0") == Duration{0});
        for (const char* bad : {"", "ms", "1x", "-5s", "5 seconds", "1.2.3s", "1e3ms", "abc", "5s5", "nan", "inf"}) {
            CAPTURE(bad);
            CHECK_FALSE(parse_duration(bad));
        }
    }

    TEST_CASE("durations are formatted in the largest exact unit and read back the same") {
        CHECK(format_duration(Duration{0}) == "0ms");
        CHECK(format_duration(Duration{250}) == "250ms");
        CHECK(format_duration(Duration{1500}) == "1500ms");
        CHECK(format_duration(Duration{5000}) == "5s");
        CHECK(format_duration(Duration{120'000}) == "2m");
        CHECK(format_duration(Duration{7'200'000}) == "2h");
        for (long ms : {1L, 50L, 999L, 1000L, 61'000L, 3'600'000L})
            CHECK(parse_duration(format_duration(Duration{ms})) == Duration{ms});
    }

    TEST_CASE("sizes parse with binary units and bare bytes") {
        CHECK(parse_size("65536") == 65536u);
        CHECK(parse_size("64k") == 65536u);
        CHECK(parse_size("64KiB") == 65536u);
        CHECK(parse_size("4MiB") == 4u * 1024 * 1024);
        CHECK(parse_size("4M") == 4u * 1024 * 1024);
        CHECK(parse_size("1GiB") == 1024u * 1024 * 1024);
        CHECK(parse_size("1.5KiB") == 1536u);
        CHECK(parse_size("10B") == 10u);
        for (const char* bad : {"", "KiB", "-1", "4 parsecs", "4TiB", "1..5k"}) {
            CAPTURE(bad);
            CHECK_FALSE(parse_size(bad));
        }
        CHECK(format_size(4u * 1024 * 1024) == "4MiB");
        CHECK(format_size(65536) == "64KiB");
        CHECK(format_size(1000) == "1000B");
        CHECK(parse_size(format_size(1536)) == 1536u);
    }
}
