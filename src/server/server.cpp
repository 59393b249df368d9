#include "chat/server/server.hpp"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <stdexcept>

#include <asio/experimental/as_tuple.hpp>

#include "chat/common/logging.hpp"
#include "pulsechat_config.h"

namespace chat {
namespace {

thread_local std::size_t this_shard = static_cast<std::size_t>(-1);

std::string to_string(const asio::ip::tcp::endpoint& ep) {
    const auto address = ep.address();
    if (address.is_v6()) return "[" + address.to_string() + "]:" + std::to_string(ep.port());
    return address.to_string() + ":" + std::to_string(ep.port());
}

void log_loop_failure(const std::shared_ptr<spdlog::logger>& log, std::exception_ptr e) {
    if (!e) return;
    try {
        std::rethrow_exception(e);
    } catch (const std::exception& ex) {
        log->error("accept loop failed: {}", ex.what());
    }
}

// Whether a server listens on the Unix socket at `path`: only a refused
// connection proves the file stale.
bool unix_socket_in_use(const std::string& path) {
    const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) throw std::system_error(errno, std::generic_category(), "socket");
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::memcpy(addr.sun_path, path.c_str(), std::min(path.size(), sizeof addr.sun_path - 1));
    const int rc = ::connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof addr);
    const int error = errno;
    ::close(fd);
    if (rc == 0) return true;
    if (error == ECONNREFUSED || error == ENOENT) return false;
    throw std::runtime_error("cannot tell whether a server listens on '" + path + "': " + std::strerror(error));
}

}  // namespace

Server::Server(ServerConfig config)
    : config_(std::move(config)),
      shards_([&] {
          std::vector<std::unique_ptr<asio::io_context>> shards;
          for (unsigned i = 0; i < std::max(1u, config_.threads); ++i)
              shards.push_back(std::make_unique<asio::io_context>(1));
          return shards;
      }()),
      hub_context_(*shards_[0]),
      log_(server_log()),
      broker_(make_broker()),
      hub_(*broker_, *this, shards_.size(),
           HubLimits{config_.max_rooms_per_session, config_.max_frame, config_.queue_limit / 2, config_.presence_limit,
                     std::chrono::milliseconds(config_.cluster_dead_after)}),
      env_{config_, hub_, hub_context_.get_executor(), log_, PULSECHAT_VERSION, {}},
      access_(AuthLimits{config_.auth_max_failures, config_.auth_window, config_.auth_lockout}),
      signals_(hub_context_),
      drain_timer_(hub_context_),
      summary_timer_(hub_context_),
      watchdog_timer_(hub_context_),
      live_(shards_.size()) {
    start_time_ = std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
#if PULSECHAT_HAVE_CLUSTER
    if (cluster_ != nullptr) {
        directory_ = std::make_unique<ClusterDirectory>(*cluster_, std::chrono::milliseconds(config_.cluster_dead_after),
                                                        config_.cluster_replicas);
        hub_.set_directory(directory_.get());
    }
#endif
    for (auto& shard : shards_) {
        work_.push_back(asio::make_work_guard(*shard));
        env_.shard_metrics.push_back(std::make_unique<ShardMetrics>());
        ticks_.push_back(std::make_unique<asio::steady_timer>(*shard));
        ticks_stopped_.push_back(0);
        env_.flush_lists.push_back(
            std::make_unique<FlushList>(shard->get_executor(), &env_.shard_metrics.back()->flush_latency,
                                        std::chrono::steady_clock::duration(config_.tls_coalesce) / 4));
        env_.hub_gates.push_back(std::make_unique<HubGate>(shard->get_executor(), config_.hub_backlog));
    }
    env_.close_after_bug = [this](std::size_t shard, std::uint64_t id) {
        post(shard, [this, shard, id] {
            if (auto it = live_[shard].find(id); it != live_[shard].end())
                if (auto s = it->second.lock()) s->close_with_error(ErrorCode::internal, "internal error");
        });
    };
    env_.on_finished = [this](std::uint64_t id) { session_finished(this_shard, id); };
    // Writes to a peer that has gone must come back as EPIPE, never end the process.
    std::signal(SIGPIPE, SIG_IGN);
}

Server::~Server() { remove_unix_socket(); }

