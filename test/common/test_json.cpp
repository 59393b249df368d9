// JSON output (chat_client --json, and the server's JSON logs): escaping and objects.
#include <doctest/doctest.h>

#include <cstdint>
#include <string>
#include <vector>

#include "chat/common/json.hpp"

using namespace chat;

TEST_SUITE("json") {
    TEST_CASE("JSON strings escape quotes, backslashes and control characters and keep UTF-8") {
        CHECK(json_string("plain") == "\"plain\"");
        CHECK(json_string("say \"hi\"") == R"("say \"hi\"")");
        CHECK(json_string("back\\slash") == R"("back\\slash")");
        CHECK(json_string("a\nb\tc\rd") == R"("a\nb\tc\rd")");
        CHECK(json_string(std::string("\x01\x1f", 2)) == R"("\u0001\u001f")");
        CHECK(json_string(std::string("nul\0byte", 8)) == R"("nul\u0000byte")");
        CHECK(json_string("grüße 日本 🎉") == "\"grüße 日本 🎉\"");
    }

    TEST_CASE("JSON strings replace bytes that are not UTF-8 with U+FFFD") {
        CHECK(json_string("a\xff" "b") == "\"a\xEF\xBF\xBD" "b\"");
        CHECK(json_string("\xC3") == "\"\xEF\xBF\xBD\"");                      // truncated sequence
        CHECK(json_string("\xC0\xAF") == "\"\xEF\xBF\xBD\xEF\xBF\xBD\"");      // overlong '/'
        CHECK(json_string("\xED\xA0\x80") == "\"\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD\"");  // surrogate
    }

    TEST_CASE("a JSON object keeps its fields in order, with numbers, booleans and arrays") {
        const auto text = JsonObject()
                              .add("type", "message")
                              .add("seq", std::uint64_t{18446744073709551615u})
                              .add("n", 3u)
                              .add("history", false)
                              .add("members", std::vector<std::string>{"a", "b\"c"})
                              .add_raw("nested", "{}")
                              .str();
        CHECK(text == R"({"type":"message","seq":18446744073709551615,"n":3,"history":false,"members":["a","b\"c"],"nested":{}})");
        CHECK(JsonObject().str() == "{}");
    }
}
