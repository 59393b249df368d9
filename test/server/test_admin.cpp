// The admin listener: HttpRequestReader without sockets, then /metrics,
// /healthz and /readyz of a live server, with counters checked against what
// the test did to it.
#include <doctest/doctest.h>

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <cctype>
#include <cstring>
#include <map>
#include <set>
#include <string>

#include <unistd.h>

#include "utils/http.hpp"
#include "utils/live.hpp"
#include "utils/subprocess.hpp"

#if PULSECHAT_HAVE_HTTP_PARSER

#include "chat/server/admin_http.hpp"
#include "chat/server/metrics.hpp"

using namespace chat;
using namespace chat::test;
using namespace std::chrono_literals;

namespace {

HttpRequestReader::Status feed_all(HttpRequestReader& reader, std::string& buffer) {
    std::size_t consumed = 0;
    const auto status = reader.feed(buffer, consumed);
    buffer.erase(0, consumed);
    return status;
}

double scrape(TestServer& server, const std::string& series) {
    const auto reply = http_get(server.server().admin_endpoint()->port(), "/metrics");
    REQUIRE(reply.status == 200);
    return sample(reply.body, series);
}

// One heartbeat timeout in the detection histogram, found between `least`
// and `most` seconds after the peer's last frame.
void check_one_detection(TestServer& server, double least, double most, const char* bucket_at_most) {
    CHECK(scrape(server, "pulsechat_dead_peer_detection_seconds_count") == 1);
    const double detected_in = scrape(server, "pulsechat_dead_peer_detection_seconds_sum");
    CHECK(detected_in >= least);
    CHECK(detected_in < most);
    CHECK(scrape(server, "pulsechat_dead_peer_detection_seconds_bucket{le=\"0.5\"}") == 0);
    CHECK(scrape(server, std::string("pulsechat_dead_peer_detection_seconds_bucket{le=\"") + bucket_at_most + "\"}") ==
          1);
    CHECK(scrape(server, "pulsechat_dead_peer_detection_seconds_bucket{le=\"+Inf\"}") == 1);
}

ServerConfig admin_config() {
    ServerConfig cfg = fast_config();
    cfg.admin_port = 0;
    return cfg;
}

}  // namespace

