// Fixtures for live tests: an in-process server on 127.0.0.1:0 and a blocking
// test client whose every read has a deadline.
#pragma once

#include <poll.h>

#include <algorithm>
#include <chrono>
#include <functional>
#include <optional>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include <asio.hpp>

#include "chat/proto/protocol.hpp"
#include "chat/server/server.hpp"

namespace chat::test {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

// Short heartbeat settings so that the suite is fast.
inline ServerConfig fast_config() {
    ServerConfig cfg;
    cfg.bind = "127.0.0.1";
    cfg.port = 0;
    cfg.handshake_timeout = 1000ms;
    cfg.heartbeat_interval = 200ms;
    cfg.heartbeat_timeout = 600ms;
    cfg.write_timeout = 1000ms;
    cfg.drain_timeout = 2000ms;
    cfg.rate = 0;  // unlimited unless a test sets it
    return cfg;
}

// A server on its own thread for the duration of a test.
class TestServer {
public:
    explicit TestServer(ServerConfig cfg = fast_config()) : server_(std::move(cfg)) {
        port_ = server_.listen().front().port();
        thread_ = std::thread([this] { server_.run(false); });
    }
    ~TestServer() { stop(); }

    void stop() {
        if (thread_.joinable()) {
            server_.request_shutdown();
            thread_.join();
        }
    }
    std::uint16_t port() const { return port_; }
    Server& server() { return server_; }

    // Polls `condition` until it holds or `limit` passes.
    static bool eventually(const std::function<bool()>& condition, std::chrono::milliseconds limit = 3000ms) {
        const auto deadline = Clock::now() + limit;
        while (Clock::now() < deadline) {
            if (condition()) return true;
            std::this_thread::sleep_for(5ms);
        }
        return condition();
    }

private:
    Server server_;
    std::uint16_t port_ = 0;
    std::thread thread_;
};

// Runs `io` until `done` is set or `limit` passes; on timeout the operations
// on `stream` are cancelled (and their handlers run) before this returns
// false. For the test clients that drive one asio stream on their own context.
template <class Stream>
bool run_until(asio::io_context& io, Stream& stream, const bool& done, std::chrono::milliseconds limit) {
    io.restart();
    io.run_for(limit);
    if (done) return true;
    asio::error_code ignored;
    stream.lowest_layer().cancel(ignored);
    io.restart();
    io.run();
    return false;
}

// What every blocking test client shares, whatever carries its bytes: the
// decoder, the deadlines, and the reads built on read(). Derived supplies
// receive(buffer, limit, ec) -> bytes read; 0 with no error means nothing came
// within `limit`, so that each transport waits in the way it must (a TLS
// stream, for one, may hold decrypted bytes that poll() cannot see).
template <class Derived>
class MessageReader {
public:
    // The next message, or nullopt on timeout or close (closed() tells which).
    std::optional<Message> read(std::chrono::milliseconds timeout = 3000ms) {
        const auto deadline = Clock::now() + timeout;
        Message m;
        for (;;) {
            const auto status = decoder_.next(m);
            if (status == Decoder::Status::message) return m;
            if (status == Decoder::Status::error || closed_) return std::nullopt;
            const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
            if (left.count() <= 0) return std::nullopt;
            auto space = decoder_.prepare(64 * 1024);
            asio::error_code ec;
            const std::size_t n =
                static_cast<Derived&>(*this).receive(asio::buffer(space.data(), space.size()), left, ec);
            if (ec) {
                closed_ = true;
                close_reason_ = ec;
                continue;
            }
            decoder_.commit(n);
        }
    }

    // Reads until a message of type T arrives (skipping others, e.g. PING), or nullopt.
    template <class T>
    std::optional<T> read_until(std::chrono::milliseconds timeout = 3000ms) {
        const auto deadline = Clock::now() + timeout;
        for (;;) {
            const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
            if (left.count() <= 0) return std::nullopt;
            auto m = read(left);
            if (!m) return std::nullopt;
            if (auto* t = std::get_if<T>(&*m)) return *t;
        }
    }

    // Reads until the server closes the connection; collects what came.
    std::vector<Message> read_until_closed(std::chrono::milliseconds timeout = 3000ms) {
        std::vector<Message> got;
        const auto deadline = Clock::now() + timeout;
        while (!closed_ && Clock::now() < deadline) {
            auto m = read(std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()));
            if (m) got.push_back(std::move(*m));
        }
        return got;
    }

    bool closed() const { return closed_; }
    const asio::error_code& close_reason() const { return close_reason_; }

private:
    Decoder decoder_{16 * 1024 * 1024};
    bool closed_ = false;
    asio::error_code close_reason_;
};

// A blocking client for tests: frames out, messages in, each read with a deadline.
class TestClient : public MessageReader<TestClient> {
public:
    explicit TestClient(std::uint16_t port) : socket_(io_) {
        socket_.connect(asio::ip::tcp::endpoint(asio::ip::make_address("127.0.0.1"), port));
        socket_.set_option(asio::ip::tcp::no_delay(true));
    }
    // A client with a small receive buffer, set before connecting so that the
    // advertised window stays small: the server's writes to it stall sooner.
    TestClient(std::uint16_t port, int receive_buffer) : socket_(io_) {
        socket_.open(asio::ip::tcp::v4());
        socket_.set_option(asio::socket_base::receive_buffer_size(receive_buffer));
        socket_.connect(asio::ip::tcp::endpoint(asio::ip::make_address("127.0.0.1"), port));
        socket_.set_option(asio::ip::tcp::no_delay(true));
    }

    void send(const Message& m) { send_raw(encode(m)); }
    void send_raw(std::string_view bytes) {
        asio::error_code ec;
        asio::write(socket_, asio::buffer(bytes.data(), bytes.size()), ec);
        last_send_ = Clock::now();
    }
    // While reading, send HEARTBEAT whenever nothing was sent for `every`, as a
    // well-behaved client does; zero turns it off.
    void keep_alive(std::chrono::milliseconds every) { keep_alive_ = every; }
    // No more bytes from this side; the server may still write.
    void shutdown_send() {
        asio::error_code ignored;
        socket_.shutdown(asio::socket_base::shutdown_send, ignored);
    }

    // HELLO, then the WELCOME.
    std::optional<Welcome> login(const std::string& nick, const std::string& resume_token = {}) {
        send(Hello{nick, {}, resume_token});
        return read_until<Welcome>();
    }
    std::optional<Joined> join(const std::string& room) {
        send(Join{room, false, {}});
        return read_until<Joined>();
    }

    asio::ip::tcp::socket& socket() { return socket_; }

private:
    friend class MessageReader<TestClient>;

    std::size_t receive(asio::mutable_buffer space, std::chrono::milliseconds left, asio::error_code& ec) {
        if (keep_alive_.count() > 0) {
            if (Clock::now() - last_send_ >= keep_alive_) send(Heartbeat{});
            const auto to_beat =
                std::chrono::duration_cast<std::chrono::milliseconds>(last_send_ + keep_alive_ - Clock::now());
            left = std::max(std::chrono::milliseconds{1}, std::min(left, to_beat));
        }
        pollfd p{socket_.native_handle(), POLLIN, 0};
        if (::poll(&p, 1, static_cast<int>(left.count())) <= 0) return 0;
        return socket_.read_some(space, ec);
    }

    asio::io_context io_;
    asio::ip::tcp::socket socket_;
    Clock::time_point last_send_ = Clock::now();
    std::chrono::milliseconds keep_alive_{0};
};

}  // namespace chat::test
