// Named spdlog loggers, made once; the level comes from a default, then SPDLOG_LEVEL, then --log-level.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include <spdlog/spdlog.h>

namespace chat {

// Unlike spdlog::level::from_str, an unknown name is an error, not `off`.
std::optional<spdlog::level::level_enum> parse_log_level(std::string_view name);

// Sets up the process's loggers (to stderr, one pattern). `cli_level` wins over
// SPDLOG_LEVEL, which wins over "info". Returns an error text, or empty.
std::string init_logging(const std::string& cli_level);

// The shared logger for the server's edges ("server") and its sessions.
std::shared_ptr<spdlog::logger> server_log();

}  // namespace chat