std::unique_ptr<Broker> Server::make_broker() {
    if (config_.cluster_servers.empty())
        return std::make_unique<LocalBroker>(config_.history, config_.history_memory);
#if PULSECHAT_HAVE_CLUSTER
    ClusterConfig cluster;
    cluster.servers = config_.cluster_servers;
    cluster.node_name = config_.node_name;
    cluster.history = config_.history;
    cluster.history_age = config_.history_age;
    cluster.replicas = config_.cluster_replicas;
    cluster.dead_after = config_.cluster_dead_after;
    auto broker = std::make_unique<ClusterBroker>(
        std::move(cluster), [this](std::function<void()> work) { asio::post(hub_context_, std::move(work)); }, log_);
    cluster_ = broker.get();
    return broker;
#else
    throw std::runtime_error("--cluster: this chat_server was built without the cluster broker (meson option "
                             "cluster, libnats-dev)");
#endif
}

std::size_t Server::current_shard() const noexcept { return this_shard; }

void Server::post(std::size_t shard, std::function<void()> work) { asio::post(*shards_[shard], std::move(work)); }

std::vector<asio::ip::tcp::endpoint> Server::listen() {
#if PULSECHAT_HAVE_CLUSTER
    // NATS first: a node that cannot reach its cluster does not take clients.
    if (cluster_ != nullptr) {
        cluster_->start();
        directory_->start();
    }
#endif
    const auto address = asio::ip::make_address(config_.bind);
    asio::ip::tcp::endpoint endpoint(address, config_.port);
    asio::ip::tcp::acceptor acceptor(hub_context_);
    acceptor.open(endpoint.protocol());
    acceptor.set_option(asio::socket_base::reuse_address(true));
    acceptor.bind(endpoint);
    acceptor.listen(asio::socket_base::max_listen_connections);
    acceptors_.push_back(std::move(acceptor));

    if (!config_.token_file.empty()) {
        if (auto problem = access_.load(config_.token_file); !problem.empty()) throw std::runtime_error(problem);
        env_.access = &access_;
    }
    if (config_.admin_port) {
#if PULSECHAT_HAVE_HTTP_PARSER
        const asio::ip::tcp::endpoint admin_at(asio::ip::make_address(config_.admin_bind), *config_.admin_port);
        AdminHandlers handlers;
        handlers.metrics = [this] { return scrape(); };
        handlers.ready = [this] { return !shutting_down_; };
        try {
            admin_ = std::make_unique<AdminListener>(hub_context_, admin_at, std::move(handlers), log_,
                                                     std::chrono::milliseconds(config_.handshake_timeout));
        } catch (const std::system_error& e) {
            throw std::runtime_error("cannot listen on " + to_string(admin_at) + " (admin): " + e.code().message());
        }
#else
        throw std::runtime_error("--admin-port: this chat_server was built without the admin listener (meson "
                                 "option admin, libhttp-parser-dev)");
#endif
    }
    if (config_.tls_port || config_.wss_port) {
#if PULSECHAT_HAVE_OPENSSL
        tls_ = std::make_unique<TlsServerContext>(
            TlsServerFiles{config_.tls_cert, config_.tls_key, config_.tls_client_ca});
        if (config_.tls_port) tls_acceptor_.emplace(bind_extra({address, *config_.tls_port}, "tls"));
#else
        throw std::runtime_error(std::string(config_.tls_port ? "--tls-port" : "--wss-port") +
                                 ": this chat_server was built without TLS (meson option tls)");
#endif
    }
    if (config_.ws_port || config_.wss_port) {
#if PULSECHAT_HAVE_HTTP_PARSER
        if (config_.ws_port) ws_acceptor_.emplace(bind_extra({address, *config_.ws_port}, "websocket"));
        if (config_.wss_port) wss_acceptor_.emplace(bind_extra({address, *config_.wss_port}, "websocket tls"));
#else
        throw std::runtime_error("--ws-port/--wss-port: this chat_server was built without the HTTP parser (meson "
                                 "option admin, libhttp-parser-dev), which the WebSocket handshake needs");
#endif
    }
    if (!config_.unix_path.empty()) listen_unix();

    std::vector<asio::ip::tcp::endpoint> bound;
    for (auto& a : acceptors_) bound.push_back(a.local_endpoint());
    return bound;
}

std::optional<asio::ip::tcp::endpoint> Server::admin_endpoint() const {
#if PULSECHAT_HAVE_HTTP_PARSER
    if (admin_) return admin_->local_endpoint();
#endif
    return std::nullopt;
}

