#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "chat/common/token_file.hpp"

using namespace chat;

TEST_SUITE("token_file") {
    TEST_CASE("a token file holds one secret a line; blanks and # comments are skipped") {
        const auto tokens = parse_token_file("# team\n\nalpha\n  beta \t\r\n#gamma\ndelta # not a comment");
        REQUIRE(tokens.size() == 3);
        CHECK(tokens[0] == "alpha");
        CHECK(tokens[1] == "beta");
        CHECK(tokens[2] == "delta # not a comment");
        CHECK(parse_token_file("\n# nothing\n").empty());
    }
}
