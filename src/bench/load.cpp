#include "chat/bench/load.hpp"

#include <netinet/in.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <cstring>
#include <deque>
#include <memory>
#include <mutex>
#include <random>
#include <span>
#include <thread>
#include <vector>

#include <asio.hpp>
#include <fmt/format.h>

#include "chat/bench/proc.hpp"
#include "chat/bench/tls_stream.hpp"
#include "chat/bench/wire.hpp"
#include "chat/bench/ws_client.hpp"
#include "chat/proto/protocol.hpp"
#include "chat/common/tls_client_context.hpp"

namespace chat::bench {

std::optional<Proto> parse_proto(std::string_view name) {
    if (name == "chat") return Proto::chat;
    if (name == "nats") return Proto::nats;
    if (name == "redis") return Proto::redis;
    return std::nullopt;
}

std::string_view to_string(Proto proto) {
    switch (proto) {
        case Proto::chat: return "chat";
        case Proto::nats: return "nats";
        case Proto::redis: return "redis";
    }
    return "?";
}

std::uint16_t default_port(Proto proto) {
    switch (proto) {
        case Proto::chat: return 7000;
        case Proto::nats: return 4222;
        case Proto::redis: return 6379;
    }
    return 0;
}

std::string validate(const BenchConfig& c) {
    if (c.connections < 1) return "--connections must be at least 1";
    if (c.rooms < 1) return "--rooms must be at least 1";
    if (c.rooms > c.connections) return "--rooms must not exceed --connections: every room needs a member";
    if (!c.idle && c.publishers < 1) return "--publishers must be at least 1 (or use --idle)";
    if (!c.idle && c.publishers * c.rooms > c.connections)
        return fmt::format("--publishers {} in each of {} rooms needs at least {} connections", c.publishers, c.rooms,
                           c.publishers * c.rooms);
    if (c.size < stamp_size)
        return fmt::format("--size must be at least {}: the text carries a {}-byte stamp", stamp_size, stamp_size);
    if (c.size > 60'000) return "--size must be at most 60000 (every server's default frame limit)";
    if (c.rate < 0 || !std::isfinite(c.rate)) return "--rate must be 'max' or a positive number";
    if (c.window < 1) return "--window must be at least 1";
    if (c.threads < 1 || c.threads > 64) return "--threads must be between 1 and 64";
    if (c.connect_concurrency < 1) return "--connect-concurrency must be at least 1";
    if (c.duration.count() <= 0 && c.count == 0) return "--duration must be positive (or give --count)";
    for (const auto port : c.ports)
        if (port == 0) return "--port must be between 1 and 65535";
    if (c.publishers_on_first && c.ports.size() < 2) return "--publishers-on-first needs more than one --port";
    if (c.publishers_on_first && c.idle) return "--publishers-on-first goes with publishers, not --idle";
    if (!c.tls && (c.tls_insecure || !c.tls_ca.empty())) return "--ca and --insecure go with --tls";
    if (c.ws && c.proto != Proto::chat) return "--ws goes with --proto chat";
    if (c.ws && (c.ws_path.empty() || c.ws_path.front() != '/' ||
                 c.ws_path.find_first_of(" \r\n") != std::string::npos))
        return "--ws-path must start with '/' and hold no spaces";
#if !PULSECHAT_HAVE_OPENSSL
    if (c.tls) return "--tls: this chat_bench was built without TLS (meson option tls)";
#endif
    return {};
}

namespace {

using Clock = std::chrono::steady_clock;
using tcp = asio::ip::tcp;

std::int64_t now_ns() {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch()).count();
}

enum class Phase : int { connecting, running, done };

// Counters a worker owns and the controller reads: the worker keeps plain
// copies and stores them here after every read batch, so the hot path pays
// no atomic read-modify-write.
struct alignas(64) WorkerCounters {
    std::atomic<std::uint64_t> ready{0};
    std::atomic<std::uint64_t> failed{0};
    std::atomic<std::uint64_t> received{0};
    std::atomic<std::uint64_t> measured_received{0};
    std::atomic<std::uint64_t> published{0};
    std::atomic<std::uint64_t> measured_published{0};
    std::atomic<std::uint64_t> expected{0};
    std::atomic<std::uint64_t> disconnects{0};
    std::atomic<std::uint64_t> errors{0};
    std::atomic<std::uint64_t> bytes_read{0};
    std::atomic<std::uint64_t> reads{0};
    std::atomic<std::int64_t> last_measured_rx_ns{0};
    std::atomic<std::uint64_t> interval_max_ns{0};
    std::atomic<bool> publishers_done{false};
};

struct LocalCounters {
    std::uint64_t received = 0;
    std::uint64_t measured_received = 0;
    std::uint64_t published = 0;
    std::uint64_t measured_published = 0;
    std::uint64_t expected = 0;
    std::uint64_t bytes_read = 0;
    std::uint64_t reads = 0;
    std::int64_t last_measured_rx_ns = 0;
    std::uint64_t interval_max_ns = 0;
    std::uint64_t heartbeats = 0;
    std::uint64_t pongs = 0;
    std::int64_t max_heartbeat_lag_ns = 0;
};

class Worker;
struct Member;

// Run-wide state: settings, the phase the controller set, every worker.
struct Shared {
    explicit Shared(const BenchConfig& c) : cfg(c) {}

    const BenchConfig& cfg;
    std::vector<tcp::endpoint> servers;  // by port index: a member's port_index picks its node
    std::vector<asio::ip::address_v4> sources;
    std::vector<std::string> room_names;
    std::vector<std::uint32_t> room_members;
    std::vector<std::uint32_t> room_publishers;
    std::atomic<int> phase{static_cast<int>(Phase::connecting)};
    std::atomic<std::int64_t> measure_start_ns{INT64_MAX};
    std::atomic<bool> stop_publishing{false};
    std::uint64_t max_outstanding = 0;
    double rate_per_publisher = 0;
    std::size_t publishers_total = 0;
    std::vector<std::unique_ptr<Worker>> workers;
#if PULSECHAT_HAVE_OPENSSL
    std::shared_ptr<TlsContext> tls;  // set with --tls; shared by every link
#endif

    std::mutex error_mutex;
    std::string first_error;

    bool done() const { return phase.load(std::memory_order_relaxed) == static_cast<int>(Phase::done); }
    void note_error(const std::string& text) {
        std::lock_guard lock(error_mutex);
        if (first_error.empty()) first_error = text;
    }
    std::uint64_t outstanding() const;
};

// One TCP connection to the server and its protocol state.
class Link {
public:
    Link(Worker& worker, Member& member, bool publish_only, std::size_t global_index);

    void start_connect();
    void flush();
    void close();
    void send_heartbeat_if_due(std::int64_t now);