ServerGauges Server::gauges() const {
    ServerGauges g;
    g.version = PULSECHAT_VERSION;
    g.rooms = hub_.room_count();
    g.members = hub_.member_count();
    g.nicks = hub_.nick_count();
    g.queued_bytes_peak = env_.counters.peak_queued_bytes.load(std::memory_order_relaxed);
    const auto& hub = hub_.stats();
    g.messages_published = hub.published;
    g.resumes_full = hub.resumes_full;
    g.resumes_gap = hub.resumes_gap;
    g.resumes_epoch = hub.resumes_epoch;
    const auto auth = access_.stats();
    g.auth_failures = auth.failures;
    g.lockouts = auth.lockouts;
    g.bugs = env_.counters.bugs.load(std::memory_order_relaxed);
    g.ready = !shutting_down_;
    g.start_time_seconds = start_time_;
#if PULSECHAT_HAVE_CLUSTER
    if (cluster_ != nullptr) {
        const auto c = cluster_->stats();
        g.cluster = ClusterGauges{c.acked,   c.duplicates, c.retried,    c.failed,         c.refused,
                                  c.live,    c.fetched,    c.gaps,       c.missed,         c.reconnects,
                                  c.epoch_changes, c.unacked, c.rooms};
    }
#endif
    return g;
}

asio::awaitable<std::string> Server::scrape() {
    // Each shard copies its own counts on its own thread: nothing on the
    // per-message path is shared or locked. The hub's come first, so that a
    // session accepted there is counted before its end on another shard.
    // The queued bytes are summed over the shard's sessions right there: a
    // walk per scrape rather than bookkeeping per message.
    const auto copy = [this](std::size_t shard) {
        ShardMetrics m = *env_.shard_metrics[shard];
        for (const auto& [id, weak] : live_[shard])
            if (auto s = weak.lock()) m.queued_bytes += s->queued_bytes();
        return m;
    };
    std::vector<ShardMetrics> copies;
    copies.reserve(shards_.size());
    for (std::size_t shard = 0; shard < shards_.size(); ++shard) {
        if (shard == 0) {
            copies.push_back(copy(0));
            continue;
        }
        copies.push_back(co_await asio::co_spawn(
            *shards_[shard], [&copy, shard]() -> asio::awaitable<ShardMetrics> { co_return copy(shard); },
            asio::use_awaitable));
    }
    co_return render_metrics(copies, gauges());
}

// Every 100 ms on each shard: how late the timer fired is how long a ready
// handler (a heartbeat to read) waits there.
void Server::tick(std::size_t shard) {
    auto& timer = *ticks_[shard];
    timer.expires_after(std::chrono::milliseconds(100));
    timer.async_wait([this, shard](const asio::error_code& ec) {
        if (ec || ticks_stopped_[shard]) return;  // finish() stops it
        const auto late = std::chrono::steady_clock::now() - ticks_[shard]->expiry();
        env_.shard_metrics[shard]->loop_lag.observe(std::max(0.0, std::chrono::duration<double>(late).count()));
        tick(shard);
    });
}

asio::ip::tcp::acceptor Server::bind_extra(const asio::ip::tcp::endpoint& endpoint, const char* what) {
    try {
        asio::ip::tcp::acceptor acceptor(hub_context_);
        acceptor.open(endpoint.protocol());
        acceptor.set_option(asio::socket_base::reuse_address(true));
        acceptor.bind(endpoint);
        acceptor.listen(asio::socket_base::max_listen_connections);
        return acceptor;
    } catch (const std::system_error& e) {
        throw std::runtime_error("cannot listen on " + to_string(endpoint) + " (" + what + "): " + e.code().message());
    }
}

std::optional<asio::ip::tcp::endpoint> Server::ws_endpoint() const {
    if (!ws_acceptor_) return std::nullopt;
    return ws_acceptor_->local_endpoint();
}

std::optional<asio::ip::tcp::endpoint> Server::wss_endpoint() const {
    if (!wss_acceptor_) return std::nullopt;
    return wss_acceptor_->local_endpoint();
}

std::optional<asio::ip::tcp::endpoint> Server::tls_endpoint() const {
    if (!tls_acceptor_) return std::nullopt;
    return tls_acceptor_->local_endpoint();
}

