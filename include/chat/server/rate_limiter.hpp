// A token bucket: `rate` tokens a second, at most `burst` saved up.
#pragma once

#include <algorithm>
#include <chrono>

namespace chat {

class RateLimiter {
public:
    using Clock = std::chrono::steady_clock;

    // rate 0 means unlimited.
    RateLimiter(double rate, double burst) : rate_(rate), burst_(burst), tokens_(burst) {}

    bool try_take(Clock::time_point now) {
        if (rate_ <= 0) return true;
        if (last_ != Clock::time_point{}) {
            const std::chrono::duration<double> elapsed = now - last_;
            tokens_ = std::min(burst_, tokens_ + elapsed.count() * rate_);
        }
        last_ = now;
        // Refills add up in floating point: ten tenths may come to 0.999...,
        // which must not refuse a client that kept to the rate exactly.
        if (tokens_ < 1.0 - 1e-9) return false;
        tokens_ = std::max(0.0, tokens_ - 1.0);
        return true;
    }

private:
    double rate_;
    double burst_;
    double tokens_;
    Clock::time_point last_{};
};

}  // namespace chat
