// The client's waits between reconnect attempts.
#pragma once

#include <cstdint>
#include <random>

#include "chat/common/units.hpp"

namespace chat {

// Waits between reconnect attempts: exponential, with jitter, capped.
class Backoff {
public:
    // The first wait is at most `initial`; each later one at most twice the
    // one before, never over `max`.
    Backoff(Duration initial, Duration max, std::uint64_t seed = std::random_device{}());

    // The wait before the next attempt: uniform in [base/2, base] ("equal
    // jitter"), so clients that lost one server do not come back in step,
    // and no wait is much shorter than planned.
    Duration next();
    // A connection worked: start again from `initial`.
    void reset();
    unsigned attempts() const noexcept { return attempts_; }

private:
    Duration initial_;
    Duration max_;
    Duration base_;
    unsigned attempts_ = 0;
    std::mt19937_64 rng_;
};

}  // namespace chat
