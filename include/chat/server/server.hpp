// The chat server: listeners (TCP, TLS, Unix), shards (one io_context and thread each), the hub, shutdown.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include <asio.hpp>

#include "chat/server/access.hpp"
#include "chat/server/admin_http.hpp"
#include "chat/server/metrics.hpp"
#include "chat/server/service_notify.hpp"
#include "chat/server/broker.hpp"
#include "chat/server/cluster_broker.hpp"
#include "chat/server/cluster_directory.hpp"
#include "chat/server/server_config.hpp"
#include "chat/server/hub.hpp"
#include "chat/server/room.hpp"
#include "chat/server/session_base.hpp"
#include "chat/server/session_env.hpp"
#include "chat/common/tls.hpp"
#include "chat/server/tls_server_context.hpp"

namespace chat {

class Server final : private ShardPoster {
public:
    explicit Server(ServerConfig config);
    ~Server() override;
    Server(const Server&) = delete;
    Server& operator=(const Server&) = delete;

    // Binds the listeners (throws std::system_error when it cannot) and
    // returns the plain TCP ones' endpoints; --port 0 shows the port picked
    // here. Also binds the TLS port and the Unix socket when configured, and
    // loads the certificate and the token file (std::runtime_error when one
    // cannot be used).
    std::vector<asio::ip::tcp::endpoint> listen();
    // After listen(): the TLS listener's endpoint, if there is one.
    std::optional<asio::ip::tcp::endpoint> tls_endpoint() const;
    // After listen(): the WebSocket listeners' endpoints (--ws-port, --wss-port), if there are.
    std::optional<asio::ip::tcp::endpoint> ws_endpoint() const;
    std::optional<asio::ip::tcp::endpoint> wss_endpoint() const;
    // After listen(): the admin listener's endpoint (--admin-port), if there is one.
    std::optional<asio::ip::tcp::endpoint> admin_endpoint() const;

    // On the hub shard: every shard's counts and the hub's, as /metrics shows them.
    asio::awaitable<std::string> scrape();

    // Thread-safe: loads the certificate, key and token file again (SIGHUP
    // does this). Open sessions stay up; a file that fails to load is logged
    // and the old one stays in use.
    void reload();
    // Reloads done so far, whether or not every file loaded (for tests).
    std::size_t reloads() const noexcept { return reloads_.load(); }

    // Runs shard 0 on the calling thread and the others on threads of their
    // own; returns after shutdown finished. With `handle_signals`, SIGINT and
    // SIGTERM start a graceful shutdown and a second one exits at once.
    void run(bool handle_signals = true);

    // From now on SIGINT and SIGTERM start a graceful shutdown (a second one
    // exits at once). A program calls it before announcing its listeners, so
    // that a signal sent as soon as they are announced is not lost to the
    // default action; run(true) calls it if that has not happened.
    void catch_signals();

    // Thread-safe: stop accepting, send BYE to everyone, drain, return from run().
    void request_shutdown(const std::string& reason = "server shutting down");

    std::size_t live_sessions() const noexcept { return live_sessions_.load(); }
    // The most bytes any one session has held for its peer (see SessionEnv).
    std::size_t peak_queued_bytes() const noexcept { return env_.counters.peak_queued_bytes.load(); }
    const ServerConfig& config() const noexcept { return config_; }
    // Counters of what the sessions met (SessionEnv), for tests and metrics.
    const SessionEnv& session_env() const noexcept { return env_; }
    // The hub gate of `shard` (backpressure with --threads > 1).
    const HubGate& hub_gate(std::size_t shard) const { return *env_.hub_gates.at(shard); }
    // The cluster broker, with --cluster (and a build with libnats); else null.
    const ClusterBroker* cluster() const noexcept { return cluster_; }

private:
    // ShardPoster
    std::size_t current_shard() const noexcept override;
    void post(std::size_t shard, std::function<void()> work) override;

