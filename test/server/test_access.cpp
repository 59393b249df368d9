// Access control without sockets: peer addresses, tokens checked, and the lockout's clock.
#include <doctest/doctest.h>

#include "chat/server/access.hpp"
#include "pulsechat_config.h"

using namespace chat;
using namespace std::chrono_literals;

TEST_SUITE("access") {
    TEST_CASE("the address of a peer is its IP, or its uid on a Unix socket") {
        CHECK(peer_address("127.0.0.1:5555") == "127.0.0.1");
        CHECK(peer_address("[::1]:5555") == "::1");
        CHECK(peer_address("unix:pid=42,uid=1000") == "unix:uid=1000");
    }

    TEST_CASE("without tokens every HELLO passes") {
        AccessControl access;
        CHECK(!access.enabled());
        CHECK(!access.check("", "10.0.0.1"));
    }

#if PULSECHAT_HAVE_OPENSSL
    TEST_CASE("a listed token passes; another, a prefix, or none does not") {
        AccessControl access;
        access.set_tokens({"open-sesame", "second"});
        CHECK(access.enabled());
        CHECK(!access.check("open-sesame", "10.0.0.1"));
        CHECK(!access.check("second", "10.0.0.1"));
        auto wrong = access.check("open-sesam", "10.0.0.1");
        REQUIRE(wrong);
        CHECK(wrong->reason == "wrong access token");
        auto none = access.check("", "10.0.0.1");
        REQUIRE(none);
        CHECK(none->reason == "this server wants an access token");
    }

    TEST_CASE("failures within the window lock the address out; others and the end of the lockout are not affected") {
        AccessControl access(AuthLimits{3, 60'000ms, 30'000ms});
        access.set_tokens({"right"});
        const auto t0 = AccessControl::Clock::now();
        CHECK(access.check("x", "10.0.0.1", t0));
        CHECK(access.check("x", "10.0.0.1", t0 + 1s));
        auto third = access.check("x", "10.0.0.1", t0 + 2s);
        REQUIRE(third);
        CHECK(third->detail.find("refused for 30s") != std::string::npos);
        auto locked = access.check("right", "10.0.0.1", t0 + 3s);
        REQUIRE(locked);
        CHECK(locked->reason == "too many failed attempts; try again later");
        CHECK(!access.check("right", "10.0.0.2", t0 + 3s));  // another address
        CHECK(!access.check("right", "10.0.0.1", t0 + 33s));   // the lockout is over
    }

    TEST_CASE("failures spread wider than the window do not add up") {
        AccessControl access(AuthLimits{3, 10'000ms, 30'000ms});
        access.set_tokens({"right"});
        const auto t0 = AccessControl::Clock::now();
        for (int i = 0; i < 6; ++i) CHECK(access.check("x", "10.0.0.1", t0 + i * 6s)->reason == "wrong access token");
        CHECK(!access.check("right", "10.0.0.1", t0 + 37s));
    }

    TEST_CASE("a token file without a token is refused and the tokens in use stay") {
        AccessControl access;
        access.set_tokens({"kept"});
        CHECK(access.load("/nonexistent/pulsechat-tokens").find("cannot read token file") != std::string::npos);
        CHECK(!access.check("kept", "10.0.0.1"));
    }
#endif
}
