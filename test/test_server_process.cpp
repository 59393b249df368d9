// chat_server as a process: its command line, its stdout, signals and exit status.
#include <doctest/doctest.h>

#include <signal.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string_view>

#include "utils/live.hpp"
#include "utils/subprocess.hpp"

using namespace chat;
using namespace chat::test;

namespace {

// A chat_server process ($CHAT_SERVER, which meson sets), and where it says it listens.
class ServerProcess : public Subprocess {
public:
    explicit ServerProcess(std::vector<std::string> args) : Subprocess(with_program(std::move(args))) {}

    // The port from the first "listening on ADDRESS:PORT" line, or nullopt.
    std::optional<std::uint16_t> port(std::chrono::milliseconds limit = 5000ms) {
        // (Parsed by hand: std::regex trips a GCC 12 -Wmaybe-uninitialized
        // false positive under the sanitizers, and CI builds with -Werror.)
        static constexpr std::string_view prefix = "listening on ";
        const auto line = wait_for(prefix, limit);
        if (!line) return std::nullopt;
        const std::string endpoint = line->substr(line->find(prefix) + prefix.size());
        const auto colon = endpoint.rfind(':');
        if (colon == std::string::npos) return std::nullopt;
        address_ = endpoint.substr(0, colon);
        const int port = std::atoi(endpoint.c_str() + colon + 1);
        if (port <= 0 || port > 65535) return std::nullopt;
        return static_cast<std::uint16_t>(port);
    }
    const std::string& address() const { return address_; }

private:
    static std::vector<std::string> with_program(std::vector<std::string> args) {
        args.insert(args.begin(), program_path("CHAT_SERVER", "chat_server"));
        return args;
    }

    std::string address_;
};

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
}
