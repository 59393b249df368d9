// Units every program reads from its command line: durations and sizes.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace chat {

using Duration = std::chrono::milliseconds;

// Parses "250ms", "5s", "2m", "1h" (a bare number means seconds). Returns
// nullopt for anything else, including negative values.
std::optional<Duration> parse_duration(std::string_view text);
// The shortest exact spelling: 1500ms, 5s, 2m.
std::string format_duration(Duration d);
// Parses "4MiB", "512KiB", "1GiB", "65536", "64k". Returns nullopt on junk.
std::optional<std::size_t> parse_size(std::string_view text);
std::string format_size(std::size_t bytes);

}  // namespace chat
