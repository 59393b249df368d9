// What the server counts for GET /metrics (docs/METRICS.md), and its
// rendering in the Prometheus text exposition format 0.0.4.
//
// Every count lives in a ShardMetrics, one per shard, as plain integers that
// only that shard's thread writes: the per-message path pays an increment,
// never a lock or an atomic read-modify-write. A scrape posts to each shard,
// which copies its own, and sums the copies on the admin listener's shard.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "chat/proto/protocol.hpp"

namespace chat {

// Why a session ended, as the sessions_closed_total{reason} label says it.
enum class CloseCause : std::uint8_t {
    client_quit,        // BYE from the client
    peer_closed,        // the connection closed (EOF) without a BYE
    heartbeat_timeout,  // nothing received within --heartbeat-timeout
    handshake_timeout,  // no HELLO (or TLS handshake) within --handshake-timeout
    slow_consumer,      // the write queue or a write overran its bound
    protocol_error,     // a malformed or forbidden frame
    rate_limit,         // flooding past --rate / --burst
    auth_failed,        // a missing or wrong access token, or a locked-out address
    replaced,           // another connection resumed this nickname
    refused,            // over --max-connections or --max-per-ip, or a refused Unix uid
    shutdown,           // the server stopped
    connection_error,   // a read or write failed (reset, TLS failure)
    internal,           // a bug, reported rather than crashing
    count_
};
inline constexpr std::size_t close_cause_count = static_cast<std::size_t>(CloseCause::count_);
std::string_view to_string(CloseCause cause) noexcept;
// The cause behind a fatal ERROR the server sends.
CloseCause close_cause_for(ErrorCode code) noexcept;

enum class Transport : std::uint8_t { tcp, tls, unix_socket, websocket, websocket_tls, count_ };
inline constexpr std::size_t transport_count = static_cast<std::size_t>(Transport::count_);
std::string_view to_string(Transport transport) noexcept;

// A Prometheus histogram over fixed bounds (seconds), plain counts.
class Histogram {
public:
    static constexpr std::size_t max_bounds = 16;

    // `bounds`: ascending upper bounds, at most max_bounds; they must outlive it.
    explicit Histogram(const std::vector<double>& bounds) noexcept : bounds_(&bounds) {}

    void observe(double seconds) noexcept {
        std::size_t i = 0;
        while (i < bounds_->size() && seconds > (*bounds_)[i]) ++i;
        ++buckets_[i];  // buckets_[size()] is +Inf
        sum_ += seconds;
        ++count_;
    }
    void add(const Histogram& other) noexcept {
        for (std::size_t i = 0; i < buckets_.size(); ++i) buckets_[i] += other.buckets_[i];
        sum_ += other.sum_;
        count_ += other.count_;
    }