void Server::listen_unix() {
    const std::string& path = config_.unix_path;
    const auto fail = [&](const std::string& why) {
        return std::runtime_error("cannot listen on unix socket '" + path + "': " + why);
    };
    struct stat st {};
    if (::lstat(path.c_str(), &st) == 0) {
        // Replace only what is surely a leftover: a socket nobody listens on.
        if (!S_ISSOCK(st.st_mode)) throw fail("the file exists and is not a socket; not touching it");
        if (unix_socket_in_use(path)) throw fail("another server is listening on it");
        if (::unlink(path.c_str()) != 0 && errno != ENOENT) throw fail(std::string("removing the stale socket: ") +
                                                                        std::strerror(errno));
        log_->info("removed stale socket file {}", path);
    } else if (errno != ENOENT) {
        throw fail(std::strerror(errno));
    }
    asio::local::stream_protocol::acceptor acceptor(hub_context_);
    try {
        acceptor.open();
        // The file is made with the umask applied: with the mask below it is
        // never more open than --unix-mode, not even between bind and chmod.
        // Start-up runs before any shard thread, so the process-wide umask is
        // changed for no one else.
        const mode_t mask = config_.unix_mode ? ::umask(static_cast<mode_t>(~*config_.unix_mode & 0777)) : 0;
        asio::error_code ec;
        acceptor.bind(asio::local::stream_protocol::endpoint(path), ec);
        if (config_.unix_mode) ::umask(mask);
        if (ec) throw std::system_error(ec);
        if (config_.unix_mode && ::chmod(path.c_str(), static_cast<mode_t>(*config_.unix_mode)) != 0)
            throw std::system_error(errno, std::generic_category(), "chmod");
        acceptor.listen(asio::socket_base::max_listen_connections);
    } catch (const std::system_error& e) {
        throw fail(e.code().message());
    }
    if (::stat(path.c_str(), &st) == 0) unix_socket_file_.emplace(st.st_dev, st.st_ino);
    unix_acceptor_.emplace(std::move(acceptor));
}

void Server::remove_unix_socket() {
    if (!unix_socket_file_) return;
    struct stat st {};
    // Another server may have replaced the file since: then it is not ours to remove.
    if (::lstat(config_.unix_path.c_str(), &st) == 0 && st.st_dev == unix_socket_file_->first &&
        st.st_ino == unix_socket_file_->second)
        ::unlink(config_.unix_path.c_str());
    unix_socket_file_.reset();
}

void Server::close_listeners() {
    asio::error_code ignored;
    for (auto& acceptor : acceptors_) acceptor.close(ignored);
    if (tls_acceptor_) tls_acceptor_->close(ignored);
    if (ws_acceptor_) ws_acceptor_->close(ignored);
    if (wss_acceptor_) wss_acceptor_->close(ignored);
    if (unix_acceptor_) unix_acceptor_->close(ignored);
}

void Server::reload() {
    asio::post(hub_context_, [this] { do_reload(); });
}

void Server::do_reload() {
    bool any = false;
#if PULSECHAT_HAVE_OPENSSL
    if (tls_) {
        any = true;
        if (auto problem = tls_->reload(); !problem.empty())
            log_->error("reload: keeping the TLS certificate in use: {}", problem);
        else
            log_->info("reload: TLS certificate '{}' and key '{}' loaded; new connections use them",
                       tls_->files().cert, tls_->files().key);
    }
#endif
    if (!config_.token_file.empty()) {
        any = true;
        if (auto problem = access_.load(config_.token_file); !problem.empty())
            log_->error("reload: keeping the access tokens in use: {}", problem);
        else
            log_->info("reload: {} access token(s) loaded from '{}'", access_.token_count(), config_.token_file);
    }
    if (!any) log_->info("reload: no certificate or token file to reload");
    ++reloads_;
}