TEST_SUITE("admin") {
    TEST_CASE("HttpRequestReader: a request, split anywhere, and pipelined ones one at a time") {
        const std::string two =
            "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\nGET /readyz?probe=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        for (std::size_t step : {std::size_t{1}, std::size_t{7}, two.size()}) {
            CAPTURE(step);
            HttpRequestReader reader;
            std::string buffer;
            std::vector<HttpRequest> got;
            for (std::size_t at = 0; at < two.size(); at += step) {
                buffer += two.substr(at, step);
                for (;;) {
                    const auto status = feed_all(reader, buffer);
                    REQUIRE(status != HttpRequestReader::Status::error);
                    if (status == HttpRequestReader::Status::need_more) break;
                    got.push_back(reader.take());
                }
            }
            REQUIRE(got.size() == 2);
            CHECK(got[0].method == "GET");
            CHECK(got[0].path() == "/metrics");
            CHECK(got[0].keep_alive);
            CHECK(got[1].target == "/readyz?probe=1");
            CHECK(got[1].path() == "/readyz");
            CHECK_FALSE(got[1].keep_alive);
        }
    }

    TEST_CASE("HttpRequestReader: garbage, an endless head and a long target are errors that say why") {
        {
            HttpRequestReader reader;
            std::string buffer = "HELLO\r\n\r\n";
            CHECK(feed_all(reader, buffer) == HttpRequestReader::Status::error);
            CHECK(reader.error().find("malformed request") != std::string::npos);
        }
        {
            HttpRequestReader reader;
            std::string buffer = "GET / HTTP/1.1\r\n";
            CHECK(feed_all(reader, buffer) == HttpRequestReader::Status::need_more);
            HttpRequestReader::Status status = HttpRequestReader::Status::need_more;
            for (int i = 0; i < 1000 && status == HttpRequestReader::Status::need_more; ++i) {
                buffer = "X-Filler: " + std::string(40, 'f') + "\r\n";
                status = feed_all(reader, buffer);
            }
            CHECK(status == HttpRequestReader::Status::error);
            CHECK(reader.error().find("over 8192 bytes") != std::string::npos);
        }
        {
            HttpRequestReader reader;
            std::string buffer = "GET /" + std::string(HttpRequestReader::max_request + 10, 'a') + " HTTP/1.1\r\n\r\n";
            CHECK(feed_all(reader, buffer) == HttpRequestReader::Status::error);
        }
    }

    TEST_CASE("HttpRequestReader: an Upgrade request is told apart and ends the HTTP part") {
        HttpRequestReader reader;
        std::string buffer =
            "GET /chat HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
            "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n\x81\x05hello";
        REQUIRE(feed_all(reader, buffer) == HttpRequestReader::Status::request);
        const auto request = reader.take();
        CHECK(request.upgrade);
        CHECK(request.path() == "/chat");
        CHECK(buffer == "\x81\x05hello");  // the new protocol's bytes stay unread
    }

    TEST_CASE("/healthz, /readyz, 404, 405 and a 400 that leaves chat sessions alone") {
        TestServer server(admin_config());
        const auto port = server.server().admin_endpoint()->port();
        TestClient alice(server.port());
        REQUIRE(alice.login("alice"));
        REQUIRE(alice.join("lobby"));

        CHECK(http_get(port, "/healthz").status == 200);
        const auto ready = http_get(port, "/readyz");
        CHECK(ready.status == 200);
        CHECK(ready.body == "ready\n");
        CHECK(http_get(port, "/nope").status == 404);
        CHECK(http_get(port, "", "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n").status == 405);
        const auto bad = http_get(port, "", "BREW /pot HTCPCP/1.0\r\n\r\n");
        CHECK(bad.status == 400);
        CHECK(bad.headers.find("Connection: close") != std::string::npos);
        CHECK(http_get(port, "", "GET /" + std::string(20000, 'a') + " HTTP/1.1\r\n\r\n").status == 400);

        // The chat session did not notice.
        alice.send(Say{"lobby", "still here"});
        auto d = alice.read_until<Deliver>(2000ms);
        REQUIRE(d);
        CHECK(d->text == "still here");
    }

    TEST_CASE("a slow admin request gets a 408 and the close; an idle keep-alive connection just closes") {
        ServerConfig cfg = admin_config();
        cfg.handshake_timeout = 300ms;  // the admin listener's read timeout too
        TestServer server(cfg);
        const auto port = server.server().admin_endpoint()->port();
        const auto start = Clock::now();
        const auto slow = http_get(port, "", "GET /metrics HTTP/1.1\r\nHost: x\r\n");  // never finished
        CHECK(slow.status == 408);
        CHECK(Clock::now() - start < 3000ms);
    }

    TEST_CASE("/metrics counts what happened: connections, deliveries, a heartbeat timeout, a slow consumer") {
        ServerConfig cfg = admin_config();
        cfg.queue_limit = 64 * 1024;
        cfg.max_frame = 16 * 1024;
        cfg.heartbeat_interval = 300ms;
        cfg.heartbeat_timeout = 1000ms;
        TestServer server(cfg);

        auto alice = std::make_unique<TestClient>(server.port());
        REQUIRE(alice->login("alice"));
        REQUIRE(alice->join("room"));
        TestClient carol(server.port());
        REQUIRE(carol.login("carol"));
        REQUIRE(carol.join("room"));
        // alice and carol stay alive while the others are let die.
        const auto alive = [&] {
            alice->send(Heartbeat{});
            carol.send(Heartbeat{});
        };
        CHECK(scrape(server, "pulsechat_connections_open{transport=\"tcp\"}") == 2);
        CHECK(scrape(server, "pulsechat_connections_accepted_total{transport=\"tcp\"}") == 2);
        CHECK(scrape(server, "pulsechat_rooms") == 1);
        CHECK(scrape(server, "pulsechat_room_members") == 2);
        CHECK(scrape(server, "pulsechat_sessions") == 2);

        const double deliveries_before = scrape(server, "pulsechat_deliveries_total");
        alice->send(Say{"room", "one"});
        REQUIRE(alice->read_until<Deliver>(2000ms));
        REQUIRE(carol.read_until<Deliver>(2000ms));
        CHECK(scrape(server, "pulsechat_messages_published_total") == 1);
        CHECK(scrape(server, "pulsechat_deliveries_total") == deliveries_before + 2);

        // A peer that stops (a frozen process, as far as the server can
        // tell): one heartbeat timeout, about 1 s after its last frame.
        {
            TestClient frozen(server.port());
            REQUIRE(frozen.login("frozen"));
            CHECK(TestServer::eventually(
                [&] {
                    alive();
                    return scrape(server, "pulsechat_sessions_closed_total{reason=\"heartbeat_timeout\"}") == 1;
                },
                5000ms));
        }
        check_one_detection(server, 1.0, 3.0, "3");

        // A member that never reads, with a tiny receive buffer: one slow consumer.
        auto sleeper = std::make_unique<TestClient>(server.port(), 4096);
        REQUIRE(sleeper->login("sleeper"));
        REQUIRE(sleeper->join("room"));
        const std::string big(15 * 1024, 'z');
        for (int i = 0; i < 300; ++i) {  // 4.5 MB: far past the queue and every socket buffer
            alice->send(Say{"room", big});
            carol.send(Heartbeat{});
            sleeper->send(Heartbeat{});  // alive, only not reading: not a heartbeat timeout
            REQUIRE(alice->read_until<Deliver>(3000ms));
            REQUIRE(carol.read_until<Deliver>(3000ms));
        }
        CHECK(TestServer::eventually(
            [&] {
                alive();
                sleeper->send(Heartbeat{});
                return scrape(server, "pulsechat_sessions_closed_total{reason=\"slow_consumer\"}") == 1;
            },
            5000ms));
        CHECK(scrape(server, "pulsechat_queued_bytes_peak") <= cfg.queue_limit);

        // A BYE is a client_quit.
        alice->send(Bye{"done"});
        alice->read_until_closed(2000ms);
        CHECK(TestServer::eventually([&] {
            carol.send(Heartbeat{});
            return scrape(server, "pulsechat_sessions_closed_total{reason=\"client_quit\"}") == 1;
        }));
        CHECK(scrape(server, "pulsechat_sessions_closed_total{reason=\"heartbeat_timeout\"}") == 1);
        CHECK(scrape(server, "pulsechat_sent_bytes_total") > 2 * 300 * 15 * 1024);
        CHECK(scrape(server, "pulsechat_frames_received_total") >= 300);
        CHECK(scrape(server, "pulsechat_event_loop_lag_seconds_count{shard=\"0\"}") > 0);
    }

    TEST_CASE("/metrics: page fetches on the WebSocket port are web responses, not sessions") {
        ServerConfig cfg = admin_config();
        cfg.ws_port = 0;
        TestServer server(cfg);
        const auto ws_port = server.server().ws_endpoint()->port();
        CHECK(http_get(ws_port, "/").status == 200);
        CHECK(http_get(ws_port, "/app.js").status == 200);
        CHECK(http_get(ws_port, "/nope").status == 404);
        CHECK(http_get(ws_port, "", "POST / HTTP/1.1\r\nHost: test\r\nContent-Length: 0\r\n\r\n").status == 405);
        // Each connection is counted as finished once its session object is gone.
        CHECK(TestServer::eventually(
            [&] { return scrape(server, "pulsechat_connections_open{transport=\"websocket\"}") == 0; }, 3000ms));
        CHECK(scrape(server, "pulsechat_connections_accepted_total{transport=\"websocket\"}") == 4);
        CHECK(scrape(server, "pulsechat_web_responses_total{code=\"200\"}") == 2);
        CHECK(scrape(server, "pulsechat_web_responses_total{code=\"404\"}") == 1);
        CHECK(scrape(server, "pulsechat_web_responses_total{code=\"405\"}") == 1);
        // Not one of them was a chat session, so none ended as one.
        for (std::size_t c = 0; c < close_cause_count; ++c) {
            const std::string series = std::string("pulsechat_sessions_closed_total{reason=\"") +
                                       std::string(to_string(static_cast<CloseCause>(c))) + "\"}";
            CAPTURE(series);
            CHECK(scrape(server, series) == 0);
        }
        CHECK(server.server().session_env().counters.ended_before_hello.load() == 0);
    }

    TEST_CASE("/metrics: the bytes queued for a member that does not read, then none once it is gone") {
        ServerConfig cfg = admin_config();
        cfg.queue_limit = 32 * 1024 * 1024;  // held, not cut off
        cfg.max_frame = 64 * 1024;
        cfg.heartbeat_interval = 300ms;
        cfg.heartbeat_timeout = 1000ms;
        cfg.write_timeout = 10000ms;
        TestServer server(cfg);
        TestClient alice(server.port());
        REQUIRE(alice.login("alice"));
        REQUIRE(alice.join("room"));
        auto sleeper = std::make_unique<TestClient>(server.port(), 4096);
        REQUIRE(sleeper->login("sleeper"));
        REQUIRE(sleeper->join("room"));
        REQUIRE(alice.read_until<Presence>(2000ms));
        CHECK(scrape(server, "pulsechat_queued_bytes") == 0);
        // 8 MB: more than the socket buffers on the way can take.
        const std::string big(60 * 1024, 'q');
        for (int i = 0; i < 140; ++i) {
            alice.send(Say{"room", big});
            sleeper->send(Heartbeat{});
            REQUIRE(alice.read_until<Deliver>(3000ms));
        }
        const double held = scrape(server, "pulsechat_queued_bytes");
        CHECK(held > 1024 * 1024);
        CHECK(held <= cfg.queue_limit);
        CHECK(scrape(server, "pulsechat_queued_bytes_peak") >= held);
        sleeper.reset();  // closes: what was held for it is dropped
        CHECK(TestServer::eventually([&] {
            alice.send(Heartbeat{});
            return scrape(server, "pulsechat_queued_bytes") == 0;
        }));
    }

    TEST_CASE("a SIGSTOPped chat_client shows up as one heartbeat timeout, found about a timeout after its last frame") {
        ServerConfig cfg = admin_config();
        cfg.heartbeat_interval = 200ms;
        cfg.heartbeat_timeout = 800ms;
        TestServer server(cfg);
        Subprocess client({program_path("CHAT_CLIENT", "chat_client"), "--port", std::to_string(server.port()),
                           "--nick", "sleepy", "--json"});
        REQUIRE(client.wait_for("\"joined\"", 5000ms));
        // Alive while it runs: it heartbeats every interval.
        CHECK(scrape(server, "pulsechat_sessions") == 1);
        client.signal(SIGSTOP);
        CHECK(TestServer::eventually(
            [&] { return scrape(server, "pulsechat_sessions_closed_total{reason=\"heartbeat_timeout\"}") == 1; },
            5000ms));
        client.signal(SIGCONT);
        check_one_detection(server, 0.8, 2.0, "2");
        CHECK(scrape(server, "pulsechat_sessions") == 0);
    }

    TEST_CASE("/readyz answers 503 from the moment a drain begins, while sessions still drain") {
        ServerConfig cfg = admin_config();
        cfg.drain_timeout = 3000ms;
        auto server = std::make_unique<TestServer>(cfg);
        const auto port = server->server().admin_endpoint()->port();
        // A client that reads its BYE but never closes: the server lingers
        // for its EOF, so the drain lasts long enough to look at.
        TestClient alice(server->port());
        REQUIRE(alice.login("alice"));
        CHECK(http_get(port, "/readyz").status == 200);
        server->server().request_shutdown();
        REQUIRE(alice.read_until<Bye>(2000ms));
        const auto during = http_get(port, "/readyz");
        CHECK(during.status == 503);
        CHECK(during.body == "draining\n");
        CHECK(sample(http_get(port, "/metrics").body, "pulsechat_ready") == 0);
        CHECK(server->server().live_sessions() == 1);  // the drain was not over
        server.reset();
    }

    TEST_CASE("the Grafana dashboard (deploy/) only queries metrics the server has") {
        const char* source = std::getenv("PULSECHAT_SOURCE_DIR");
        REQUIRE_MESSAGE(source != nullptr, "meson sets PULSECHAT_SOURCE_DIR");
        std::ifstream file(std::string(source) + "/deploy/grafana-pulsechat.json");
        REQUIRE(file);
        const std::string dashboard((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
        TestServer server(admin_config());
        const auto metrics = http_get(server.server().admin_endpoint()->port(), "/metrics").body;
        std::set<std::string> queried;
        for (std::size_t at = dashboard.find("pulsechat_"); at != std::string::npos;
             at = dashboard.find("pulsechat_", at + 1)) {
            std::size_t end = at;
            while (end < dashboard.size() && (std::isalnum(static_cast<unsigned char>(dashboard[end])) || dashboard[end] == '_'))
                ++end;
            std::string name = dashboard.substr(at, end - at);
            for (const char* suffix : {"_bucket", "_sum", "_count"})
                if (name.size() > std::strlen(suffix) && name.ends_with(suffix) &&
                    metrics.find("# TYPE " + name.substr(0, name.size() - std::strlen(suffix)) + " histogram") !=
                        std::string::npos)
                    name.resize(name.size() - std::strlen(suffix));
            queried.insert(name);
        }
        CHECK(queried.size() >= 10);
        for (const auto& name : queried) {
            CAPTURE(name);
            CHECK(metrics.find("# TYPE " + name + " ") != std::string::npos);
        }
    }

    TEST_CASE("an idle keep-alive admin connection (Prometheus keeps one) does not hold up a shutdown") {
        ServerConfig cfg = admin_config();
        cfg.handshake_timeout = 5000ms;  // the admin read timeout: the shutdown must not wait for it
        auto server = std::make_unique<TestServer>(cfg);
        asio::io_context io;
        asio::ip::tcp::socket scraper(io);
        scraper.connect({asio::ip::make_address("127.0.0.1"), server->server().admin_endpoint()->port()});
        const std::string request = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";  // keep-alive by default
        asio::write(scraper, asio::buffer(request));
        std::array<char, 512> reply{};
        const std::size_t n = scraper.read_some(asio::buffer(reply));
        CHECK(std::string_view(reply.data(), n).find("Connection: keep-alive") != std::string_view::npos);
        const auto start = Clock::now();
        server.reset();  // request_shutdown() and join
        CHECK(Clock::now() - start < 2500ms);
        asio::error_code ec;
        scraper.read_some(asio::buffer(reply), ec);
        CHECK(ec);  // closed by the server
    }

    TEST_CASE("/metrics passes promtool check metrics") {
        if (!have_promtool()) {
            MESSAGE("promtool is not installed (Debian: prometheus): the format check is not run here");
            return;
        }
        TestServer server(admin_config());
        TestClient alice(server.port());
        REQUIRE(alice.login("alice"));
        REQUIRE(alice.join("lobby"));
        const auto reply = http_get(server.server().admin_endpoint()->port(), "/metrics");
        REQUIRE(reply.status == 200);
        CHECK(reply.headers.find("text/plain; version=0.0.4") != std::string::npos);
        CHECK(promtool_complaints(reply.body) == "");  // promtool also lints (names, units, _total): no warning either
        CHECK(reply.body.find("pulsechat_cluster_") == std::string::npos);  // only with --cluster
    }

    TEST_CASE("render_metrics with cluster gauges: the pulsechat_cluster_ metrics, each count in its place, promtool clean") {
        ServerGauges g;
        g.version = "test";
        // Distinct values, so that a count rendered in another's place shows.
        g.cluster = ClusterGauges{.acked = 101, .duplicates = 2, .retried = 3, .failed = 4, .refused = 5,
                                  .live = 606, .fetched = 707, .gaps = 8, .missed = 9, .reconnects = 10,
                                  .epoch_changes = 11, .unacked = 12, .rooms = 13};
        const std::string text = render_metrics(std::vector<ShardMetrics>(2), g);
        const std::pair<const char*, double> expected[] = {
            {"pulsechat_cluster_publishes_total{outcome=\"acked\"}", 101},
            {"pulsechat_cluster_publishes_total{outcome=\"failed\"}", 4},
            {"pulsechat_cluster_publishes_total{outcome=\"refused\"}", 5},
            {"pulsechat_cluster_publish_duplicates_total", 2},
            {"pulsechat_cluster_publish_retries_total", 3},
            {"pulsechat_cluster_publishes_in_flight", 12},
            {"pulsechat_cluster_messages_received_total{source=\"live\"}", 606},
            {"pulsechat_cluster_messages_received_total{source=\"fetched\"}", 707},
            {"pulsechat_cluster_gaps_total", 8},
            {"pulsechat_cluster_messages_missed_total", 9},
            {"pulsechat_cluster_reconnects_total", 10},
            {"pulsechat_cluster_epoch_changes_total", 11},
            {"pulsechat_cluster_rooms", 13},
        };
        for (const auto& [series, value] : expected) {
            CAPTURE(series);
            CHECK(sample(text, series) == value);
        }
        g.cluster.reset();
        CHECK(render_metrics(std::vector<ShardMetrics>(2), g).find("pulsechat_cluster_") == std::string::npos);
        if (!have_promtool()) {
            MESSAGE("promtool is not installed (Debian: prometheus): the format check is not run here");
            return;
        }
        CHECK(promtool_complaints(text) == "");
    }
}

#endif  // PULSECHAT_HAVE_HTTP_PARSER: without it there is no admin listener to test
