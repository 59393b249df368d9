// The chat server: listeners, shards (one io_context and thread each), the hub, shutdown.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include <asio.hpp>

#include "chat/broker.hpp"
#include "chat/config.hpp"
#include "chat/hub.hpp"
#include "chat/room.hpp"
#include "chat/session.hpp"

namespace chat {

class Server final : private ShardPoster {
public:
    explicit Server(ServerConfig config);
    ~Server() override;
    Server(const Server&) = delete;
    Server& operator=(const Server&) = delete;

    // Binds the listeners (throws std::system_error when it cannot) and
    // returns their endpoints; --port 0 shows the port picked here.
    std::vector<asio::ip::tcp::endpoint> listen();

    // Runs shard 0 on the calling thread and the others on threads of their
    // own; returns after shutdown finished. With `handle_signals`, SIGINT and
    // SIGTERM start a graceful shutdown and a second one exits at once.
    void run(bool handle_signals = true);

    // Thread-safe: stop accepting, send BYE to everyone, drain, return from run().
    void request_shutdown(const std::string& reason = "server shutting down");

    std::size_t live_sessions() const noexcept { return live_sessions_.load(); }
    const ServerConfig& config() const noexcept { return config_; }

private:
    // ShardPoster
    std::size_t current_shard() const noexcept override;
    void post(std::size_t shard, std::function<void()> work) override;

    asio::awaitable<void> accept_loop(asio::ip::tcp::acceptor& acceptor);
    void apply_socket_options(asio::ip::tcp::socket& socket);
    void start_session(asio::ip::tcp::socket socket, std::size_t shard);
    void session_finished(std::size_t shard, std::uint64_t id);
    void begin_shutdown(const std::string& reason);
    void finish();
    void wait_for_signal();

    ServerConfig config_;
    std::vector<std::unique_ptr<asio::io_context>> shards_;
    std::vector<asio::executor_work_guard<asio::io_context::executor_type>> work_;
    asio::io_context& hub_context_;
    std::shared_ptr<spdlog::logger> log_;
    LocalBroker broker_;
    Hub hub_;
    SessionEnv env_;
    std::vector<asio::ip::tcp::acceptor> acceptors_;
    asio::signal_set signals_;
    asio::steady_timer drain_timer_;

    // Per shard, the sessions it owns; each map is touched only on its shard.
    std::vector<std::unordered_map<std::uint64_t, std::weak_ptr<SessionBase>>> live_;
    std::atomic<std::size_t> live_sessions_{0};
    std::atomic<std::uint64_t> next_session_id_{1};
    std::size_t next_shard_ = 0;
    // Hub-only: connections per address, for --max-per-ip.
    std::unordered_map<std::string, std::size_t> per_address_;
    std::unordered_map<std::uint64_t, std::string> address_of_;
    bool shutting_down_ = false;
    bool finished_ = false;
    int signals_seen_ = 0;
};

}  // namespace chat
