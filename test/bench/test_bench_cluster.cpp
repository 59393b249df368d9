// chat_bench across the nodes of one pulsechat cluster: a real nats-server with
// JetStream (a free port, a fresh store), two chat_server processes in cluster
// mode on it, and chat_bench dealing each room's members over both ports. Every
// member must receive every message, whichever node it is on. In the 'cluster'
// suite (`meson test --setup cluster --suite cluster`): it needs nats-server.
#include <doctest/doctest.h>

#include <chrono>
#include <memory>
#include <optional>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include "utils/nats.hpp"
#include "utils/subprocess.hpp"

using namespace chat::test;
using namespace std::chrono_literals;

namespace {

// A chat_server node of the cluster on `nats`, on a free port it prints.
struct Node {
    std::unique_ptr<Subprocess> process;
    std::uint16_t port = 0;
};

Node start_node(const NatsServer& nats, const std::string& name) {
    // JetStream may still be settling when nats-server says it is ready; a
    // node that could not set the stream up exits, so try a few times, each
    // bounded by a deadline.
    std::string last_error;
    for (int attempt = 0; attempt < 5; ++attempt) {
        Node node;
        node.process = std::make_unique<Subprocess>(std::vector<std::string>{
            program_path("CHAT_SERVER", "chat_server"), "--bind", "127.0.0.1", "--port", "0", "--rate", "0",
            "--history", "1", "--log-level", "warn", "--cluster", nats.url(), "--node-name", name});
        const auto line = node.process->wait_for("listening on", 15s);
        if (line) {
            std::smatch m;
            const std::regex re(":([0-9]+)");
            REQUIRE(std::regex_search(*line, m, re));
            node.port = static_cast<std::uint16_t>(std::stoi(m[1].str()));
            return node;
        }
        node.process->signal(SIGKILL);
        node.process->wait_exit(5s);
        last_error = node.process->all_stderr();
    }
    FAIL("node " << name << " did not start: " << last_error);
    return {};
}

// A field of chat_bench's flat JSON object, as text.
std::string field(const std::string& json, const std::string& name) {
    const std::regex re("\"" + name + "\": (\"[^\"]*\"|[^,}]+)");
    std::smatch m;
    return std::regex_search(json, m, re) ? m[1].str() : std::string("<missing>");
}

// Runs chat_bench to its end (bounded); returns its exit status and JSON line.
std::pair<std::optional<int>, std::string> run_bench(std::vector<std::string> args, std::string& stderr_text) {
    args.insert(args.begin(), program_path("CHAT_BENCH", "chat_bench"));
    args.push_back("--json");
    args.push_back("--no-progress");
    Subprocess bench(std::move(args));
    std::string json;
    if (auto line = bench.wait_for([](const std::string& l) { return l.rfind("{\"", 0) == 0; }, 90s)) json = *line;
    const auto status = bench.wait_exit(30s);
    stderr_text = bench.all_stderr();
    return {status, json};
}

}  // namespace

TEST_CASE("chat_bench spreads a room over two cluster nodes, publishers on the first, and every member gets "
          "every message") {
    NatsServer nats;
    Node a = start_node(nats, "a");
    Node b = start_node(nats, "b");
    const std::string ports = std::to_string(a.port) + "," + std::to_string(b.port);
    std::string log;
    const auto [status, json] =
        run_bench({"--ports", ports, "--publishers-on-first", "--connections", "20", "--rooms", "2", "--publishers",
                   "2", "--count", "200", "--warmup", "0", "--connect-timeout", "60s", "--server-pid",
                   std::to_string(a.process->pid()), "--server-pid", std::to_string(b.process->pid())},
                  log);
    INFO(log);
    INFO("node a: " << a.process->all_stderr());
    INFO("node b: " << b.process->all_stderr());
    REQUIRE(status.has_value());
    CHECK(*status == 0);
    CHECK(field(json, "ok") == "true");
    // Each room of 10: its two publishers and ranks 2, 4, 6, 8 on a, ranks 3, 5, 7, 9 on b.
    CHECK(field(json, "links_per_port") == "\"12,8\"");
    CHECK(field(json, "ports") == "\"" + ports + "\"");
    CHECK(field(json, "publishers_on_first") == "true");
    CHECK(field(json, "published") == "200");
    // Two rooms of ten: every message reaches ten members, four of them on b.
    CHECK(field(json, "delivered") == "2000");
    CHECK(field(json, "lost") == "0");
    CHECK(field(json, "duplicates") == "0");
    CHECK(field(json, "errors") == "0");
    CHECK(field(json, "disconnects") == "0");
    // Both nodes reported, each with its own connections.
    CHECK(field(json, "node_links") != "<missing>");
    CHECK(json.find("\"node_port\": " + std::to_string(b.port) + ", \"node_links\": 8") != std::string::npos);
}

TEST_CASE("repeated --port over three nodes at a fixed rate: every member on every node gets every message") {
    NatsServer nats;
    Node a = start_node(nats, "a");
    Node b = start_node(nats, "b");
    Node c = start_node(nats, "c");
    std::string log;
    const auto [status, json] = run_bench(
        {"--port", std::to_string(a.port), "--port", std::to_string(b.port), "--port", std::to_string(c.port),
         "--connections", "9", "--rooms", "1", "--publishers", "3", "--rate", "300", "--count", "150", "--warmup",
         "0", "--connect-timeout", "60s"},
        log);
    INFO(log);
    REQUIRE(status.has_value());
    CHECK(*status == 0);
    CHECK(field(json, "ok") == "true");
    // Ranks 0..8 dealt over three ports: three each, one publisher on each node.
    CHECK(field(json, "links_per_port") == "\"3,3,3\"");
    CHECK(field(json, "published") == "150");
    CHECK(field(json, "delivered") == "1350");
    CHECK(field(json, "lost") == "0");
    CHECK(field(json, "errors") == "0");
}
