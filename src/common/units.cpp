#include "chat/common/units.hpp"

#include <charconv>
#include <cmath>

namespace chat {
namespace {

bool parse_number(std::string_view text, double& value) {
    if (text.empty()) return false;
    const char* first = text.data();
    const char* last = text.data() + text.size();
    auto [ptr, ec] = std::from_chars(first, last, value);
    return ec == std::errc{} && ptr == last && std::isfinite(value) && value >= 0;
}

std::string_view trim(std::string_view s) {
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
    return s;
}

}  // namespace

std::optional<Duration> parse_duration(std::string_view text) {
    text = trim(text);
    std::size_t digits = 0;
    while (digits < text.size() && ((text[digits] >= '0' && text[digits] <= '9') || text[digits] == '.'))
        ++digits;
    double value = 0;
    if (!parse_number(text.substr(0, digits), value)) return std::nullopt;
    const std::string_view unit = trim(text.substr(digits));
    double ms = 0;
    if (unit == "ms")
        ms = value;
    else if (unit.empty() || unit == "s")
        ms = value * 1000;
    else if (unit == "m" || unit == "min")
        ms = value * 60'000;
    else if (unit == "h")
        ms = value * 3'600'000;
    else
        return std::nullopt;
    if (ms > 1e15) return std::nullopt;
    return Duration{static_cast<Duration::rep>(std::llround(ms))};
}

std::string format_duration(Duration d) {
    const auto ms = d.count();
    if (ms != 0 && ms % 3'600'000 == 0) return std::to_string(ms / 3'600'000) + "h";
    if (ms != 0 && ms % 60'000 == 0) return std::to_string(ms / 60'000) + "m";
    if (ms != 0 && ms % 1000 == 0) return std::to_string(ms / 1000) + "s";
    return std::to_string(ms) + "ms";
}

std::optional<std::size_t> parse_size(std::string_view text) {
    text = trim(text);
    std::size_t digits = 0;
    while (digits < text.size() && ((text[digits] >= '0' && text[digits] <= '9') || text[digits] == '.'))
        ++digits;
    double value = 0;
    if (!parse_number(text.substr(0, digits), value)) return std::nullopt;
    const std::string_view unit = trim(text.substr(digits));
    double factor = 0;
    if (unit.empty() || unit == "B")
        factor = 1;
    else if (unit == "k" || unit == "K" || unit == "KiB" || unit == "KB")
        factor = 1024;
    else if (unit == "M" || unit == "MiB" || unit == "MB")
        factor = 1024.0 * 1024;
    else if (unit == "G" || unit == "GiB" || unit == "GB")
        factor = 1024.0 * 1024 * 1024;
    else
        return std::nullopt;
    const double bytes = value * factor;
    if (bytes > 1e15) return std::nullopt;
    return static_cast<std::size_t>(std::llround(bytes));
}

std::string format_size(std::size_t bytes) {
    if (bytes != 0 && bytes % (1024 * 1024 * 1024) == 0) return std::to_string(bytes >> 30) + "GiB";
    if (bytes != 0 && bytes % (1024 * 1024) == 0) return std::to_string(bytes >> 20) + "MiB";
    if (bytes != 0 && bytes % 1024 == 0) return std::to_string(bytes >> 10) + "KiB";
    return std::to_string(bytes) + "B";
}

}  // namespace chat
