// Server settings: one struct filled from the command line, passed down.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "chat/common/units.hpp"

namespace chat {

struct TcpKeepalive {
    int idle_s = 0;
    int interval_s = 0;
    int count = 0;
};
// "IDLE,INTERVAL,COUNT" in seconds, each > 0.
std::optional<TcpKeepalive> parse_tcp_keepalive(std::string_view text);

struct ServerConfig {
    std::string bind = "0.0.0.0";
    std::uint16_t port = 7000;
    std::string server_name = "pulsechat";

    Duration handshake_timeout{10'000};
    Duration heartbeat_interval{5'000};
    Duration heartbeat_timeout{15'000};
    Duration write_timeout{10'000};
    // TLS: how long a busy session's small write may wait to share a record
    // with what comes next (Session::defer_tls_write); 0 writes at once.
    Duration tls_coalesce{1};
    // The admin HTTP listener (/metrics, /healthz, /readyz); off without a port.
    std::optional<std::uint16_t> admin_port;
    std::string admin_bind = "127.0.0.1";
    Duration drain_timeout{5'000};

    std::optional<TcpKeepalive> tcp_keepalive;
    std::optional<Duration> tcp_user_timeout;

    std::size_t history = 100;
    // --history-age: with --cluster, JetStream drops a room's messages older than this.
    std::optional<Duration> history_age;

    // The cluster broker (--cluster): rooms across nodes through NATS JetStream.
    std::vector<std::string> cluster_servers;  // empty: the in-process broker
    std::string node_name;                     // empty: <hostname>-<random>
    int cluster_replicas = 1;
    Duration cluster_dead_after{3'000};
    // All rooms' history together; the oldest message of the server goes first.
    std::size_t history_memory = 64 * 1024 * 1024;
    // Rooms with more members do not announce joins and leaves (PROTOCOL.md 6.4); 0: all do.
    std::size_t presence_limit = 250;
    // Requests one shard may have on their way to the hub before its sessions
    // stop reading (--threads > 1): the hub's backlog stays bounded.
    std::size_t hub_backlog = 4096;
    std::size_t queue_limit = 4 * 1024 * 1024;
    std::uint32_t max_frame = 64 * 1024;

    double rate = 20.0;  // messages per second per session; 0 = unlimited
    double burst = 40.0;
    // Rate-limit errors in a row (without a conforming message between) before
    // the session is disconnected.
    unsigned rate_strikes = 10;

    std::size_t max_connections = 100'000;
    std::size_t max_per_ip = 0;  // 0 = unlimited
    std::size_t max_rooms_per_session = 64;

    unsigned threads = 1;
    std::string log_level = "info";

    // TLS listener (on `bind`), next to the plain one; needs cert and key (PEM).
    std::optional<std::uint16_t> tls_port;
    std::string tls_cert;
    std::string tls_key;
    std::string tls_client_ca;  // set: clients must show a certificate from these CAs

    // WebSocket listeners (on `bind`): the pulsechat protocol in binary
    // WebSocket messages on path /ws, and the browser client's files on the
    // same port. wss_port uses tls_cert and tls_key.
    std::optional<std::uint16_t> ws_port;
    std::optional<std::uint16_t> wss_port;
    // Origins a browser page may connect from; empty: only pages this server
    // served itself (Origin's host equals the Host header) and non-browser
    // clients, which send no Origin.
    std::vector<std::string> ws_allow_origins;

    // Unix-domain socket listener; empty: none.
    std::string unix_path;
    std::optional<unsigned> unix_mode;           // permissions of the socket file, e.g. 0660
    std::vector<std::uint32_t> unix_allow_uids;  // empty: any uid the file mode lets in

    // Access tokens; empty: HELLO needs none.
    std::string token_file;
    unsigned auth_max_failures = 5;  // failed logins from one address within auth_window...
    Duration auth_window{60'000};
    Duration auth_lockout{60'000};   // ...refuse it for this long

    // The worst-case time between a peer's death and the server noticing it.
    Duration worst_case_detection() const { return heartbeat_timeout; }
};

// Returns an error message, or an empty string when the settings hang together.
std::string validate(const ServerConfig& config);

}  // namespace chat