void Server::run(bool handle_signals) {
    for (auto& acceptor : acceptors_) {
        log_->info("listening on {}", to_string(acceptor.local_endpoint()));
        asio::co_spawn(hub_context_, accept_loop(acceptor, Listener::tcp),
                       [log = log_](std::exception_ptr e) { log_loop_failure(log, e); });
    }
    if (tls_acceptor_) {
        log_->info("listening on {} (tls{})", to_string(tls_acceptor_->local_endpoint()),
                   config_.tls_client_ca.empty() ? "" : ", client certificates required");
        asio::co_spawn(hub_context_, accept_loop(*tls_acceptor_, Listener::tls),
                       [log = log_](std::exception_ptr e) { log_loop_failure(log, e); });
    }
    if (ws_acceptor_) {
        const auto at = to_string(ws_acceptor_->local_endpoint());
        log_->info("listening on {} (websocket: ws://{}/ws, the web client at http://{}/)", at, at, at);
        asio::co_spawn(hub_context_, accept_loop(*ws_acceptor_, Listener::ws),
                       [log = log_](std::exception_ptr e) { log_loop_failure(log, e); });
    }
    if (wss_acceptor_) {
        const auto at = to_string(wss_acceptor_->local_endpoint());
        log_->info("listening on {} (websocket tls: wss://{}/ws, the web client at https://{}/)", at, at, at);
        asio::co_spawn(hub_context_, accept_loop(*wss_acceptor_, Listener::wss),
                       [log = log_](std::exception_ptr e) { log_loop_failure(log, e); });
    }
    if (unix_acceptor_) {
        log_->info("listening on unix:{}{}", config_.unix_path,
                   config_.unix_allow_uids.empty() ? "" : fmt::format(" (uids {})", fmt::join(config_.unix_allow_uids, ", ")));
        asio::co_spawn(hub_context_, accept_unix_loop(),
                       [log = log_](std::exception_ptr e) { log_loop_failure(log, e); });
    }
#if PULSECHAT_HAVE_HTTP_PARSER
    if (admin_) {
        log_->info("listening on {} (admin: /metrics, /healthz, /readyz)", to_string(admin_->local_endpoint()));
        admin_->start();
    }
#endif
    for (std::size_t shard = 0; shard < shards_.size(); ++shard) post(shard, [this, shard] { tick(shard); });
    if (env_.access != nullptr)
        log_->info("access tokens required: {} loaded from '{}'", access_.token_count(), config_.token_file);
    log_->info("pulsechat {} on {} thread(s); handshake timeout {}, heartbeat interval {}, timeout {}: a dead "
               "peer is noticed within {} (TCP keepalive alone, with Linux defaults: 7875s)",
               PULSECHAT_VERSION, shards_.size(), format_duration(config_.handshake_timeout),
               format_duration(config_.heartbeat_interval), format_duration(config_.heartbeat_timeout),
               format_duration(config_.worst_case_detection()));
    if (config_.tcp_keepalive)
        log_->info("TCP keepalive on: idle {}s, interval {}s, count {}: the kernel alone notices after {}s",
                   config_.tcp_keepalive->idle_s, config_.tcp_keepalive->interval_s, config_.tcp_keepalive->count,
                   config_.tcp_keepalive->idle_s + config_.tcp_keepalive->interval_s * config_.tcp_keepalive->count);
    if (config_.tcp_user_timeout)
        log_->info("TCP_USER_TIMEOUT {}: unacknowledged data fails the connection after that",
                   format_duration(*config_.tcp_user_timeout));

    if (handle_signals) catch_signals();
    summarize_connections();
    // Every listener is bound and its accept loop queued: systemd may send traffic.
    notifier_.ready(fmt::format("serving; {} listener(s)", acceptors_.size() + (tls_acceptor_ ? 1 : 0) +
                                                               (ws_acceptor_ ? 1 : 0) + (wss_acceptor_ ? 1 : 0) +
                                                               (unix_acceptor_ ? 1 : 0)));
    if (notifier_.watchdog_interval()) {
        log_->info("systemd watchdog on: WATCHDOG=1 every {} from the hub shard",
                   format_duration(std::chrono::duration_cast<Duration>(*notifier_.watchdog_interval())));
        pet_watchdog();
    }
    std::vector<std::thread> threads;
    for (std::size_t i = 1; i < shards_.size(); ++i)
        threads.emplace_back([this, i] {
            this_shard = i;
            run_shard(i);
        });
    this_shard = 0;
    run_shard(0);
    for (auto& t : threads) t.join();
    log_->info("shutdown complete");
    log_->flush();
}

void Server::run_shard(std::size_t shard) {
    // A handler that throws is a bug. The session handlers catch their own
    // and close the session involved; whatever still escapes is logged here
    // and the loop goes on, so no bug in one handler ends the process.
    for (;;) {
        try {
            shards_[shard]->run();
            return;
        } catch (const std::exception& e) {
            env_.counters.bugs.fetch_add(1, std::memory_order_relaxed);
            log_->error("bug: a handler on shard {} threw: {}; serving on", shard, e.what());
        } catch (...) {
            env_.counters.bugs.fetch_add(1, std::memory_order_relaxed);
            log_->error("bug: a handler on shard {} threw a non-exception; serving on", shard);
        }
    }
}

