// chat_bench as a process: against a real chat_server (and nats-server and
// redis-server when installed) with a tiny load, judged by its JSON and exit status.
#include <doctest/doctest.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include <netinet/in.h>
#include <arpa/inet.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <optional>
#include <regex>
#include <string>
#include <vector>

#include "utils/pki.hpp"

extern char** environ;

namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

// The program's path from the environment (meson sets it), else next to the
// build directory this test was built in (build/test/test_x -> build/NAME).
std::string program(const char* env, const char* name) {
    if (const char* path = std::getenv(env); path != nullptr && *path != '\0') return path;
    std::error_code ec;
    const auto self = std::filesystem::read_symlink("/proc/self/exe", ec);
    return ec ? std::string("./") + name : (self.parent_path().parent_path() / name).string();
}

// The first executable called `name` on PATH, or empty.
std::string on_path(const std::string& name) {
    const char* path = std::getenv("PATH");
    std::string dirs = path != nullptr ? path : "";
    dirs += ":/usr/sbin:/usr/bin";
    std::size_t start = 0;
    while (start <= dirs.size()) {
        const auto end = std::min(dirs.find(':', start), dirs.size());
        const std::filesystem::path candidate = std::filesystem::path(dirs.substr(start, end - start)) / name;
        if (!candidate.parent_path().empty() && access(candidate.c_str(), X_OK) == 0) return candidate.string();
        start = end + 1;
    }
    return {};
}

// A child process whose stdout and stderr we read; killed when it goes out of scope.
class Child {
public:
    explicit Child(const std::vector<std::string>& argv) {
        int out[2];
        REQUIRE(pipe2(out, O_CLOEXEC) == 0);
        posix_spawn_file_actions_t actions;
        posix_spawn_file_actions_init(&actions);
        posix_spawn_file_actions_adddup2(&actions, out[1], STDOUT_FILENO);
        posix_spawn_file_actions_adddup2(&actions, out[1], STDERR_FILENO);
        std::vector<char*> args;
        for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
        args.push_back(nullptr);
        const int rc = posix_spawn(&pid_, args[0], &actions, nullptr, args.data(), environ);
        posix_spawn_file_actions_destroy(&actions);
        close(out[1]);
        out_ = out[0];
        REQUIRE_MESSAGE(rc == 0, "cannot start " << argv[0]);
    }
    ~Child() {
        if (pid_ > 0 && !status_) {
            kill(pid_, SIGKILL);
            waitpid(pid_, nullptr, 0);
        }
        if (out_ >= 0) close(out_);
    }
    Child(const Child&) = delete;
    Child& operator=(const Child&) = delete;

    pid_t pid() const { return pid_; }

    // Reads output until `pattern` matches a line or `limit` passes; returns the first group.
    std::optional<std::string> wait_for_line(const std::regex& pattern, std::chrono::milliseconds limit) {
        const auto deadline = Clock::now() + limit;
        for (;;) {
            std::size_t eol;
            while ((eol = pending_.find('\n')) != std::string::npos) {
                const std::string line = pending_.substr(0, eol);
                pending_.erase(0, eol + 1);
                output_ += line + "\n";
                std::smatch m;
                if (std::regex_search(line, m, pattern)) return m.size() > 1 ? m[1].str() : line;
            }
            if (!read_some(deadline)) return std::nullopt;
        }
    }

    // Waits for the exit (reading all output) until `limit`; nullopt on timeout.
    std::optional<int> wait_exit(std::chrono::milliseconds limit) {
        const auto deadline = Clock::now() + limit;
        while (read_some(deadline)) {
        }
        output_ += pending_;
        pending_.clear();
        for (;;) {
            int status = 0;
            const pid_t r = waitpid(pid_, &status, WNOHANG);
            if (r == pid_) {
                status_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
                return status_;
            }
            if (Clock::now() >= deadline) return std::nullopt;
            poll(nullptr, 0, 5);
        }
    }

    const std::string& output() const { return output_; }

private:
    // False at EOF or the deadline.
    bool read_some(Clock::time_point deadline) {
        const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
        if (left <= 0) return false;
        pollfd p{out_, POLLIN, 0};
        if (poll(&p, 1, static_cast<int>(left)) <= 0) return false;
        char buf[4096];
        const ssize_t n = read(out_, buf, sizeof buf);
        if (n <= 0) return false;
        pending_.append(buf, static_cast<std::size_t>(n));
        return true;
    }

