// chat_bench: load generator for pulsechat (and, for comparison, NATS and Redis pub/sub).
#include <sys/resource.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <iostream>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "chat/bench/load.hpp"
#include "chat/bench/wire.hpp"
#include "chat/common/cli.hpp"
#include "pulsechat_config.h"

namespace {

using chat::bench::BenchConfig;
using chat::bench::BenchResult;

std::string si(double value, const char* unit = "") {
    const char* prefix = "";
    if (value >= 1e9) {
        value /= 1e9;
        prefix = "G";
    } else if (value >= 1e6) {
        value /= 1e6;
        prefix = "M";
    } else if (value >= 1e3) {
        value /= 1e3;
        prefix = "k";
    }
    return fmt::format("{:.{}f} {}{}", value, value >= 100 ? 0 : value >= 10 ? 1 : 2, prefix, unit);
}

std::string micros(std::uint64_t ns) {
    const double us = static_cast<double>(ns) / 1e3;
    if (us >= 10'000) return fmt::format("{:.1f} ms", us / 1e3);
    return fmt::format("{:.{}f} us", us, us >= 100 ? 0 : 1);
}

double us(std::uint64_t ns) { return static_cast<double>(ns) / 1e3; }

// JSON numbers must be finite.
double finite(double v) { return std::isfinite(v) ? v : 0.0; }

std::string json_string(std::string_view s) {
    std::string out = "\"";
    for (const char c : s) {
        switch (c) {
            case '"': out += "\\\""; break;
            case '\\': out += "\\\\"; break;
            case '\n': out += "\\n"; break;
            case '\t': out += "\\t"; break;
            default:
                if (static_cast<unsigned char>(c) < 0x20)
                    out += fmt::format("\\u{:04x}", static_cast<unsigned>(c));
                else
                    out += c;
        }
    }
    return out + "\"";
}

std::string joined(const auto& values) {
    std::string out;
    for (const auto& v : values) out += (out.empty() ? "" : ",") + fmt::format("{}", v);
    return out;
}

std::string to_json(const BenchConfig& c, const BenchResult& r, const std::string& label) {
    const auto& h = r.latency;
    std::string out = "{";
    auto field = [&out](std::string_view name, const std::string& value) {
        if (out.size() > 1) out += ", ";
        out += fmt::format("\"{}\": {}", name, value);
    };
    auto number = [&field](std::string_view name, double v) { field(name, fmt::format("{:.6g}", finite(v))); };
    auto integer = [&field](std::string_view name, std::uint64_t v) { field(name, std::to_string(v)); };
    if (!label.empty()) field("label", json_string(label));
    field("proto", json_string(chat::bench::to_string(c.proto)));
    field("tls", c.tls ? "true" : "false");
    field("ws", c.ws ? "true" : "false");
    field("mode", json_string(c.idle ? "idle" : c.rate > 0 ? "rate" : "max"));
    integer("connections", c.connections);
    integer("links", r.links);
    // Several ports (nodes of one cluster): which, and how many connections each got.
    field("ports", json_string(joined(c.ports)));
    field("links_per_port", json_string(joined(r.links_per_port)));
    field("publishers_on_first", c.publishers_on_first ? "true" : "false");
    integer("rooms", c.rooms);
    integer("publishers_per_room", c.idle ? 0 : c.publishers);
    number("rate", c.rate);
    integer("size", c.size);
    integer("window", c.window);
    integer("threads", c.threads);
    number("warmup_s", static_cast<double>(c.warmup.count()) / 1e3);
    number("connect_s", r.connect_s);
    number("measured_s", r.measured_s);
    integer("published", r.published);
    number("published_per_s", r.published_per_s);
    integer("delivered", r.delivered);
    number("delivered_per_s", r.delivered_per_s);
    number("mb_per_s", r.mb_per_s);
    number("wire_mb_per_s", r.wire_mb_per_s);
    number("reads_per_delivery", r.reads_per_delivery);
    integer("latency_samples", h.count());
    number("p50_us", us(h.quantile(0.50)));
    number("p90_us", us(h.quantile(0.90)));
    number("p99_us", us(h.quantile(0.99)));
    number("p999_us", us(h.quantile(0.999)));
    number("max_us", us(h.max()));
    number("mean_us", h.mean() / 1e3);
    integer("published_total", r.published_total);
    integer("delivered_total", r.delivered_total);
    integer("expected_total", r.expected_total);
    integer("lost", r.lost);
    integer("duplicates", r.duplicates);
    integer("misrouted", r.misrouted);
    integer("disconnects", r.disconnects);
    integer("errors", r.errors);
    integer("heartbeats_sent", r.heartbeats_sent);
    integer("pings_answered", r.pings_answered);
    number("max_heartbeat_lag_ms", r.max_heartbeat_lag_ms);
    number("bench_cpu_pct", r.bench_cpu_pct);
    if (r.have_server) {
        number("server_cpu_pct", r.server_cpu_pct);
        integer("server_rss_base_kib", r.server_rss_base_kib);
        integer("server_rss_kib", r.server_rss_kib);
        integer("server_rss_peak_kib", r.server_rss_peak_kib);
        number("rss_per_conn_kib", r.rss_per_conn_kib);
        // Each --server-pid on its own; the keys differ from the sums' above, so
        // that a flat reader (bench/run's sed) never mistakes one for the other.
        std::string nodes = "[";
        for (const auto& s : r.servers) {
            if (nodes.size() > 1) nodes += ", ";
            nodes += fmt::format(
                "{{\"node_pid\": {}, \"node_port\": {}, \"node_links\": {}, \"node_cpu_pct\": {:.6g}, "
                "\"node_rss_base_kib\": {}, \"node_rss_kib\": {}, \"node_rss_peak_kib\": {}, "
                "\"node_rss_per_conn_kib\": {:.6g}}}",
                s.pid, s.port, s.links, finite(s.cpu_pct), s.rss_base_kib, s.rss_kib, s.rss_peak_kib,
                finite(s.rss_per_conn_kib));
        }
        field("servers", nodes + "]");
    }
    field("aborted", r.aborted ? "true" : "false");
    field("ok", r.ok() ? "true" : "false");
    field("first_error", json_string(r.first_error));
    return out + "}";
}

void print_table(std::FILE* f, const BenchConfig& c, const BenchResult& r) {
    const auto& h = r.latency;
    const std::string rate = c.rate > 0 ? si(c.rate, "msg/s") : fmt::format("max (window {})", c.window);
    const std::string ports = fmt::format("{}", fmt::join(c.ports, ","));
    if (c.idle)
        fmt::print(f, "chat_bench: {} at {}:{}, {} idle connections in {} room(s) for {:.0f} s\n",
                   chat::bench::to_string(c.proto), c.host, ports, c.connections, c.rooms, r.measured_s);
    else
        fmt::print(f, "chat_bench: {} at {}:{}, {} connections, {} room(s), {} publisher(s) per room, rate {}, {} B\n",
                   chat::bench::to_string(c.proto), c.host, ports, c.connections, c.rooms, c.publishers, rate,
                   c.size);
    fmt::print(f, "  connect     {:.2f} s for {} connections\n", r.connect_s, r.links);
    if (c.ports.size() > 1)
        fmt::print(f, "  ports       {} connections to {} in that order{}\n", fmt::join(r.links_per_port, " + "), ports,
                   c.publishers_on_first ? " (every publisher on the first)" : "");
    if (!c.idle && !r.aborted) {
        fmt::print(f, "  published   {}  ({} in {:.2f} s after {:.1f} s warm-up)\n", si(r.published_per_s, "msg/s"),
                   r.published, r.measured_s, static_cast<double>(c.warmup.count()) / 1e3);
        fmt::print(f, "  delivered   {}  {} of text, {} on the wire, {:.3f} reads per message\n",
                   si(r.delivered_per_s, "msg/s"), si(r.mb_per_s * 1e6, "B/s"), si(r.wire_mb_per_s * 1e6, "B/s"),
                   r.reads_per_delivery);
        fmt::print(f, "  latency     p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  ({} samples)\n", micros(h.quantile(0.5)),
                   micros(h.quantile(0.9)), micros(h.quantile(0.99)), micros(h.quantile(0.999)), micros(h.max()),
                   h.count());
    }
    fmt::print(f, "  loss        {} lost, {} duplicated or reordered, {} misrouted; {} disconnects, {} errors\n", r.lost,
               r.duplicates, r.misrouted, r.disconnects, r.errors);
    if (r.have_server)
        fmt::print(f, "  server      CPU {:.0f}%  RSS {:.1f} MiB (before {:.1f}, peak {:.1f}; {:.2f} KiB per connection){}\n",
                   r.server_cpu_pct, static_cast<double>(r.server_rss_kib) / 1024,
                   static_cast<double>(r.server_rss_base_kib) / 1024, static_cast<double>(r.server_rss_peak_kib) / 1024,
                   r.rss_per_conn_kib, r.servers.size() > 1 ? " in all" : "");
    if (r.servers.size() > 1)
        for (const auto& s : r.servers)
            fmt::print(f, "    pid {:<7} {:>11}  CPU {:.0f}%  RSS {:.1f} MiB (before {:.1f}; {:.2f} KiB per connection)\n",
                       s.pid, s.port != 0 ? fmt::format("port {}", s.port) : std::string("(no port)"), s.cpu_pct,
                       static_cast<double>(s.rss_kib) / 1024, static_cast<double>(s.rss_base_kib) / 1024,
                       s.rss_per_conn_kib);
    fmt::print(f, "  chat_bench  CPU {:.0f}% ({} thread(s)); {} heartbeats sent (at most {:.0f} ms late), {} pings answered\n",
               r.bench_cpu_pct, c.threads, r.heartbeats_sent, r.max_heartbeat_lag_ms, r.pings_answered);
    if (r.ok())
        fmt::print(f, "  result      OK\n");
    else
        fmt::print(f, "  result      FAILED{}\n", r.first_error.empty() ? "" : ": " + r.first_error);
}

// More connections than the soft descriptor limit allows is the usual way to
// fail at scale: raise it to the hard limit and say so if even that is short.
bool raise_fd_limit(std::size_t wanted) {
    rlimit limit{};
    if (getrlimit(RLIMIT_NOFILE, &limit) != 0) return true;
    if (limit.rlim_cur < limit.rlim_max) {
        limit.rlim_cur = limit.rlim_max;
        setrlimit(RLIMIT_NOFILE, &limit);
        getrlimit(RLIMIT_NOFILE, &limit);
    }
    if (limit.rlim_cur != RLIM_INFINITY && limit.rlim_cur < wanted) {
        fmt::print(stderr,
                   "chat_bench: {} connections need about {} file descriptors, but the limit is {} "
                   "(raise it with `ulimit -n`; the hard limit is {}, /proc/sys/fs/nr_open the ceiling)\n",
                   wanted - 32, wanted, limit.rlim_cur, limit.rlim_max);
        return false;
    }
    return true;
}

}  // namespace

int main(int argc, char** argv) {
    BenchConfig cfg;
    CLI::App app{"chat_bench: load generator for pulsechat, and for NATS and Redis pub/sub through adapters, so that "
                 "one tool measures them all. Reports connect time, deliveries/s, latency percentiles and loss "
                 "(every member must receive every message; exit status 1 otherwise).",
                 "chat_bench"};
    app.set_version_flag("--version", PULSECHAT_VERSION);
    app.get_formatter()->column_width(34);

    std::string proto = "chat";
    std::string rate = "max";
    std::string label;
    bool json = false;
    bool no_progress = false;
    std::size_t size = cfg.size;

    app.add_option("--host", cfg.host, "Server address")->capture_default_str();
    std::vector<std::uint16_t> port_list;
    std::vector<std::uint16_t> ports_csv;
    app.add_option("--port", port_list,
                   "Server port (default: 7000 chat, 4222 nats, 6379 redis); repeat it for the nodes of one "
                   "pulsechat cluster: each room's members are dealt round-robin over them")
        ->type_name("PORT");
    app.add_option("--ports", ports_csv, "The same as repeated --port: PORT,PORT,...")->delimiter(',')->type_name("LIST");
    app.add_flag("--publishers-on-first", cfg.publishers_on_first,
                 "With several ports: every publisher connects to the first (node A), the other members are dealt "
                 "over all of them");
    app.add_option("--proto", proto, "Protocol: chat, nats or redis")
        ->capture_default_str()
        ->check(CLI::IsMember({"chat", "nats", "redis"}));
    app.add_option("-c,--connections", cfg.connections, "Room members, one connection each")->capture_default_str();
    app.add_option("-r,--rooms", cfg.rooms, "Rooms; members are dealt out round-robin")->capture_default_str();
    app.add_option("-p,--publishers", cfg.publishers, "Publishers per room (each also a member)")
        ->capture_default_str();
    app.add_option("--rate", rate, "Messages/s published in all, or 'max' (windowed, see --window)")
        ->capture_default_str();
    chat::add_size_option(app, "--size", size, "Bytes of message text (at least 40: the stamp)");
    chat::add_duration_option(app, "--duration", cfg.duration, "Measured time (after the warm-up)");
    app.add_option("--count", cfg.count, "Publish this many measured messages in all instead of --duration");
    chat::add_duration_option(app, "--warmup", cfg.warmup, "Publish this long before measuring");
    chat::add_duration_option(app, "--drain-timeout", cfg.drain_timeout,
                              "After the last send, count as lost what has not arrived once deliveries stall this long");
    chat::add_duration_option(app, "--connect-timeout", cfg.connect_timeout, "Give up when not all are connected by then");
    app.add_option("--window", cfg.window, "Max rate: messages a publisher has in flight until its own echo returns")
        ->capture_default_str();
    app.add_option("--max-outstanding", cfg.max_outstanding,
                   "Max rate: deliveries in flight in all (default twice what the windows allow)");
    app.add_flag("--idle", cfg.idle, "Publish nothing: hold the connections with heartbeats for --duration");
    app.add_option("--threads", cfg.threads, "io_context threads of chat_bench")->capture_default_str();
    app.add_option("--token", cfg.token, "Access token (chat HELLO, NATS auth_token, Redis AUTH)");
    app.add_flag("--tls", cfg.tls,
                 "Connect with TLS: chat to the server's --tls-port, redis to --tls-port, nats to a server "
                 "with a tls block (INFO in the clear, then the handshake)");
    app.add_flag("--ws", cfg.ws,
                 "chat over WebSocket: --port is the server's --ws-port (with --tls, its --wss-port); "
                 "upgrade at --ws-path with subprotocol pulsechat, then pulsechat frames in masked binary messages");
    app.add_option("--ws-path", cfg.ws_path, "With --ws: the path of the upgrade request")->capture_default_str();
    app.add_option("--ca", cfg.tls_ca, "With --tls: trust this CA file (PEM) instead of the system's trust store")
        ->type_name("FILE");
    app.add_flag("--insecure", cfg.tls_insecure, "With --tls: do not check the server's certificate");
    app.add_option("--source-base", cfg.source_base, "First source address to bind connections to")
        ->capture_default_str();
    app.add_option("--source-addrs", cfg.source_addrs,
                   "Source addresses to spread connections over (default: one per 16k on loopback)");
    app.add_option("--connect-concurrency", cfg.connect_concurrency, "Handshakes in flight per thread")
        ->capture_default_str();
    app.add_option("--server-pid", cfg.server_pids,
                   "Report this process's CPU and RSS (from /proc); repeat it for several: the k-th is the server "
                   "of the k-th port, any more (a cluster's nats-server) are reported too; the sums go in server_*")
        ->type_name("PID");
    app.add_option("--nick-prefix", cfg.nick_prefix, "Nicknames are PREFIX0, PREFIX1, ... (default from the pid)");
    app.add_option("--label", label, "A name for this run, copied into the JSON");
    app.add_flag("--json", json, "Print the result as one JSON object on stdout (the table goes to stderr)");
    app.add_flag("--no-progress", no_progress, "No live progress line, even on a terminal");

    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        return chat::exit_status(app, e);
    }
    cfg.proto = *chat::bench::parse_proto(proto);
    cfg.ports = port_list;
    cfg.ports.insert(cfg.ports.end(), ports_csv.begin(), ports_csv.end());
    if (cfg.ports.empty()) cfg.ports.push_back(0);
    for (auto& port : cfg.ports)
        if (port == 0) port = chat::bench::default_port(cfg.proto);  // as before: 0 is the protocol's usual port
    cfg.size = size;
    if (rate == "max") {
        cfg.rate = 0;
    } else {
        try {
            std::size_t used = 0;
            cfg.rate = std::stod(rate, &used);
            if (used != rate.size() || !(cfg.rate > 0)) throw std::invalid_argument(rate);
        } catch (const std::exception&) {
            fmt::print(stderr, "chat_bench: --rate wants 'max' or a positive number of messages/s, not '{}'\n", rate);
            return 2;
        }
    }
    if (auto problem = chat::bench::validate(cfg); !problem.empty()) {
        fmt::print(stderr, "chat_bench: {}\n", problem);
        return 2;
    }
    const bool separate_publishers = cfg.proto == chat::bench::Proto::redis && !cfg.idle;
    const std::size_t links = cfg.connections + (separate_publishers ? cfg.publishers * cfg.rooms : 0);
    if (!raise_fd_limit(links + 32)) return 2;