void Server::summarize_connections() {
    // Connections that end before HELLO, and refused ones, are logged at
    // debug level one by one and here once a second in sum: a flood of them
    // cannot flood the log.
    if (finished_) return;
    summary_timer_.expires_after(std::chrono::seconds(1));
    summary_timer_.async_wait([this](const asio::error_code& ec) {
        if (ec || finished_) return;
        const auto ended = env_.counters.ended_before_hello.exchange(0, std::memory_order_relaxed);
        const auto refused = env_.counters.refused.exchange(0, std::memory_order_relaxed);
        if (ended > 0 || refused > 0)
            log_->info("in the last second: {} connection(s) ended before HELLO, {} refused ({} open)", ended,
                       refused, live_sessions_.load());
        const auto averted = env_.counters.expiries_averted.load(std::memory_order_relaxed);
        if (averted != averted_reported_)
            log_->warn("in the last second: {} expiries averted: the peers' bytes were waiting unread (the server "
                       "is behind)",
                       averted - averted_reported_);
        averted_reported_ = averted;
        summarize_connections();
    });
}

void Server::catch_signals() {
    if (signals_caught_) return;
    signals_caught_ = true;
    signals_.add(SIGINT);
    signals_.add(SIGTERM);
    signals_.add(SIGHUP);
    wait_for_signal();
}

void Server::wait_for_signal() {
    signals_.async_wait([this](const asio::error_code& ec, int signo) {
        if (ec) return;
        if (signo == SIGHUP) {
            log_->info("signal {}: reloading certificate, key and token file", signo);
            do_reload();
            wait_for_signal();
            return;
        }
        if (++signals_seen_ > 1) {
            log_->warn("second signal ({}): exiting at once", signo);
            log_->flush();
            std::_Exit(1);
        }
        log_->info("signal {}: shutting down (a second signal exits at once)", signo);
        // Wait for the second signal first: with no session open the shutdown
        // finishes at once, and finish() must find this wait to cancel it.
        wait_for_signal();
        begin_shutdown("server shutting down");
    });
}

void Server::request_shutdown(const std::string& reason) {
    asio::post(hub_context_, [this, reason] { begin_shutdown(reason); });
}

asio::awaitable<void> Server::accept_loop(asio::ip::tcp::acceptor& acceptor, Listener kind) {
    using asio::experimental::as_tuple;
    for (;;) {
        const std::size_t shard = next_shard_;
        next_shard_ = (next_shard_ + 1) % shards_.size();
        asio::ip::tcp::socket socket(*shards_[shard]);
        auto [ec] = co_await acceptor.async_accept(socket, as_tuple(asio::use_awaitable));
        if (ec) {
            if (ec == asio::error::operation_aborted || !acceptor.is_open()) co_return;
            // EMFILE and friends: say so and back off rather than spin.
            log_->error("accept failed: {}", ec.message());
            asio::steady_timer pause(hub_context_, std::chrono::milliseconds(100));
            co_await pause.async_wait(as_tuple(asio::use_awaitable));
            continue;
        }
        start_session(std::move(socket), shard, kind);
    }
}

asio::awaitable<void> Server::accept_unix_loop() {
    using asio::experimental::as_tuple;
    for (;;) {
        const std::size_t shard = next_shard_;
        next_shard_ = (next_shard_ + 1) % shards_.size();
        asio::local::stream_protocol::socket socket(*shards_[shard]);
        auto [ec] = co_await unix_acceptor_->async_accept(socket, as_tuple(asio::use_awaitable));
        if (ec) {
            if (ec == asio::error::operation_aborted || !unix_acceptor_->is_open()) co_return;
            log_->error("accept failed on unix:{}: {}", config_.unix_path, ec.message());
            asio::steady_timer pause(hub_context_, std::chrono::milliseconds(100));
            co_await pause.async_wait(as_tuple(asio::use_awaitable));
            continue;
        }
        start_unix_session(std::move(socket), shard);
    }
}