    pid_t pid_ = -1;
    int out_ = -1;
    std::string pending_;
    std::string output_;
    std::optional<int> status_;
};

// A JSON field of chat_bench's flat object, as text.
std::string field(const std::string& json, const std::string& name) {
    const std::regex re("\"" + name + "\": (\"[^\"]*\"|[^,}]+)");
    std::smatch m;
    return std::regex_search(json, m, re) ? m[1].str() : std::string("<missing>");
}

std::string json_line(const std::string& output) {
    const auto start = output.find("{\"");
    if (start == std::string::npos) return {};
    return output.substr(start, output.find('\n', start) - start);
}

// For servers that cannot report the port they picked: a port that was free a moment ago.
std::uint16_t free_port() {
    const int fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
    socklen_t len = sizeof addr;
    getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
    close(fd);
    return ntohs(addr.sin_port);
}

// Runs chat_bench with a small load (and `extra` arguments) and checks that everything arrived.
void check_small_run(const std::string& proto, std::uint16_t port, pid_t server_pid,
                     const std::vector<std::string>& extra = {}) {
    std::vector<std::string> argv{program("CHAT_BENCH", "chat_bench"), "--proto", proto, "--port", std::to_string(port),
                                  "--connections", "20", "--rooms", "2", "--publishers", "2", "--count", "200",
                                  "--warmup", "0", "--server-pid", std::to_string(server_pid), "--json",
                                  "--no-progress"};
    argv.insert(argv.end(), extra.begin(), extra.end());
    Child bench(argv);
    const auto status = bench.wait_exit(8s);
    INFO(bench.output());
    REQUIRE(status.has_value());
    CHECK(*status == 0);
    const std::string json = json_line(bench.output());
    CHECK(field(json, "ok") == "true");
    CHECK(field(json, "lost") == "0");
    CHECK(field(json, "published") == "200");
    // Two rooms of ten members: every message reaches ten.
    CHECK(field(json, "delivered") == "2000");
    CHECK(field(json, "errors") == "0");
    CHECK(std::stod(field(json, "p50_us")) > 0);
    CHECK(std::stod(field(json, "server_rss_kib")) > 0);
}

}  // namespace

