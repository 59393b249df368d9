// chat_client as a process, against a real chat_server process: script mode,
// --json, heartbeats, reconnecting, exit codes, and the interactive console in tmux.
#include <doctest/doctest.h>

#include <poll.h>

#include <algorithm>
#include <array>
#include <fstream>
#include <map>
#include <memory>
#include <thread>

#include <asio.hpp>
#include <asio/experimental/as_tuple.hpp>

#include "chat/proto/protocol.hpp"
#include "utils/subprocess.hpp"

using namespace chat;
using namespace chat::test;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

namespace {

// Short heartbeats so that the suite is fast; the client learns them from WELCOME.
constexpr auto heartbeat_interval = 100ms;
constexpr auto heartbeat_timeout = 500ms;
// "Within the timeout + 10%".
constexpr auto detection_bound = heartbeat_timeout + heartbeat_timeout / 10;

std::chrono::milliseconds since(Clock::time_point t) {
    return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t);
}

// A chat_server process on 127.0.0.1 (port 0 unless given).
class ServerUnderTest {
public:
    explicit ServerUnderTest(std::vector<std::string> extra = {}, std::uint16_t port = 0) {
        std::vector<std::string> args = {program_path("CHAT_SERVER", "chat_server"),
                                         "--bind",
                                         "127.0.0.1",
                                         "--port",
                                         std::to_string(port),
                                         "--rate",
                                         "0",
                                         "--heartbeat-interval",
                                         std::to_string(heartbeat_interval.count()) + "ms",
                                         "--heartbeat-timeout",
                                         std::to_string(heartbeat_timeout.count()) + "ms"};
        args.insert(args.end(), extra.begin(), extra.end());
        process = std::make_unique<Subprocess>(args);
        const auto line = process->wait_for("listening on", 5s);
        REQUIRE_MESSAGE(line, "chat_server did not start: " << process->all_stderr());
        this->port = static_cast<std::uint16_t>(std::stoi(line->substr(line->rfind(':') + 1)));
    }

    std::unique_ptr<Subprocess> process;
    std::uint16_t port = 0;
};

// A chat_client in script mode (stdin is a pipe the test keeps open), --json unless `extra` says otherwise.
std::unique_ptr<Subprocess> start_client(std::uint16_t port, const std::string& nick,
                                         std::vector<std::string> extra = {"--json"}) {
    std::vector<std::string> args = {program_path("CHAT_CLIENT", "chat_client"), "--port", std::to_string(port),
                                     "--nick", nick};
    args.insert(args.end(), extra.begin(), extra.end());
    return std::make_unique<Subprocess>(args);
}

// The value of "key" in one of the client's JSON lines: a string (escapes
// undone for what the tests use) or a number or boolean as written.
std::optional<std::string> field(const std::string& line, std::string_view key) {
    const std::string quoted = "\"" + std::string(key) + "\":";
    auto at = line.find(quoted);
    if (at == std::string::npos) return std::nullopt;
    at += quoted.size();
    if (at >= line.size()) return std::nullopt;
    if (line[at] != '"') {
        const auto end = line.find_first_of(",}", at);
        return line.substr(at, end - at);
    }
    std::string value;
    for (std::size_t i = at + 1; i < line.size(); ++i) {
        if (line[i] == '\\' && i + 1 < line.size()) {
            value.push_back(line[++i]);
            continue;
        }
        if (line[i] == '"') return value;
        value.push_back(line[i]);
    }
    return std::nullopt;
}

// A predicate: the line's fields have these values.
std::function<bool(const std::string&)> has(std::map<std::string, std::string> want) {
    return [want = std::move(want)](const std::string& line) {
        for (const auto& [key, value] : want) {
            if (field(line, key) != value) return false;
        }
        return true;
    };
}

std::size_t count_lines(const std::string& text) {
    return static_cast<std::size_t>(std::count(text.begin(), text.end(), '\n'));
}

