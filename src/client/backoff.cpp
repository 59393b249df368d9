#include "chat/client/backoff.hpp"

#include <algorithm>

namespace chat {

Backoff::Backoff(Duration initial, Duration max, std::uint64_t seed)
    : initial_(std::max(Duration{0}, std::min(initial, max))), max_(max), base_(initial_), rng_(seed) {}

Duration Backoff::next() {
    const Duration base = base_;
    ++attempts_;
    base_ = std::min(max_, base_ * 2 > Duration{0} ? base_ * 2 : Duration{1});
    if (base.count() <= 1) return base;
    const auto half = base.count() / 2;
    std::uniform_int_distribution<Duration::rep> jitter(0, base.count() - half);
    return Duration{half + jitter(rng_)};
}

void Backoff::reset() {
    base_ = initial_;
    attempts_ = 0;
}

}  // namespace chat