TEST_SUITE("chat_bench process") {
    TEST_CASE("a small run against chat_server delivers every message to every member and says so in JSON") {
        Child server({program("CHAT_SERVER", "chat_server"), "--bind", "127.0.0.1", "--port", "0", "--rate", "0",
                      "--history", "0", "--log-level", "warn"});
        const auto port = server.wait_for_line(std::regex("listening on [0-9.]+:([0-9]+)"), 5s);
        REQUIRE(port);
        check_small_run("chat", static_cast<std::uint16_t>(std::stoi(*port)), server.pid());
    }

    TEST_CASE("a port list deals each room's members over the ports, and --publishers-on-first puts publishers first") {
        // One server listening once, named twice: the dealing and the per-port
        // counts without a cluster (test_bench_cluster runs it over real nodes).
        Child server({program("CHAT_SERVER", "chat_server"), "--bind", "127.0.0.1", "--port", "0", "--rate", "0",
                      "--history", "0", "--log-level", "warn"});
        const auto port = server.wait_for_line(std::regex("listening on [0-9.]+:([0-9]+)"), 5s);
        REQUIRE(port);
        Child bench({program("CHAT_BENCH", "chat_bench"), "--ports", *port + "," + *port, "--port", *port,
                     "--publishers-on-first", "--connections", "12", "--rooms", "1", "--publishers", "3", "--count",
                     "90", "--warmup", "0", "--server-pid", std::to_string(server.pid()), "--json", "--no-progress"});
        const auto status = bench.wait_exit(20s);
        INFO(bench.output());
        REQUIRE(status.has_value());
        CHECK(*status == 0);
        const std::string json = json_line(bench.output());
        CHECK(field(json, "ok") == "true");
        // --port first, then --ports. Ranks 0-2 publish (first port); 3..11 by rank mod 3.
        CHECK(field(json, "ports") == "\"" + *port + "," + *port + "," + *port + "\"");
        CHECK(field(json, "links_per_port") == "\"6,3,3\"");
        CHECK(field(json, "delivered") == "1080");
        CHECK(field(json, "lost") == "0");
        // The sums over --server-pid and the one process on its own.
        CHECK(field(json, "node_pid") == std::to_string(server.pid()));
        CHECK(field(json, "node_links") == "6");
        CHECK(std::stod(field(json, "server_rss_kib")) > 0);
    }

    TEST_CASE("--publishers-on-first with a single port is refused as a bad option") {
        Child bench({program("CHAT_BENCH", "chat_bench"), "--port", "7000", "--publishers-on-first", "--json",
                     "--no-progress"});
        const auto status = bench.wait_exit(5s);
        INFO(bench.output());
        REQUIRE(status.has_value());
        CHECK(*status == 2);
        CHECK(bench.output().find("needs more than one --port") != std::string::npos);
    }

    TEST_CASE("chat_bench counts the server going away as disconnects and exits non-zero") {
        Child server({program("CHAT_SERVER", "chat_server"), "--bind", "127.0.0.1", "--port", "0",
                      "--log-level", "warn"});
        const auto port = server.wait_for_line(std::regex("listening on [0-9.]+:([0-9]+)"), 5s);
        REQUIRE(port);
        Child bench({program("CHAT_BENCH", "chat_bench"), "--port", *port, "--connections", "10", "--idle",
                     "--duration", "3s", "--json", "--no-progress"});
        REQUIRE(bench.wait_for_line(std::regex("10 connections ready"), 5s));
        kill(server.pid(), SIGKILL);
        const auto status = bench.wait_exit(8s);
        INFO(bench.output());
        REQUIRE(status.has_value());
        CHECK(*status == 1);
        const std::string json = json_line(bench.output());
        CHECK(field(json, "ok") == "false");
        CHECK(field(json, "disconnects") == "10");
    }

    TEST_CASE("the NATS adapter delivers every message through nats-server when it is installed") {
        const std::string nats = on_path("nats-server");
        if (nats.empty()) {
            MESSAGE("nats-server not installed: skipped");
            return;
        }
        Child server({nats, "-a", "127.0.0.1", "-p", "-1"});
        const auto port = server.wait_for_line(std::regex("client connections on [0-9.]+:([0-9]+)"), 5s);
        REQUIRE(port);
        check_small_run("nats", static_cast<std::uint16_t>(std::stoi(*port)), server.pid());
    }

    TEST_CASE("the Redis adapter delivers every message through redis-server when it is installed") {
        const std::string redis = on_path("redis-server");
        if (redis.empty()) {
            MESSAGE("redis-server not installed: skipped");
            return;
        }
        const auto port = free_port();
        Child server({redis, "--bind", "127.0.0.1", "--port", std::to_string(port), "--protected-mode", "no",
                      "--save", "", "--appendonly", "no"});
        REQUIRE(server.wait_for_line(std::regex("Ready to accept connections"), 5s));
        check_small_run("redis", port, server.pid());
    }

#if PULSECHAT_HAVE_OPENSSL
    // chat_bench over TLS: its own TlsStream (an SSL on the descriptor), the
    // certificate checked against --ca and the host name, as a client must.
    TEST_CASE("over TLS (and wss) a small run against chat_server delivers every message, the certificate checked") {
        chat::test::Pki pki;
        Child server({program("CHAT_SERVER", "chat_server"), "--bind", "127.0.0.1", "--port", "0", "--rate", "0",
                      "--history", "0", "--log-level", "warn", "--tls-port", "0", "--tls-cert", pki.server.cert_file,
                      "--tls-key", pki.server.key_file, "--wss-port", "0"});
        const auto port = server.wait_for_line(std::regex("listening on [0-9.]+:([0-9]+) \\(tls\\)"), 5s);
        REQUIRE(port);
        const auto wss_port = server.wait_for_line(std::regex("listening on [0-9.]+:([0-9]+) \\(websocket tls"), 5s);
        REQUIRE(wss_port);
        check_small_run("chat", static_cast<std::uint16_t>(std::stoi(*port)), server.pid(),
                        {"--tls", "--ca", pki.ca.cert_file});
        // WebSocket over the same TLS stream: the upgrade, then binary messages (wss://).
        check_small_run("chat", static_cast<std::uint16_t>(std::stoi(*wss_port)), server.pid(),
                        {"--tls", "--ca", pki.ca.cert_file, "--ws"});
    }

    TEST_CASE("over TLS a certificate chat_bench cannot trust, or for another name, fails every link and says why") {
        chat::test::Pki pki;
        const auto elsewhere =
            chat::test::issue(pki.dir, "elsewhere", "elsewhere", chat::test::CertRole::server, &pki.ca,
                              "DNS:elsewhere.example");
        struct Case {
            const char* what;
            std::string cert, key, ca, reason;
        };
        const Case cases[] = {
            {"another CA", pki.server.cert_file, pki.server.key_file, pki.other_ca.cert_file,
             "certificate verify failed"},
            {"another name", elsewhere.cert_file, elsewhere.key_file, pki.ca.cert_file, "IP address mismatch"},
        };
        for (const auto& c : cases) {
            CAPTURE(c.what);
            Child server({program("CHAT_SERVER", "chat_server"), "--bind", "127.0.0.1", "--port", "0", "--log-level",
                          "warn", "--tls-port", "0", "--tls-cert", c.cert, "--tls-key", c.key});
            const auto port = server.wait_for_line(std::regex("listening on [0-9.]+:([0-9]+) \\(tls\\)"), 5s);
            REQUIRE(port);
            Child bench({program("CHAT_BENCH", "chat_bench"), "--port", *port, "--connections", "3", "--count", "10",
                         "--tls", "--ca", c.ca, "--json", "--no-progress"});
            const auto status = bench.wait_exit(8s);
            INFO(bench.output());
            REQUIRE(status.has_value());
            CHECK(*status != 0);
            const std::string json = json_line(bench.output());
            CHECK(field(json, "ok") == "false");
            CHECK(field(json, "delivered") == "0");
            CHECK(field(json, "first_error").find(c.reason) != std::string::npos);
            // --insecure takes the same server as it is.
            Child insecure({program("CHAT_BENCH", "chat_bench"), "--port", *port, "--connections", "3", "--count",
                            "10", "--warmup", "0", "--tls", "--insecure", "--json", "--no-progress"});
            const auto insecure_status = insecure.wait_exit(8s);
            INFO(insecure.output());
            REQUIRE(insecure_status.has_value());
            CHECK(*insecure_status == 0);
            CHECK(field(json_line(insecure.output()), "lost") == "0");
        }
    }

    TEST_CASE("over TLS the NATS adapter reads INFO in the clear, then delivers every message, when nats-server is installed") {
        const std::string nats = on_path("nats-server");
        if (nats.empty()) {
            MESSAGE("nats-server not installed: skipped");
            return;
        }
        chat::test::Pki pki;
        const std::string conf = pki.dir.file("nats.conf");
        {
            std::FILE* f = std::fopen(conf.c_str(), "w");
            REQUIRE(f != nullptr);
            std::fprintf(f, "tls {\n  cert_file: \"%s\"\n  key_file: \"%s\"\n}\n", pki.server.cert_file.c_str(),
                         pki.server.key_file.c_str());
            std::fclose(f);
        }
        Child server({nats, "-c", conf, "-a", "127.0.0.1", "-p", "-1"});
        const auto port = server.wait_for_line(std::regex("client connections on [0-9.]+:([0-9]+)"), 5s);
        REQUIRE(port);
        check_small_run("nats", static_cast<std::uint16_t>(std::stoi(*port)), server.pid(),
                        {"--tls", "--ca", pki.ca.cert_file});
    }

    TEST_CASE("over TLS the Redis adapter delivers every message through redis-server's TLS port when installed") {
        const std::string redis = on_path("redis-server");
        if (redis.empty()) {
            MESSAGE("redis-server not installed: skipped");
            return;
        }
        chat::test::Pki pki;
        const auto port = free_port();
        Child server({redis, "--bind", "127.0.0.1", "--port", "0", "--tls-port", std::to_string(port),
                      "--tls-cert-file", pki.server.cert_file, "--tls-key-file", pki.server.key_file,
                      "--tls-ca-cert-file", pki.ca.cert_file, "--tls-auth-clients", "no", "--protected-mode", "no",
                      "--save", "", "--appendonly", "no"});
        REQUIRE(server.wait_for_line(std::regex("Ready to accept connections"), 5s));
        check_small_run("redis", port, server.pid(), {"--tls", "--ca", pki.ca.cert_file});
    }
#endif  // PULSECHAT_HAVE_OPENSSL
}