    std::string out_;  // appended to while a write is in flight
    bool open_ = false;
    bool ready_ = false;
    bool dirty_ = false;

private:
    void on_connect(const asio::error_code& ec);
    void begin();  // connected (and, with --tls, handshaken): the protocol's first words
    void start_read();
    // Where the next read goes: the chat decoder's space, or the text protocols' bytes.
    asio::mutable_buffer read_space();
    bool tls() const noexcept;
    void on_read(const asio::error_code& ec, std::size_t n);
    void on_write(const asio::error_code& ec);
    void fail(const std::string& reason);
    void became_ready();
    void read_chat();
    void read_nats();
    void read_resp();
    // --ws: the upgrade on `stream` (the socket, or TLS over it), then begin().
    template <class Stream> void ws_upgrade(Stream& stream);
    template <class Stream> void ws_read_answer(Stream& stream);
    // --ws: filters the last read's n bytes (at read_space_) in place; returns
    // the pulsechat bytes left at their front. Queues a pong for a ping.
    std::size_t ws_filter(std::size_t n);

    Worker& worker_;
    Member& member_;
    const bool publish_only_;  // redis: the connection PUBLISH goes through
    const std::size_t global_index_;
    tcp::socket socket_;
#if PULSECHAT_HAVE_OPENSSL
    std::unique_ptr<TlsStream> tls_;  // with --tls: socket_ moved into it once connected
    std::string nats_info_;  // NATS over TLS: the INFO line said in the clear before the handshake
    bool nats_info_seen_ = false;
#endif
    Decoder decoder_;
    std::span<std::uint8_t> read_space_;  // what the pending read reads into (decoder_.prepare)
    ByteBuffer text_in_;
    // --ws: the server's frames, this connection's key and mask, and masked
    // pongs waiting for the next write (sent ahead of the data).
    std::unique_ptr<ws::Reader> ws_;
    std::string ws_key_;
    std::array<std::uint8_t, 4> ws_mask_{};
    std::string ws_control_;
    std::string writing_;
    bool write_busy_ = false;
    bool failed_ = false;
    std::size_t read_chunk_ = 2048;
    std::int64_t last_tx_ns_ = 0;
    std::int64_t heartbeat_interval_ns_ = 0;
};

// A room member: one user, receiving everything said in its room, maybe also publishing.
struct Member {
    std::uint32_t index = 0;
    std::uint32_t room = 0;
    std::uint32_t room_members = 0;
    std::int32_t slot = -1;  // publisher slot in the room, -1 when not publishing
    std::uint32_t publisher_number = 0;  // among all publishers: places it in the rate schedule
    std::uint32_t port_index = 0;  // which of --port it connects to (its redis publish link too)
    std::string nick;
    std::unique_ptr<Link> link;
    std::unique_ptr<Link> pub_link;  // redis publishers only
    std::vector<std::uint32_t> next_seq;  // per publisher slot of the room

    // As publisher.
    std::uint32_t sent = 0;
    std::uint32_t acked = 0;  // own messages received back
    std::uint64_t quota = UINT64_MAX;  // measured messages to send with --count
    std::uint64_t measured_sent = 0;
    std::int64_t rate_start_ns = 0;
    bool queued = false;  // in the worker's list of publishers with room in their window

    // As receiver.
    std::uint64_t gaps = 0;
    std::uint64_t duplicates = 0;
    std::uint64_t misrouted = 0;
    bool dead = false;

    Link& publish_link() { return pub_link ? *pub_link : *link; }
};

// One io_context and its thread, owning a share of the members.
class Worker {
public:
    Worker(Shared& shared, unsigned id)
        : shared_(shared), id_(id), ctx_(1), guard_(asio::make_work_guard(ctx_)), tick_(ctx_) {
        make_text(Stamp{}, text_, shared.cfg.size);
        scratch_ = Deliver{};
        say_ = Say{};
    }

    void add(std::unique_ptr<Member> member) {
        links_.push_back(member->link.get());
        if (member->pub_link) links_.push_back(member->pub_link.get());
        if (member->slot >= 0) publishers_.push_back(member.get());
        members_.push_back(std::move(member));
    }

    void start_thread() {
        thread_ = std::thread([this] { ctx_.run(); });
        asio::post(ctx_, [this] {
            for (std::size_t i = 0; i < shared_.cfg.connect_concurrency; ++i) connect_next();
            schedule_tick();
        });
    }

    void begin_publishing(std::int64_t start_ns) {
        asio::post(ctx_, [this, start_ns] {
            publishing_ = true;
            for (Member* m : publishers_) {
                // Publishers are spread evenly over one period, not bunched at its start.
                const double period_ns = shared_.rate_per_publisher > 0 ? 1e9 / shared_.rate_per_publisher : 0;
                const auto gi = static_cast<double>(m->publisher_number);
                m->rate_start_ns = start_ns + static_cast<std::int64_t>(
                                                  period_ns * gi / static_cast<double>(std::max<std::size_t>(
                                                                       1, shared_.publishers_total)));
                if (!m->queued) {
                    m->queued = true;
                    want_.push_back(m);
                }
            }
            now_ns_ = now_ns();
            if (shared_.rate_per_publisher == 0) pump();
        });
    }

    void stop_and_join() {
        asio::post(ctx_, [this] {
            // A tick already queued would re-arm the timer: the flag stops it.
            stopping_ = true;
            tick_.cancel();
            for (Link* l : links_) l->close();
            guard_.reset();
            // Handlers still queued are destroyed with the io_context, never run.
            ctx_.stop();
        });
        if (thread_.joinable()) thread_.join();
    }

    // --- called on this worker's thread ---

