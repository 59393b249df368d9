// Command-line helpers shared by the programs: durations and sizes as CLI11 options.
#pragma once

#include <string>

#include <CLI/CLI.hpp>

#include "chat/common/units.hpp"

namespace chat {

// What a program returns when CLI11 stopped parsing: 0 after --help or
// --version, 2 for every bad command line (CLI11's own codes, 105 to 114,
// would tell a script nothing it can rely on).
inline int exit_status(const CLI::App& app, const CLI::ParseError& error) {
    return app.exit(error) == 0 ? 0 : 2;
}

inline CLI::Option* add_duration_option(CLI::App& app, const std::string& name, Duration& target,
                                        const std::string& description) {
    return app
        .add_option_function<std::string>(
            name,
            [&target, name](const std::string& value) {
                auto parsed = parse_duration(value);
                if (!parsed) throw CLI::ValidationError(name, "'" + value + "' is not a duration (e.g. 250ms, 5s, 2m)");
                target = *parsed;
            },
            description)
        ->type_name("DURATION")
        ->default_str(format_duration(target));
}

inline CLI::Option* add_size_option(CLI::App& app, const std::string& name, std::size_t& target,
                                    const std::string& description) {
    return app
        .add_option_function<std::string>(
            name,
            [&target, name](const std::string& value) {
                auto parsed = parse_size(value);
                if (!parsed) throw CLI::ValidationError(name, "'" + value + "' is not a size (e.g. 64KiB, 4MiB)");
                target = *parsed;
            },
            description)
        ->type_name("SIZE")
        ->default_str(format_size(target));
}

}  // namespace chat