    // What a TCP listener carries: the pulsechat stream, over TLS, in WebSocket, in WebSocket over TLS.
    enum class Listener : std::uint8_t { tcp, tls, ws, wss };
    asio::awaitable<void> accept_loop(asio::ip::tcp::acceptor& acceptor, Listener kind);
    asio::awaitable<void> accept_unix_loop();
    void apply_socket_options(asio::ip::tcp::socket& socket);
    void start_session(asio::ip::tcp::socket socket, std::size_t shard, Listener kind);
    asio::ip::tcp::acceptor bind_extra(const asio::ip::tcp::endpoint& endpoint, const char* what);
    void start_unix_session(asio::local::stream_protocol::socket socket, std::size_t shard);
    // Limits, registries and the start of a session over any stream.
    template <class Stream>
    void launch(Stream stream, std::size_t shard, const std::string& peer, const std::string& address,
                std::optional<std::pair<ErrorCode, std::string>> rejection, std::shared_ptr<const void> hold,
                Transport transport);
    void listen_unix();
    void remove_unix_socket();
    void close_listeners();
    void do_reload();
    void session_finished(std::size_t shard, std::uint64_t id);
    void begin_shutdown(const std::string& reason);
    void finish();
    void wait_for_signal();
    void run_shard(std::size_t shard);
    void summarize_connections();
    void tick(std::size_t shard);
    void pet_watchdog();
    ServerGauges gauges() const;
    std::unique_ptr<Broker> make_broker();

    ServerConfig config_;
    std::vector<std::unique_ptr<asio::io_context>> shards_;
    std::vector<asio::executor_work_guard<asio::io_context::executor_type>> work_;
    asio::io_context& hub_context_;
    std::shared_ptr<spdlog::logger> log_;
    // Before broker_: make_broker() sets it while broker_ is made.
    ClusterBroker* cluster_ = nullptr;
    // Destroyed after broker_ (whose stop() cleans it up): declared before it.
    std::unique_ptr<ClusterDirectory> directory_;
    std::unique_ptr<Broker> broker_;  // LocalBroker, or ClusterBroker with --cluster
    Hub hub_;
    SessionEnv env_;
    std::vector<asio::ip::tcp::acceptor> acceptors_;
    std::optional<asio::ip::tcp::acceptor> tls_acceptor_;
    std::optional<asio::ip::tcp::acceptor> ws_acceptor_;   // --ws-port
    std::optional<asio::ip::tcp::acceptor> wss_acceptor_;  // --wss-port
    std::optional<asio::local::stream_protocol::acceptor> unix_acceptor_;
    // The socket file this server made: removed on exit if it is still that file.
    std::optional<std::pair<dev_t, ino_t>> unix_socket_file_;
#if PULSECHAT_HAVE_OPENSSL
    std::unique_ptr<TlsServerContext> tls_;
#endif
    AccessControl access_;
    std::atomic<std::size_t> reloads_{0};
    asio::signal_set signals_;
    asio::steady_timer drain_timer_;
    asio::steady_timer summary_timer_;
    // Per shard: the 100 ms tick whose lateness is the event-loop lag.
    std::vector<std::unique_ptr<asio::steady_timer>> ticks_;
    // Per shard, set on that shard by finish(): a tick whose handler was
    // already queued when the timer was cancelled must not set it again.
    std::vector<char> ticks_stopped_;
#if PULSECHAT_HAVE_HTTP_PARSER
    std::unique_ptr<AdminListener> admin_;
#endif
    double start_time_ = 0;
    ServiceNotifier notifier_;
    asio::steady_timer watchdog_timer_;

    // Per shard, the sessions it owns; each map is touched only on its shard.
    std::vector<std::unordered_map<std::uint64_t, std::weak_ptr<SessionBase>>> live_;
    std::atomic<std::size_t> live_sessions_{0};
    std::atomic<std::uint64_t> next_session_id_{1};
    std::size_t next_shard_ = 0;
    // Hub-only: connections per address, for --max-per-ip.
    std::unordered_map<std::string, std::size_t> per_address_;
    std::unordered_map<std::uint64_t, std::string> address_of_;
    std::uint64_t averted_reported_ = 0;  // hub only: expiries_averted at the last summary
    bool shutting_down_ = false;
    bool signals_caught_ = false;
    bool finished_ = false;
    int signals_seen_ = 0;
};

}  // namespace chat