    const bool show_progress = !no_progress && isatty(STDERR_FILENO);
    auto progress = [show_progress](const chat::bench::Progress& p) {
        if (p.phase == "ready") {
            // Without a terminal, one line to mark the end of the connect phase (scripts and tests wait for it).
            if (!show_progress) fmt::print(stderr, "chat_bench: {} connections ready in {:.2f} s\n", p.links, p.elapsed_s);
            return;
        }
        if (!show_progress) return;
        std::string line;
        if (p.phase == "connect")
            line = fmt::format("connect {:5.1f} s  {}/{} ready", p.elapsed_s, p.ready, p.links);
        else
            line = fmt::format("{:<7} {:5.1f} s  sent {}  delivered {}  in flight {}  max latency {}", p.phase,
                               p.elapsed_s, si(p.published_per_s, "/s"), si(p.delivered_per_s, "/s"), p.outstanding,
                               micros(p.max_latency_ns));
        if (p.disconnects + p.errors > 0) line += fmt::format("  disconnects {}  errors {}", p.disconnects, p.errors);
        fmt::print(stderr, "\r\033[K{}", line);
        std::fflush(stderr);
    };

    BenchResult result;
    try {
        result = chat::bench::run_bench(cfg, progress);
    } catch (const std::exception& e) {
        if (show_progress) fmt::print(stderr, "\r\033[K");
        fmt::print(stderr, "chat_bench: {}\n", e.what());
        return 3;
    }
    if (show_progress) fmt::print(stderr, "\r\033[K");
    if (json) {
        fmt::print("{}\n", to_json(cfg, result, label));
        std::fflush(stdout);
        print_table(stderr, cfg, result);
    } else {
        print_table(stdout, cfg, result);
    }
    if (result.aborted) return 3;
    return result.ok() ? 0 : 1;
}
