// A log-linear latency histogram: fixed memory, about 1.6% resolution, values in nanoseconds.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace chat::bench {

// Values below 64 ns get a bucket each; above, every power of two is cut into
// 64 buckets, so a bucket's width is at most 1/64 of its lower edge. Recording
// is an index computation and an increment: no allocation after construction.
class LatencyHistogram {
public:
    static constexpr int sub_bits = 6;
    static constexpr std::size_t sub_buckets = std::size_t{1} << sub_bits;

    LatencyHistogram();

    void record(std::uint64_t value) noexcept {
        ++counts_[index(value)];
        ++count_;
        sum_ += value;
        if (value > max_) max_ = value;
        if (value < min_) min_ = value;
    }
    void merge(const LatencyHistogram& other) noexcept;
    void reset() noexcept;

    std::uint64_t count() const noexcept { return count_; }
    std::uint64_t max() const noexcept { return max_; }
    std::uint64_t min() const noexcept { return count_ == 0 ? 0 : min_; }
    double mean() const noexcept { return count_ == 0 ? 0.0 : static_cast<double>(sum_) / static_cast<double>(count_); }
    // The upper edge of the bucket holding the q-quantile (0 < q <= 1), capped
    // at max(): never below the true quantile, at most 1/64 above it.
    std::uint64_t quantile(double q) const noexcept;

    static std::size_t index(std::uint64_t value) noexcept;
    static std::uint64_t upper_edge(std::size_t index) noexcept;

private:
    std::vector<std::uint64_t> counts_;
    std::uint64_t count_ = 0;
    std::uint64_t sum_ = 0;
    std::uint64_t max_ = 0;
    std::uint64_t min_ = UINT64_MAX;
};

}  // namespace chat::bench