    const std::vector<double>& bounds() const noexcept { return *bounds_; }
    std::uint64_t bucket(std::size_t i) const noexcept { return buckets_[i]; }  // not cumulative
    double sum() const noexcept { return sum_; }
    std::uint64_t count() const noexcept { return count_; }

private:
    const std::vector<double>* bounds_;
    std::array<std::uint64_t, max_bounds + 1> buckets_{};
    double sum_ = 0;
    std::uint64_t count_ = 0;
};

// The bucket bounds, in seconds.
const std::vector<double>& detection_time_bounds();  // 0.1 s .. 120 s: heartbeat settings
const std::vector<double>& loop_lag_bounds();        // 0.1 ms .. 5 s
const std::vector<double>& flush_latency_bounds();   // 10 us .. 1 s

// One shard's counts. Written and read on that shard's thread only.
// What web_files.hpp answers a plain HTTP request with: pulsechat_web_responses_total's codes.
inline constexpr std::array<int, 3> web_response_codes{200, 404, 405};

struct ShardMetrics {
    std::array<std::uint64_t, transport_count> accepted{};  // the hub shard's accept loops
    std::array<std::uint64_t, transport_count> finished{};  // sessions over (on their own shard)
    std::array<std::uint64_t, close_cause_count> closed{};
    std::uint64_t frames_in = 0;       // whole frames decoded
    std::uint64_t bytes_in = 0;        // bytes read from sockets (TLS: decrypted)
    std::uint64_t bytes_out = 0;       // bytes handed to sockets (TLS: before encryption)
    std::uint64_t writes = 0;          // socket writes (sendmsg, SSL_write)
    std::uint64_t deliveries = 0;      // frames queued for a member (DELIVER, PRESENCE, ...)
    std::uint64_t rate_limited = 0;    // requests dropped by the rate limiter
    std::uint64_t expiries_averted = 0;
    // Plain HTTP answers on the WebSocket ports (the web client's files), by
    // status, in the order of web_response_codes.
    std::array<std::uint64_t, web_response_codes.size()> web_responses{};
    void count_web_response(int status) noexcept {
        for (std::size_t i = 0; i < web_response_codes.size(); ++i)
            if (web_response_codes[i] == status) ++web_responses[i];
    }
    // A gauge, filled in by the scrape (the sum over the shard's sessions),
    // not kept up to date on the per-message path.
    std::uint64_t queued_bytes = 0;
    Histogram detection{detection_time_bounds()};    // last frame -> heartbeat expiry
    Histogram loop_lag{loop_lag_bounds()};           // how late the shard's tick fired
    Histogram flush_latency{flush_latency_bounds()}; // first frame queued -> handed to the socket

    void add(const ShardMetrics& other) noexcept;
};

// With --cluster: the cluster broker's counts (ClusterBroker::stats()), for
// the pulsechat_cluster_* metrics. Plain numbers, so that rendering them
// needs no NATS.
struct ClusterGauges {
    // Every SAY handed to JetStream ends acked or failed; until then it is unacked.
    std::uint64_t acked = 0;       // acknowledged as stored
    std::uint64_t duplicates = 0;  // ... of which JetStream said duplicate (a retry stored once)
    std::uint64_t retried = 0;     // publishes sent again after a timeout or an error
    std::uint64_t failed = 0;      // given up on; the sender got an ERROR
    std::uint64_t refused = 0;     // refused at once: the cluster was unavailable
    std::uint64_t live = 0;        // messages from the live subjects
    std::uint64_t fetched = 0;     // messages fetched to load rooms or fill gaps
    std::uint64_t gaps = 0;        // live messages that did not link to the last one known
    std::uint64_t missed = 0;      // messages_missed notices: members told messages never came
    std::uint64_t reconnects = 0;  // reconnects to NATS
    std::uint64_t epoch_changes = 0;  // times the stream was found new (every room's history gone)
    std::uint64_t unacked = 0;     // publishes in flight now
    std::uint64_t rooms = 0;       // rooms this node follows now
};

// What a scrape shows besides the shards' counts: values read on the hub shard.
struct ServerGauges {
    std::string version;
    std::uint64_t rooms = 0;
    std::uint64_t members = 0;         // room memberships, summed over rooms
    std::uint64_t nicks = 0;           // logged-in sessions
    std::uint64_t queued_bytes_peak = 0;
    std::uint64_t resumes_full = 0;    // resumed with every missed message replayed
    std::uint64_t resumes_gap = 0;     // resumed, but some missed messages were gone
    std::uint64_t resumes_epoch = 0;   // the room's epoch changed: history could not be trusted
    std::uint64_t messages_published = 0;
    std::uint64_t auth_failures = 0;
    std::uint64_t lockouts = 0;
    std::uint64_t bugs = 0;
    bool ready = true;                 // accepting (false once a drain began)
    double start_time_seconds = 0;     // since the Unix epoch
    std::optional<ClusterGauges> cluster;  // with --cluster only
};

// The Prometheus text exposition (format 0.0.4) of `shards` (one per shard,
// in shard order) and `gauges`.
std::string render_metrics(const std::vector<ShardMetrics>& shards, const ServerGauges& gauges);

}  // namespace chat
