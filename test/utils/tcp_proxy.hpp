// A loopback TCP proxy a test can fault: it forwards every connection to a
// target port, and on demand swallows what the target sends back (the
// client's requests still arrive: a reply lost after the work was done) or
// cuts every connection at once (the client has to reconnect).
#pragma once

#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cstdint>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace chat::test {

class TcpProxy {
public:
    explicit TcpProxy(std::uint16_t target) : target_(target) {
        listener_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        const int one = 1;
        ::setsockopt(listener_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        sockaddr_in addr = loopback(0);
        if (::bind(listener_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 || ::listen(listener_, 16) != 0)
            throw std::runtime_error("proxy: cannot listen");
        socklen_t size = sizeof addr;
        ::getsockname(listener_, reinterpret_cast<sockaddr*>(&addr), &size);
        port_ = ntohs(addr.sin_port);
        if (::pipe2(wake_, O_CLOEXEC | O_NONBLOCK) != 0) throw std::runtime_error("proxy: pipe2 failed");
        thread_ = std::thread([this] { run(); });
    }
    ~TcpProxy() {
        stop_ = true;
        wake();
        thread_.join();
        for (auto& p : pairs_) close_pair(p);
        ::close(listener_);
        ::close(wake_[0]);
        ::close(wake_[1]);
    }
    TcpProxy(const TcpProxy&) = delete;
    TcpProxy& operator=(const TcpProxy&) = delete;

    std::uint16_t port() const { return port_; }
    std::string url() const { return "nats://127.0.0.1:" + std::to_string(port_); }

    // From now on, bytes from the target are read and thrown away.
    void swallow_replies() { swallow_ = true; }
    // Closes every open connection (both sides) and forwards normally again.
    void cut() {
        cut_ = true;
        wake();
        cut_.wait(true);  // until the proxy thread has closed every pair
    }
    // Bytes thrown away so far.
    std::size_t swallowed() const { return swallowed_; }

private:
    struct Pair {
        int client = -1;
        int upstream = -1;
    };

    static sockaddr_in loopback(std::uint16_t port) {
        sockaddr_in addr{};
        addr.sin_family = AF_INET;
        addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        addr.sin_port = htons(port);
        return addr;
    }
    static void close_pair(Pair& p) {
        if (p.client >= 0) ::close(p.client);
        if (p.upstream >= 0) ::close(p.upstream);
        p.client = p.upstream = -1;
    }
    void wake() {
        const char c = 1;
        [[maybe_unused]] auto n = ::write(wake_[1], &c, 1);
    }

    // One thread, poll(): blocking writes are fine for a test's small traffic.
    void run() {
        std::array<char, 65536> buffer{};
        while (!stop_) {
            if (cut_) {
                for (auto& p : pairs_) close_pair(p);
                pairs_.clear();
                swallow_ = false;
                cut_ = false;
                cut_.notify_all();
            }
            std::vector<pollfd> fds{{listener_, POLLIN, 0}, {wake_[0], POLLIN, 0}};
            for (const auto& p : pairs_) {
                fds.push_back({p.client, POLLIN, 0});
                fds.push_back({p.upstream, POLLIN, 0});
            }
            if (::poll(fds.data(), fds.size(), 100) <= 0) continue;
            if (fds[1].revents != 0) {
                char drain[64];
                while (::read(wake_[0], drain, sizeof drain) > 0) {
                }
            }
            // Only the pairs that were polled: one accepted now has no pollfd yet
            // (reading it unasked would block this thread on a client that waits).
            const std::size_t polled = pairs_.size();
            if (fds[0].revents & POLLIN) accept_one();
            for (std::size_t i = 0; i < polled; ++i) {
                Pair& p = pairs_[i];
                const auto& from_client = fds[2 + 2 * i];
                const auto& from_upstream = fds[3 + 2 * i];
                bool open = true;
                if (from_client.revents != 0) open = forward(p.client, p.upstream, buffer, false);
                if (open && from_upstream.revents != 0) open = forward(p.upstream, p.client, buffer, swallow_);
                if (!open) close_pair(p);
            }
            std::erase_if(pairs_, [](const Pair& p) { return p.client < 0; });
        }
    }

    void accept_one() {
        const int client = ::accept4(listener_, nullptr, nullptr, SOCK_CLOEXEC);
        if (client < 0) return;
        const int upstream = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        sockaddr_in addr = loopback(target_);
        if (::connect(upstream, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
            ::close(upstream);
            ::close(client);
            return;
        }
        pairs_.push_back({client, upstream});
    }

    bool forward(int from, int to, std::array<char, 65536>& buffer, bool swallow) {
        const ssize_t n = ::read(from, buffer.data(), buffer.size());
        if (n <= 0) return false;
        if (swallow) {
            swallowed_ += static_cast<std::size_t>(n);
            return true;
        }
        for (ssize_t sent = 0; sent < n;) {
            const ssize_t w = ::send(to, buffer.data() + sent, static_cast<std::size_t>(n - sent), MSG_NOSIGNAL);
            if (w <= 0) return false;
            sent += w;
        }
        return true;
    }

    std::uint16_t target_;
    std::uint16_t port_ = 0;
    int listener_ = -1;
    int wake_[2] = {-1, -1};
    std::vector<Pair> pairs_;  // the proxy thread's
    std::atomic<bool> swallow_{false};
    std::atomic<bool> cut_{false};
    std::atomic<bool> stop_{false};
    std::atomic<std::size_t> swallowed_{0};
    std::thread thread_;
};

}  // namespace chat::test
