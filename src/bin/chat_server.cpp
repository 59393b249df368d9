// chat_server: the pulsechat server.
#include <charconv>
#include <cstdio>
#include <iostream>

#include "chat/common/cli.hpp"
#include "chat/common/logging.hpp"
#include "chat/server/server.hpp"
#include "pulsechat_config.h"

int main(int argc, char** argv) {
    chat::ServerConfig cfg;
    CLI::App app{"pulsechat server: rooms, nicknames, presence and private messages over a binary protocol, "
                 "with application heartbeats that notice a dead peer in seconds.",
                 "chat_server"};
    app.set_version_flag("--version", PULSECHAT_VERSION);
    app.set_config("--config", "", "Read these options from a TOML file (keys are the long option names)");
    app.get_formatter()->column_width(34);

    app.add_option("-p,--port", cfg.port, "TCP port to listen on; 0 picks a free one")->capture_default_str();
    app.add_option("--bind", cfg.bind, "Address to listen on")->capture_default_str();
    app.add_option("--name", cfg.server_name, "Server name announced in WELCOME")->capture_default_str();
    app.add_option("--threads", cfg.threads, "io_context threads; sessions are sharded over them")
        ->capture_default_str()
        ->check(CLI::Range(1u, 64u));

    chat::add_duration_option(app, "--handshake-timeout", cfg.handshake_timeout,
                              "Close a connection that has not sent HELLO by then");
    chat::add_duration_option(app, "--heartbeat-interval", cfg.heartbeat_interval,
                              "Announced to clients; the server PINGs a client it sent nothing to for this long");
    chat::add_duration_option(app, "--heartbeat-timeout", cfg.heartbeat_timeout,
                              "Expire a session that sent nothing for this long (min 50ms)");
    chat::add_duration_option(app, "--write-timeout", cfg.write_timeout,
                              "Disconnect a client whose socket write takes longer (slow consumer)");
    chat::add_duration_option(app, "--drain-timeout", cfg.drain_timeout,
                              "On SIGINT/SIGTERM, how long to flush queues before closing anyway");
    std::string keepalive;
    app.add_option("--tcp-keepalive", keepalive,
                   "IDLE,INTERVAL,COUNT in seconds: turn on kernel TCP keepalive (TCP_KEEPIDLE, TCP_KEEPINTVL, "
                   "TCP_KEEPCNT); off by default")
        ->type_name("I,N,C");
    std::optional<chat::Duration> user_timeout;
    app.add_option_function<std::string>(
           "--tcp-user-timeout",
           [&](const std::string& v) {
               auto d = chat::parse_duration(v);
               if (!d) throw CLI::ValidationError("--tcp-user-timeout", "'" + v + "' is not a duration");
               user_timeout = *d;
           },
           "TCP_USER_TIMEOUT: fail a connection whose sent data stays unacknowledged this long; off by default")
        ->type_name("DURATION");

    app.add_option("--history", cfg.history, "Messages kept per room and replayed on JOIN")->capture_default_str();
    chat::add_size_option(app, "--history-memory", cfg.history_memory,
                          "All rooms' history together at most; over it the server's oldest message goes "
                          "first (a later resume counts it as missed)");
    app.add_option_function<std::string>(
           "--cluster",
           [&](const std::string& v) {
               std::string_view rest(v);
               while (!rest.empty()) {
                   const auto comma = rest.find(',');
                   if (comma != 0) cfg.cluster_servers.emplace_back(rest.substr(0, comma));
                   if (comma == std::string_view::npos) break;
                   rest.remove_prefix(comma + 1);
               }
               if (cfg.cluster_servers.empty()) throw CLI::ValidationError("--cluster", "no NATS server given");
           },
           "Run as one node of a cluster: rooms, their order and history live in NATS JetStream at these "
           "servers (nats://HOST:PORT[,nats://...]); docs/CLUSTER.md")
        ->type_name("URLS");
    app.add_option("--node-name", cfg.node_name,
                   "With --cluster: this node's name, unique in the cluster (default: <hostname>-<random>)")
        ->type_name("NAME");
    app.add_option("--cluster-replicas", cfg.cluster_replicas,
                   "With --cluster: replicas of the JetStream stream (3 on a three-server NATS cluster)")
        ->capture_default_str();
    chat::add_duration_option(app, "--cluster-dead-after", cfg.cluster_dead_after,
                              "With --cluster: NATS unreachable (or not acknowledging) this long makes SAY "
                              "answer 'unavailable'");
    app.add_option_function<std::string>(
           "--history-age",
           [&](const std::string& v) {
               auto d = chat::parse_duration(v);
               if (!d) throw CLI::ValidationError("--history-age", "'" + v + "' is not a duration");
               cfg.history_age = *d;
           },
           "With --cluster: JetStream drops a room's messages older than this (default: kept until --history "
           "newer ones replace them)")
        ->type_name("DURATION");
    app.add_option("--presence-limit", cfg.presence_limit,
                   "Rooms with more members than this are quiet: joins, leaves, renames and disconnects are "
                   "not announced and JOINED lists only the joiner (members ask with WHO); 0 = never quiet")
        ->capture_default_str();
    app.add_option("--hub-backlog", cfg.hub_backlog,
                   "With --threads > 1: requests one shard may have waiting for the hub before its sessions "
                   "pause reading")
        ->capture_default_str();
    chat::add_size_option(app, "--queue-limit", cfg.queue_limit,
                          "Per-session write queue bound; a client over it is a slow consumer");
    std::size_t max_frame = cfg.max_frame;
    chat::add_size_option(app, "--max-frame", max_frame, "Largest frame payload accepted (1KiB..16MiB)");
    app.add_option("--rate", cfg.rate, "Messages per second per session (token bucket); 0 = unlimited")
        ->capture_default_str();
    app.add_option("--burst", cfg.burst, "Token bucket size: messages a session may send at once")
        ->capture_default_str();
    app.add_option("--rate-strikes", cfg.rate_strikes,
                   "Refused messages in a row after which a flooding session is disconnected")
        ->capture_default_str();
    app.add_option("--max-connections", cfg.max_connections, "Connections the server holds at most")
        ->capture_default_str();
    app.add_option("--max-per-ip", cfg.max_per_ip, "Connections from one address at most; 0 = unlimited")
        ->capture_default_str();
    app.add_option("--max-rooms-per-session", cfg.max_rooms_per_session, "Rooms one session may be in at once")
        ->capture_default_str();
    app.add_option("--log-level", cfg.log_level,
                   "trace, debug, info, warn, error, critical or off (overrides SPDLOG_LEVEL)")
        ->capture_default_str();
    std::string log_format = "text";
    app.add_option("--log-format", log_format,
                   "text, or json: one object per line (time, level, session, peer, nick, event, reason, message) "
                   "for log shippers")
        ->check(CLI::IsMember({"text", "json"}))
        ->capture_default_str();

    app.add_option_function<std::uint16_t>(
           "--tls-port", [&](std::uint16_t port) { cfg.tls_port = port; },
           "Also listen for TLS on this port (same --bind address; 0 picks a free one); needs --tls-cert and "
           "--tls-key. TLS 1.2 at least, 1.3 preferred")
        ->type_name("PORT");
    app.add_option("--tls-cert", cfg.tls_cert, "Server certificate chain (PEM); SIGHUP reloads it")
        ->type_name("FILE");
    app.add_option("--tls-key", cfg.tls_key, "Private key of --tls-cert (PEM, unencrypted); SIGHUP reloads it")
        ->type_name("FILE");
    app.add_option("--tls-client-ca", cfg.tls_client_ca,
                   "Require a client certificate on the TLS port, issued by a CA in this PEM file")
        ->type_name("FILE");
    app.add_option_function<std::uint16_t>(
           "--ws-port", [&](std::uint16_t port) { cfg.ws_port = port; },
           "Also listen for WebSocket clients on this port (same --bind; 0 picks a free one): the pulsechat "
           "protocol in binary messages on path /ws (subprotocol pulsechat), and the browser client at /")
        ->type_name("PORT");
    app.add_option_function<std::uint16_t>(
           "--wss-port", [&](std::uint16_t port) { cfg.wss_port = port; },
           "The same over TLS (wss://, https://), with --tls-cert and --tls-key")
        ->type_name("PORT");
    app.add_option("--ws-allow-origin", cfg.ws_allow_origins,
                   "A browser origin (https://chat.example.org) whose pages may connect; repeatable. Others get "
                   "403. Without it only the pages this server serves (same origin) and clients that send no "
                   "Origin (not browsers) get in")
        ->type_name("ORIGIN");
    app.add_option_function<std::uint16_t>(
           "--admin-port", [&](std::uint16_t port) { cfg.admin_port = port; },
           "Serve GET /metrics (Prometheus), /healthz and /readyz over HTTP on this port (0 picks one); off by "
           "default. /readyz answers 503 from the moment a SIGTERM drain begins")
        ->type_name("PORT");
    app.add_option("--admin-bind", cfg.admin_bind, "Address of the admin listener; keep it private")
        ->capture_default_str();
    chat::add_duration_option(app, "--tls-coalesce", cfg.tls_coalesce,
                              "TLS: a busy session's small write waits up to this long to share a record with "
                              "the next frames (a session that was quiet writes at once); 0 turns it off");
    app.add_option("--unix", cfg.unix_path,
                   "Also listen on this Unix-domain socket; a stale socket file is replaced, the file is removed "
                   "on exit")
        ->type_name("PATH");
    app.add_option_function<std::string>(
           "--unix-mode",
           [&](const std::string& v) {
               unsigned mode = 0;
               const auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), mode, 8);
               if (ec != std::errc{} || end != v.data() + v.size() || v.empty() || mode > 07777)
                   throw CLI::ValidationError("--unix-mode", "'" + v + "' is not an octal mode such as 0660");
               cfg.unix_mode = mode;
           },
           "Permissions of the --unix socket file, in octal (default: from the umask)")
        ->type_name("MODE");
    app.add_option("--unix-allow-uid", cfg.unix_allow_uids,
                   "Only these uids may use the --unix socket (SO_PEERCRED); repeatable. Others get ERROR "
                   "auth_failed")
        ->type_name("UID");
    app.add_option("--token-file", cfg.token_file,
                   "Require an access token in HELLO: one secret a line, '#' comments; SIGHUP reloads it")
        ->type_name("FILE");
    app.add_option("--auth-max-failures", cfg.auth_max_failures,
                   "Failed logins from one address within --auth-window before it is locked out")
        ->capture_default_str();
    chat::add_duration_option(app, "--auth-window", cfg.auth_window, "The window --auth-max-failures counts in");
    chat::add_duration_option(app, "--auth-lockout", cfg.auth_lockout,
                              "How long a locked-out address is refused, right token or not");

    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        return chat::exit_status(app, e);
    }
    cfg.max_frame = static_cast<std::uint32_t>(std::min<std::size_t>(max_frame, 0xFFFFFFFFu));
    if (!keepalive.empty()) {
        cfg.tcp_keepalive = chat::parse_tcp_keepalive(keepalive);
        if (!cfg.tcp_keepalive) {
            std::cerr << "chat_server: --tcp-keepalive wants IDLE,INTERVAL,COUNT (positive seconds), e.g. 10,5,3\n";
            return 2;
        }
    }
    cfg.tcp_user_timeout = user_timeout;
    if (auto problem = chat::validate(cfg); !problem.empty()) {
        std::cerr << "chat_server: " << problem << "\n";
        return 2;
    }
    if (auto problem = chat::set_log_format(log_format); !problem.empty()) {
        std::cerr << "chat_server: " << problem << "\n";
        return 2;
    }
    // An explicit --log-level wins over SPDLOG_LEVEL; the default does not.
    const bool level_given = app.count("--log-level") > 0;
    if (auto problem = chat::init_logging(level_given ? cfg.log_level : std::string{}); !problem.empty()) {
        std::cerr << "chat_server: " << problem << "\n";
        return 2;
    }

    try {
        chat::Server server(cfg);
        server.catch_signals();
        const auto endpoints = server.listen();
        for (const auto& ep : endpoints)
            std::cout << "listening on " << ep.address().to_string() << ":" << ep.port() << std::endl;
        if (const auto tls = server.tls_endpoint())
            std::cout << "listening on " << tls->address().to_string() << ":" << tls->port() << " (tls)" << std::endl;
        if (const auto ws = server.ws_endpoint())
            std::cout << "listening on " << ws->address().to_string() << ":" << ws->port() << " (websocket)"
                      << std::endl;
        if (const auto wss = server.wss_endpoint())
            std::cout << "listening on " << wss->address().to_string() << ":" << wss->port() << " (websocket tls)"
                      << std::endl;
        if (!cfg.unix_path.empty()) std::cout << "listening on unix:" << cfg.unix_path << std::endl;
        if (const auto admin = server.admin_endpoint())
            std::cout << "listening on " << admin->address().to_string() << ":" << admin->port() << " (admin)"
                      << std::endl;
        server.run();
    } catch (const std::system_error& e) {
        std::cerr << "chat_server: cannot listen on " << cfg.bind << ":" << cfg.port << ": " << e.code().message()
                  << "\n";
        return 1;
    } catch (const std::exception& e) {
        std::cerr << "chat_server: " << e.what() << "\n";
        return 1;
    }
    return 0;
}
