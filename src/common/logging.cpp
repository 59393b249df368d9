#include "chat/common/logging.hpp"

#include <algorithm>
#include <cstdlib>
#include <ctime>

#include <spdlog/pattern_formatter.h>
#include <spdlog/sinks/stdout_color_sinks.h>

#include "chat/common/json.hpp"

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

namespace {
constexpr const char* text_pattern = "%Y-%m-%dT%H:%M:%S.%e %^%-5l%$ %v";
}  // namespace

std::shared_ptr<spdlog::logger> server_log() {
    static const std::shared_ptr<spdlog::logger> logger = [] {
        if (auto existing = spdlog::get("server")) return existing;
        auto made = spdlog::stderr_color_mt("server");
        made->set_pattern(text_pattern);
        return made;
    }();
    return logger;
}

std::string json_log_line(std::string_view time, std::string_view level, std::string_view message) {
    JsonObject line;
    line.add("time", time).add("level", level);
    // Session lines start "session 12 127.0.0.1:5000 'alice': " (the nick once known).
    std::string_view rest = message;
    if (rest.substr(0, 8) == "session ") {
        std::string_view s = rest.substr(8);
        std::size_t digits = 0;
        while (digits < s.size() && s[digits] >= '0' && s[digits] <= '9') ++digits;
        if (digits > 0 && digits <= 20 && digits < s.size() && s[digits] == ' ') {
            std::uint64_t id = 0;
            for (std::size_t i = 0; i < digits; ++i) id = id * 10 + static_cast<std::uint64_t>(s[i] - '0');
            s = s.substr(digits + 1);
            // The peer ends at a space (a nick follows) or at ": " (the text
            // does); a colon alone is part of it (127.0.0.1:5000, [::1]:4000).
            const std::size_t end = std::min(s.find(' '), s.find(": "));
            if (end != std::string_view::npos && end > 0) {
                line.add("session", id).add("peer", s.substr(0, end));
                s = s.substr(end);
                if (s.substr(0, 2) == " '") {
                    const std::size_t close = s.find("':", 2);
                    if (close != std::string_view::npos) {
                        line.add("nick", s.substr(2, close - 2));
                        s = s.substr(close + 1);
                    }
                }
                if (s.substr(0, 2) == ": ") {
                    rest = s.substr(2);
                    const std::size_t colon = rest.find(": ");
                    if (colon != std::string_view::npos && colon > 0) {
                        line.add("event", rest.substr(0, colon)).add("reason", rest.substr(colon + 2));
                    } else {
                        line.add("event", rest);
                    }
                }
            }
        }
    }
    line.add("message", message);
    return line.str();
}

namespace {

// spdlog's formatter for --log-format json.
class JsonFormatter final : public spdlog::formatter {
public:
    void format(const spdlog::details::log_msg& msg, spdlog::memory_buf_t& dest) override {
        const auto since = msg.time.time_since_epoch();
        const auto seconds = std::chrono::duration_cast<std::chrono::seconds>(since);
        const auto millis = std::chrono::duration_cast<std::chrono::milliseconds>(since - seconds).count();
        const std::time_t t = static_cast<std::time_t>(seconds.count());
        std::tm utc{};
        ::gmtime_r(&t, &utc);
        char time[40];
        const std::size_t n = std::strftime(time, sizeof time, "%Y-%m-%dT%H:%M:%S", &utc);
        const std::string stamp = fmt::format("{}.{:03}Z", std::string_view(time, n), millis);
        const auto level = spdlog::level::to_string_view(msg.level);
        const std::string line = json_log_line(stamp, std::string_view(level.data(), level.size()),
                                               std::string_view(msg.payload.data(), msg.payload.size()));
        dest.append(line.data(), line.data() + line.size());
        dest.push_back('\n');
    }
    std::unique_ptr<spdlog::formatter> clone() const override { return std::make_unique<JsonFormatter>(); }
};

}  // namespace

std::string set_log_format(std::string_view name) {
    if (name == "text") {
        server_log()->set_pattern(text_pattern);
        return {};
    }
    if (name != "json") return "--log-format: '" + std::string(name) + "' is neither text nor json";
    server_log()->set_formatter(std::make_unique<JsonFormatter>());
    return {};
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
