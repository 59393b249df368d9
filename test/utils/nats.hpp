// A real nats-server with JetStream for the cluster tests: on a free loopback
// port, with a fresh file store in a temporary folder, stopped, paused,
// restarted (on the same store or a wiped one) and killed as a test needs.
#pragma once

#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "utils/subprocess.hpp"

namespace chat::test {

// A loopback TCP port nobody listened on a moment ago.
inline std::uint16_t free_port() {
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = 0;
    ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
    socklen_t size = sizeof addr;
    ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &size);
    ::close(fd);
    return ntohs(addr.sin_port);
}

// Where nats-server is: $NATS_SERVER, else the first on PATH or in /usr/sbin.
inline std::optional<std::string> nats_server_path() {
    if (const char* p = std::getenv("NATS_SERVER"); p != nullptr && *p != '\0') return std::string(p);
    std::vector<std::string> dirs{"/usr/sbin", "/usr/bin", "/usr/local/bin"};
    if (const char* path = std::getenv("PATH")) {
        std::string all(path);
        for (std::size_t start = 0; start <= all.size();) {
            const auto colon = all.find(':', start);
            dirs.push_back(all.substr(start, colon - start));
            if (colon == std::string::npos) break;
            start = colon + 1;
        }
    }
    for (const auto& d : dirs) {
        const auto candidate = std::filesystem::path(d) / "nats-server";
        if (::access(candidate.c_str(), X_OK) == 0) return candidate.string();
    }
    return std::nullopt;
}

class NatsServer {
public:
    // `extra`: more nats-server arguments (routes of a NATS cluster).
    explicit NatsServer(std::vector<std::string> extra = {}, std::uint16_t port = 0)
        : port_(port == 0 ? free_port() : port), extra_(std::move(extra)) {
        char tmpl[] = "/tmp/pulsechat-nats-XXXXXX";
        const char* dir = ::mkdtemp(tmpl);
        if (dir == nullptr) throw std::runtime_error("mkdtemp failed");
        store_ = dir;
        start();
    }
    ~NatsServer() {
        process_.reset();
        std::error_code ignored;
        std::filesystem::remove_all(store_, ignored);
    }

    std::uint16_t port() const { return port_; }
    std::string url() const { return "nats://127.0.0.1:" + std::to_string(port_); }
    const std::string& store() const { return store_; }

    // Started and answering TCP connections (JetStream needs a moment more:
    // the nodes retry their set-up).
    void start() {
        const auto path = nats_server_path();
        if (!path) throw std::runtime_error("nats-server is not installed");
        std::vector<std::string> args{*path, "-js", "-a", "127.0.0.1", "-p", std::to_string(port_), "-sd", store_};
        args.insert(args.end(), extra_.begin(), extra_.end());
        process_ = std::make_unique<Subprocess>(std::move(args));
        const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
        while (std::chrono::steady_clock::now() < deadline) {
            if (process_->all_stderr().find("Server is ready") != std::string::npos) return;
            if (process_->wait_exit(std::chrono::milliseconds(0)))
                throw std::runtime_error("nats-server exited: " + process_->all_stderr());
            std::this_thread::sleep_for(std::chrono::milliseconds(10));
        }
        throw std::runtime_error("nats-server did not start: " + process_->all_stderr());
    }
    // SIGTERM and wait: a clean stop (the store is flushed).
    void stop() {
        if (!process_) return;
        process_->signal(SIGTERM);
        process_->wait_exit(std::chrono::seconds(10));
        process_.reset();
    }
    void kill() {
        if (!process_) return;
        process_->signal(SIGKILL);
        process_->wait_exit(std::chrono::seconds(10));
        process_.reset();
    }
    void pause() { process_->signal(SIGSTOP); }
    void resume() { process_->signal(SIGCONT); }
    void restart() {
        stop();
        start();
    }
    // Stopped, its store deleted, started again: JetStream's history is gone.
    void restart_wiped() {
        stop();
        std::error_code ignored;
        std::filesystem::remove_all(store_, ignored);
        std::filesystem::create_directories(store_);
        start();
    }
    std::string log() const { return process_ ? process_->all_stderr() : std::string{}; }

private:
    std::uint16_t port_;
    std::vector<std::string> extra_;
    std::string store_;
    std::unique_ptr<Subprocess> process_;
};

// Three nats-servers routed into one NATS cluster on loopback ports, with
// JetStream on each (replicated streams: R3). Constructed once a metadata
// leader was elected.
class NatsCluster {
public:
    NatsCluster() {
        std::vector<std::uint16_t> routes;
        for (int i = 0; i < 3; ++i) routes.push_back(free_port());
        std::string all;
        for (auto p : routes) all += (all.empty() ? "" : ",") + std::string("nats://127.0.0.1:") + std::to_string(p);
        for (int i = 0; i < 3; ++i)
            servers_.push_back(std::make_unique<NatsServer>(std::vector<std::string>{
                "--server_name", "n" + std::to_string(i), "--cluster_name", "pulsechat-test", "--cluster",
                "nats://127.0.0.1:" + std::to_string(routes[i]), "--routes", all}));
        const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
        while (std::chrono::steady_clock::now() < deadline) {
            for (auto& s : servers_)
                if (s->log().find("JetStream cluster new metadata leader") != std::string::npos ||
                    s->log().find("new JetStream cluster metadata leader") != std::string::npos)
                    return;
            std::this_thread::sleep_for(std::chrono::milliseconds(50));
        }
        throw std::runtime_error("the NATS cluster elected no JetStream leader: " + servers_[0]->log());
    }

    std::vector<std::string> urls() const {
        std::vector<std::string> u;
        for (const auto& s : servers_) u.push_back(s->url());
        return u;
    }
    NatsServer& server(std::size_t i) { return *servers_.at(i); }
    std::size_t size() const { return servers_.size(); }

private:
    std::vector<std::unique_ptr<NatsServer>> servers_;
};

}  // namespace chat::test
