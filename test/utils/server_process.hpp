// A chat_server process for the process tests: started from $CHAT_SERVER
// (which meson sets), with the port it says it listens on.
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "utils/subprocess.hpp"

namespace chat::test {

class ServerProcess : public Subprocess {
public:
    // `env`: "NAME=value" entries added to the environment.
    explicit ServerProcess(std::vector<std::string> args, const std::vector<std::string>& env = {})
        : Subprocess(with_program(std::move(args)), env) {}

    // The port from the first "listening on ADDRESS:PORT" line on stdout, or nullopt.
    std::optional<std::uint16_t> port(std::chrono::milliseconds limit = std::chrono::milliseconds(5000)) {
        // (Parsed by hand: std::regex trips a GCC 12 -Wmaybe-uninitialized
        // false positive under the sanitizers, and CI builds with -Werror.)
        static constexpr std::string_view prefix = "listening on ";
        const auto line = wait_for(prefix, limit);
        if (!line) return std::nullopt;
        const std::string endpoint = line->substr(line->find(prefix) + prefix.size());
        const auto colon = endpoint.rfind(':');
        if (colon == std::string::npos) return std::nullopt;
        address_ = endpoint.substr(0, colon);
        const int port = std::atoi(endpoint.c_str() + colon + 1);
        if (port <= 0 || port > 65535) return std::nullopt;
        return static_cast<std::uint16_t>(port);
    }
    const std::string& address() const { return address_; }

    // "running", or how it ended: for failure messages.
    std::string state() {
        const auto status = wait_exit(std::chrono::milliseconds(0));
        if (!status) return "running";
        return "exited with status " + std::to_string(*status) + "; stderr ends:\n" + stderr_tail(600);
    }

    // The last `n` bytes of stderr, for failure messages.
    std::string stderr_tail(std::size_t n = 2000) const {
        const auto all = all_stderr();
        return all.size() <= n ? all : all.substr(all.size() - n);
    }

private:
    static std::vector<std::string> with_program(std::vector<std::string> args) {
        args.insert(args.begin(), program_path("CHAT_SERVER", "chat_server"));
        return args;
    }

    std::string address_;
};

}  // namespace chat::test
