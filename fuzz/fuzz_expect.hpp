// What every fuzz target checks with: a broken invariant aborts, which
// libFuzzer reports as a crash and saves the input that caused it.
#pragma once

#include <cstdio>
#include <cstdlib>

namespace fuzz {

[[noreturn]] inline void fail(const char* what) {
    std::fprintf(stderr, "invariant broken: %s\n", what);
    std::abort();
}

inline void expect(bool condition, const char* what) {
    if (!condition) fail(what);
}

}  // namespace fuzz