void Server::apply_socket_options(asio::ip::tcp::socket& socket) {
    asio::error_code ec;
    socket.set_option(asio::ip::tcp::no_delay(true), ec);
    // The session reads with non-blocking read_some after a readiness wait.
    socket.non_blocking(true, ec);
    const int fd = socket.native_handle();
    if (config_.tcp_keepalive) {
        const int on = 1;
        ::setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &on, sizeof on);
        ::setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &config_.tcp_keepalive->idle_s, sizeof(int));
        ::setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &config_.tcp_keepalive->interval_s, sizeof(int));
        ::setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &config_.tcp_keepalive->count, sizeof(int));
    }
    if (config_.tcp_user_timeout) {
        const unsigned ms = static_cast<unsigned>(config_.tcp_user_timeout->count());
        ::setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &ms, sizeof ms);
    }
}

void Server::start_session(asio::ip::tcp::socket socket, std::size_t shard, Listener kind) {
    asio::error_code ec;
    const auto remote = socket.remote_endpoint(ec);
    if (ec) return;  // reset before we looked: nothing to serve
    const std::string peer = to_string(remote);
    const std::string address = remote.address().to_string();
    apply_socket_options(socket);
#if PULSECHAT_HAVE_OPENSSL
    if (kind == Listener::tls || kind == Listener::wss) {
        // The session keeps the context it started with: a reload does not
        // pull it from under an open connection.
        auto context = tls_->current();
        std::optional<TlsSocket> stream;
        try {
            stream.emplace(std::move(socket), *context);
        } catch (const std::exception& e) {
            log_->error("{}: cannot start TLS: {}; connection dropped", peer, e.what());
            return;
        }
#if PULSECHAT_HAVE_HTTP_PARSER
        if (kind == Listener::wss) {
            launch(WebSocketStream<TlsSocket>(std::move(*stream)), shard, peer, address, std::nullopt, context,
                   Transport::websocket_tls);
            return;
        }
#endif
        launch(std::move(*stream), shard, peer, address, std::nullopt, context, Transport::tls);
        return;
    }
#endif
#if PULSECHAT_HAVE_HTTP_PARSER
    if (kind == Listener::ws) {
        launch(WebSocketStream<asio::ip::tcp::socket>(std::move(socket)), shard, peer, address, std::nullopt,
               nullptr, Transport::websocket);
        return;
    }
#endif
    launch(std::move(socket), shard, peer, address, std::nullopt, nullptr, Transport::tcp);
}

void Server::start_unix_session(asio::local::stream_protocol::socket socket, std::size_t shard) {
    ucred peer_cred{};
    socklen_t length = sizeof peer_cred;
    std::optional<std::pair<ErrorCode, std::string>> rejection;
    std::string peer;
    std::string address;
    if (::getsockopt(socket.native_handle(), SOL_SOCKET, SO_PEERCRED, &peer_cred, &length) == 0) {
        peer = fmt::format("unix:pid={},uid={}", peer_cred.pid, peer_cred.uid);
        address = fmt::format("unix:uid={}", peer_cred.uid);
        const auto& allowed = config_.unix_allow_uids;
        if (!allowed.empty() && std::find(allowed.begin(), allowed.end(), peer_cred.uid) == allowed.end())
            rejection.emplace(ErrorCode::auth_failed,
                              fmt::format("uid {} may not use this socket", peer_cred.uid));
    } else {
        peer = "unix:?";
        address = peer;
        if (!config_.unix_allow_uids.empty())
            rejection.emplace(ErrorCode::auth_failed, "the peer's credentials cannot be read");
    }
    asio::error_code ignored;
    socket.non_blocking(true, ignored);  // the session reads with read_some after a readiness wait
    launch(std::move(socket), shard, peer, address, std::move(rejection), nullptr, Transport::unix_socket);
}

