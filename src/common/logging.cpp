#include "chat/common/logging.hpp"

#include <cstdlib>

#include <spdlog/sinks/stdout_color_sinks.h>

namespace chat {

std::optional<spdlog::level::level_enum> parse_log_level(std::string_view name) {
    using L = spdlog::level::level_enum;
    if (name == "trace") return L::trace;
    if (name == "debug") return L::debug;
    if (name == "info") return L::info;
    if (name == "warn" || name == "warning") return L::warn;
    if (name == "error" || name == "err") return L::err;
    if (name == "critical") return L::critical;
    if (name == "off") return L::off;
    return std::nullopt;
}

std::shared_ptr<spdlog::logger> server_log() {
    static const std::shared_ptr<spdlog::logger> logger = [] {
        if (auto existing = spdlog::get("server")) return existing;
        auto made = spdlog::stderr_color_mt("server");
        made->set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%-5l%$ %v");
        return made;
    }();
    return logger;
}

std::string init_logging(const std::string& cli_level) {
    auto level = spdlog::level::info;
    if (const char* env = std::getenv("SPDLOG_LEVEL"); env != nullptr && *env != '\0') {
        const auto parsed = parse_log_level(env);
        if (!parsed) return std::string("SPDLOG_LEVEL: unknown log level '") + env + "'";
        level = *parsed;
    }
    if (!cli_level.empty()) {
        const auto parsed = parse_log_level(cli_level);
        if (!parsed)
            return "--log-level: unknown log level '" + cli_level +
                   "' (trace, debug, info, warn, error, critical, off)";
        level = *parsed;
    }
    auto logger = server_log();
    logger->set_level(level);
    logger->flush_on(spdlog::level::warn);
    return {};
}

}  // namespace chat