// True if `out` has a line "[HH:MM:SS] " + `rest`. (Checked by hand:
// std::regex trips GCC 12's -Wmaybe-uninitialized under the sanitizers.)
bool has_clock_line(const std::string& out, std::string_view rest) {
    std::size_t start = 0;
    while (start < out.size()) {
        auto end = out.find('\n', start);
        if (end == std::string::npos) end = out.size();
        const std::string_view line(out.data() + start, end - start);
        start = end + 1;
        if (line.size() != 11 + rest.size() || line.substr(11) != rest) continue;
        const auto digit = [&](std::size_t i) { return line[i] >= '0' && line[i] <= '9'; };
        if (line[0] == '[' && digit(1) && digit(2) && line[3] == ':' && digit(4) && digit(5) && line[6] == ':' &&
            digit(7) && digit(8) && line.substr(9, 2) == "] ")
            return true;
    }
    return false;
}

// A port nobody listens on: bound once, then released.
std::uint16_t unused_port() {
    asio::io_context io;
    asio::ip::tcp::acceptor acceptor(io, asio::ip::tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
    return acceptor.local_endpoint().port();
}

// A TCP relay between a client and the server that can go deaf: the
// connections open at that moment keep carrying the client's frames to the
// server but drop everything the server sends back, and when the client hangs
// up, the relay keeps the server's side alive with HEARTBEATs. To the client
// the server looks dead; to the server the old session looks well.
class Relay {
public:
    explicit Relay(std::uint16_t upstream)
        : acceptor_(io_, asio::ip::tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0)), upstream_(upstream) {
        port_ = acceptor_.local_endpoint().port();
        spawn(accept_loop());
        thread_ = std::thread([this] { io_.run(); });
    }
    ~Relay() {
        io_.stop();
        thread_.join();
    }
    Relay(const Relay&) = delete;
    Relay& operator=(const Relay&) = delete;

    std::uint16_t port() const noexcept { return port_; }

    void go_deaf() {
        asio::post(io_, [this] {
            for (auto& weak : links_)
                if (auto link = weak.lock()) link->deaf = true;
        });
    }

private:
    struct Link {
        explicit Link(asio::io_context& io) : client(io), server(io) {}
        asio::ip::tcp::socket client;
        asio::ip::tcp::socket server;
        bool deaf = false;
    };

    void spawn(asio::awaitable<void> work) {
        asio::co_spawn(io_, std::move(work), [](std::exception_ptr e) {
            if (e) std::rethrow_exception(e);  // a bug in the fixture: end the test loudly
        });
    }

    asio::awaitable<void> accept_loop() {
        using asio::experimental::as_tuple;
        for (;;) {
            auto link = std::make_shared<Link>(io_);
            auto [accepted] = co_await acceptor_.async_accept(link->client, as_tuple(asio::use_awaitable));
            if (accepted) co_return;
            auto [connected] = co_await link->server.async_connect(
                asio::ip::tcp::endpoint(asio::ip::make_address("127.0.0.1"), upstream_), as_tuple(asio::use_awaitable));
            if (connected) continue;
            links_.push_back(link);
            spawn(client_to_server(link));
            spawn(server_to_client(link));
        }
    }

    asio::awaitable<void> client_to_server(std::shared_ptr<Link> link) {
        using asio::experimental::as_tuple;
        std::array<char, 4096> buf;
        asio::error_code ignored;
        for (;;) {
            auto [read_error, n] =
                co_await link->client.async_read_some(asio::buffer(buf), as_tuple(asio::use_awaitable));
            if (read_error) break;
            auto [write_error, m] =
                co_await asio::async_write(link->server, asio::buffer(buf.data(), n), as_tuple(asio::use_awaitable));
            if (write_error) co_return;
        }
        if (!link->deaf) {
            link->server.shutdown(asio::socket_base::shutdown_send, ignored);
            co_return;
        }
        const std::string beat = encode(Heartbeat{});
        asio::steady_timer timer(io_);
        for (;;) {
            timer.expires_after(heartbeat_interval);
            co_await timer.async_wait(as_tuple(asio::use_awaitable));
            auto [write_error, m] =
                co_await asio::async_write(link->server, asio::buffer(beat), as_tuple(asio::use_awaitable));
            if (write_error) co_return;
        }
    }

    asio::awaitable<void> server_to_client(std::shared_ptr<Link> link) {
        using asio::experimental::as_tuple;
        std::array<char, 4096> buf;
        asio::error_code ignored;
        for (;;) {
            auto [read_error, n] =
                co_await link->server.async_read_some(asio::buffer(buf), as_tuple(asio::use_awaitable));
            if (read_error) {
                link->client.shutdown(asio::socket_base::shutdown_send, ignored);
                co_return;
            }
            if (link->deaf) continue;
            auto [write_error, m] =
                co_await asio::async_write(link->client, asio::buffer(buf.data(), n), as_tuple(asio::use_awaitable));
            if (write_error) co_return;
        }
    }

    asio::io_context io_;
    asio::ip::tcp::acceptor acceptor_;
    std::uint16_t upstream_;
    std::uint16_t port_ = 0;
    std::vector<std::weak_ptr<Link>> links_;
    std::thread thread_;
};

