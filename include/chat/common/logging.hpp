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

// "text" (the default: "2026-11-22T00:30:02.211 info  session 1 ...") or
// "json": one object per line for log shippers. Returns an error text, or empty.
std::string set_log_format(std::string_view name);

// One JSON log line (without the newline): time, level, the session fields
// read from the message's "session ID PEER ['NICK']: EVENT: REASON" prefix
// when it has one, and the whole message. Every string is escaped (RFC 8259,
// invalid UTF-8 as U+FFFD): whatever a client sent cannot break the line.
std::string json_log_line(std::string_view time, std::string_view level, std::string_view message);

}  // namespace chat
