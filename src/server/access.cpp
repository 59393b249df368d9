#include "chat/server/access.hpp"

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include <fmt/format.h>

#include "pulsechat_config.h"

#if PULSECHAT_HAVE_OPENSSL
#include <openssl/crypto.h>
#include <openssl/sha.h>
#endif

namespace chat {
namespace {

#if PULSECHAT_HAVE_OPENSSL
AccessControl::Digest digest_of(std::string_view text) {
    AccessControl::Digest d{};
    SHA256(reinterpret_cast<const unsigned char*>(text.data()), text.size(), d.data());
    return d;
}
#endif

}  // namespace

std::string peer_address(std::string_view peer) {
    if (peer.starts_with("unix:")) {
        if (const auto uid = peer.find("uid="); uid != std::string_view::npos) {
            auto rest = peer.substr(uid);
            return "unix:" + std::string(rest.substr(0, rest.find(',')));
        }
        return std::string(peer);
    }
    if (peer.starts_with('[')) return std::string(peer.substr(1, peer.find(']') - 1));
    return std::string(peer.substr(0, peer.rfind(':')));
}

std::string AccessControl::load(const std::string& path) {
#if PULSECHAT_HAVE_OPENSSL
    std::ifstream in(path, std::ios::binary);
    if (!in) return fmt::format("cannot read token file '{}': {}", path, std::strerror(errno));
    std::ostringstream text;
    text << in.rdbuf();
    if (in.bad()) return fmt::format("cannot read token file '{}'", path);
    const auto tokens = parse_token_file(text.str());
    if (tokens.empty())
        return fmt::format("token file '{}' holds no token (one secret a line; '#' starts a comment)", path);
    set_tokens(tokens);
    return {};
#else
    return "access tokens need a build with OpenSSL (meson option tls): cannot use '" + path + "'";
#endif
}

void AccessControl::set_tokens(const std::vector<std::string>& tokens) {
#if PULSECHAT_HAVE_OPENSSL
    std::vector<Digest> digests;
    digests.reserve(tokens.size());
    for (const auto& t : tokens) digests.push_back(digest_of(t));
    std::lock_guard lock(mutex_);
    digests_ = std::move(digests);
    enabled_ = true;
#else
    (void)tokens;
#endif
}

bool AccessControl::enabled() const {
    std::lock_guard lock(mutex_);
    return enabled_;
}

std::size_t AccessControl::token_count() const {
    std::lock_guard lock(mutex_);
    return digests_.size();
}

bool AccessControl::matches(std::string_view token) const {
#if PULSECHAT_HAVE_OPENSSL
    // Digests have one length whatever the token's, and every one is compared
    // with no early exit: the time taken says nothing about the secrets.
    const Digest presented = digest_of(token);
    int found = 0;
    for (const auto& d : digests_) found |= CRYPTO_memcmp(presented.data(), d.data(), d.size()) == 0;
    return found != 0;
#else
    (void)token;
    return false;
#endif
}

void AccessControl::forget_old(Clock::time_point now) {
    for (auto it = failures_.begin(); it != failures_.end();) {
        if (now >= it->second.locked_until && now - it->second.first >= limits_.window)
            it = failures_.erase(it);
        else
            ++it;
    }
}

AccessControl::Stats AccessControl::stats() const {
    std::lock_guard lock(mutex_);
    return stats_;
}

std::optional<AuthRefusal> AccessControl::check(std::string_view token, const std::string& address,
                                                Clock::time_point now) {
    std::lock_guard lock(mutex_);
    if (!enabled_) return std::nullopt;
    // Keeps the table to the addresses that failed lately.
    if (++checks_ % 256 == 0) forget_old(now);
    auto it = failures_.find(address);
    if (it != failures_.end() && now < it->second.locked_until) {
        ++stats_.failures;
        const auto left = std::chrono::ceil<std::chrono::seconds>(it->second.locked_until - now);
        return AuthRefusal{"too many failed attempts; try again later",
                           fmt::format("{} is locked out for another {}s after repeated failed logins", address,
                                       left.count())};
    }
    if (!token.empty() && matches(token)) {
        if (it != failures_.end()) failures_.erase(it);
        return std::nullopt;
    }
    if (it == failures_.end()) it = failures_.emplace(address, Failures{}).first;
    Failures& f = it->second;
    if (f.count == 0 || now - f.first >= limits_.window) {
        f.count = 0;
        f.first = now;
    }
    ++f.count;
    ++stats_.failures;
    std::string detail = fmt::format("{} ({} of {} allowed failures from {} within {})",
                                     token.empty() ? "no access token" : "wrong access token", f.count,
                                     limits_.max_failures, address, format_duration(limits_.window));
    if (limits_.max_failures > 0 && f.count >= limits_.max_failures) {
        f.locked_until = now + limits_.lockout;
        f.count = 0;
        ++stats_.lockouts;
        detail += fmt::format("; {} is refused for {}", address, format_duration(limits_.lockout));
    }
    return AuthRefusal{token.empty() ? "this server wants an access token" : "wrong access token",
                       std::move(detail)};
}

}  // namespace chat