template <class Stream>
void Server::launch(Stream stream, std::size_t shard, const std::string& peer, const std::string& address,
                    std::optional<std::pair<ErrorCode, std::string>> rejection, std::shared_ptr<const void> hold,
                    Transport transport) {
    ++env_.shard_metrics[0]->accepted[static_cast<std::size_t>(transport)];  // on the hub shard, where accepts run
    const std::uint64_t id = next_session_id_++;
    if (shutting_down_) {
        rejection.emplace(ErrorCode::shutting_down, "server shutting down");
    } else if (rejection) {
        // the transport's own refusal (a Unix peer's uid) comes first
    } else if (live_sessions_.load() >= config_.max_connections) {
        rejection.emplace(ErrorCode::server_full,
                          fmt::format("server full: at most {} connections", config_.max_connections));
    } else if (config_.max_per_ip > 0 && per_address_[address] >= config_.max_per_ip) {
        rejection.emplace(ErrorCode::too_many_connections_from_address,
                          fmt::format("at most {} connections from one address", config_.max_per_ip));
    }
    // One by one at debug level only: the per-second summary counts them.
    if (rejection) {
        env_.counters.refused.fetch_add(1, std::memory_order_relaxed);
        log_->debug("session {} {}: refused: {}", id, peer, rejection->second);
    } else {
        log_->debug("session {} {}: connected (shard {}, {})", id, peer, shard, to_string(transport));
    }

    ++live_sessions_;
    if (config_.max_per_ip > 0) {
        // Only --max-per-ip needs the count (about 70 bytes a connection).
        ++per_address_[address];
        address_of_[id] = address;
    }
    auto session = make_session(std::move(stream), id, shard, peer, env_);
    if (hold) session->hold(std::move(hold));
    auto begin = [this, session, shard, rejection = std::move(rejection)]() mutable {
        live_[shard].emplace(session->id(), session);
        session->start(std::move(rejection));
    };
    if (shard == 0)
        begin();
    else
        asio::post(*shards_[shard], std::move(begin));
}

void Server::session_finished(std::size_t shard, std::uint64_t id) {
    live_[shard].erase(id);
    asio::post(hub_context_, [this, id] {
        if (auto it = address_of_.find(id); it != address_of_.end()) {
            if (auto c = per_address_.find(it->second); c != per_address_.end() && --c->second == 0)
                per_address_.erase(c);
            address_of_.erase(it);
        }
        if (--live_sessions_ == 0 && shutting_down_) finish();
    });
}

// WATCHDOG=1 from the hub shard's own loop: if it wedges (a handler that
// never returns), the pings stop and systemd restarts the service.
void Server::pet_watchdog() {
    notifier_.watchdog();
    watchdog_timer_.expires_after(*notifier_.watchdog_interval());
    watchdog_timer_.async_wait([this](const asio::error_code& ec) {
        if (!ec && !finished_) pet_watchdog();  // finished_: the handler may have been queued before the cancel
    });
}

void Server::begin_shutdown(const std::string& reason) {
    if (shutting_down_) return;
    shutting_down_ = true;
    notifier_.stopping("draining " + std::to_string(live_sessions_.load()) + " session(s)");
    close_listeners();
    const std::size_t open = live_sessions_.load();
    log_->info("shutting down: {} session(s) open; draining for at most {}", open,
               format_duration(config_.drain_timeout));
    if (open == 0) {
        finish();
        return;
    }
    for (std::size_t shard = 0; shard < shards_.size(); ++shard) {
        post(shard, [this, shard, reason] {
            // Copy: a shutdown may finish a session synchronously.
            auto sessions = live_[shard];
            for (auto& [id, weak] : sessions)
                if (auto s = weak.lock()) s->shutdown(reason);
        });
    }
    drain_timer_.expires_after(config_.drain_timeout);
    drain_timer_.async_wait([this](const asio::error_code& ec) {
        if (ec) return;
        log_->warn("drain timeout: {} session(s) did not finish in {}; closing them", live_sessions_.load(),
                   format_duration(config_.drain_timeout));
        finish();
    });
}

void Server::finish() {
    if (finished_) return;
    finished_ = true;
    drain_timer_.cancel();
    summary_timer_.cancel();
    watchdog_timer_.cancel();
    asio::error_code ignored;
    signals_.cancel(ignored);
    close_listeners();
#if PULSECHAT_HAVE_HTTP_PARSER
    if (admin_) admin_->close();  // it answered 503 on /readyz through the drain
#endif
#if PULSECHAT_HAVE_CLUSTER
    // The sessions have drained: what they published gets its acknowledgment
    // (for at most 2 s), then the node leaves NATS.
    if (cluster_ != nullptr) cluster_->stop();
#endif
    remove_unix_socket();
    // Without work guards every io_context returns from run() once the sessions
    // closed here have finished their coroutines.
    for (auto& w : work_) w.reset();
    for (std::size_t shard = 0; shard < shards_.size(); ++shard) {
        post(shard, [this, shard] {
            ticks_stopped_[shard] = 1;
            ticks_[shard]->cancel();
            auto sessions = live_[shard];
            for (auto& [id, weak] : sessions)
                if (auto s = weak.lock()) s->abort("server shut down");
        });
    }
}

}  // namespace chat
