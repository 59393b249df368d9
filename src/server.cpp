#include "chat/server.hpp"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <csignal>
#include <cstdio>
#include <iostream>

#include "chat/logging.hpp"
#include "pulsechat_config.h"

namespace chat {
namespace {

thread_local std::size_t this_shard = static_cast<std::size_t>(-1);

std::string to_string(const asio::ip::tcp::endpoint& ep) {
    const auto address = ep.address();
    if (address.is_v6()) return "[" + address.to_string() + "]:" + std::to_string(ep.port());
    return address.to_string() + ":" + std::to_string(ep.port());
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
      broker_(config_.history),
      hub_(broker_, *this, shards_.size(), HubLimits{config_.max_rooms_per_session, config_.max_frame}),
      env_{config_, hub_, hub_context_.get_executor(), log_, PULSECHAT_VERSION, {}},
      signals_(hub_context_),
      drain_timer_(hub_context_),
      live_(shards_.size()) {
    for (auto& shard : shards_) work_.push_back(asio::make_work_guard(*shard));
    env_.on_finished = [this](std::uint64_t id) { session_finished(this_shard, id); };
    // Writes to a peer that has gone must come back as EPIPE, never end the process.
    std::signal(SIGPIPE, SIG_IGN);
}

Server::~Server() = default;

std::size_t Server::current_shard() const noexcept { return this_shard; }

void Server::post(std::size_t shard, std::function<void()> work) { asio::post(*shards_[shard], std::move(work)); }

std::vector<asio::ip::tcp::endpoint> Server::listen() {
    const auto address = asio::ip::make_address(config_.bind);
    asio::ip::tcp::endpoint endpoint(address, config_.port);
    asio::ip::tcp::acceptor acceptor(hub_context_);
    acceptor.open(endpoint.protocol());
    acceptor.set_option(asio::socket_base::reuse_address(true));
    acceptor.bind(endpoint);
    acceptor.listen(asio::socket_base::max_listen_connections);
    acceptors_.push_back(std::move(acceptor));
    std::vector<asio::ip::tcp::endpoint> bound;
    for (auto& a : acceptors_) bound.push_back(a.local_endpoint());
    return bound;
}

void Server::run(bool handle_signals) {
    for (auto& acceptor : acceptors_) {
        log_->info("listening on {}", to_string(acceptor.local_endpoint()));
        asio::co_spawn(hub_context_, accept_loop(acceptor), [log = log_](std::exception_ptr e) {
            if (!e) return;
            try {
                std::rethrow_exception(e);
            } catch (const std::exception& ex) {
                log->error("accept loop failed: {}", ex.what());
            }
        });
    }
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

    if (handle_signals) {
        signals_.add(SIGINT);
        signals_.add(SIGTERM);
        wait_for_signal();
    }
    std::vector<std::thread> threads;
    for (std::size_t i = 1; i < shards_.size(); ++i)
        threads.emplace_back([this, i] {
            this_shard = i;
            shards_[i]->run();
        });
    this_shard = 0;
    hub_context_.run();
    for (auto& t : threads) t.join();
    log_->info("shutdown complete");
    log_->flush();
}

void Server::wait_for_signal() {
    signals_.async_wait([this](const asio::error_code& ec, int signo) {
        if (ec) return;
        if (++signals_seen_ > 1) {
            log_->warn("second signal ({}): exiting at once", signo);
            log_->flush();
            std::_Exit(1);
        }
        log_->info("signal {}: shutting down (a second signal exits at once)", signo);
        begin_shutdown("server shutting down");
        wait_for_signal();
    });
}

void Server::request_shutdown(const std::string& reason) {
    asio::post(hub_context_, [this, reason] { begin_shutdown(reason); });
}

asio::awaitable<void> Server::accept_loop(asio::ip::tcp::acceptor& acceptor) {
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
        start_session(std::move(socket), shard);
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

void Server::start_session(asio::ip::tcp::socket socket, std::size_t shard) {
    asio::error_code ec;
    const auto remote = socket.remote_endpoint(ec);
    if (ec) return;  // reset before we looked: nothing to serve
    const std::string peer = to_string(remote);
    const std::string address = remote.address().to_string();
    apply_socket_options(socket);

    const std::uint64_t id = next_session_id_++;
    std::optional<std::pair<ErrorCode, std::string>> rejection;
    if (shutting_down_) {
        rejection.emplace(ErrorCode::shutting_down, "server shutting down");
    } else if (live_sessions_.load() >= config_.max_connections) {
        rejection.emplace(ErrorCode::server_full,
                          fmt::format("server full: at most {} connections", config_.max_connections));
    } else if (config_.max_per_ip > 0 && per_address_[address] >= config_.max_per_ip) {
        rejection.emplace(ErrorCode::too_many_connections_from_address,
                          fmt::format("at most {} connections from one address", config_.max_per_ip));
    }
    if (rejection)
        log_->warn("session {} {}: refused: {}", id, peer, rejection->second);
    else
        log_->info("session {} {}: connected (shard {})", id, peer, shard);

    ++live_sessions_;
    ++per_address_[address];
    address_of_[id] = address;
    auto session = std::make_shared<Session<asio::ip::tcp::socket>>(std::move(socket), id, shard, peer, env_);
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

void Server::begin_shutdown(const std::string& reason) {
    if (shutting_down_) return;
    shutting_down_ = true;
    for (auto& acceptor : acceptors_) {
        asio::error_code ignored;
        acceptor.close(ignored);
    }
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
    asio::error_code ignored;
    signals_.cancel(ignored);
    for (auto& acceptor : acceptors_) acceptor.close(ignored);
    // Without work guards every io_context returns from run() once the sessions
    // closed here have finished their coroutines.
    for (auto& w : work_) w.reset();
    for (std::size_t shard = 0; shard < shards_.size(); ++shard) {
        post(shard, [this, shard] {
            auto sessions = live_[shard];
            for (auto& [id, weak] : sessions)
                if (auto s = weak.lock()) s->abort("server shut down");
        });
    }
}

}  // namespace chat
