#include "chat/bench/histogram.hpp"

#include <algorithm>
#include <bit>
#include <cmath>

namespace chat::bench {
namespace {
constexpr std::size_t bucket_count = LatencyHistogram::sub_buckets * (64 - LatencyHistogram::sub_bits + 1);
}

LatencyHistogram::LatencyHistogram() : counts_(bucket_count, 0) {}

std::size_t LatencyHistogram::index(std::uint64_t value) noexcept {
    if (value < sub_buckets) return static_cast<std::size_t>(value);
    const int exponent = std::bit_width(value) - 1;  // >= sub_bits
    const int shift = exponent - sub_bits;
    const auto mantissa = static_cast<std::size_t>(value >> shift) - sub_buckets;  // 0..63
    return sub_buckets + static_cast<std::size_t>(exponent - sub_bits) * sub_buckets + mantissa;
}

std::uint64_t LatencyHistogram::upper_edge(std::size_t index) noexcept {
    if (index < sub_buckets) return index;
    const std::size_t tier = (index - sub_buckets) / sub_buckets;  // exponent - sub_bits
    const std::uint64_t mantissa = (index - sub_buckets) % sub_buckets + sub_buckets;
    const int shift = static_cast<int>(tier);
    if (shift + sub_bits >= 63 && mantissa + 1 > sub_buckets) return UINT64_MAX;
    return ((mantissa + 1) << shift) - 1;
}

void LatencyHistogram::merge(const LatencyHistogram& other) noexcept {
    for (std::size_t i = 0; i < counts_.size(); ++i) counts_[i] += other.counts_[i];
    count_ += other.count_;
    sum_ += other.sum_;
    max_ = std::max(max_, other.max_);
    min_ = std::min(min_, other.min_);
}

void LatencyHistogram::reset() noexcept {
    std::fill(counts_.begin(), counts_.end(), 0);
    count_ = sum_ = max_ = 0;
    min_ = UINT64_MAX;
}

std::uint64_t LatencyHistogram::quantile(double q) const noexcept {
    if (count_ == 0) return 0;
    q = std::clamp(q, 0.0, 1.0);
    const auto rank = std::max<std::uint64_t>(1, static_cast<std::uint64_t>(std::ceil(q * static_cast<double>(count_))));
    std::uint64_t seen = 0;
    for (std::size_t i = 0; i < counts_.size(); ++i) {
        seen += counts_[i];
        if (seen >= rank) return std::min(upper_edge(i), max_);
    }
    return max_;
}

}  // namespace chat::bench