// Runs a tmux command on a private server socket; returns its stdout.
class Tmux {
public:
    Tmux() : socket_("pulsechat-test-" + std::to_string(::getpid()) + "-" + std::to_string(++instances_)) {
        config_ = "/tmp/" + socket_ + ".conf";
        status_file_ = "/tmp/" + socket_ + ".status";
        std::ofstream(config_) << "set -g remain-on-exit on\nset -g status off\n";
    }
    ~Tmux() {
        // kill-server leaves the socket file behind.
        auto socket_path = run("display -p '#{socket_path}'");
        while (!socket_path.empty() && socket_path.back() == '\n') socket_path.pop_back();
        run("kill-server");
        if (socket_path.starts_with("/")) std::remove(socket_path.c_str());
        std::remove(config_.c_str());
        std::remove(status_file_.c_str());
    }

    static bool available() { return std::system("command -v tmux >/dev/null 2>&1") == 0; }

    std::string run(const std::string& args) const {
        const std::string command = "tmux -L " + socket_ + " -f " + config_ + " " + args + " 2>&1";
        std::string out;
        if (FILE* pipe = ::popen(command.c_str(), "r")) {
            char buf[4096];
            std::size_t n;
            while ((n = std::fread(buf, 1, sizeof buf, pipe)) > 0) out.append(buf, n);
            ::pclose(pipe);
        }
        return out;
    }

    std::string screen() const { return run("capture-pane -p -t chat"); }

    // Polls the pane until `condition` holds on its text, or `limit` passes.
    bool eventually(const std::function<bool(const std::string&)>& condition, std::chrono::milliseconds limit) const {
        const auto deadline = Clock::now() + limit;
        for (;;) {
            if (condition(screen())) return true;
            if (Clock::now() >= deadline) return false;
            ::poll(nullptr, 0, 20);  // a bounded poll of the pane, not a wait for an assumed delay
        }
    }

    // Runs `command` in the session's one pane, in a shell that records its
    // exit status in a file: tmux itself may never reap a process that exits
    // while LeakSanitizer stops it for its exit-time leak check, so
    // #{pane_dead_status} is not to be relied on. The shell traps SIGINT
    // (Ctrl-C reaches the whole foreground group) and only waits.
    void start(const std::string& command) const {
        std::remove(status_file_.c_str());
        run("new-session -d -s chat -x 100 -y 30 \"trap : INT; " + command + "; echo \\$? > " + status_file_ + "\"");
    }

