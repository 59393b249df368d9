#include "chat/server/server_config.hpp"

#include <cctype>
#include <charconv>

namespace chat {
namespace {

std::string_view trim(std::string_view s) {
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
    return s;
}

}  // namespace

std::optional<TcpKeepalive> parse_tcp_keepalive(std::string_view text) {
    int values[3] = {};
    for (int i = 0; i < 3; ++i) {
        const auto comma = text.find(',');
        if ((i < 2) != (comma != std::string_view::npos)) return std::nullopt;
        const auto part = trim(text.substr(0, comma));
        auto [ptr, ec] = std::from_chars(part.data(), part.data() + part.size(), values[i]);
        if (ec != std::errc{} || ptr != part.data() + part.size() || values[i] <= 0) return std::nullopt;
        text = i < 2 ? text.substr(comma + 1) : std::string_view{};
    }
    return TcpKeepalive{values[0], values[1], values[2]};
}

std::string validate(const ServerConfig& c) {
    using std::chrono::milliseconds;
    if (c.heartbeat_interval < milliseconds{50}) return "--heartbeat-interval must be at least 50ms";
    if (c.heartbeat_timeout < milliseconds{50}) return "--heartbeat-timeout must be at least 50ms";
    if (c.heartbeat_timeout <= c.heartbeat_interval)
        return "--heartbeat-timeout must be longer than --heartbeat-interval, or a live but quiet peer "
               "would be expired before its heartbeat arrives";
    if (c.handshake_timeout < milliseconds{50}) return "--handshake-timeout must be at least 50ms";
    if (c.write_timeout < milliseconds{50}) return "--write-timeout must be at least 50ms";
    if (c.tls_coalesce < milliseconds{0} || c.tls_coalesce > milliseconds{100})
        return "--tls-coalesce must be between 0 and 100ms (it adds to a busy TLS session's latency)";
    if (c.max_frame < 1024) return "--max-frame must be at least 1KiB";
    if (c.hub_backlog < 16) return "--hub-backlog must be at least 16";
    if (c.history > 0 && c.history_memory < c.max_frame + 1024)
        return "--history-memory must hold at least one message of --max-frame";
    if (c.max_frame > 16u * 1024 * 1024) return "--max-frame must be at most 16MiB";
    if (c.queue_limit < c.max_frame)
        return "--queue-limit must be at least --max-frame, or one large message would disconnect everyone";
    if (c.threads < 1 || c.threads > 64) return "--threads must be between 1 and 64";
    if (c.rate < 0 || c.burst < 0) return "--rate and --burst must not be negative";
    if (c.rate > 0 && c.burst < 1) return "--burst must be at least 1 when --rate is set";
    if (c.max_connections < 1) return "--max-connections must be at least 1";
    if (c.max_rooms_per_session < 1) return "--max-rooms-per-session must be at least 1";
    if (c.tcp_user_timeout && c.tcp_user_timeout->count() <= 0) return "--tcp-user-timeout must be positive";
    if (c.tls_port && (c.tls_cert.empty() || c.tls_key.empty()))
        return "--tls-port needs --tls-cert and --tls-key (PEM files)";
    if (c.wss_port && (c.tls_cert.empty() || c.tls_key.empty()))
        return "--wss-port needs --tls-cert and --tls-key (PEM files)";
    if (!c.tls_port && !c.wss_port && (!c.tls_cert.empty() || !c.tls_key.empty() || !c.tls_client_ca.empty()))
        return "--tls-cert, --tls-key and --tls-client-ca need --tls-port or --wss-port";
    if (!c.ws_port && !c.wss_port && !c.ws_allow_origins.empty())
        return "--ws-allow-origin needs --ws-port or --wss-port";
    for (const auto& origin : c.ws_allow_origins) {
        const std::string_view o(origin);
        const auto scheme = o.find("://");
        // What a browser sends: scheme://host[:port], nothing after it.
        if (scheme == std::string_view::npos || scheme == 0 || o.size() == scheme + 3 ||
            o.find_first_of("/?# \t", scheme + 3) != std::string_view::npos)
            return "--ws-allow-origin: '" + origin +
                   "' is not an origin such as https://chat.example.org or http://localhost:8080";
    }
    if (c.unix_mode && *c.unix_mode > 07777) return "--unix-mode must be an octal mode such as 0660";
    if (c.unix_path.size() > 107) return "--unix: a socket path has at most 107 bytes";
    if (c.unix_path.empty() && (c.unix_mode || !c.unix_allow_uids.empty()))
        return "--unix-mode and --unix-allow-uid need --unix";
    if (c.auth_max_failures < 1) return "--auth-max-failures must be at least 1";
    for (const auto& url : c.cluster_servers) {
        const std::string_view u(url);
        if (!(u.starts_with("nats://") || u.starts_with("tls://")) || u.find(':', 7) == std::string_view::npos ||
            u.size() < 10)
            return "--cluster: '" + url + "' is not a NATS server address such as nats://127.0.0.1:4222";
    }
    if (c.cluster_servers.empty() && (!c.node_name.empty() || c.history_age || c.cluster_replicas != 1))
        return "--node-name, --history-age and --cluster-replicas need --cluster";
    if (c.cluster_replicas < 1 || c.cluster_replicas > 5) return "--cluster-replicas must be between 1 and 5";
    if (c.cluster_dead_after < milliseconds{300} || c.cluster_dead_after > milliseconds{60'000})
        return "--cluster-dead-after must be between 300ms and 60s";
    if (c.history_age && c.history_age->count() < 1000) return "--history-age must be at least 1s";
    if (!c.cluster_servers.empty() && c.history < 1)
        return "--history must be at least 1 with --cluster (the stream keeps the rooms' messages)";
    for (char ch : c.node_name)
        if (!(std::isalnum(static_cast<unsigned char>(ch)) || ch == '-' || ch == '_') || c.node_name.size() > 64)
            return "--node-name: letters, digits, '-' and '_', at most 64";
    return {};
}

}  // namespace chat
