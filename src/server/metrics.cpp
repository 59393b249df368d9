#include "chat/server/metrics.hpp"

#include <initializer_list>
#include <utility>

#include <fmt/format.h>

namespace chat {

std::string_view to_string(CloseCause cause) noexcept {
    switch (cause) {
    case CloseCause::client_quit: return "client_quit";
    case CloseCause::peer_closed: return "peer_closed";
    case CloseCause::heartbeat_timeout: return "heartbeat_timeout";
    case CloseCause::handshake_timeout: return "handshake_timeout";
    case CloseCause::slow_consumer: return "slow_consumer";
    case CloseCause::protocol_error: return "protocol_error";
    case CloseCause::rate_limit: return "rate_limit";
    case CloseCause::auth_failed: return "auth_failed";
    case CloseCause::replaced: return "replaced";
    case CloseCause::refused: return "refused";
    case CloseCause::shutdown: return "shutdown";
    case CloseCause::connection_error: return "connection_error";
    case CloseCause::internal: return "internal";
    case CloseCause::count_: break;
    }
    return "unknown";
}

CloseCause close_cause_for(ErrorCode code) noexcept {
    switch (code) {
    case ErrorCode::handshake_timeout: return CloseCause::handshake_timeout;
    case ErrorCode::rate_limited: return CloseCause::rate_limit;
    case ErrorCode::auth_failed: return CloseCause::auth_failed;
    case ErrorCode::replaced: return CloseCause::replaced;
    case ErrorCode::shutting_down: return CloseCause::shutdown;
    case ErrorCode::server_full:
    case ErrorCode::too_many_connections_from_address: return CloseCause::refused;
    case ErrorCode::slow_consumer: return CloseCause::slow_consumer;
    case ErrorCode::heartbeat_timeout: return CloseCause::heartbeat_timeout;
    case ErrorCode::internal: return CloseCause::internal;
    default: return CloseCause::protocol_error;
    }
}

std::string_view to_string(Transport transport) noexcept {
    switch (transport) {
    case Transport::tcp: return "tcp";
    case Transport::tls: return "tls";
    case Transport::unix_socket: return "unix";
    case Transport::websocket: return "websocket";
    case Transport::websocket_tls: return "websocket_tls";
    case Transport::count_: break;
    }
    return "unknown";
}

const std::vector<double>& detection_time_bounds() {
    static const std::vector<double> bounds{0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 15, 20, 30, 60, 120};
    return bounds;
}

const std::vector<double>& loop_lag_bounds() {
    static const std::vector<double> bounds{0.0001, 0.0005, 0.001, 0.005, 0.01, 0.025, 0.05,
                                            0.1,    0.25,   0.5,   1,     2.5,   5};
    return bounds;
}

const std::vector<double>& flush_latency_bounds() {
    static const std::vector<double> bounds{0.00001, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025,
                                            0.005,   0.01,    0.025,  0.05,    0.1,    0.25,  1};
    return bounds;
}

void ShardMetrics::add(const ShardMetrics& other) noexcept {
    for (std::size_t i = 0; i < accepted.size(); ++i) accepted[i] += other.accepted[i];
    for (std::size_t i = 0; i < finished.size(); ++i) finished[i] += other.finished[i];
    for (std::size_t i = 0; i < closed.size(); ++i) closed[i] += other.closed[i];
    frames_in += other.frames_in;
    bytes_in += other.bytes_in;
    bytes_out += other.bytes_out;
    writes += other.writes;
    deliveries += other.deliveries;
    rate_limited += other.rate_limited;
    expiries_averted += other.expiries_averted;
    for (std::size_t i = 0; i < web_responses.size(); ++i) web_responses[i] += other.web_responses[i];
    queued_bytes += other.queued_bytes;
    detection.add(other.detection);
    loop_lag.add(other.loop_lag);
    flush_latency.add(other.flush_latency);
}

namespace {

// Prometheus' float format: shortest round-trip, +Inf spelled as it wants.
std::string number(double v) { return fmt::format("{}", v); }

void header(std::string& out, std::string_view name, std::string_view type, std::string_view help) {
    fmt::format_to(std::back_inserter(out), "# HELP {} {}\n# TYPE {} {}\n", name, help, name, type);
}

void scalar(std::string& out, std::string_view name, std::string_view type, std::string_view help,
            std::uint64_t value) {
    header(out, name, type, help);
    fmt::format_to(std::back_inserter(out), "{} {}\n", name, value);
}

// A metric with one label: a sample for each {label value, count}.
void labeled(std::string& out, std::string_view name, std::string_view type, std::string_view help,
             std::string_view label, std::initializer_list<std::pair<std::string_view, std::uint64_t>> samples) {
    header(out, name, type, help);
    for (const auto& [value, count] : samples)
        fmt::format_to(std::back_inserter(out), "{}{{{}=\"{}\"}} {}\n", name, label, value, count);
}

void histogram_lines(std::string& out, std::string_view name, std::string_view labels, const Histogram& h) {
    std::uint64_t cumulative = 0;
    const std::string sep = labels.empty() ? "" : ",";
    for (std::size_t i = 0; i < h.bounds().size(); ++i) {
        cumulative += h.bucket(i);
        fmt::format_to(std::back_inserter(out), "{}_bucket{{{}{}le=\"{}\"}} {}\n", name, labels, sep,
                       number(h.bounds()[i]), cumulative);
    }
    cumulative += h.bucket(h.bounds().size());
    fmt::format_to(std::back_inserter(out), "{}_bucket{{{}{}le=\"+Inf\"}} {}\n", name, labels, sep, cumulative);
    const std::string braces = labels.empty() ? "" : fmt::format("{{{}}}", labels);
    fmt::format_to(std::back_inserter(out), "{}_sum{} {}\n{}_count{} {}\n", name, braces, number(h.sum()), name,
                   braces, h.count());
}

}  // namespace

namespace {

// --cluster: the broker's publishes by outcome, the messages it got by
// source, and what it noticed (docs/METRICS.md, docs/CLUSTER.md).
void render_cluster(std::string& out, const ClusterGauges& c) {
    labeled(out, "pulsechat_cluster_publishes_total", "counter",
            "SAYs handed to JetStream, and what became of them: acked (stored; duplicate ones included), "
            "failed (given up, the sender told), refused (the cluster was unavailable).",
            "outcome", {{"acked", c.acked}, {"failed", c.failed}, {"refused", c.refused}});
    scalar(out, "pulsechat_cluster_publish_duplicates_total", "counter",
           "Acks that said duplicate: a retried publish JetStream had stored already (stored once).", c.duplicates);
    scalar(out, "pulsechat_cluster_publish_retries_total", "counter",
           "Publishes sent again after an ack timeout or an error.", c.retried);
    scalar(out, "pulsechat_cluster_publishes_in_flight", "gauge", "Publishes sent and not yet acked or given up.",
           c.unacked);
    labeled(out, "pulsechat_cluster_messages_received_total", "counter",
            "Stored messages this node received: from the live subjects, or fetched to load a room or fill a gap.",
            "source", {{"live", c.live}, {"fetched", c.fetched}});
    scalar(out, "pulsechat_cluster_gaps_total", "counter",
           "Live messages that did not link to the last one known: a gap to fill from the stream.", c.gaps);
    scalar(out, "pulsechat_cluster_messages_missed_total", "counter",
           "messages_missed notices: times a room's members here were told messages never came.", c.missed);
    scalar(out, "pulsechat_cluster_reconnects_total", "counter", "Reconnects to NATS.", c.reconnects);
    scalar(out, "pulsechat_cluster_epoch_changes_total", "counter",
           "Times the stream was found new (made again): every room's history was gone, its epoch changed.",
           c.epoch_changes);
    scalar(out, "pulsechat_cluster_rooms", "gauge", "Rooms this node follows in the stream now.", c.rooms);
}

}  // namespace

std::string render_metrics(const std::vector<ShardMetrics>& shards, const ServerGauges& g) {
    ShardMetrics total;
    for (const auto& s : shards) total.add(s);
    std::string out;
    out.reserve(16 * 1024);
    auto it = std::back_inserter(out);

    header(out, "pulsechat_build_info", "gauge", "Always 1; the version is a label.");
    fmt::format_to(it, "pulsechat_build_info{{version=\"{}\"}} 1\n", g.version);
    header(out, "pulsechat_start_time_seconds", "gauge", "When the server started, in seconds since the Unix epoch.");
    fmt::format_to(it, "pulsechat_start_time_seconds {}\n", number(g.start_time_seconds));
    scalar(out, "pulsechat_ready", "gauge", "1 while the server accepts connections, 0 once a drain began.",
           g.ready ? 1 : 0);

    header(out, "pulsechat_connections_open", "gauge", "Connections open now, by transport.");
    for (std::size_t t = 0; t < transport_count; ++t)
        fmt::format_to(it, "pulsechat_connections_open{{transport=\"{}\"}} {}\n",
                       to_string(static_cast<Transport>(t)),
                       // The shards are copied one after the other: a session
                       // may be seen finished but not yet accepted.
                       total.accepted[t] > total.finished[t] ? total.accepted[t] - total.finished[t] : 0);
    header(out, "pulsechat_connections_accepted_total", "counter", "Connections accepted, by transport.");
    for (std::size_t t = 0; t < transport_count; ++t)
        fmt::format_to(it, "pulsechat_connections_accepted_total{{transport=\"{}\"}} {}\n",
                       to_string(static_cast<Transport>(t)), total.accepted[t]);
    header(out, "pulsechat_sessions_closed_total", "counter", "Sessions ended, by reason.");
    for (std::size_t c = 0; c < close_cause_count; ++c)
        fmt::format_to(it, "pulsechat_sessions_closed_total{{reason=\"{}\"}} {}\n",
                       to_string(static_cast<CloseCause>(c)), total.closed[c]);

    scalar(out, "pulsechat_sessions", "gauge", "Sessions logged in (nicknames held).", g.nicks);
    scalar(out, "pulsechat_rooms", "gauge", "Rooms that exist now.", g.rooms);
    scalar(out, "pulsechat_room_members", "gauge", "Room memberships, summed over every room.", g.members);

    scalar(out, "pulsechat_frames_received_total", "counter", "Whole frames received from clients.", total.frames_in);
    scalar(out, "pulsechat_received_bytes_total", "counter", "Bytes read from client connections (TLS: decrypted).",
           total.bytes_in);
    scalar(out, "pulsechat_sent_bytes_total", "counter", "Bytes written to client connections (TLS: before encryption).",
           total.bytes_out);
    scalar(out, "pulsechat_socket_writes_total", "counter", "Socket writes (sendmsg calls, TLS record writes).",
           total.writes);
    scalar(out, "pulsechat_messages_published_total", "counter", "SAY and WHISPER messages accepted by the hub.",
           g.messages_published);
    scalar(out, "pulsechat_deliveries_total", "counter",
           "Frames queued for a room member: one per member per message, presence change or history replay.",
           total.deliveries);
    scalar(out, "pulsechat_rate_limited_total", "counter", "Requests dropped by the per-session rate limit.",
           total.rate_limited);

    labeled(out, "pulsechat_resumes_total", "counter", "Sessions resumed with a resume token, by outcome.", "outcome",
            {{"recovered", g.resumes_full}, {"missed", g.resumes_gap}, {"epoch_changed", g.resumes_epoch}});

    scalar(out, "pulsechat_auth_failures_total", "counter", "HELLOs refused for a missing or wrong access token.",
           g.auth_failures);
    scalar(out, "pulsechat_auth_lockouts_total", "counter", "Addresses locked out after repeated auth failures.",
           g.lockouts);
    scalar(out, "pulsechat_queued_bytes", "gauge",
           "Bytes held for peers now (queued and being written), summed over sessions.", total.queued_bytes);
    scalar(out, "pulsechat_queued_bytes_peak", "gauge",
           "The most bytes one session has held for its peer at once since the start (--queue-limit bounds it).",
           g.queued_bytes_peak);
    scalar(out, "pulsechat_expiries_averted_total", "counter",
           "Heartbeat expiries not carried out because the peer's bytes were waiting unread: the server was behind.",
           total.expiries_averted);
    header(out, "pulsechat_web_responses_total", "counter",
           "Plain HTTP answers on the WebSocket ports (the web client's files), by status code.");
    for (std::size_t i = 0; i < total.web_responses.size(); ++i)
        fmt::format_to(it, "pulsechat_web_responses_total{{code=\"{}\"}} {}\n", web_response_codes[i],
                       total.web_responses[i]);
    scalar(out, "pulsechat_handler_bugs_total", "counter", "Handlers that threw: bugs, logged and survived.", g.bugs);

    header(out, "pulsechat_dead_peer_detection_seconds", "histogram",
           "For each heartbeat timeout: the time from the peer's last frame to its expiry.");
    histogram_lines(out, "pulsechat_dead_peer_detection_seconds", "", total.detection);
    header(out, "pulsechat_flush_latency_seconds", "histogram",
           "From a frame queued for an idle session to its batch handed to the socket.");
    histogram_lines(out, "pulsechat_flush_latency_seconds", "", total.flush_latency);
    header(out, "pulsechat_event_loop_lag_seconds", "histogram",
           "How late each shard's 100 ms tick fired: a busy shard reads heartbeats late.");
    for (std::size_t s = 0; s < shards.size(); ++s)
        histogram_lines(out, "pulsechat_event_loop_lag_seconds", fmt::format("shard=\"{}\"", s), shards[s].loop_lag);
    if (g.cluster) render_cluster(out, *g.cluster);
    return out;
}

}  // namespace chat
