// Access control at login: the secrets of --token-file, checked in constant time, and a lockout for
// addresses that keep guessing.
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "chat/common/token_file.hpp"
#include "chat/common/units.hpp"

namespace chat {

// The part of a session's peer string that identifies who is knocking: the
// address of "1.2.3.4:5678" or "[::1]:5678", the uid of "unix:pid=7,uid=1000".
std::string peer_address(std::string_view peer);

// Why a HELLO was refused: `reason` goes to the client, `detail` to the log.
struct AuthRefusal {
    std::string reason;
    std::string detail;
};

struct AuthLimits {
    unsigned max_failures = 5;  // failures from one address within `window`...
    Duration window{60'000};
    Duration lockout{60'000};  // ...refuse it for this long, right token or not
};

// Checks HELLO tokens. Thread-safe: sessions on every shard call check(), the
// hub reloads. A lock is cheaper than a post here: it is taken once per login,
// never per message.
class AccessControl {
public:
    using Clock = std::chrono::steady_clock;
    using Digest = std::array<unsigned char, 32>;

    explicit AccessControl(AuthLimits limits = {}) : limits_(limits) {}

    // Reads the token file. On success the new tokens replace the old ones
    // and the result is empty; otherwise the old ones stay and the result
    // says why (a file without a token is refused: it would lock everyone out).
    std::string load(const std::string& path);
    // Sets the tokens directly (tests).
    void set_tokens(const std::vector<std::string>& tokens);

    // False while no token was ever loaded: every HELLO passes.
    bool enabled() const;
    std::size_t token_count() const;

    // Nothing when `token` is one of the secrets and `address` is not locked out.
    std::optional<AuthRefusal> check(std::string_view token, const std::string& address,
                                     Clock::time_point now = Clock::now());
    // Refusals since the start (a wrong or missing token, or a locked-out
    // address), and lockouts begun.
    struct Stats {
        std::uint64_t failures = 0;
        std::uint64_t lockouts = 0;
    };
    Stats stats() const;

private:
    struct Failures {
        unsigned count = 0;
        Clock::time_point first{};         // start of the window being counted
        Clock::time_point locked_until{};  // refused before this
    };

    bool matches(std::string_view token) const;
    void forget_old(Clock::time_point now);

    const AuthLimits limits_;
    mutable std::mutex mutex_;
    std::vector<Digest> digests_;  // SHA-256 of each secret: compared at equal length, so length does not leak
    bool enabled_ = false;
    std::unordered_map<std::string, Failures> failures_;
    std::uint64_t checks_ = 0;
    Stats stats_;
};

}  // namespace chat