    // The command's exit status once it ended, polled until `limit` passes.
    std::optional<int> exit_status(std::chrono::milliseconds limit) const {
        const auto deadline = Clock::now() + limit;
        for (;;) {
            std::ifstream in(status_file_);
            int status = -1;
            if (in >> status) return status;
            if (Clock::now() >= deadline) return std::nullopt;
            ::poll(nullptr, 0, 5);  // a bounded poll for the file
        }
    }

private:
    static inline int instances_ = 0;
    std::string socket_;
    std::string config_;
    std::string status_file_;
};

std::vector<std::string> non_empty_lines(const std::string& screen) {
    std::vector<std::string> lines;
    std::size_t start = 0;
    while (start <= screen.size()) {
        auto end = screen.find('\n', start);
        if (end == std::string::npos) end = screen.size();
        auto line = screen.substr(start, end - start);
        while (!line.empty() && line.back() == ' ') line.pop_back();
        if (!line.empty()) lines.push_back(line);
        start = end + 1;
    }
    return lines;
}

}  // namespace

TEST_SUITE("chat_client process") {
    TEST_CASE("two clients in script mode exchange messages and both see all of them in one order") {
        ServerUnderTest server;
        auto alice = start_client(server.port, "alice");
        auto bob = start_client(server.port, "bob");
        REQUIRE(alice->wait_for(has({{"type", "joined"}}), 5s));
        REQUIRE(bob->wait_for(has({{"type", "joined"}}), 5s));

        alice->write("a1\na2\na3\na4\na5\n");
        bob->write("b1\nb2\nb3\nb4\nb5\n");
        const auto collect = [](Subprocess& client) {
            std::vector<std::pair<std::uint64_t, std::string>> seen;
            while (seen.size() < 10) {
                auto line = client.wait_for(has({{"type", "message"}, {"history", "false"}}), 5s);
                REQUIRE(line);
                seen.emplace_back(std::stoull(*field(*line, "seq")),
                                  *field(*line, "nick") + ":" + *field(*line, "text"));
            }
            return seen;
        };
        const auto at_alice = collect(*alice);
        const auto at_bob = collect(*bob);
        CHECK(at_alice == at_bob);
        CHECK(std::is_sorted(at_alice.begin(), at_alice.end()));
        std::vector<std::string> alices;
        for (const auto& [seq, text] : at_alice)
            if (text.starts_with("alice:")) alices.push_back(text);
        CHECK(alices == std::vector<std::string>{"alice:a1", "alice:a2", "alice:a3", "alice:a4", "alice:a5"});

        // Every own message came back already: stdin's end lets both finish at once.
        alice->close_stdin();
        bob->close_stdin();
        CHECK(alice->wait_exit(3s) == 0);
        CHECK(bob->wait_exit(3s) == 0);
        CHECK(alice->all_stderr().empty());
    }

    TEST_CASE("a script-mode client prints messages as [HH:MM:SS] #room <nick> text and exits 0 once they came back") {
        ServerUnderTest server;
        auto carol = start_client(server.port, "carol", {});
        carol->write("hi there\n/who\n");
        carol->close_stdin();
        REQUIRE(carol->wait_exit(5s) == 0);
        const std::string out = carol->rest_of_stdout();
        CHECK(has_clock_line(out, "#lobby <carol> hi there"));
        CHECK(out.find("#lobby: carol") != std::string::npos);  // /who
        CHECK(out.find("\033[") == std::string::npos);          // no colour into a pipe
    }

    TEST_CASE("an unknown command is refused with a hint and never sent as a message") {
        ServerUnderTest server;
        auto dave = start_client(server.port, "dave");
        dave->write("/jion dev\nreal message\n");
        dave->close_stdin();
        REQUIRE(dave->wait_exit(5s) == 0);
        const std::string out = dave->rest_of_stdout();
        CHECK(out.find(R"("type":"error","code":"command","text":"unknown command '/jion')") != std::string::npos);
        CHECK(out.find(R"("text":"real message")") != std::string::npos);
        CHECK(out.find(R"("text":"/jion dev")") == std::string::npos);
    }

    TEST_CASE("a --json client sees a SIGSTOPped client reported timed_out within the server's timeout + 10%") {
        ServerUnderTest server;
        auto watcher = start_client(server.port, "watcher");
        REQUIRE(watcher->wait_for(has({{"type", "joined"}}), 5s));
        auto sleeper = start_client(server.port, "sleeper");
        REQUIRE(sleeper->wait_for(has({{"type", "joined"}}), 5s));
        REQUIRE(watcher->wait_for(has({{"type", "presence"}, {"nick", "sleeper"}, {"event", "joined"}}), 5s));

        const auto frozen = Clock::now();
        sleeper->signal(SIGSTOP);
        auto line = watcher->wait_for(has({{"type", "presence"}, {"nick", "sleeper"}}), 5s);
        const auto took = since(frozen);
        REQUIRE(line);
        CHECK(field(*line, "event") == "timed_out");
        MESSAGE("server noticed the frozen client after " << took.count() << "ms (timeout " << heartbeat_timeout.count()
                                                          << "ms)");
        CHECK(took <= detection_bound);
        sleeper->signal(SIGKILL);
    }

    TEST_CASE("a client notices a SIGSTOPped server within its timeout + 10%, reconnects and rejoins") {
        ServerUnderTest server;
        auto client = start_client(server.port, "alice", {"--json", "--reconnect-max", "500ms"});
        REQUIRE(client->wait_for(has({{"type", "status"}, {"event", "connected"}}), 5s));
        REQUIRE(client->wait_for(has({{"type", "joined"}, {"room", "lobby"}}), 5s));

        SUBCASE("the server is continued") {
            const auto frozen = Clock::now();
            server.process->signal(SIGSTOP);
            auto timeout = client->wait_for(has({{"type", "status"}, {"event", "server_timeout"}}), 5s);
            const auto took = since(frozen);
            REQUIRE(timeout);
            MESSAGE("client noticed the frozen server after " << took.count() << "ms (timeout "
                                                              << heartbeat_timeout.count() << "ms, silent_ms "
                                                              << *field(*timeout, "silent_ms") << ")");
            CHECK(took <= detection_bound);
            REQUIRE(client->wait_for(has({{"type", "status"}, {"event", "reconnecting"}}), 2s));

            server.process->signal(SIGCONT);
            const auto continued = Clock::now();
            auto connected = client->wait_for(has({{"type", "status"}, {"event", "connected"}}), 5s);
            REQUIRE(connected);
            CHECK(field(*connected, "reconnect") == "true");
            auto joined = client->wait_for(has({{"type", "joined"}, {"room", "lobby"}}), 5s);
            REQUIRE(joined);
            CHECK(field(*joined, "resumed") == "true");
            MESSAGE("rejoined " << since(continued).count() << "ms after SIGCONT");
        }
        SUBCASE("the server is restarted on the same port") {
            server.process->signal(SIGKILL);
            REQUIRE(server.process->wait_exit(2s));
            REQUIRE(client->wait_for(has({{"type", "status"}, {"event", "reconnecting"}}), 2s));
            ServerUnderTest restarted({}, server.port);
            const auto started = Clock::now();
            auto connected = client->wait_for(has({{"type", "status"}, {"event", "connected"}}), 5s);
            REQUIRE(connected);
            CHECK(field(*connected, "reconnect") == "true");
            auto joined = client->wait_for(has({{"type", "joined"}, {"room", "lobby"}}), 5s);
            REQUIRE(joined);
            CHECK(field(*joined, "resumed") == "true");
            // A new server is a new epoch: the client is told the old history is gone.
            CHECK(field(*joined, "epoch_changed") == "true");
            MESSAGE("rejoined the restarted server " << since(started).count() << "ms after it listened");
            client->write("after restart\n");
            CHECK(client->wait_for(has({{"type", "message"}, {"text", "after restart"}}), 5s));
        }
    }

    TEST_CASE(
        "a server that still holds the client's old session hands the nick over, and nothing said meanwhile is lost") {
        ServerUnderTest server;
        auto watcher = start_client(server.port, "watcher");
        REQUIRE(watcher->wait_for(has({{"type", "joined"}}), 5s));
        Relay relay(server.port);
        auto alice = start_client(relay.port(), "alice", {"--json", "--reconnect-max", "300ms"});
        REQUIRE(alice->wait_for(has({{"type", "joined"}}), 5s));
        REQUIRE(watcher->wait_for(has({{"type", "presence"}, {"nick", "alice"}, {"event", "joined"}}), 5s));
        watcher->write("seen live\n");
        REQUIRE(alice->wait_for(has({{"type", "message"}, {"text", "seen live"}}), 5s));

        const auto deaf = Clock::now();
        relay.go_deaf();
        watcher->write("said while alice cannot hear\n");
        auto timeout = alice->wait_for(has({{"type", "status"}, {"event", "server_timeout"}}), 5s);
        const auto took = since(deaf);
        REQUIRE(timeout);
        MESSAGE("client noticed the silent server after " << took.count() << "ms");
        CHECK(took <= detection_bound);

        // The server never lost alice's first session, so only the resume token gets her nick back.
        auto connected = alice->wait_for(has({{"type", "status"}, {"event", "connected"}}), 5s);
        REQUIRE(connected);
        CHECK(field(*connected, "reconnect") == "true");
        CHECK(field(*connected, "nick") == "alice");
        auto replaced = watcher->wait_for(has({{"type", "presence"}, {"nick", "alice"}}), 5s);
        REQUIRE(replaced);
        CHECK(field(*replaced, "event") == "disconnected");
        CHECK(field(*replaced, "reason") == "replaced by a new connection");

        auto joined = alice->wait_for(has({{"type", "joined"}}), 5s);
        REQUIRE(joined);
        CHECK(field(*joined, "resumed") == "true");
        CHECK(field(*joined, "epoch_changed") == "false");
        CHECK(field(*joined, "missed") == "0");
        CHECK(field(*joined, "history") == "1");
        auto replayed = alice->wait_for(has({{"type", "message"}}), 5s);
        REQUIRE(replayed);
        CHECK(field(*replayed, "text") == "said while alice cannot hear");
        CHECK(field(*replayed, "history") == "true");
    }

    TEST_CASE("a client that was away resumes from the last message it saw and is told how many it missed") {
        ServerUnderTest server({"--history", "3"});
        auto alice = start_client(server.port, "alice", {"--json", "--reconnect-max", "300ms"});
        REQUIRE(alice->wait_for(has({{"type", "joined"}}), 5s));
        auto bob = start_client(server.port, "bob");
        REQUIRE(bob->wait_for(has({{"type", "joined"}}), 5s));
        bob->write("before\n");
        REQUIRE(alice->wait_for(has({{"type", "message"}, {"text", "before"}}), 5s));

        alice->signal(SIGSTOP);
        REQUIRE(bob->wait_for(has({{"type", "presence"}, {"nick", "alice"}, {"event", "timed_out"}}), 5s));
        bob->write("m1\nm2\nm3\nm4\nm5\n");
        REQUIRE(bob->wait_for(has({{"type", "message"}, {"text", "m5"}}), 5s));
        alice->signal(SIGCONT);

        auto joined = alice->wait_for(has({{"type", "joined"}, {"resumed", "true"}}), 5s);
        REQUIRE(joined);
        CHECK(field(*joined, "epoch_changed") == "false");
        CHECK(field(*joined, "missed") == "2");   // m1, m2: beyond the server's 3 messages of history
        CHECK(field(*joined, "history") == "3");  // m3, m4, m5
        std::vector<std::string> replayed;
        for (int i = 0; i < 3; ++i) {
            auto line = alice->wait_for(has({{"type", "message"}}), 5s);
            REQUIRE(line);
            CHECK(field(*line, "history") == "true");
            replayed.push_back(*field(*line, "text"));
        }
        CHECK(replayed == std::vector<std::string>{"m3", "m4", "m5"});
        // Nothing is shown twice: "before" was seen already and is not replayed.
        alice->close_stdin();
        CHECK(alice->wait_exit(5s) == 0);
        CHECK(alice->rest_of_stdout().find("\"text\":\"before\"") == std::string::npos);
    }

    TEST_CASE("/quit sends BYE and exits within 1 s, even when the server is frozen") {
        ServerUnderTest server;
        auto watcher = start_client(server.port, "watcher");
        REQUIRE(watcher->wait_for(has({{"type", "joined"}}), 5s));
        auto quitter = start_client(server.port, "quitter");
        REQUIRE(quitter->wait_for(has({{"type", "joined"}}), 5s));

        SUBCASE("server alive") {
            const auto asked = Clock::now();
            quitter->write("/quit\n");
            REQUIRE(quitter->wait_exit(1s) == 0);
            MESSAGE("/quit took " << since(asked).count() << "ms");
            // The server got the BYE: the room hears of a quit, not of a lost connection.
            auto bye =
                watcher->wait_for(has({{"type", "presence"}, {"nick", "quitter"}, {"event", "disconnected"}}), 5s);
            REQUIRE(bye);
            CHECK(field(*bye, "reason") == "quit: quit");
        }
        SUBCASE("server frozen") {
            server.process->signal(SIGSTOP);
            const auto asked = Clock::now();
            quitter->write("/quit\n");
            CHECK(quitter->wait_exit(1s) == 0);
            MESSAGE("/quit with a frozen server took " << since(asked).count() << "ms");
            server.process->signal(SIGCONT);
        }
        SUBCASE("SIGINT") {
            const auto asked = Clock::now();
            quitter->signal(SIGINT);
            CHECK(quitter->wait_exit(1s) == 0);
            MESSAGE("SIGINT took " << since(asked).count() << "ms");
        }
    }

    TEST_CASE("a refused connection, a taken nick and another protocol version each end with a one-line reason") {
        SUBCASE("refused connection: exit 3") {
            auto client = start_client(unused_port(), "alice");
            REQUIRE(client->wait_exit(5s) == 3);
            const auto err = client->all_stderr();
            CHECK(count_lines(err) == 1);
            CHECK(err.find("cannot connect to 127.0.0.1:") != std::string::npos);
            CHECK(err.find("refused") != std::string::npos);
        }
        SUBCASE("nick taken: exit 4") {
            ServerUnderTest server;
            auto first = start_client(server.port, "alice");
            REQUIRE(first->wait_for(has({{"type", "joined"}}), 5s));
            auto second = start_client(server.port, "alice");
            REQUIRE(second->wait_exit(5s) == 4);
            const auto err = second->all_stderr();
            CHECK(count_lines(err) == 1);
            CHECK(err.find("'alice' is in use") != std::string::npos);
        }
        SUBCASE("another protocol version: exit 5") {
            // A stand-in server that answers HELLO with a version 2 frame.
            asio::io_context io;
            asio::ip::tcp::acceptor acceptor(io, asio::ip::tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
            const auto port = acceptor.local_endpoint().port();
            std::thread fake([&] {
                pollfd p{acceptor.native_handle(), POLLIN, 0};
                if (::poll(&p, 1, 5000) <= 0) return;
                asio::error_code ec;
                asio::ip::tcp::socket socket(io);
                acceptor.accept(socket, ec);
                if (ec) return;
                std::string frame = encode(Welcome{1, 100, 500, default_max_frame, "alice", "t", "future", "2.0"});
                frame[0] = 2;
                asio::write(socket, asio::buffer(frame), ec);
                pollfd q{socket.native_handle(), POLLIN, 0};
                char buf[256];
                while (::poll(&q, 1, 5000) > 0 && socket.read_some(asio::buffer(buf), ec) > 0) {
                }
            });
            auto client = start_client(port, "alice");
            const auto status = client->wait_exit(5s);
            fake.join();
            REQUIRE(status == 5);
            const auto err = client->all_stderr();
            CHECK(count_lines(err) == 1);
            CHECK(err.find("does not speak pulsechat protocol version 1") != std::string::npos);
        }
    }

    TEST_CASE("the interactive client keeps a half-typed line intact when a message arrives (tmux)") {
        if (!Tmux::available()) {
            MESSAGE("tmux is not installed: skipping the interactive test (apt-get install tmux)");
            return;
        }
        ServerUnderTest server;
        Tmux tmux;
        const std::string client = program_path("CHAT_CLIENT", "chat_client");
        tmux.start("'" + client + "' --port " + std::to_string(server.port) + " --nick typer");
        REQUIRE_MESSAGE(
            tmux.eventually([](const std::string& s) { return s.find("joined; here: typer") != std::string::npos; },
                            5s),
            tmux.screen());

        SUBCASE("a message arrives while a line is half typed") {
            const std::string half = "half typed line";
            tmux.run("send-keys -t chat -l '" + half + "'");
            REQUIRE(tmux.eventually(
                [&](const std::string& s) { return s.find("#lobby> " + half) != std::string::npos; }, 3s));
            tmux.run("send-keys -t chat Left Left Left");  // the cursor sits inside the line, too

            auto bob = start_client(server.port, "bob", {});
            bob->write("hello from bob\n");
            bob->close_stdin();
            REQUIRE(bob->wait_exit(5s) == 0);
            const bool intact = tmux.eventually(
                [&](const std::string& s) {
                    const auto lines = non_empty_lines(s);
                    return s.find("#lobby <bob> hello from bob") != std::string::npos &&
                           s.find("bob disconnected") != std::string::npos && !lines.empty() &&
                           lines.back() == "#lobby> " + half;
                },
                3s);
            const std::string screen = tmux.screen();
            CHECK_MESSAGE(intact, screen);
            // The typed text is on screen once, on the prompt line, not split by the message.
            std::size_t copies = 0;
            for (const auto& l : non_empty_lines(screen)) copies += l.find("half typed") != std::string::npos;
            CHECK_MESSAGE(copies == 1, screen);
            // And the cursor is where it was: three characters before the end of the line.
            const auto cursor = tmux.run("display -p -t chat '#{cursor_x}'");
            CHECK(std::stoi(cursor) == static_cast<int>(std::string("#lobby> " + half).size()) - 3);

            tmux.run("send-keys -t chat End");
            tmux.run("send-keys -t chat -l ' and more'");
            tmux.run("send-keys -t chat Enter");
            CHECK_MESSAGE(tmux.eventually(
                              [&](const std::string& s) {
                                  return s.find("#lobby <typer> half typed line and more") != std::string::npos;
                              },
                              3s),
                          tmux.screen());

            const auto asked = Clock::now();
            tmux.run("send-keys -t chat -l /quit");
            tmux.run("send-keys -t chat Enter");
            CHECK_MESSAGE(tmux.exit_status(1s) == 0, tmux.screen());
            MESSAGE("/quit in the interactive client took " << since(asked).count() << "ms");
        }
        SUBCASE("Ctrl-D on an empty line quits") {
            const auto asked = Clock::now();
            tmux.run("send-keys -t chat C-d");
            CHECK_MESSAGE(tmux.exit_status(1s) == 0, tmux.screen());
            MESSAGE("took " << since(asked).count() << "ms");
        }
        SUBCASE("Ctrl-C quits") {
            tmux.run("send-keys -t chat -l 'something half typed'");
            const auto asked = Clock::now();
            tmux.run("send-keys -t chat C-c");
            CHECK_MESSAGE(tmux.exit_status(1s) == 0, tmux.screen());
            MESSAGE("took " << since(asked).count() << "ms");
        }
    }
}