    void on_link_ready() {
        counters_.ready.store(counters_.ready.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
        --connecting_;
        connect_next();
    }

    void on_link_failed(bool was_ready, const std::string& reason) {
        shared_.note_error(reason);
        if (!was_ready) {
            counters_.failed.store(counters_.failed.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
            --connecting_;
            connect_next();
        } else {
            counters_.disconnects.store(counters_.disconnects.load(std::memory_order_relaxed) + 1,
                                        std::memory_order_relaxed);
        }
    }

    void on_error_reply(const std::string& text) {
        shared_.note_error(text);
        counters_.errors.store(counters_.errors.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
    }

    // A message text arrived for member `m`.
    void on_text(Member& m, std::string_view text) {
        ++local_.received;
        const auto stamp = read_stamp(text);
        if (!stamp || stamp->room != m.room || stamp->slot >= m.next_seq.size()) {
            ++m.misrouted;
            return;
        }
        auto& next = m.next_seq[stamp->slot];
        if (stamp->seq == next) {
            ++next;
        } else if (stamp->seq > next) {
            m.gaps += stamp->seq - next;
            next = stamp->seq + 1;
        } else {
            ++m.duplicates;
        }
        if (static_cast<std::int64_t>(stamp->send_ns) >= measure_start_ns_) {
            const auto latency =
                static_cast<std::uint64_t>(std::max<std::int64_t>(0, now_ns_ - static_cast<std::int64_t>(stamp->send_ns)));
            latency_.record(latency);
            if (latency > local_.interval_max_ns) local_.interval_max_ns = latency;
            ++local_.measured_received;
            local_.last_measured_rx_ns = now_ns_;
        }
        if (static_cast<std::int32_t>(stamp->slot) == m.slot) {
            ++m.acked;
            if (!m.queued && publishing_) {
                m.queued = true;
                want_.push_back(&m);
            }
        }
    }

    // After a read batch: publish counters, refill windows.
    void after_read(std::size_t bytes) {
        local_.bytes_read += bytes;
        ++local_.reads;
        store_counters();
        if (!want_.empty() && shared_.rate_per_publisher == 0) pump();
    }

    void count_heartbeat(std::int64_t lag_ns) {
        ++local_.heartbeats;
        local_.max_heartbeat_lag_ns = std::max(local_.max_heartbeat_lag_ns, lag_ns);
    }
    void count_pong() { ++local_.pongs; }

    void mark_dirty(Link& link) {
        if (!link.dirty_) {
            link.dirty_ = true;
            dirty_.push_back(&link);
        }
    }

    std::int64_t now() const { return now_ns_; }
    void set_now(std::int64_t t) { now_ns_ = t; }
    // Before a read batch: the time it arrived, and whether measuring has begun.
    void refresh(std::int64_t t) {
        now_ns_ = t;
        measure_start_ns_ = shared_.measure_start_ns.load(std::memory_order_relaxed);
    }
    Shared& shared() { return shared_; }
    asio::io_context& context() { return ctx_; }
    Message& scratch() { return scratch_; }
    const WorkerCounters& counters() const { return counters_; }
    const LocalCounters& local() const { return local_; }
    const LatencyHistogram& latency() const { return latency_; }
    const std::vector<std::unique_ptr<Member>>& members() const { return members_; }
    void reset_interval_max() { counters_.interval_max_ns.store(0, std::memory_order_relaxed); }

private:
    void connect_next() {
        while (connecting_ < shared_.cfg.connect_concurrency && next_connect_ < links_.size()) {
            ++connecting_;
            links_[next_connect_++]->start_connect();
        }
    }

    void store_counters() {
        constexpr auto relaxed = std::memory_order_relaxed;
        counters_.received.store(local_.received, relaxed);
        counters_.measured_received.store(local_.measured_received, relaxed);
        counters_.published.store(local_.published, relaxed);
        counters_.measured_published.store(local_.measured_published, relaxed);
        counters_.expected.store(local_.expected, relaxed);
        counters_.bytes_read.store(local_.bytes_read, relaxed);
        counters_.reads.store(local_.reads, relaxed);
        counters_.last_measured_rx_ns.store(local_.last_measured_rx_ns, relaxed);
        if (local_.interval_max_ns > counters_.interval_max_ns.load(relaxed))
            counters_.interval_max_ns.store(local_.interval_max_ns, relaxed);
        local_.interval_max_ns = 0;
    }

    bool may_publish(const Member& m) const {
        return !m.dead && m.measured_sent < m.quota;
    }

    void publish_one(Member& m) {
        const Stamp stamp{static_cast<std::uint64_t>(now_ns_), m.room, static_cast<std::uint32_t>(m.slot), m.sent};
        write_stamp(stamp, text_);
        Link& link = m.publish_link();
        const std::string& room = shared_.room_names[m.room];
        switch (shared_.cfg.proto) {
            case Proto::chat: {
                auto& say = std::get<Say>(say_);
                say.room.assign(room);
                say.text.assign(text_);
                encode(say_, link.out_);
                break;
            }
            case Proto::nats: nats_pub(link.out_, room, text_); break;
            case Proto::redis: resp_command(link.out_, {"PUBLISH", room, text_}); break;
        }
        mark_dirty(link);
        ++m.sent;
        ++local_.published;
        local_.expected += m.room_members;
        if (now_ns_ >= measure_start_ns_) {
            ++m.measured_sent;
            ++local_.measured_published;
        }
    }

    void flush_dirty() {
        for (Link* l : dirty_) {
            l->dirty_ = false;
            l->flush();
        }
        dirty_.clear();
    }

    // Max-rate mode: every publisher with room in its window sends one
    // message per round, while the deliveries in flight stay under the cap.
    void pump() {
        if (!publishing_ || shared_.stop_publishing.load(std::memory_order_relaxed)) return;
        measure_start_ns_ = shared_.measure_start_ns.load(std::memory_order_relaxed);
        store_counters();
        const std::uint64_t outstanding = shared_.outstanding();
        std::uint64_t budget = outstanding < shared_.max_outstanding ? shared_.max_outstanding - outstanding : 0;
        const std::size_t window = shared_.cfg.window;
        while (!want_.empty()) {
            Member* m = want_.front();
            if (!may_publish(*m) || m->sent - m->acked >= window) {
                want_.pop_front();
                m->queued = false;
                continue;
            }
            if (budget < m->room_members) break;
            want_.pop_front();
            publish_one(*m);
            budget -= m->room_members;
            if (may_publish(*m) && m->sent - m->acked < window)
                want_.push_back(m);
            else
                m->queued = false;
        }
        flush_dirty();
        store_counters();
        check_publishers_done();
    }

    // Fixed-rate mode: each publisher sends what its schedule says is due.
    void pace() {
        if (!publishing_ || shared_.stop_publishing.load(std::memory_order_relaxed)) return;
        const double rate = shared_.rate_per_publisher;
        for (Member* m : publishers_) {
            if (!may_publish(*m)) continue;
            const std::int64_t elapsed = now_ns_ - m->rate_start_ns;
            if (elapsed < 0) continue;
            const auto due = static_cast<std::uint64_t>(static_cast<double>(elapsed) * rate / 1e9) + 1;
            while (m->sent < due && may_publish(*m)) publish_one(*m);
        }
        flush_dirty();
        store_counters();
        check_publishers_done();
    }

    void check_publishers_done() {
        if (shared_.cfg.count == 0 || counters_.publishers_done.load(std::memory_order_relaxed)) return;
        for (Member* m : publishers_)
            if (!m->dead && m->measured_sent < m->quota) return;
        counters_.publishers_done.store(true, std::memory_order_relaxed);
    }

    void schedule_tick() {
        if (stopping_) return;
        const auto period = publishing_ ? std::chrono::milliseconds(1) : std::chrono::milliseconds(20);
        tick_.expires_after(period);
        tick_.async_wait([this](const asio::error_code& ec) {
            if (ec) return;
            on_tick();
            schedule_tick();
        });
    }

    void on_tick() {
        now_ns_ = now_ns();
        measure_start_ns_ = shared_.measure_start_ns.load(std::memory_order_relaxed);
        if (now_ns_ - last_heartbeat_scan_ns_ >= 20'000'000) {
            last_heartbeat_scan_ns_ = now_ns_;
            for (Link* l : links_) l->send_heartbeat_if_due(now_ns_);
        }
        if (publishing_) {
            if (shared_.rate_per_publisher > 0)
                pace();
            else if (!want_.empty())
                pump();
            check_publishers_done();
        }
        store_counters();
    }

    Shared& shared_;
    [[maybe_unused]] unsigned id_;
    asio::io_context ctx_;
    asio::executor_work_guard<asio::io_context::executor_type> guard_;
    asio::steady_timer tick_;
    std::thread thread_;
    // Declared after the io_context: the sockets go first.
    std::vector<std::unique_ptr<Member>> members_;
    std::vector<Link*> links_;
    std::vector<Member*> publishers_;
    std::deque<Member*> want_;
    std::vector<Link*> dirty_;
    std::size_t next_connect_ = 0;
    std::size_t connecting_ = 0;
    bool publishing_ = false;
    bool stopping_ = false;
    std::int64_t now_ns_ = 0;
    std::int64_t measure_start_ns_ = INT64_MAX;
    std::int64_t last_heartbeat_scan_ns_ = 0;
    Message scratch_;
    Message say_;
    std::string text_;
    LocalCounters local_;
    LatencyHistogram latency_;
    WorkerCounters counters_;
};

std::uint64_t Shared::outstanding() const {
    std::uint64_t expected = 0, received = 0;
    for (const auto& w : workers) {
        expected += w->counters().expected.load(std::memory_order_relaxed);
        received += w->counters().received.load(std::memory_order_relaxed);
    }
    return expected > received ? expected - received : 0;
}

// --- Link ---

Link::Link(Worker& worker, Member& member, bool publish_only, std::size_t global_index)
    : worker_(worker),
      member_(member),
      publish_only_(publish_only),
      global_index_(global_index),
      socket_(worker.context()) {}

void Link::start_connect() {
    Shared& shared = worker_.shared();
    asio::error_code ec;
    socket_.open(tcp::v4(), ec);
    if (!ec && !shared.sources.empty()) {
#ifdef IP_BIND_ADDRESS_NO_PORT
        // Leave the port to connect(): it then only has to be unique per
        // (source, destination) pair, not per source address.
        const int one = 1;
        ::setsockopt(socket_.native_handle(), IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
#endif
        socket_.bind(tcp::endpoint(shared.sources[global_index_ % shared.sources.size()], 0), ec);
    }
    if (ec) {
        fail("cannot open a socket: " + ec.message());
        return;
    }
    socket_.async_connect(shared.servers[member_.port_index], [this](const asio::error_code& e) { on_connect(e); });
}

void Link::on_connect(const asio::error_code& ec) {
    if (ec) {
        fail("connect failed: " + ec.message());
        return;
    }
    asio::error_code ignored;
    socket_.set_option(tcp::no_delay(true), ignored);
    socket_.non_blocking(true, ignored);  // on_read's extra reads must not block
#if PULSECHAT_HAVE_OPENSSL
    Shared& shared = worker_.shared();
    if (shared.tls && shared.cfg.proto == Proto::nats && !nats_info_seen_) {
        // NATS (before 2.10's handshake_first) says INFO in the clear and
        // then expects the client to start TLS: read that one line first.
        // The server sends nothing else until the handshake, so nothing is
        // read past it.
        asio::async_read_until(socket_, asio::dynamic_buffer(nats_info_), "\r\n",
                               [this](const asio::error_code& e, std::size_t) {
                                   if (e) {
                                       fail("reading NATS INFO before TLS failed: " + e.message());
                                       return;
                                   }
                                   nats_info_seen_ = true;
                                   std::string().swap(nats_info_);
                                   on_connect({});
                               });
        return;
    }
    if (shared.tls) {
        try {
            tls_ = std::make_unique<TlsStream>(std::move(socket_), *shared.tls, shared.cfg.host,
                                               !shared.cfg.tls_insecure);
        } catch (const std::exception& e) {
            fail(std::string("TLS: ") + e.what());
            return;
        }
        tls_->async_handshake([this](const asio::error_code& e) {
            if (e) {
                fail("TLS handshake failed: " + describe_tls_failure(e, tls_->native_handle()));
                return;
            }
            if (worker_.shared().cfg.ws)
                ws_upgrade(*tls_);
            else
                begin();
        });
        return;
    }
#endif
    if (worker_.shared().cfg.ws)
        ws_upgrade(socket_);
    else
        begin();
}

template <class Stream>
void Link::ws_upgrade(Stream& stream) {
    const Shared& shared = worker_.shared();
    // A fresh key and mask for each connection, from a generator seeded once per thread.
    thread_local std::mt19937_64 random{std::random_device{}()};
    std::array<std::uint8_t, 16> nonce{};
    for (std::size_t i = 0; i < nonce.size(); i += 8) {
        const std::uint64_t r = random();
        for (std::size_t b = 0; b < 8; ++b) nonce[i + b] = static_cast<std::uint8_t>(r >> (8 * b));
    }
    const std::uint64_t m = random();
    for (std::size_t b = 0; b < 4; ++b) ws_mask_[b] = static_cast<std::uint8_t>(m >> (8 * b));
    ws_key_ = ws::make_key(nonce);
    // The server's binary messages may batch many frames: bound them well above any --max-frame.
    ws_ = std::make_unique<ws::Reader>(std::uint64_t{1} << 26);
    const auto port = shared.servers[member_.port_index].port();
    writing_ = ws::upgrade_request(fmt::format("{}:{}", shared.cfg.host, port), shared.cfg.ws_path, ws_key_,
                                   "pulsechat");
    asio::async_write(stream, asio::buffer(writing_), [this, &stream](const asio::error_code& ec, std::size_t) {
        writing_.clear();
        if (ec) {
            if (ec != asio::error::operation_aborted) fail("writing the WebSocket upgrade failed: " + ec.message());
            return;
        }
        ws_read_answer(stream);
    });
}

template <class Stream>
void Link::ws_read_answer(Stream& stream) {
    auto space = text_in_.prepare(1024);
    stream.async_read_some(asio::buffer(space.data(), space.size()), [this, &stream](const asio::error_code& ec,
                                                                                      std::size_t n) {
        if (ec) {
            if (ec != asio::error::operation_aborted)
                fail(ec == asio::error::eof ? std::string("connection closed during the WebSocket upgrade")
                                            : "reading the WebSocket upgrade's answer failed: " + ec.message());
            return;
        }
        text_in_.commit(n);
        const auto answer = ws::check_upgrade_response(text_in_.data(), ws_key_, "pulsechat");
        if (answer.status == ws::UpgradeResult::Status::need_more) {
            ws_read_answer(stream);
            return;
        }
        if (answer.status == ws::UpgradeResult::Status::refused) {
            fail("WebSocket upgrade: " + answer.reason);
            return;
        }
        // Whatever came after the 101 is already WebSocket.
        const std::string_view rest = text_in_.data().substr(answer.head_size);
        if (!rest.empty()) {
            read_space_ = decoder_.prepare(rest.size());
            std::memcpy(read_space_.data(), rest.data(), rest.size());
            decoder_.commit(ws_filter(rest.size()));
        }
        text_in_.consume(text_in_.data().size());
        if (ws_->closed()) {
            fail(ws_->failed() ? "WebSocket: " + ws_->error()
                               : fmt::format("WebSocket close {} right after the upgrade", ws_->close_code()));
            return;
        }
        begin();
    });
}

std::size_t Link::ws_filter(std::size_t n) {
    const auto r = ws_->filter(read_space_.first(n));
    if (r.ping) ws::append_masked(ws_control_, ws::op_pong, ws_->ping(), ws_mask_);
    return r.data;
}

void Link::begin() {
    open_ = true;
    worker_.set_now(now_ns());
    Shared& shared = worker_.shared();
    const std::string& room = shared.room_names[member_.room];
    switch (shared.cfg.proto) {
        case Proto::chat:
            encode(Hello{member_.nick, shared.cfg.token, {}}, out_);
            break;
        case Proto::nats:
            nats_connect(out_, shared.cfg.token);
            nats_sub(out_, room, 1);
            nats_ping(out_);
            break;
        case Proto::redis:
            if (!shared.cfg.token.empty()) resp_command(out_, {"AUTH", shared.cfg.token});
            if (publish_only_)
                resp_command(out_, {"PING"});
            else
                resp_command(out_, {"SUBSCRIBE", room});
            break;
    }
    flush();
    start_read();
}

asio::mutable_buffer Link::read_space() {
    if (worker_.shared().cfg.proto == Proto::chat) {
        read_space_ = decoder_.prepare(read_chunk_);
        return asio::buffer(read_space_.data(), read_space_.size());
    }
    auto span = text_in_.prepare(read_chunk_);
    return asio::buffer(span.data(), span.size());
}

bool Link::tls() const noexcept {
#if PULSECHAT_HAVE_OPENSSL
    return tls_ != nullptr;
#else
    return false;
#endif
}

void Link::start_read() {
#if PULSECHAT_HAVE_OPENSSL
    if (tls_) {
        tls_->async_read_when_readable(read_space(),
                                       [this](const asio::error_code& ec, std::size_t n) { on_read(ec, n); });
        return;
    }
#endif
    socket_.async_read_some(read_space(), [this](const asio::error_code& ec, std::size_t n) { on_read(ec, n); });
}

void Link::on_read(const asio::error_code& ec, std::size_t n) {
    if (ec) {
        if (ec == asio::error::eof)
            fail("connection closed by the server");
        else if (ec != asio::error::operation_aborted)
            fail("read failed: " + ec.message());
        return;
    }
    // A read that filled the buffer leaves more waiting: read on (without
    // going back to the event loop) up to max_reads_per_turn. Otherwise every
    // connection gets the same one buffer per turn, and a member that once fell
    // behind stays behind by the same amount for the rest of the run, which
    // shows up as a latency tail that is the generator's, not the server's.
    constexpr int max_reads_per_turn = 8;
    for (int reads = 1;; ++reads) {
        worker_.refresh(now_ns());
        const bool filled = n == read_chunk_;
        // Small buffers for idle connections, large ones where traffic is heavy.
        if (filled && read_chunk_ < 64 * 1024) read_chunk_ *= 2;
        switch (worker_.shared().cfg.proto) {
            case Proto::chat:
                decoder_.commit(ws_ ? ws_filter(n) : n);
                read_chat();
                if (open_ && ws_ && ws_->closed()) {
                    fail(ws_->failed() ? "WebSocket: " + ws_->error()
                                       : fmt::format("WebSocket close {} from the server: {}", ws_->close_code(),
                                                     ws_->close_reason()));
                    return;
                }
                flush();  // a pong, when a ping came
                break;
            case Proto::nats:
                text_in_.commit(n);
                read_nats();
                break;
            case Proto::redis:
                text_in_.commit(n);
                read_resp();
                break;
        }
        if (!open_) return;
        worker_.after_read(n);
        if (!open_) return;
        // TLS: a read returns at most one record, filled or not: read on
        // until OpenSSL and the socket have nothing more.
        if ((!filled && !tls()) || reads == max_reads_per_turn) break;
        asio::error_code read_ec;
        const auto space = read_space();
#if PULSECHAT_HAVE_OPENSSL
        if (tls_)
            n = tls_->read_now(space.data(), space.size(), read_ec);
        else
#endif
            n = socket_.read_some(space, read_ec);
        if (read_ec == asio::error::would_block || read_ec == asio::error::try_again) break;
        if (read_ec) {
            fail(read_ec == asio::error::eof ? std::string("connection closed by the server")
                                             : "read failed: " + read_ec.message());
            return;
        }
    }
    start_read();
}

void Link::read_chat() {
    Message& message = worker_.scratch();
    Shared& shared = worker_.shared();
    for (;;) {
        const auto status = decoder_.next(message);
        if (status == Decoder::Status::need_more) return;
        if (status == Decoder::Status::error) {
            fail(fmt::format("undecodable frame from the server: {}", to_string(decoder_.error())));
            return;
        }
        if (auto* d = std::get_if<Deliver>(&message)) {
            if (!d->history && ready_) worker_.on_text(member_, d->text);
        } else if (auto* w = std::get_if<Welcome>(&message)) {
            heartbeat_interval_ns_ = static_cast<std::int64_t>(w->heartbeat_interval_ms) * 1'000'000;
            if (w->max_frame != 0) decoder_.set_max_payload(w->max_frame + max_frame_overhead);
            encode(Join{shared.room_names[member_.room], false, {}}, out_);
            flush();
        } else if (auto* j = std::get_if<Joined>(&message)) {
            if (!ready_ && j->room == shared.room_names[member_.room]) became_ready();
        } else if (auto* p = std::get_if<Ping>(&message)) {
            encode(Pong{p->nonce}, out_);
            worker_.count_pong();
            flush();
        } else if (auto* e = std::get_if<Error>(&message)) {
            const auto text = fmt::format("ERROR {} ({}): {}", static_cast<int>(e->code), chat::to_string(e->code),
                                          e->reason);
            worker_.on_error_reply(text);
            if (e->fatal) {
                fail(text);
                return;
            }
        } else if (auto* b = std::get_if<Bye>(&message)) {
            fail("BYE: " + b->reason);
            return;
        }
        // PRESENCE and the rest carry nothing the benchmark measures.
    }
}

void Link::read_nats() {
    NatsEvent event;
    for (;;) {
        std::size_t consumed = 0;
        const auto status = chat::bench::parse_nats(text_in_.data(), event, consumed);
        if (status == ParseStatus::need_more) return;
        if (status == ParseStatus::error) {
            fail(fmt::format("unparsable NATS line: {}", event.text));
            return;
        }
        switch (event.kind) {
            case NatsEvent::Kind::msg:
                if (ready_) worker_.on_text(member_, event.payload);
                break;
            case NatsEvent::Kind::ping:
                nats_pong(out_);
                worker_.count_pong();
                flush();
                break;
            case NatsEvent::Kind::pong:
                if (!ready_) became_ready();
                break;
            case NatsEvent::Kind::err: {
                const auto text = fmt::format("-ERR {}", event.text);
                worker_.on_error_reply(text);
                // Every -ERR but a permissions violation closes the connection.
                if (event.text.find("Permissions") == std::string_view::npos) {
                    text_in_.consume(consumed);
                    fail(text);
                    return;
                }
                break;
            }
            case NatsEvent::Kind::info:
            case NatsEvent::Kind::ok:
                break;
        }
        text_in_.consume(consumed);
    }
}

void Link::read_resp() {
    RespEvent event;
    for (;;) {
        std::size_t consumed = 0;
        const auto status = chat::bench::parse_resp(text_in_.data(), event, consumed);
        if (status == ParseStatus::need_more) return;
        if (status == ParseStatus::error) {
            fail("unparsable RESP reply");
            return;
        }
        switch (event.kind) {
            case RespEvent::Kind::message:
                if (ready_ && !publish_only_) worker_.on_text(member_, event.payload);
                break;
            case RespEvent::Kind::subscribe:
                if (!ready_ && !publish_only_) became_ready();
                break;
            case RespEvent::Kind::simple:
                if (!ready_ && publish_only_ && event.text == "PONG") became_ready();
                break;
            case RespEvent::Kind::error:
                worker_.on_error_reply(fmt::format("-{}", event.text));
                break;
            case RespEvent::Kind::integer:  // PUBLISH's receiver count
            case RespEvent::Kind::other:
                break;
        }
        text_in_.consume(consumed);
    }
}

void Link::became_ready() {
    ready_ = true;
    worker_.on_link_ready();
}

void Link::flush() {
    if (write_busy_ || !open_) return;
    if (ws_) {
        // Pongs first, then everything queued as one masked binary message:
        // the server reads any number of pulsechat frames from one message.
        if (out_.empty() && ws_control_.empty()) return;
        writing_.swap(ws_control_);  // (writing_ is empty between writes: this moves, keeping both capacities)
        if (!out_.empty()) {
            ws::append_masked(writing_, ws::op_binary, out_, ws_mask_);
            out_.clear();
        }
    } else {
        if (out_.empty()) return;
        writing_.swap(out_);
    }
    write_busy_ = true;
    last_tx_ns_ = worker_.now();
#if PULSECHAT_HAVE_OPENSSL
    if (tls_) {
        asio::async_write(*tls_, asio::buffer(writing_),
                          [this](const asio::error_code& ec, std::size_t) { on_write(ec); });
        return;
    }
#endif
    asio::async_write(socket_, asio::buffer(writing_), [this](const asio::error_code& ec, std::size_t) { on_write(ec); });
}

void Link::on_write(const asio::error_code& ec) {
    write_busy_ = false;
    writing_.clear();
    if (ec) {
        if (ec != asio::error::operation_aborted) fail("write failed: " + ec.message());
        return;
    }
    flush();
}

void Link::send_heartbeat_if_due(std::int64_t now) {
    if (!open_ || heartbeat_interval_ns_ == 0) return;
    const std::int64_t quiet = now - last_tx_ns_;
    if (quiet < heartbeat_interval_ns_) return;
    worker_.count_heartbeat(quiet - heartbeat_interval_ns_);
    encode(Heartbeat{}, out_);
    flush();
    // A write still in flight sends it later; the clock starts now regardless.
    last_tx_ns_ = now;
}

void Link::close() {
    open_ = false;
    asio::error_code ignored;
#if PULSECHAT_HAVE_OPENSSL
    if (tls_) {
        tls_->lowest_layer().close(ignored);
        return;
    }
#endif
    socket_.close(ignored);
}

void Link::fail(const std::string& reason) {
    close();
    if (failed_ || worker_.shared().done()) return;
    failed_ = true;
    const bool was_ready = ready_;
    member_.dead = true;
    worker_.on_link_failed(was_ready, reason);
}

// --- the controller ---

struct Totals {
    std::uint64_t ready = 0, failed = 0, received = 0, measured_received = 0, published = 0, measured_published = 0,
                  expected = 0, disconnects = 0, errors = 0, bytes_read = 0, reads = 0, interval_max_ns = 0;
    std::int64_t last_measured_rx_ns = 0;
    bool publishers_done = true;
};

Totals totals(const Shared& shared) {
    Totals t;
    constexpr auto relaxed = std::memory_order_relaxed;
    for (const auto& w : shared.workers) {
        const auto& c = w->counters();
        t.ready += c.ready.load(relaxed);
        t.failed += c.failed.load(relaxed);
        t.received += c.received.load(relaxed);
        t.measured_received += c.measured_received.load(relaxed);
        t.published += c.published.load(relaxed);
        t.measured_published += c.measured_published.load(relaxed);
        t.expected += c.expected.load(relaxed);
        t.disconnects += c.disconnects.load(relaxed);
        t.errors += c.errors.load(relaxed);
        t.bytes_read += c.bytes_read.load(relaxed);
        t.reads += c.reads.load(relaxed);
        t.interval_max_ns = std::max(t.interval_max_ns, c.interval_max_ns.load(relaxed));
        t.last_measured_rx_ns = std::max(t.last_measured_rx_ns, c.last_measured_rx_ns.load(relaxed));
        t.publishers_done = t.publishers_done && c.publishers_done.load(relaxed);
    }
    return t;
}

double seconds_between(std::int64_t from_ns, std::int64_t to_ns) { return static_cast<double>(to_ns - from_ns) / 1e9; }

asio::ip::address_v4 offset_address(const asio::ip::address_v4& base, std::size_t offset) {
    return asio::ip::address_v4(base.to_uint() + static_cast<std::uint32_t>(offset));
}

}  // namespace

BenchResult run_bench(const BenchConfig& cfg, const ProgressFn& progress) {
    BenchResult result;
    Shared shared(cfg);

    // --- the servers' addresses and the source addresses ---
    {
        asio::io_context resolve_ctx;
        tcp::resolver resolver(resolve_ctx);
        std::vector<std::uint16_t> ports = cfg.ports;
        if (ports.empty()) ports.push_back(default_port(cfg.proto));
        for (const auto port : ports) {
            auto results = resolver.resolve(tcp::v4(), cfg.host, std::to_string(port));
            shared.servers.push_back(*results.begin());
        }
    }
    const std::size_t port_count = shared.servers.size();
    result.links_per_port.assign(port_count, 0);
    const bool loopback = shared.servers.front().address().is_loopback();
    const std::size_t extra_links = cfg.proto == Proto::redis && !cfg.idle ? cfg.publishers * cfg.rooms : 0;
    const std::size_t link_count = cfg.connections + extra_links;
    std::size_t source_count = cfg.source_addrs;
    if (source_count == 0 && loopback) source_count = std::max<std::size_t>(1, (link_count + 16383) / 16384);
    if (source_count > 0) {
        const auto base = asio::ip::make_address_v4(cfg.source_base);
        for (std::size_t i = 0; i < source_count; ++i) shared.sources.push_back(offset_address(base, i));
    }

    // --- rooms, members, publishers ---
    const std::string prefix =
        cfg.nick_prefix.empty() ? fmt::format("b{}x", static_cast<unsigned>(::getpid()) % 100000) : cfg.nick_prefix;
    shared.room_members.assign(cfg.rooms, 0);
    shared.room_publishers.assign(cfg.rooms, 0);
    for (std::size_t r = 0; r < cfg.rooms; ++r) {
        switch (cfg.proto) {
            case Proto::chat: shared.room_names.push_back(fmt::format("bench-{}", r)); break;
            case Proto::nats: shared.room_names.push_back(fmt::format("bench.{}", r)); break;
            case Proto::redis: shared.room_names.push_back(fmt::format("bench:{}", r)); break;
        }
    }
    for (std::size_t i = 0; i < cfg.connections; ++i) ++shared.room_members[i % cfg.rooms];
    const std::size_t publishers_per_room = cfg.idle ? 0 : cfg.publishers;
    shared.publishers_total = publishers_per_room * cfg.rooms;
    shared.rate_per_publisher =
        cfg.rate > 0 && shared.publishers_total > 0 ? cfg.rate / static_cast<double>(shared.publishers_total) : 0;
    std::uint64_t window_bound = 0;  // deliveries in flight that the windows allow
    for (std::size_t r = 0; r < cfg.rooms; ++r)
        window_bound += static_cast<std::uint64_t>(publishers_per_room) * cfg.window * shared.room_members[r];
    shared.max_outstanding = cfg.max_outstanding != 0 ? cfg.max_outstanding : 2 * window_bound;

#if PULSECHAT_HAVE_OPENSSL
    if (cfg.tls) shared.tls = make_client_context(TlsClientOptions{cfg.tls_ca, {}, {}, cfg.tls_insecure});
#endif
    for (unsigned t = 0; t < cfg.threads; ++t) shared.workers.push_back(std::make_unique<Worker>(shared, t));
    std::size_t global_link = 0;
    std::size_t publisher_number = 0;
    std::vector<std::unique_ptr<Member>> made;
    for (std::size_t i = 0; i < cfg.connections; ++i) {
        auto m = std::make_unique<Member>();
        Worker& worker = *shared.workers[i % cfg.threads];
        m->index = static_cast<std::uint32_t>(i);
        m->room = static_cast<std::uint32_t>(i % cfg.rooms);
        m->room_members = shared.room_members[m->room];
        m->nick = fmt::format("{}{}", prefix, i);
        // Member i is the (i / rooms)-th of its room; the first ones publish.
        const std::size_t rank = i / cfg.rooms;
        if (rank < publishers_per_room) {
            m->slot = static_cast<std::int32_t>(rank);
            if (cfg.count > 0) {
                const std::uint64_t base = cfg.count / shared.publishers_total;
                m->quota = base + (publisher_number < cfg.count % shared.publishers_total ? 1 : 0);
            }
            m->publisher_number = static_cast<std::uint32_t>(publisher_number);
            ++publisher_number;
        }
        m->next_seq.assign(publishers_per_room, 0);
        // The k-th member of each room goes to port k mod ports, so that every
        // room spans the nodes (dealing by i would put a whole room on one node
        // whenever the number of rooms is a multiple of the number of ports).
        m->port_index = static_cast<std::uint32_t>(rank % port_count);
        if (cfg.publishers_on_first && m->slot >= 0) m->port_index = 0;
        m->link = std::make_unique<Link>(worker, *m, false, global_link++);
        ++result.links_per_port[m->port_index];
        if (cfg.proto == Proto::redis && m->slot >= 0) {
            m->pub_link = std::make_unique<Link>(worker, *m, true, global_link++);
            ++result.links_per_port[m->port_index];
        }
        worker.add(std::move(m));
    }
    result.links = global_link;

    // --- connect ---
    // Every --server-pid that can be read; the k-th serves the k-th port.
    for (std::size_t k = 0; k < cfg.server_pids.size(); ++k) {
        const int pid = cfg.server_pids[k];
        if (pid <= 0) continue;
        const auto before = sample_process(pid);
        if (!before) continue;
        ServerSample s;
        s.pid = pid;
        if (k < port_count) {
            s.port = shared.servers[k].port();
            s.links = result.links_per_port[k];
        }
        s.rss_base_kib = s.rss_peak_kib = before->rss_kib;
        result.servers.push_back(s);
        result.server_rss_base_kib += before->rss_kib;
    }
    result.have_server = !result.servers.empty();
    result.server_rss_peak_kib = result.server_rss_base_kib;
    // The peak of the sum: all processes sampled at (nearly) the same moment.
    auto sample_peak = [&] {
        if (!result.have_server) return;
        std::uint64_t sum = 0;
        for (auto& server : result.servers) {
            if (auto s = sample_process(server.pid)) {
                server.rss_peak_kib = std::max(server.rss_peak_kib, s->rss_kib);
                sum += s->rss_kib;
            }
        }
        result.server_rss_peak_kib = std::max(result.server_rss_peak_kib, sum);
    };
    auto sample_all = [&] {
        std::vector<std::optional<ProcSample>> samples;
        for (const auto& server : result.servers) samples.push_back(sample_process(server.pid));
        return samples;
    };

    const std::int64_t connect_start = now_ns();
    for (auto& w : shared.workers) w->start_thread();
    auto report = [&](std::string_view phase, std::int64_t phase_start, Totals& last, std::int64_t& last_ns) {
        const std::int64_t t = now_ns();
        Totals now = totals(shared);
        Progress p;
        p.phase = phase;
        p.elapsed_s = seconds_between(phase_start, t);
        p.ready = now.ready;
        p.links = result.links;
        const double dt = std::max(1e-9, seconds_between(last_ns, t));
        p.published_per_s = static_cast<double>(now.published - last.published) / dt;
        p.delivered_per_s = static_cast<double>(now.received - last.received) / dt;
        p.outstanding = now.expected > now.received ? now.expected - now.received : 0;
        p.max_latency_ns = now.interval_max_ns;
        for (auto& w : shared.workers) w->reset_interval_max();
        p.disconnects = now.disconnects;
        p.errors = now.errors;
        last = now;
        last_ns = t;
        if (progress) progress(p);
    };

    Totals last{};
    std::int64_t last_report = connect_start;
    const auto poll = std::chrono::milliseconds(20);
    for (;;) {
        std::this_thread::sleep_for(poll);
        const Totals t = totals(shared);
        if (t.ready == result.links || t.failed > 0) break;
        if (now_ns() - connect_start > cfg.connect_timeout.count() * 1'000'000) {
            shared.note_error(fmt::format("only {} of {} connections ready after {} s", t.ready, result.links,
                                          cfg.connect_timeout.count() / 1000));
            result.aborted = true;
            break;
        }
        if (now_ns() - last_report >= 1'000'000'000) report("connect", connect_start, last, last_report);
    }
    result.connect_s = seconds_between(connect_start, now_ns());
    {
        const Totals t = totals(shared);
        if (t.failed > 0) {
            result.aborted = true;
            shared.note_error(fmt::format("{} of {} connections failed", t.failed, result.links));
        }
    }
    sample_peak();
    if (progress && !result.aborted) {
        Progress p;
        p.phase = "ready";
        p.elapsed_s = result.connect_s;
        p.ready = p.links = result.links;
        progress(p);
    }

    auto finish = [&] {
        shared.phase.store(static_cast<int>(Phase::done));
        for (auto& w : shared.workers) w->stop_and_join();
    };
    if (result.aborted) {
        finish();
        result.first_error = shared.first_error;
        return result;
    }

    // --- warm up, measure, drain ---
    std::int64_t measure_start = 0, send_end = 0;
    double self_cpu_start = 0, self_cpu_end = 0;
    std::uint64_t bytes_at_start = 0, reads_at_start = 0, received_at_start = 0;
    std::vector<std::optional<ProcSample>> server_start, server_end;
    auto begin_measuring = [&] {
        measure_start = now_ns();
        self_cpu_start = self_cpu_seconds();
        const Totals at_start = totals(shared);
        bytes_at_start = at_start.bytes_read;
        reads_at_start = at_start.reads;
        received_at_start = at_start.received;
        if (result.have_server) server_start = sample_all();
        shared.measure_start_ns.store(measure_start, std::memory_order_relaxed);
    };
    auto end_measuring = [&] {
        send_end = now_ns();
        self_cpu_end = self_cpu_seconds();
        if (result.have_server) server_end = sample_all();
    };

    last = totals(shared);
    last_report = now_ns();
    if (cfg.idle) {
        begin_measuring();
        const std::int64_t end = measure_start + cfg.duration.count() * 1'000'000;
        std::int64_t next_sample = 0;
        while (now_ns() < end) {
            std::this_thread::sleep_for(poll);
            if (now_ns() >= next_sample) {
                sample_peak();
                next_sample = now_ns() + 500'000'000;
            }
            if (now_ns() - last_report >= 1'000'000'000) report("idle", measure_start, last, last_report);
        }
        end_measuring();
    } else {
        shared.phase.store(static_cast<int>(Phase::running));
        const std::int64_t start = now_ns();
        if (cfg.warmup.count() == 0) begin_measuring();
        for (auto& w : shared.workers) w->begin_publishing(start);
        const std::int64_t warm_end = start + cfg.warmup.count() * 1'000'000;
        std::int64_t next_sample = 0;
        for (;;) {
            std::this_thread::sleep_for(cfg.count > 0 ? std::chrono::milliseconds(2) : poll);
            const std::int64_t t = now_ns();
            if (measure_start == 0 && t >= warm_end) begin_measuring();
            if (t >= next_sample) {
                sample_peak();
                next_sample = t + 500'000'000;
            }
            if (measure_start != 0) {
                if (cfg.count > 0) {
                    if (totals(shared).publishers_done) break;
                } else if (t - measure_start >= cfg.duration.count() * 1'000'000) {
                    break;
                }
            }
            if (t - last_report >= 1'000'000'000)
                report(measure_start == 0 ? "warmup" : "measure", measure_start == 0 ? start : measure_start, last,
                       last_report);
        }
        shared.stop_publishing.store(true);
        end_measuring();

        // Drain: wait until every expected delivery arrived, or nothing moved for drain_timeout.
        std::uint64_t last_received = totals(shared).received;
        std::int64_t last_move = now_ns();
        for (;;) {
            std::this_thread::sleep_for(std::chrono::milliseconds(2));
            const Totals t = totals(shared);
            if (t.received >= t.expected) break;
            if (t.received != last_received) {
                last_received = t.received;
                last_move = now_ns();
            } else if (now_ns() - last_move > cfg.drain_timeout.count() * 1'000'000) {
                break;
            }
            if (now_ns() - last_report >= 1'000'000'000) report("drain", send_end, last, last_report);
        }
    }
    sample_peak();
    finish();

    // --- results: the workers have stopped, their state is ours to read ---
    const Totals t = totals(shared);
    result.first_error = shared.first_error;
    result.published = t.measured_published;
    result.delivered = t.measured_received;
    result.published_total = t.published;
    result.delivered_total = t.received;
    result.expected_total = t.expected;
    result.disconnects = t.disconnects;
    result.errors = t.errors;
    result.measured_s = seconds_between(measure_start, send_end);
    const std::int64_t delivery_end = std::max(t.last_measured_rx_ns, send_end);
    result.delivery_window_s = cfg.idle ? result.measured_s : seconds_between(measure_start, delivery_end);
    if (result.measured_s > 0) result.published_per_s = static_cast<double>(result.published) / result.measured_s;
    if (result.delivery_window_s > 0) {
        result.delivered_per_s = static_cast<double>(result.delivered) / result.delivery_window_s;
        result.mb_per_s = result.delivered_per_s * static_cast<double>(cfg.size) / 1e6;
    }
    if (result.measured_s > 0) result.bench_cpu_pct = 100.0 * (self_cpu_end - self_cpu_start) / result.measured_s;
    if (result.have_server && result.measured_s > 0 && server_start.size() == result.servers.size() &&
        server_end.size() == result.servers.size()) {
        std::uint64_t rss_sum = 0;
        for (std::size_t k = 0; k < result.servers.size(); ++k) {
            ServerSample& s = result.servers[k];
            const auto& from = server_start[k];
            const auto& to = server_end[k];
            if (!from || !to) continue;
            s.cpu_pct = 100.0 * (to->cpu_s - from->cpu_s) / result.measured_s;
            s.rss_kib = to->rss_kib;
            s.rss_peak_kib = std::max(s.rss_peak_kib, to->rss_kib);
            if (s.links > 0 && to->rss_kib >= s.rss_base_kib)
                s.rss_per_conn_kib =
                    static_cast<double>(to->rss_kib - s.rss_base_kib) / static_cast<double>(s.links);
            result.server_cpu_pct += s.cpu_pct;
            rss_sum += to->rss_kib;
        }
        result.server_rss_kib = rss_sum;
        result.server_rss_peak_kib = std::max(result.server_rss_peak_kib, rss_sum);
        if (result.links > 0 && rss_sum >= result.server_rss_base_kib)
            result.rss_per_conn_kib = static_cast<double>(rss_sum - result.server_rss_base_kib) /
                                      static_cast<double>(result.links);
    }

    // Who published what, to hold every receiver's count against.
    std::vector<std::vector<std::uint32_t>> sent(cfg.rooms, std::vector<std::uint32_t>(publishers_per_room, 0));
    std::int64_t max_lag_ns = 0;
    for (const auto& w : shared.workers) {
        result.latency.merge(w->latency());
        result.heartbeats_sent += w->local().heartbeats;
        result.pings_answered += w->local().pongs;
        max_lag_ns = std::max(max_lag_ns, w->local().max_heartbeat_lag_ns);
        for (const auto& m : w->members())
            if (m->slot >= 0) sent[m->room][static_cast<std::size_t>(m->slot)] = m->sent;
    }
    result.max_heartbeat_lag_ms = static_cast<double>(max_lag_ns) / 1e6;
    if (result.delivery_window_s > 0)
        result.wire_mb_per_s = static_cast<double>(t.bytes_read - bytes_at_start) / 1e6 / result.delivery_window_s;
    if (t.received > received_at_start)
        result.reads_per_delivery =
            static_cast<double>(t.reads - reads_at_start) / static_cast<double>(t.received - received_at_start);
    for (const auto& w : shared.workers) {
        for (const auto& m : w->members()) {
            result.duplicates += m->duplicates;
            result.misrouted += m->misrouted;
            result.lost += m->gaps;
            for (std::size_t s = 0; s < m->next_seq.size(); ++s) {
                const std::uint32_t expected = sent[m->room][s];
                if (expected > m->next_seq[s]) result.lost += expected - m->next_seq[s];
            }
        }
    }
    return result;
}

}  // namespace chat::bench
