#include <doctest/doctest.h>

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "chat/server/rate_limiter.hpp"

using namespace chat;
using namespace std::chrono_literals;

TEST_SUITE("rate_limiter") {
    // --- RateLimiter ---

    TEST_CASE("a token bucket starts full and refuses once the burst is spent") {
        RateLimiter limiter(5, 5);
        const RateLimiter::Clock::time_point t0{std::chrono::seconds{100}};
        for (int i = 0; i < 5; ++i) CHECK(limiter.try_take(t0));
        CHECK_FALSE(limiter.try_take(t0));
        CHECK_FALSE(limiter.try_take(t0 + 100ms));  // half a token
    }

    TEST_CASE("a token bucket refills at its rate and saves up no more than its burst") {
        RateLimiter limiter(5, 3);
        RateLimiter::Clock::time_point t{std::chrono::seconds{100}};
        for (int i = 0; i < 3; ++i) CHECK(limiter.try_take(t));
        CHECK_FALSE(limiter.try_take(t));
        t += 200ms;  // exactly one token at 5/s
        CHECK(limiter.try_take(t));
        CHECK_FALSE(limiter.try_take(t));
        t += 100ms;
        CHECK_FALSE(limiter.try_take(t));
        t += 100ms;  // the two halves make one
        CHECK(limiter.try_take(t));
        t += std::chrono::hours{1};  // a long idle fills it to the burst only
        for (int i = 0; i < 3; ++i) CHECK(limiter.try_take(t));
        CHECK_FALSE(limiter.try_take(t));
    }

    TEST_CASE("a refused attempt does not cost a token") {
        RateLimiter limiter(10, 1);
        RateLimiter::Clock::time_point t{std::chrono::seconds{100}};
        CHECK(limiter.try_take(t));
        for (int i = 1; i < 10; ++i) CHECK_FALSE(limiter.try_take(t + i * 10ms));
        CHECK(limiter.try_take(t + 100ms));
    }

    TEST_CASE("a token bucket with rate 0 is unlimited") {
        RateLimiter limiter(0, 0);
        const RateLimiter::Clock::time_point t{std::chrono::seconds{100}};
        for (int i = 0; i < 10000; ++i) REQUIRE(limiter.try_take(t));
    }

}
