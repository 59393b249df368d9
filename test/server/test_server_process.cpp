// chat_server as a process: its command line, its stdout, signals and exit status.
#include <doctest/doctest.h>

#include <signal.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <memory>
#include <mutex>
#include <sstream>
#include <string_view>
#include <thread>

#include "utils/live.hpp"
#include "utils/server_process.hpp"
#include "utils/subprocess.hpp"

using namespace chat;
using namespace chat::test;

namespace {


// Runs chat_server with `args` to its end (bounded): status, stdout, stderr.
struct Outcome {
    std::optional<int> status;
    std::string out;
    std::string err;
};
Outcome run_to_end(std::vector<std::string> args) {
    ServerProcess p(std::move(args));
    Outcome o;
    o.status = p.wait_exit(5000ms);
    o.out = p.rest_of_stdout();  // nothing was read before: the rest is all of it
    o.err = p.all_stderr();
    return o;
}

// Runs `program` with `args` to its end (bounded): status, stdout, stderr.
Outcome run_program(const std::string& program, std::vector<std::string> args) {
    args.insert(args.begin(), program);
    Subprocess p(std::move(args));
    Outcome o;
    o.status = p.wait_exit(5000ms);
    o.out = p.rest_of_stdout();
    o.err = p.all_stderr();
    return o;
}

// chat_client and chat_bench, built next to chat_server.
std::string sibling_program(const char* name) {
    return (std::filesystem::path(program_path("CHAT_SERVER", "chat_server")).parent_path() / name).string();
}

// The state letter of process `pid` in /proc (T: stopped), or '?'.
char process_state(pid_t pid) {
    std::ifstream f("/proc/" + std::to_string(pid) + "/stat");
    const std::string stat((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    const auto paren = stat.rfind(')');
    if (paren == std::string::npos || paren + 2 >= stat.size()) return '?';
    return stat[paren + 2];
}

// Bytes waiting unread in the server's end of each TCP connection to
// `server_port` (the rx_queue column of /proc/net/tcp), by the client's port.
std::map<std::uint16_t, long> unread_at_server(std::uint16_t server_port) {
    std::map<std::uint16_t, long> unread;
    std::ifstream f("/proc/net/tcp");
    std::string line;
    std::getline(f, line);  // the header
    while (std::getline(f, line)) {
        std::istringstream in(line);
        std::string slot, local, remote, state, queues;
        in >> slot >> local >> remote >> state >> queues;
        if (state != "01" || local.find(':') == std::string::npos || remote.find(':') == std::string::npos ||
            queues.find(':') == std::string::npos)
            continue;  // 01: established
        if (std::stoul(local.substr(local.find(':') + 1), nullptr, 16) != server_port) continue;
        const auto client_port = std::stoul(remote.substr(remote.find(':') + 1), nullptr, 16);
        unread[static_cast<std::uint16_t>(client_port)] = std::stol(queues.substr(queues.find(':') + 1), nullptr, 16);
    }
    return unread;
}

// Plain TCP connections that send only what a test writes to them.
class RawConnections {
public:
    RawConnections(std::uint16_t port, std::size_t count) {
        sockaddr_in to{};
        to.sin_family = AF_INET;
        to.sin_port = htons(port);
        to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        try {
            for (std::size_t i = 0; i < count; ++i) {
                const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
                REQUIRE(fd >= 0);
                fds_.push_back(fd);
                REQUIRE(::connect(fd, reinterpret_cast<const sockaddr*>(&to), sizeof to) == 0);
                sockaddr_in me{};
                socklen_t length = sizeof me;
                REQUIRE(::getsockname(fd, reinterpret_cast<sockaddr*>(&me), &length) == 0);
                ports_.push_back(ntohs(me.sin_port));
            }
        } catch (...) {
            close();  // a failed REQUIRE throws: no destructor runs for a half-made object
            throw;
        }
    }
    ~RawConnections() { close(); }
    void close() {
        for (const int fd : fds_) ::close(fd);
        fds_.clear();
    }
    RawConnections(const RawConnections&) = delete;
    RawConnections& operator=(const RawConnections&) = delete;

    // One byte from each: the start of a frame, which the server waits to complete.
    void send_one_byte_each() {
        const std::string hello = encode(Hello{"noise", {}, {}});
        for (const int fd : fds_) CHECK(::send(fd, hello.data(), 1, MSG_NOSIGNAL) == 1);
    }
    const std::vector<std::uint16_t>& ports() const { return ports_; }

private:
    std::vector<int> fds_;
    std::vector<std::uint16_t> ports_;
};

// Writes HEARTBEATs to some clients' sockets from a thread of its own:
// `beats` of them in one write, every `every` (zero: as fast as the server
// takes them), while the test's thread reads. The writes are raw non-blocking
// send()s under a mutex, each wait for room bounded and given up on stop()
// (frames the test sends meanwhile go through send() here too), so the
// TestClient objects are only ever touched by the test's thread.
class Heartbeater {
public:
    explicit Heartbeater(std::chrono::milliseconds every, std::size_t beats = 1) : every_(every) {
        for (std::size_t i = 0; i < beats; ++i) blob_ += encode(Heartbeat{});
    }
    ~Heartbeater() { stop(); }
    Heartbeater(const Heartbeater&) = delete;
    Heartbeater& operator=(const Heartbeater&) = delete;

    // Before start(): the client's index.
    std::size_t add(TestClient& c) {
        fds_.push_back(c.socket().native_handle());
        beating_.push_back(true);
        return fds_.size() - 1;
    }
    void start() {
        thread_ = std::thread([this] {
            while (running_) {
                bool wrote = false;
                {
                    std::lock_guard lock(mutex_);
                    for (std::size_t i = 0; i < fds_.size(); ++i) {
                        if (!beating_[i]) continue;
                        if (write(i, blob_)) {
                            ++sent_;
                            wrote = true;
                        } else if (running_) {
                            beating_[i] = false;  // the server closed this one
                        }
                    }
                }
                // The pace of the heartbeats, not a synchronisation.
                if (every_.count() > 0 || !wrote) std::this_thread::sleep_for(std::max(every_, 1ms));
            }
        });
    }
    // Client `i` sends no more heartbeats from now on (it stays connected)...
    void silence(std::size_t i) {
        std::lock_guard lock(mutex_);
        beating_[i] = false;
    }
    // ...or again.
    void resume(std::size_t i) {
        std::lock_guard lock(mutex_);
        beating_[i] = true;
    }
    bool send(std::size_t i, const Message& m) {
        std::lock_guard lock(mutex_);
        return write(i, encode(m));
    }
    void stop() {
        running_ = false;
        if (thread_.joinable()) thread_.join();
    }
    // Writes done (of `beats` heartbeats each).
    std::size_t sent() const { return sent_; }

private:
    // With mutex_ held. False once the server closed, or on stop().
    bool write(std::size_t i, std::string_view frame) {
        while (!frame.empty() && running_) {
            pollfd p{fds_[i], POLLOUT, 0};
            if (::poll(&p, 1, 50) == 0) continue;
            const ssize_t n = ::send(fds_[i], frame.data(), frame.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
            if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) continue;
            if (n <= 0) return false;
            frame.remove_prefix(static_cast<std::size_t>(n));
        }
        return frame.empty();
    }

    const std::chrono::milliseconds every_;
    std::string blob_;
    std::vector<int> fds_;
    std::vector<bool> beating_;
    std::mutex mutex_;
    std::atomic<bool> running_{true};
    std::atomic<std::size_t> sent_{0};
    std::thread thread_;
};

std::chrono::milliseconds since(Clock::time_point t) {
    return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t);
}

const std::vector<std::string> base_args = {"--bind", "127.0.0.1", "--port", "0", "--rate", "0",
                                            "--heartbeat-interval", "1s", "--heartbeat-timeout", "5s"};

std::vector<std::string> with(std::vector<std::string> extra) {
    auto args = base_args;
    args.insert(args.end(), extra.begin(), extra.end());
    return args;
}

// A reader and a member that never reads, in one room, with `messages` of
// 60KiB sent: what the kernel cannot take waits in the sleeper's queue.
struct StuckRoom {
    std::unique_ptr<TestClient> alice;
    std::unique_ptr<TestClient> sleeper;
};
StuckRoom stuck_room(std::uint16_t port, int messages) {
    StuckRoom r;
    r.alice = std::make_unique<TestClient>(port);
    REQUIRE(r.alice->login("alice"));
    REQUIRE(r.alice->join("room"));
    r.sleeper = std::make_unique<TestClient>(port, 4096);
    REQUIRE(r.sleeper->login("sleeper"));
    REQUIRE(r.sleeper->join("room"));
    REQUIRE(r.alice->read_until<Presence>());
    const std::string big(60 * 1024, 'x');
    for (int i = 0; i < messages; ++i) {
        r.alice->send(Say{"room", std::to_string(i) + big});
        REQUIRE(r.alice->read_until<Deliver>());
    }
    return r;
}

}  // namespace

TEST_SUITE("chat_server process") {
    TEST_CASE("chat_server --port 0 prints the address and port it listens on, and serves there") {
        ServerProcess server(base_args);
        auto port = server.port();
        REQUIRE(port);
        CHECK(*port != 0);
        CHECK(server.address() == "127.0.0.1");
        TestClient c(*port);
        auto w = c.login("alice");
        REQUIRE(w);
        CHECK(w->heartbeat_interval_ms == 1000);
        CHECK(w->heartbeat_timeout_ms == 5000);
        // The log says at start how fast a dead peer is noticed.
        server.signal(SIGTERM);
        REQUIRE(server.wait_exit(3000ms));
        CHECK(server.all_stderr().find("noticed within 5s") != std::string::npos);
    }

    TEST_CASE("SIGTERM delivers what was queued, then BYE, and the process exits 0 within the drain timeout") {
        ServerProcess server(with({"--queue-limit", "16MiB", "--drain-timeout", "4s", "--write-timeout", "4s"}));
        auto port = server.port();
        REQUIRE(port);
        constexpr int messages = 140;  // 8.4MB: more than the kernel buffers hold
        auto room = stuck_room(*port, messages);
        const auto start = Clock::now();
        server.signal(SIGTERM);
        auto got = room.sleeper->read_until_closed(4000ms);
        CHECK(room.sleeper->closed());
        std::vector<int> order;
        for (const auto& m : got)
            if (auto* d = std::get_if<Deliver>(&m)) order.push_back(std::stoi(d->text));
        REQUIRE(!got.empty());
        REQUIRE(std::holds_alternative<Bye>(got.back()));
        CHECK(std::get<Bye>(got.back()).reason == "server shutting down");
        REQUIRE(order.size() == messages);
        for (int i = 0; i < messages; ++i) CHECK(order[i] == i);
        // Alice, who reads, got BYE too.
        CHECK(room.alice->read_until<Bye>(1000ms));
        auto status = server.wait_exit(4000ms - since(start));
        REQUIRE(status);
        CHECK(*status == 0);
    }

    TEST_CASE("SIGTERM with a client that never reads still exits 0 when the drain timeout ends") {
        ServerProcess server(with({"--queue-limit", "16MiB", "--drain-timeout", "1s", "--write-timeout", "10s"}));
        auto port = server.port();
        REQUIRE(port);
        auto room = stuck_room(*port, 140);
        const auto start = Clock::now();
        server.signal(SIGTERM);
        auto status = server.wait_exit(3000ms);
        const auto took = since(start);
        REQUIRE(status);
        CHECK(*status == 0);
        CHECK(took >= 900ms);  // it did wait for the stuck client
        CHECK(took <= 1500ms);
        CHECK(server.all_stderr().find("drain timeout") != std::string::npos);
    }

    TEST_CASE("SIGTERM with no clients exits 0 at once") {
        ServerProcess server(base_args);
        REQUIRE(server.port());
        server.signal(SIGTERM);
        auto status = server.wait_exit(1000ms);
        REQUIRE(status);
        CHECK(*status == 0);
    }

    TEST_CASE("under systemd: READY=1 once listening, WATCHDOG=1 from the event loop, STOPPING=1 on SIGTERM") {
#if PULSECHAT_HAVE_SYSTEMD
        // What systemd does for Type=notify: a datagram socket in
        // $NOTIFY_SOCKET, and $WATCHDOG_USEC for WatchdogSec=.
        const std::string path = "/tmp/pulsechat_notify_" + std::to_string(::getpid());
        ::unlink(path.c_str());
        const int fd = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        REQUIRE(fd >= 0);
        sockaddr_un addr{};
        addr.sun_family = AF_UNIX;
        std::snprintf(addr.sun_path, sizeof addr.sun_path, "%s", path.c_str());
        REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
        // The next datagram, within `limit`.
        const auto next = [fd](std::chrono::milliseconds limit) -> std::optional<std::string> {
            pollfd p{fd, POLLIN, 0};
            if (::poll(&p, 1, static_cast<int>(limit.count())) != 1) return std::nullopt;
            char buf[512];
            const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
            if (n <= 0) return std::nullopt;
            return std::string(buf, static_cast<std::size_t>(n));
        };
        {
            ServerProcess server(base_args, {"NOTIFY_SOCKET=" + path, "WATCHDOG_USEC=400000"});
            REQUIRE(server.port());
            auto ready = next(3000ms);
            REQUIRE(ready);
            CHECK(ready->find("READY=1") != std::string::npos);
            // Every 200 ms (half of WatchdogSec=0.4s): three in well under 2 s.
            const auto start = Clock::now();
            int pets = 0;
            while (pets < 3 && Clock::now() - start < 2000ms) {
                auto m = next(1000ms);
                if (m && *m == "WATCHDOG=1") ++pets;
            }
            CHECK(pets == 3);
            server.signal(SIGTERM);
            bool stopping = false;
            for (int i = 0; i < 10 && !stopping; ++i) {
                auto m = next(1000ms);
                if (!m) break;
                stopping = m->find("STOPPING=1") != std::string::npos;
            }
            CHECK(stopping);
            auto status = server.wait_exit(3000ms);
            REQUIRE(status);
            CHECK(*status == 0);
        }
        ::close(fd);
        ::unlink(path.c_str());
#else
        MESSAGE("built without libsystemd (meson option systemd): nothing to notify");
#endif
    }

    TEST_CASE("SIGTERM turns /readyz to 503 before the drain ends; /healthz answers through it") {
#if PULSECHAT_HAVE_HTTP_PARSER
        ServerProcess server(with({"--admin-port", "0", "--drain-timeout", "3s"}));
        auto port = server.port();
        REQUIRE(port);
        const auto admin_line = server.wait_for("(admin)", 3000ms);
        REQUIRE(admin_line);
        const std::string endpoint = admin_line->substr(0, admin_line->rfind(" (admin)"));
        const int admin = std::atoi(endpoint.c_str() + endpoint.rfind(':') + 1);
        REQUIRE(admin > 0);
        // One HTTP GET (Connection: close): the status code.
        const auto status_of = [admin](const std::string& path) {
            asio::io_context io;
            asio::ip::tcp::socket s(io);
            s.connect({asio::ip::make_address("127.0.0.1"), static_cast<std::uint16_t>(admin)});
            const std::string request = "GET " + path + " HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
            asio::write(s, asio::buffer(request));
            std::string reply;
            asio::error_code ec;
            asio::read(s, asio::dynamic_buffer(reply), ec);
            return reply.size() > 12 ? std::atoi(reply.c_str() + 9) : 0;
        };
        CHECK(status_of("/readyz") == 200);
        // A client that reads its BYE but never closes: the server waits for
        // its EOF, so the drain is still on when the probe comes.
        TestClient alice(*port);
        REQUIRE(alice.login("alice"));
        server.signal(SIGTERM);
        REQUIRE(alice.read_until<Bye>(2000ms));
        CHECK(status_of("/readyz") == 503);
        CHECK(status_of("/healthz") == 200);
        CHECK(server.state() == "running");  // the drain was not over
        auto status = server.wait_exit(4000ms);
        REQUIRE(status);
        CHECK(*status == 0);
#else
        MESSAGE("built without the admin listener (libhttp-parser)");
#endif
    }

    TEST_CASE("--log-format json: every line is one JSON object, with the session's fields, whatever a client sent") {
        ServerProcess server(with({"--log-format", "json"}));
        auto port = server.port();
        REQUIRE(port);
        {
            TestClient eve(*port);
            REQUIRE(eve.login("eve"));
            REQUIRE(eve.join("lobby"));
            // Quotes, a newline and an escape sequence in a string the server logs
            // (invalid UTF-8 never gets this far: the decoder refuses it).
            eve.send(Bye{std::string("\"}\n{\"level\":\"fake\x1b[2J")});
            eve.read_until_closed(2000ms);
        }
        server.signal(SIGTERM);
        REQUIRE(server.wait_exit(3000ms));
        const std::string log = server.all_stderr();
        char path[] = "/tmp/pulsechat_jsonlog_XXXXXX";
        const int fd = ::mkstemp(path);
        REQUIRE(fd >= 0);
        ::close(fd);
        std::ofstream(path) << log;
        // Python's json module as the independent parser: every line an object
        // with time, level and message; the BYE line with its session fields.
        const std::string check = std::string("python3 -c '") +
                                  "import json,sys\n"
                                  "lines=[json.loads(l) for l in open(sys.argv[1]) if l.strip()]\n"
                                  "assert lines and all({\"time\",\"level\",\"message\"} <= set(l) for l in lines)\n"
                                  "bye=[l for l in lines if l.get(\"event\")==\"said BYE\"]\n"
                                  "assert len(bye)==1 and bye[0][\"nick\"]==\"eve\" and bye[0][\"session\"]>0 and "
                                  "bye[0][\"peer\"].startswith(\"127.0.0.1:\"), bye\n"
                                  "assert any(l[\"message\"].startswith(\"listening on\") for l in lines)\n"
                                  "' " + path;
        const int rc = std::system(check.c_str());
        CAPTURE(log);
        CHECK(rc == 0);
        std::remove(path);
    }

    TEST_CASE("a second signal during the drain exits at once") {
        ServerProcess server(with({"--queue-limit", "16MiB", "--drain-timeout", "10s", "--write-timeout", "10s"}));
        auto port = server.port();
        REQUIRE(port);
        auto room = stuck_room(*port, 140);
        server.signal(SIGTERM);
        // Still draining (the sleeper takes nothing): the process must not end yet.
        CHECK_FALSE(server.wait_exit(300ms));
        const auto start = Clock::now();
        server.signal(SIGINT);
        auto status = server.wait_exit(2000ms);
        REQUIRE(status);
        CHECK(since(start) <= 500ms);
        CHECK(*status != 0);  // the drain did not finish
        CHECK(*status < 128);  // it exited, rather than being killed by the signal
    }

    TEST_CASE("wrong command lines print a message and exit non-zero") {
        const std::vector<std::pair<std::vector<std::string>, std::string>> cases = {
            {{"--port", "abc"}, "--port"},
            {{"--port", "70000"}, "--port"},
            {{"--heartbeat-timeout", "1x"}, "--heartbeat-timeout"},
            {{"--heartbeat-interval", "2s", "--heartbeat-timeout", "1s"}, "--heartbeat-timeout"},
            {{"--heartbeat-interval", "10ms"}, "--heartbeat-interval"},
            {{"--no-such-option"}, "--no-such-option"},
            {{"--threads", "0"}, "--threads"},
            {{"--queue-limit", "1KiB"}, "--queue-limit"},
            {{"--max-frame", "lots"}, "--max-frame"},
            {{"--tcp-keepalive", "10,5"}, "--tcp-keepalive"},
            {{"--tcp-user-timeout", "soon"}, "--tcp-user-timeout"},
            {{"--log-level", "loud"}, "--log-level"},
            {{"--config", "/nonexistent/pulsechat.toml"}, "pulsechat.toml"},
        };
        for (const auto& [args, mentions] : cases) {
            CAPTURE(args.front());
            auto o = run_to_end(args);
            REQUIRE(o.status);
            CHECK(*o.status != 0);
            CHECK(o.out.find("listening on") == std::string::npos);
            CAPTURE(o.err);
            CHECK((o.err + o.out).find(mentions) != std::string::npos);
        }
    }

    TEST_CASE("a port in use is reported and exits non-zero") {
        ServerProcess first(base_args);
        auto port = first.port();
        REQUIRE(port);
        auto o = run_to_end({"--bind", "127.0.0.1", "--port", std::to_string(*port)});
        REQUIRE(o.status);
        CHECK(*o.status != 0);
        CHECK(o.err.find("cannot listen") != std::string::npos);
    }

    TEST_CASE("--help lists every option with its default") {
        auto o = run_to_end({"--help"});
        REQUIRE(o.status);
        CHECK(*o.status == 0);
        const std::vector<std::pair<std::string, std::string>> options = {
            {"--port", "=7000"},
            {"--bind", "=0.0.0.0"},
            {"--name", "=pulsechat"},
            {"--threads", "=1"},
            {"--handshake-timeout", "=10s"},
            {"--heartbeat-interval", "=5s"},
            {"--heartbeat-timeout", "=15s"},
            {"--write-timeout", "=10s"},
            {"--drain-timeout", "=5s"},
            {"--tcp-keepalive", "off by default"},
            {"--tcp-user-timeout", "off by default"},
            {"--history", "=100"},
            {"--queue-limit", "=4MiB"},
            {"--max-frame", "=64KiB"},
            {"--rate", "=20"},
            {"--burst", "=40"},
            {"--rate-strikes", "=10"},
            {"--max-connections", "=100000"},
            {"--max-per-ip", "=0"},
            {"--max-rooms-per-session", "=64"},
            {"--log-level", "=info"},
            {"--admin-port", "/metrics"},
            {"--admin-bind", "=127.0.0.1"},
            {"--tls-coalesce", "=1ms"},
            {"--config", "TOML"},
        };
        for (const auto& [name, shown] : options) {
            CAPTURE(name);
            const auto at = o.out.find(name + " ");
            REQUIRE(at != std::string::npos);
            // The default (or "off by default") follows on the option's own entry.
            const auto next = o.out.find("\n  -", at);
            CHECK(o.out.substr(at, next - at).find(shown) != std::string::npos);
        }
    }

    TEST_CASE("--config reads the options from a TOML file") {
        const auto path = std::filesystem::temp_directory_path() /
                          ("pulsechat_test_" + std::to_string(::getpid()) + ".toml");
        {
            std::ofstream f(path);
            f << "# written by test_server_process\n"
                 "bind = \"127.0.0.1\"\n"
                 "port = 0\n"
                 "name = \"from-file\"\n"
                 "heartbeat-interval = \"300ms\"\n"
                 "heartbeat-timeout = \"900ms\"\n"
                 "max-frame = \"8KiB\"\n";
        }
        SUBCASE("the file's settings apply") {
            ServerProcess server({"--config", path.string()});
            auto port = server.port();
            REQUIRE(port);
            TestClient c(*port);
            auto w = c.login("alice");
            REQUIRE(w);
            CHECK(w->heartbeat_interval_ms == 300);
            CHECK(w->heartbeat_timeout_ms == 900);
            CHECK(w->max_frame == 8192);
            CHECK(w->server_name == "from-file");
        }
        SUBCASE("the command line wins over the file") {
            ServerProcess server({"--config", path.string(), "--heartbeat-timeout", "2s"});
            auto port = server.port();
            REQUIRE(port);
            TestClient c(*port);
            auto w = c.login("alice");
            REQUIRE(w);
            CHECK(w->heartbeat_interval_ms == 300);
            CHECK(w->heartbeat_timeout_ms == 2000);
        }
        SUBCASE("a bad value in the file is refused like one on the command line") {
            std::ofstream(path, std::ios::app) << "history = \"many\"\n";
            auto o = run_to_end({"--config", path.string()});
            REQUIRE(o.status);
            CHECK(*o.status != 0);
            CHECK(o.err.find("history") != std::string::npos);
        }
        std::filesystem::remove(path);
    }

    TEST_CASE("a client whose heartbeats wait unread while the server is stopped is not expired") {
        ServerProcess server({"--bind", "127.0.0.1", "--port", "0", "--rate", "0", "--heartbeat-interval", "200ms",
                              "--heartbeat-timeout", "600ms", "--log-level", "info"});
        auto port = server.port();
        REQUIRE(port);
        // Connections that will make noise while the server is stopped, so
        // that it finds more ready sockets than it takes from one epoll_wait
        // (asio: 128), the live client's among the later ones: its watchdog
        // then runs before its reader, and only the unread-bytes check saves
        // it. (Without the noise the reader may come first; the client must
        // survive either way.)
        RawConnections noise(*port, 200);
        // Both keep the session alive while the test sets up, then the thread takes over.
        TestClient live(*port);
        live.keep_alive(100ms);
        REQUIRE(live.login("live"));
        REQUIRE(live.join("room"));
        TestClient dead(*port);
        dead.keep_alive(100ms);
        REQUIRE(dead.login("dead"));  // the server accepted the noise before (one acceptor, in order)
        live.keep_alive(0ms);
        dead.keep_alive(0ms);
        Heartbeater beater(100ms);
        const auto live_beats = beater.add(live);
        const auto dead_beats = beater.add(dead);
        beater.start();
        REQUIRE(TestServer::eventually([&] { return beater.sent() >= 6; }, 3000ms));

        // Both fall silent and the server reads what they sent; then it stops.
        beater.silence(live_beats);
        beater.silence(dead_beats);
        const auto live_port = live.socket().local_endpoint().port();
        const auto dead_port = dead.socket().local_endpoint().port();
        REQUIRE(TestServer::eventually([&] {
            const auto unread = unread_at_server(*port);
            return unread.count(live_port) == 1 && unread.at(live_port) == 0 && unread.count(dead_port) == 1 &&
                   unread.at(dead_port) == 0;
        }));
        server.signal(SIGSTOP);
        const auto stopped = Clock::now();
        REQUIRE(TestServer::eventually([&] { return process_state(server.pid()) == 'T'; }, 2000ms));
        // A deliberate pause past the sessions' next timer (a PING is due
        // within 200ms), then the noise, then the live client's heartbeats
        // (it was silent for less than the 600ms timeout), which pile up
        // unread in the stopped server's socket buffer. The silent client
        // stays silent: the control.
        std::this_thread::sleep_for(350ms);
        noise.send_one_byte_each();
        REQUIRE(TestServer::eventually([&] {
            const auto unread = unread_at_server(*port);
            return std::all_of(noise.ports().begin(), noise.ports().end(), [&](std::uint16_t p) {
                const auto it = unread.find(p);
                return it != unread.end() && it->second > 0;
            });
        }));
        const std::size_t beats_before = beater.sent();
        beater.resume(live_beats);
        // The rest of the pause: 1.5s in all, well past the timeout.
        std::this_thread::sleep_for(1500ms - (Clock::now() - stopped));
        CHECK(beater.sent() >= beats_before + 3);  // the live client did write while the server was stopped
        server.signal(SIGCONT);
        REQUIRE(TestServer::eventually([&] { return process_state(server.pid()) != 'T'; }, 2000ms));
        const auto continued = Clock::now();

        // The silent client is expired, within the timeout (and a margin) of the server running again.
        auto expiry = dead.read_until<Error>(3000ms);
        REQUIRE(expiry);
        CHECK(expiry->code == ErrorCode::heartbeat_timeout);
        CHECK(expiry->fatal);
        CHECK(since(continued) < 2000ms);
        dead.read_until_closed(2000ms);
        CHECK(dead.closed());

        // The live one is not: for twice the timeout it gets PINGs and no ERROR.
        const auto got = live.read_until_closed(1200ms);
        CHECK_FALSE(live.closed());
        std::size_t pings = 0;
        for (const auto& m : got) {
            if (std::holds_alternative<Ping>(m)) ++pings;
            if (const auto* e = std::get_if<Error>(&m)) FAIL_CHECK("the live client got ERROR " << e->reason);
        }
        CHECK(pings >= 2);
        REQUIRE(beater.send(live_beats, Say{"room", "still here"}));
        auto d = live.read_until<Deliver>(3000ms);
        REQUIRE(d);
        CHECK(d->text == "still here");
        beater.stop();

        noise.close();
        server.signal(SIGTERM);
        CHECK(live.read_until<Bye>(3000ms));
        live.shutdown_send();  // an EOF for the server's drain: it need not wait
        CHECK(server.wait_exit(5000ms) == 0);
        const std::string log = server.all_stderr();
        CAPTURE(log);
        CHECK(log.find("'dead': heartbeat timeout") != std::string::npos);
        CHECK(log.find("'live': heartbeat timeout") == std::string::npos);
        // The watchdog did come first for the live client, and said why it let it live.
        CHECK(log.find("'live': deadline passed with") != std::string::npos);
        CHECK(log.find("not expiring it") != std::string::npos);
    }

    TEST_CASE("every bad command line exits 2 with a message") {
        const std::vector<std::pair<std::string, std::string>> programs = {
            {"chat_server", program_path("CHAT_SERVER", "chat_server")},
            {"chat_client", sibling_program("chat_client")},
            {"chat_bench", sibling_program("chat_bench")},
        };
        for (const auto& [name, path] : programs) {
            CAPTURE(name);
            REQUIRE(std::filesystem::exists(path));
            // An unknown option, a missing value, a value of the wrong type.
            const std::vector<std::pair<std::vector<std::string>, std::vector<std::string>>> cases = {
                {{"--no-such-option"}, {"--no-such-option"}},
                {{"--port"}, {"--port"}},
                {{"--port", "abc"}, {"--port", "abc"}},
            };
            for (const auto& [args, mentions] : cases) {
                CAPTURE(args.back());
                const auto o = run_program(path, args);
                REQUIRE(o.status);
                CHECK(*o.status == 2);
                CAPTURE(o.err);
                CAPTURE(o.out);
                for (const auto& m : mentions) CHECK(o.err.find(m) != std::string::npos);
            }
            const auto help = run_program(path, {"--help"});
            REQUIRE(help.status);
            CHECK(*help.status == 0);
            CHECK(help.out.find("--port") != std::string::npos);
        }
        // chat_server's own checks of the values it was given.
        const std::vector<std::pair<std::vector<std::string>, std::string>> checked = {
            {{"--hub-backlog", "3"}, "--hub-backlog"},
            {{"--history-memory", "1KiB"}, "--history-memory"},
        };
        for (const auto& [args, mentions] : checked) {
            CAPTURE(args.front());
            auto o = run_to_end(with(args));
            REQUIRE(o.status);
            CHECK(*o.status == 2);
            CHECK(o.out.find("listening on") == std::string::npos);
            CAPTURE(o.err);
            CHECK(o.err.find(mentions) != std::string::npos);
        }
    }

    TEST_CASE("a SIGTERM drain sends BYE to a client whose input is unread and the client reads it") {
        ServerProcess server(with({"--queue-limit", "16MiB", "--drain-timeout", "4s"}));
        auto port = server.port();
        REQUIRE(port);
        // The sleeper (a 4KiB receive buffer) has 600KiB of room traffic
        // waiting for it: at the end of the drain, the BYE and what precedes
        // it still sit in the server's kernel send buffer.
        auto room = stuck_room(*port, 10);
        // It sends HEARTBEATs as fast as the server takes them, so there is
        // unread input at the server whenever it closes. Closing with unread
        // input resets the connection, and a reset throws away what the
        // kernel had not sent yet: the last DELIVERs and the BYE.
        Heartbeater flood(0ms, 2048);
        flood.add(*room.sleeper);
        flood.start();
        REQUIRE(TestServer::eventually([&] { return flood.sent() >= 20; }, 3000ms));
        const auto start = Clock::now();
        server.signal(SIGTERM);
        // The client goes on sending until it sees the end of the stream.
        const auto got = room.sleeper->read_until_closed(4000ms);
        flood.stop();
        // Both answer the end with theirs, so the drain need not wait for it.
        room.sleeper->shutdown_send();
        CHECK(room.alice->read_until<Bye>(3000ms));
        room.alice->shutdown_send();
        CHECK(room.sleeper->closed());
        CHECK_MESSAGE(room.sleeper->close_reason() == asio::error::eof, room.sleeper->close_reason().message());
        std::vector<int> order;
        for (const auto& m : got)
            if (const auto* d = std::get_if<Deliver>(&m)) order.push_back(std::stoi(d->text));
        CHECK(order.size() == 10);
        for (std::size_t i = 0; i < order.size(); ++i) CHECK(order[i] == static_cast<int>(i));
        REQUIRE(!got.empty());
        const auto* bye = std::get_if<Bye>(&got.back());
        REQUIRE(bye != nullptr);
        CHECK(bye->reason == "server shutting down");
        auto status = server.wait_exit(4000ms);
        REQUIRE(status);
        CHECK(*status == 0);
        CHECK(since(start) < 2000ms);  // the drain ended with the clients, not at the drain timeout
        CHECK(server.all_stderr().find("drain timeout") == std::string::npos);
    }
}
