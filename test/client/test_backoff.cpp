// Waits between reconnect attempts: exponential, jittered, capped.
#include <doctest/doctest.h>

#include <vector>

#include "chat/client/backoff.hpp"

using namespace chat;
using namespace std::chrono_literals;

TEST_SUITE("backoff") {
    TEST_CASE("reconnect waits double from the first, carry jitter, and never exceed the maximum") {
        Backoff backoff(200ms, 3s, 42);
        const std::vector<Duration> bases = {200ms, 400ms, 800ms, 1600ms, 3s, 3s, 3s};
        for (std::size_t i = 0; i < bases.size(); ++i) {
            const auto wait = backoff.next();
            CHECK(wait >= bases[i] / 2);
            CHECK(wait <= bases[i]);
            CHECK(backoff.attempts() == i + 1);
        }
        backoff.reset();
        CHECK(backoff.attempts() == 0);
        CHECK(backoff.next() <= 200ms);
    }

    TEST_CASE("two clients with different seeds do not reconnect in step") {
        Backoff a(1s, 30s, 1), b(1s, 30s, 2);
        bool differ = false;
        for (int i = 0; i < 5; ++i) differ = differ || a.next() != b.next();
        CHECK(differ);
    }

    TEST_CASE("a maximum under the first wait caps the first wait too") {
        Backoff backoff(200ms, 50ms, 7);
        for (int i = 0; i < 4; ++i) CHECK(backoff.next() <= 50ms);
        Backoff zero(200ms, 0ms, 7);
        CHECK(zero.next() == 0ms);
    }
}
