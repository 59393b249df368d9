// chat_bench's load generator: many client connections on a few io_context
// threads, publishing timestamped messages and checking that every member
// receives every one of them, over pulsechat's protocol or a peer's.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "chat/bench/histogram.hpp"

namespace chat::bench {

enum class Proto { chat, nats, redis };
std::optional<Proto> parse_proto(std::string_view name);
std::string_view to_string(Proto proto);
std::uint16_t default_port(Proto proto);

struct BenchConfig {
    std::string host = "127.0.0.1";
    // The server's port, or several: the nodes of one pulsechat cluster, each
    // room's members dealt round-robin over them (empty: the protocol's usual port).
    std::vector<std::uint16_t> ports;
    // With several ports: every publisher connects to the first one (node A),
    // the other members are dealt round-robin over all of them.
    bool publishers_on_first = false;
    Proto proto = Proto::chat;
    std::size_t connections = 100;  // room members; with redis each publisher adds one connection
    std::size_t rooms = 1;
    std::size_t publishers = 1;  // per room; a publisher is also a member and receives its own messages
    double rate = 0;             // messages/s published in all; 0 = as fast as the window allows
    std::size_t size = 64;       // bytes of message text, at least stamp_size
    std::chrono::milliseconds duration{10'000};
    std::uint64_t count = 0;  // > 0: publish this many measured messages in all, instead of --duration
    std::chrono::milliseconds warmup{2'000};
    // After the last send: how long the receive count may stand still before
    // what has not arrived is counted lost.
    std::chrono::milliseconds drain_timeout{5'000};
    std::chrono::milliseconds connect_timeout{60'000};
    // Max-rate mode: messages a publisher has in flight (sent, own echo not yet
    // back), and deliveries in flight in all (0: twice what the windows allow).
    std::size_t window = 64;
    std::uint64_t max_outstanding = 0;
    bool idle = false;  // connect, join, then only keep heartbeats for --duration
    unsigned threads = 1;
    std::string token;
    // TLS (chat, redis, nats): to the server's TLS port; the certificate is checked
    // against tls_ca (the system's trust store when empty) unless tls_insecure.
    bool tls = false;
    std::string tls_ca;
    bool tls_insecure = false;
    // WebSocket (chat only): each connection upgrades at ws_path (subprotocol
    // pulsechat, no Origin) and then carries pulsechat frames in binary
    // messages; with tls, over TLS (wss). The port is the server's ws port.
    bool ws = false;
    std::string ws_path = "/ws";
    // Connections bind to source_base, source_base+1, ... before connecting, so
    // that one client machine can hold more than one address's ephemeral ports.
    std::string source_base = "127.0.0.2";
    std::size_t source_addrs = 0;  // 0: one per 16k connections when the host is loopback, else none
    std::size_t connect_concurrency = 256;  // handshakes in flight per thread
    // Processes whose CPU and RSS are reported (from /proc): the k-th is the
    // server behind the k-th port; more than there are ports are reported too
    // (a nats-server behind a cluster), with no connections of their own.
    std::vector<int> server_pids;
    std::string nick_prefix;  // empty: derived from the process id
};

struct Progress {
    std::string_view phase;  // connect, ready (once, when all are connected), warmup, measure, drain, idle
    double elapsed_s = 0;  // in this phase
    std::uint64_t ready = 0;
    std::uint64_t links = 0;
    double published_per_s = 0;  // over the last interval
    double delivered_per_s = 0;
    std::uint64_t outstanding = 0;
    std::uint64_t max_latency_ns = 0;  // over the last interval
    std::uint64_t disconnects = 0;
    std::uint64_t errors = 0;
};
using ProgressFn = std::function<void(const Progress&)>;

// One process of --server-pid, over the measured interval.
struct ServerSample {
    int pid = 0;
    std::uint16_t port = 0;   // the port it serves (the k-th of --port), 0 when none
    std::size_t links = 0;    // chat_bench's connections to that port
    double cpu_pct = 0;       // % of one core
    std::uint64_t rss_base_kib = 0;  // before connecting
    std::uint64_t rss_kib = 0;       // at the end of the measured interval
    std::uint64_t rss_peak_kib = 0;  // highest sampled
    double rss_per_conn_kib = 0;     // (end - base) / links, 0 without links
};

struct BenchResult {
    std::size_t links = 0;          // TCP connections made to the server(s)
    std::vector<std::size_t> links_per_port;  // by the index of --port
    double connect_s = 0;           // first connect to the last member ready (joined, subscribed)
    double measured_s = 0;          // measure start to the last send
    double delivery_window_s = 0;   // measure start to the last measured delivery
    std::uint64_t published = 0;    // measured messages sent
    std::uint64_t delivered = 0;    // measured messages received, all members
    std::uint64_t published_total = 0;  // including warm-up
    std::uint64_t delivered_total = 0;
    std::uint64_t expected_total = 0;
    double published_per_s = 0;
    double delivered_per_s = 0;
    double mb_per_s = 0;       // delivered message text, 10^6 bytes/s
    double wire_mb_per_s = 0;  // every byte read from the server during the delivery window
    // chat_bench's read calls per message received, from the measure start on: how
    // well the server batches its writes (1 means a write per message per member).
    double reads_per_delivery = 0;
    LatencyHistogram latency;  // ns, one sample per measured delivery
    std::uint64_t lost = 0;
    std::uint64_t duplicates = 0;  // received again or out of order
    std::uint64_t misrouted = 0;   // a text from another room, or one chat_bench did not write
    std::uint64_t disconnects = 0;  // connections closed by the server or failed
    std::uint64_t errors = 0;       // ERROR frames, -ERR replies
    std::string first_error;
    std::uint64_t heartbeats_sent = 0;
    std::uint64_t pings_answered = 0;
    double max_heartbeat_lag_ms = 0;  // how late past its interval chat_bench sent a heartbeat
    double bench_cpu_pct = 0;         // chat_bench's own CPU over the measured interval
    // With --server-pid (several: the sums over them, and each in `servers`):
    bool have_server = false;
    double server_cpu_pct = 0;
    std::uint64_t server_rss_base_kib = 0;  // before connecting
    std::uint64_t server_rss_kib = 0;       // at the end of the measured interval
    std::uint64_t server_rss_peak_kib = 0;  // highest sampled
    double rss_per_conn_kib = 0;            // (end - base) / links
    std::vector<ServerSample> servers;      // one per --server-pid that could be read
    bool aborted = false;                   // the run could not start (connect failed)

    bool ok() const { return !aborted && lost == 0 && duplicates == 0 && misrouted == 0 && disconnects == 0 && errors == 0; }
};

// Returns an error text for settings that cannot work, or empty.
std::string validate(const BenchConfig& config);

// Runs the whole benchmark on the calling thread (plus config.threads workers).
// `progress` is called about once a second from the calling thread.
BenchResult run_bench(const BenchConfig& config, const ProgressFn& progress);

}  // namespace chat::bench
