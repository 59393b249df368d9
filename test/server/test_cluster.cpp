// The cluster broker against a real nats-server with JetStream: rooms that
// span nodes, one order, history in the stream, resume across nodes, the
// broker's faults. Each test starts its own nats-server on a free port with a
// fresh store, and nodes in this process (ServerConfig::cluster_servers).
#include <doctest/doctest.h>

#include <deque>
#include <fstream>
#include <map>
#include <set>
#include <thread>

#include <fmt/format.h>
#include <nats/nats.h>

#include "chat/server/cluster_broker.hpp"
#include "utils/http.hpp"
#include "utils/live.hpp"
#include "utils/nats.hpp"
#include "utils/server_process.hpp"
#include "utils/tcp_proxy.hpp"

using namespace chat;
using namespace chat::test;

namespace {

ServerConfig node_config(const NatsServer& nats, const std::string& name, std::size_t history = 100) {
    ServerConfig cfg = fast_config();
    cfg.heartbeat_interval = 1000ms;
    cfg.heartbeat_timeout = 5000ms;
    cfg.cluster_servers = {nats.url()};
    cfg.node_name = name;
    cfg.history = history;
    cfg.cluster_dead_after = 1000ms;
    return cfg;
}

// A logged-in client that keeps itself alive while a test waits.
std::unique_ptr<TestClient> member(std::uint16_t port, const std::string& nick) {
    auto c = std::make_unique<TestClient>(port);
    c->keep_alive(200ms);
    REQUIRE(c->login(nick));
    return c;
}

// The next `n` frames of type T (DELIVER, PRESENCE) of `c`, skipping
// everything else, or fewer at the deadline.
template <class T>
std::vector<T> next_of(TestClient& c, std::size_t n, std::chrono::milliseconds limit) {
    std::vector<T> got;
    const auto deadline = Clock::now() + limit;
    while (got.size() < n) {
        const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
        if (left.count() <= 0) break;
        auto m = c.read_until<T>(left);
        if (!m) break;
        got.push_back(std::move(*m));
    }
    return got;
}

std::vector<Deliver> delivers(TestClient& c, std::size_t n, std::chrono::milliseconds limit = 10'000ms) {
    return next_of<Deliver>(c, n, limit);
}

// Nothing but HEARTBEAT answers and PINGs within `quiet`: no DELIVER, no ERROR.
bool no_more_delivers(TestClient& c, std::chrono::milliseconds quiet = 300ms) {
    const auto deadline = Clock::now() + quiet;
    for (;;) {
        const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
        if (left.count() <= 0) return true;
        auto m = c.read(left);
        if (!m) return !c.closed();
        if (std::holds_alternative<Deliver>(*m)) return false;
    }
}

// `first` and `second` each say `n` messages into "lobby" at the same time
// ("a0".. and "b0"..).
void say_at_once(TestClient& first, TestClient& second, int n) {
    std::thread other([&] {
        for (int i = 0; i < n; ++i) first.send(Say{"lobby", "a" + std::to_string(i)});
    });
    for (int i = 0; i < n; ++i) second.send(Say{"lobby", "b" + std::to_string(i)});
    other.join();
}

// Two nodes on one nats-server, alice on a and bob on b, both in "lobby".
struct TwoNodes {
    explicit TwoNodes(std::size_t history = 100)
        : a(node_config(nats, "a", history)), b(node_config(nats, "b", history)) {
        alice = member(a.port(), "alice");
        bob = member(b.port(), "bob");
        REQUIRE(alice->join("lobby"));
        REQUIRE(bob->join("lobby"));
    }
    NatsServer nats;
    TestServer a;
    TestServer b;
    std::unique_ptr<TestClient> alice;
    std::unique_ptr<TestClient> bob;
};

Joined resume(TestClient& c, const std::string& room, Position after) {
    c.send(Join{room, true, after});
    auto j = c.read_until<Joined>(5000ms);
    REQUIRE(j);
    return *j;
}

}  // namespace

TEST_CASE("two nodes publishing at once: every member on both sees one order, each message once") {
    NatsServer nats;
    TestServer a(node_config(nats, "a"));
    TestServer b(node_config(nats, "b"));
    auto alice = member(a.port(), "alice");
    auto bob = member(b.port(), "bob");
    auto carol = member(b.port(), "carol");
    REQUIRE(alice->join("lobby"));
    REQUIRE(bob->join("lobby"));
    REQUIRE(carol->join("lobby"));

    constexpr int per_sender = 150;
    say_at_once(*alice, *bob, per_sender);

    auto on_a = delivers(*alice, 2 * per_sender);
    auto on_b = delivers(*bob, 2 * per_sender);
    auto on_b2 = delivers(*carol, 2 * per_sender);
    REQUIRE(on_a.size() == 2 * per_sender);
    REQUIRE(on_b.size() == 2 * per_sender);
    REQUIRE(on_b2.size() == 2 * per_sender);
    auto key = [](const std::vector<Deliver>& v) {
        std::vector<std::tuple<std::uint64_t, std::uint64_t, std::string, std::string>> k;
        for (const auto& d : v) k.emplace_back(d.position.epoch, d.position.seq, d.sender, d.text);
        return k;
    };
    CHECK(key(on_a) == key(on_b));
    CHECK(key(on_b) == key(on_b2));
    // Increasing positions in one epoch, each message exactly once, and each
    // sender's own messages in the order it sent them.
    std::set<std::string> texts;
    int next_a = 0, next_b = 0;
    for (std::size_t i = 0; i < on_a.size(); ++i) {
        if (i > 0) {
            CHECK(on_a[i].position.epoch == on_a[0].position.epoch);
            CHECK(on_a[i].position.seq > on_a[i - 1].position.seq);
        }
        texts.insert(on_a[i].text);
        if (on_a[i].sender == "alice") CHECK(on_a[i].text == "a" + std::to_string(next_a++));
        if (on_a[i].sender == "bob") CHECK(on_a[i].text == "b" + std::to_string(next_b++));
    }
    CHECK(texts.size() == 2 * per_sender);
    CHECK(no_more_delivers(*alice));
    CHECK(no_more_delivers(*bob));
}

TEST_CASE("a burst far beyond the per-room history: the stream trims what the live feed still carries, nothing is lost") {
    // Three messages per room: a fill for a gap finds the linked one already
    // trimmed and must wait for its live copy instead of skipping past it.
    TwoNodes two(3);
    auto& [nats, a, b, alice, bob] = two;
    constexpr int per_sender = 300;
    say_at_once(*alice, *bob, per_sender);
    auto on_a = delivers(*alice, 2 * per_sender, 20'000ms);
    auto on_b = delivers(*bob, 2 * per_sender, 20'000ms);
    CHECK(on_a.size() == 2 * per_sender);
    CHECK(on_b.size() == 2 * per_sender);
    std::set<std::string> texts_a, texts_b;
    for (const auto& d : on_a) texts_a.insert(d.text);
    for (const auto& d : on_b) texts_b.insert(d.text);
    CHECK(texts_a.size() == 2 * per_sender);
    CHECK(texts_b.size() == 2 * per_sender);
    CHECK(no_more_delivers(*alice));
}

TEST_CASE("history lives in JetStream: a resume on another node gets exactly what was missed") {
    NatsServer nats;
    TestServer a(node_config(nats, "a", 5));
    TestServer b(node_config(nats, "b", 5));
    auto bob = member(b.port(), "bob");
    REQUIRE(bob->join("lobby"));
    Position last{};
    {
        auto alice = member(a.port(), "alice");
        auto j = alice->join("lobby");
        REQUIRE(j);
        CHECK(j->head_seq == 0);
        alice->send(Say{"lobby", "before"});
        auto d = delivers(*alice, 1);
        REQUIRE(d.size() == 1);
        last = d[0].position;
        REQUIRE(delivers(*bob, 1).size() == 1);
    }
    SUBCASE("in full") {
        for (int i = 0; i < 3; ++i) bob->send(Say{"lobby", "while away " + std::to_string(i)});
        REQUIRE(delivers(*bob, 3).size() == 3);
        // Alice comes back on node b.
        auto alice = member(b.port(), "alice");
        auto j = resume(*alice, "lobby", last);
        CHECK_FALSE(j.epoch_changed);
        CHECK(j.missed == 0);
        REQUIRE(j.history_count == 3);
        auto replay = delivers(*alice, 3);
        REQUIRE(replay.size() == 3);
        for (int i = 0; i < 3; ++i) {
            CHECK(replay[i].history);
            CHECK(replay[i].text == "while away " + std::to_string(i));
            CHECK(replay[i].position.seq > last.seq);
        }
        CHECK(j.head_seq == replay.back().position.seq);
    }
    SUBCASE("past the history bound") {
        for (int i = 0; i < 8; ++i) bob->send(Say{"lobby", "while away " + std::to_string(i)});
        REQUIRE(delivers(*bob, 8).size() == 8);
        auto alice = member(b.port(), "alice");
        auto j = resume(*alice, "lobby", last);
        CHECK_FALSE(j.epoch_changed);
        CHECK(j.missed == missed_unknown);  // some are gone, uncounted
        REQUIRE(j.history_count == 5);
        auto replay = delivers(*alice, 5);
        REQUIRE(replay.size() == 5);
        CHECK(replay.front().text == "while away 3");
        CHECK(replay.back().text == "while away 7");
    }
    SUBCASE("on a node that just started: it loads the room from the stream") {
        bob->send(Say{"lobby", "after"});
        REQUIRE(delivers(*bob, 1).size() == 1);
        TestServer c(node_config(nats, "c", 5));
        auto alice = member(c.port(), "alice");
        auto j = resume(*alice, "lobby", last);
        CHECK(j.missed == 0);
        REQUIRE(j.history_count == 1);
        auto replay = delivers(*alice, 1);
        REQUIRE(replay.size() == 1);
        CHECK(replay[0].text == "after");
        // And a fresh join there sees the whole held history.
        auto dave = member(c.port(), "dave");
        auto fresh = dave->join("lobby");
        REQUIRE(fresh);
        CHECK(fresh->history_count == 2);
    }
}

TEST_CASE("nats-server restarted on the same store keeps history and epoch; a wiped store changes the epoch") {
    NatsServer nats;
    TestServer a(node_config(nats, "a"));
    auto alice = member(a.port(), "alice");
    auto j = alice->join("lobby");
    REQUIRE(j);
    const auto epoch = j->epoch;
    alice->send(Say{"lobby", "kept"});
    auto d = delivers(*alice, 1);
    REQUIRE(d.size() == 1);
    CHECK(d[0].position.epoch == epoch);

    nats.restart();
    // The node reconnects by itself; its sessions never noticed.
    REQUIRE(TestServer::eventually([&] { return a.server().cluster()->stats().reconnects >= 1; }, 10'000ms));
    alice->send(Say{"lobby", "after restart"});
    d = delivers(*alice, 1);
    REQUIRE(d.size() == 1);
    CHECK(d[0].text == "after restart");
    CHECK(d[0].position.epoch == epoch);
    {
        TestServer b(node_config(nats, "b"));
        auto bob = member(b.port(), "bob");
        auto jb = resume(*bob, "lobby", Position{epoch, 0});
        CHECK_FALSE(jb.epoch_changed);
        CHECK(jb.history_count == 2);
    }

    nats.restart_wiped();
    REQUIRE(TestServer::eventually([&] { return a.server().cluster()->stats().epoch_changes >= 1; }, 10'000ms));
    alice->send(Say{"lobby", "new history"});
    d = delivers(*alice, 1);
    REQUIRE(d.size() == 1);
    CHECK(d[0].position.epoch != epoch);
    TestServer c(node_config(nats, "c"));
    auto carol = member(c.port(), "carol");
    auto jc = resume(*carol, "lobby", Position{epoch, 2});
    CHECK(jc.epoch_changed);
    CHECK(jc.epoch == d[0].position.epoch);
    CHECK(jc.history_count == 1);
}

TEST_CASE("the broker paused for less than dead-after: nothing lost, nothing twice, sessions stay") {
    TwoNodes two;
    auto& [nats, a, b, alice, bob] = two;
    nats.pause();
    for (int i = 0; i < 5; ++i) alice->send(Say{"lobby", "paused " + std::to_string(i)});
    std::this_thread::sleep_for(400ms);  // the fault itself lasts this long; nothing waits on it
    nats.resume();
    for (auto* c : {alice.get(), bob.get()}) {
        auto got = delivers(*c, 5);
        REQUIRE(got.size() == 5);
        for (int i = 0; i < 5; ++i) CHECK(got[i].text == "paused " + std::to_string(i));
        CHECK(no_more_delivers(*c));
        CHECK_FALSE(c->closed());
    }
}

TEST_CASE("the broker paused past dead-after: SAY is refused as unavailable, heartbeats go on, then all resyncs") {
    TwoNodes two;
    auto& [nats, a, b, alice, bob] = two;

    nats.pause();
    // Sent before the node knows: accepted, kept, sent again with its
    // Nats-Msg-Id after the broker is back, stored once.
    alice->send(Say{"lobby", "sent into the pause"});
    REQUIRE(TestServer::eventually([&] { return !a.server().cluster()->available(); }, 5000ms));
    alice->send(Say{"lobby", "refused"});
    auto e = alice->read_until<Error>(3000ms);
    REQUIRE(e);
    CHECK(e->code == ErrorCode::unavailable);
    CHECK_FALSE(e->fatal);
    std::this_thread::sleep_for(1500ms);  // the fault lasts; the sessions' heartbeats go on meanwhile
    nats.resume();
    REQUIRE(TestServer::eventually([&] { return a.server().cluster()->available(); }, 10'000ms));

    alice->send(Say{"lobby", "after"});
    for (auto* c : {alice.get(), bob.get()}) {
        auto got = delivers(*c, 2);
        REQUIRE(got.size() == 2);
        CHECK(got[0].text == "sent into the pause");
        CHECK(got[1].text == "after");
        CHECK(no_more_delivers(*c));
        CHECK_FALSE(c->closed());
    }
    const auto stats = a.server().cluster()->stats();
    CHECK(stats.refused >= 1);
    CHECK(stats.failed == 0);
    MESSAGE("node a: retried " << stats.retried << ", duplicates " << stats.duplicates << ", reconnects " << stats.reconnects);
}

TEST_CASE("an acknowledgment lost with its connection: the retry after the reconnect is stored once, delivered once") {
    NatsServer nats;
    // Node a reaches NATS through a proxy that can lose what NATS answers.
    TcpProxy proxy(nats.port());
    ServerConfig through_proxy = node_config(nats, "a");
    through_proxy.cluster_servers = {proxy.url()};
    through_proxy.admin_port = 0;  // its /metrics shows the retry too
    TestServer a(through_proxy);
    TestServer b(node_config(nats, "b"));
    auto alice = member(a.port(), "alice");
    auto bob = member(b.port(), "bob");
    REQUIRE(alice->join("lobby"));
    REQUIRE(bob->join("lobby"));

    proxy.swallow_replies();
    alice->send(Say{"lobby", "once"});
    // Stored: bob, on the other node, has it live. Its acknowledgment to node a is lost.
    auto on_b = delivers(*bob, 1);
    REQUIRE(on_b.size() == 1);
    CHECK(on_b[0].text == "once");
    proxy.cut();
    // Node a reconnects and sends it again with its Nats-Msg-Id: JetStream
    // answers "duplicate" with the stored sequence.
    REQUIRE(TestServer::eventually([&] {
        const auto s = a.server().cluster()->stats();
        return s.reconnects >= 1 && s.duplicates >= 1;
    }, 10'000ms));
    auto on_a = delivers(*alice, 1);
    REQUIRE(on_a.size() == 1);
    CHECK(on_a[0].text == "once");
    CHECK(on_a[0].position == on_b[0].position);
    CHECK(no_more_delivers(*alice));
    CHECK(no_more_delivers(*bob));
    const auto stats = a.server().cluster()->stats();
    CHECK(stats.failed == 0);
    CHECK(stats.retried >= 1);
    CHECK(proxy.swallowed() > 0);
#if PULSECHAT_HAVE_HTTP_PARSER
    // The same counts on node a's /metrics, for an operator.
    const auto metrics = http_get(a.server().admin_endpoint()->port(), "/metrics");
    REQUIRE(metrics.status == 200);
    const std::string& text = metrics.body;
    CHECK(sample(text, "pulsechat_cluster_publishes_total{outcome=\"acked\"}") == 1);
    CHECK(sample(text, "pulsechat_cluster_publishes_total{outcome=\"failed\"}") == 0);
    CHECK(sample(text, "pulsechat_cluster_publish_duplicates_total") >= 1);
    CHECK(sample(text, "pulsechat_cluster_publish_retries_total") >= 1);
    CHECK(sample(text, "pulsechat_cluster_publishes_in_flight") == 0);
    CHECK(sample(text, "pulsechat_cluster_reconnects_total") >= 1);
    CHECK(sample(text, "pulsechat_cluster_messages_received_total{source=\"live\"}") +
              sample(text, "pulsechat_cluster_messages_received_total{source=\"fetched\"}") >= 1);
    CHECK(sample(text, "pulsechat_cluster_rooms") == 1);
    if (have_promtool()) CHECK(promtool_complaints(text) == "");
#endif
}

TEST_CASE("a node cut off longer than the history lasts tells its members that messages are gone, then goes on") {
    NatsServer nats;
    // Node a reaches NATS through a proxy: while it swallows NATS' replies,
    // node a hears nothing of the room; a cut then makes it reconnect.
    TcpProxy proxy(nats.port());
    ServerConfig through_proxy = node_config(nats, "a", 5);
    through_proxy.cluster_servers = {proxy.url()};
    TestServer a(through_proxy);
    TestServer b(node_config(nats, "b", 5));
    auto alice = member(a.port(), "alice");
    auto bob = member(b.port(), "bob");
    REQUIRE(alice->join("lobby"));
    REQUIRE(bob->join("lobby"));
    bob->send(Say{"lobby", "before"});
    auto first = delivers(*alice, 1);
    REQUIRE(first.size() == 1);
    REQUIRE(delivers(*bob, 1).size() == 1);

    // What alice's frames say, in order, until `n` DELIVERs: texts, and "ERROR <code>".
    auto told = [&](std::size_t n) {
        std::vector<std::string> seen;
        std::size_t texts = 0;
        const auto deadline = Clock::now() + 15'000ms;
        while (texts < n && Clock::now() < deadline) {
            auto m = alice->read(std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()));
            if (!m) break;
            if (auto* d = std::get_if<Deliver>(&*m)) {
                seen.push_back(d->text);
                ++texts;
            } else if (auto* e = std::get_if<Error>(&*m)) {
                seen.push_back(fmt::format("ERROR {}{}", to_string(e->code), e->fatal ? " fatal" : ""));
            }
        }
        return seen;
    };
    auto cut_off_while = [&](int count, const std::string& prefix) {
        proxy.swallow_replies();
        for (int i = 0; i < count; ++i) bob->send(Say{"lobby", prefix + std::to_string(i)});
        REQUIRE(delivers(*bob, static_cast<std::size_t>(count)).size() == static_cast<std::size_t>(count));  // stored
        proxy.cut();
    };

    // Fewer than the history (5) while cut off: the fill from the head finds
    // the head still stored, and everything comes, with no notice.
    cut_off_while(3, "short");
    CHECK(told(3) == std::vector<std::string>{"short0", "short1", "short2"});
    CHECK(a.server().cluster()->stats().missed == 0);

    // Twelve: the stream keeps the newest five, the head and six after it are
    // gone. Alice is told before the first message after them, not silently
    // skipped over them.
    const auto reconnects = a.server().cluster()->stats().reconnects;
    cut_off_while(12, "long");
    REQUIRE(TestServer::eventually([&] { return a.server().cluster()->stats().reconnects > reconnects; }, 10'000ms));
    CHECK(told(5) == std::vector<std::string>{"ERROR messages_missed", "long7", "long8", "long9", "long10", "long11"});
    CHECK(no_more_delivers(*alice));
    CHECK_FALSE(alice->closed());
    const auto stats = a.server().cluster()->stats();
    CHECK(stats.missed == 1);
    CHECK(stats.failed == 0);
    // Live messages go on.
    bob->send(Say{"lobby", "after"});
    CHECK(told(1) == std::vector<std::string>{"after"});
    // Back in the room with a resume from before the loss: it cannot be counted.
    alice->send(Leave{"lobby"});
    auto j = resume(*alice, "lobby", first[0].position);
    CHECK(j.missed == missed_unknown);
    CHECK_FALSE(j.epoch_changed);
}

TEST_CASE("nicks are unique across nodes; presence, WHO, LIST and WHISPER span them; a resume token moves a nick") {
    NatsServer nats;
    TestServer a(node_config(nats, "a"));
    TestServer b(node_config(nats, "b"));
    auto alice = std::make_unique<TestClient>(a.port());
    alice->keep_alive(200ms);
    auto welcome = alice->login("alice");
    REQUIRE(welcome);
    {
        TestClient twin(b.port());
        twin.send(Hello{"alice", {}, {}});
        auto e = twin.read_until<Error>(5000ms);
        REQUIRE(e);
        CHECK(e->code == ErrorCode::nick_taken);
        CHECK(e->fatal);
    }
    auto bob = member(b.port(), "bob");
    REQUIRE(alice->join("lobby"));
    auto joined = bob->join("lobby");
    REQUIRE(joined);
    // (JOINED lists the other node's members it has heard of: alice's join
    // may still be on its way, so only WHO below is checked for both.)
    CHECK(joined->members.back() == "bob");
    auto p = alice->read_until<Presence>(5000ms);
    REQUIRE(p);
    CHECK(p->nick == "bob");
    CHECK(p->event == PresenceEvent::joined);

    // Alice saw bob's join, so her node's news (sent before it) is in too.
    std::set<std::string> names;
    REQUIRE(TestServer::eventually([&] {
        bob->send(Who{"lobby"});
        auto who = bob->read_until<Members>(5000ms);
        if (!who) return false;
        names = std::set<std::string>(who->nicks.begin(), who->nicks.end());
        return names.size() == 2;
    }, 5000ms));
    CHECK(names == std::set<std::string>{"alice", "bob"});
    bob->send(List{});
    auto rooms = bob->read_until<Rooms>(5000ms);
    REQUIRE(rooms);
    REQUIRE(rooms->rooms.size() == 1);
    CHECK(rooms->rooms[0].members == 2);

    bob->send(Whisper{"alice", 0, "psst", false});
    auto w = alice->read_until<Whisper>(5000ms);
    REQUIRE(w);
    CHECK(w->peer == "bob");
    CHECK(w->text == "psst");

    // Alice comes back on node b with her token: b takes the nick over, a's session is replaced.
    auto again = std::make_unique<TestClient>(b.port());
    again->keep_alive(200ms);
    REQUIRE(again->login("alice", welcome->resume_token));
    auto replaced = alice->read_until<Error>(5000ms);
    REQUIRE(replaced);
    CHECK(replaced->code == ErrorCode::replaced);
    // Bob hears exactly one departure of the old session.
    auto gone = bob->read_until<Presence>(5000ms);
    REQUIRE(gone);
    CHECK(gone->nick == "alice");
    CHECK(gone->event == PresenceEvent::disconnected);
    CHECK(no_more_delivers(*bob));
}

namespace {

// Node `name` as a chat_server process of its own (one a test can kill -9).
std::unique_ptr<ServerProcess> node_process(const NatsServer& nats, const std::string& name) {
    auto p = std::make_unique<ServerProcess>(std::vector<std::string>{
        "--port", "0", "--bind", "127.0.0.1", "--cluster", nats.url(), "--node-name", name,
        "--cluster-dead-after", "1s", "--heartbeat-interval", "1s", "--heartbeat-timeout", "5s",
        "--handshake-timeout", "2s"});
    return p;
}

std::vector<Presence> presences(TestClient& c, std::chrono::milliseconds limit, std::size_t want) {
    return next_of<Presence>(c, want, limit);
}

}  // namespace

TEST_CASE("a node killed with SIGKILL: one timed_out per member and room elsewhere within dead-after + 1 s, its nicks free, no resurrection") {
    NatsServer nats;
    TestServer a(node_config(nats, "a"));
    auto b = node_process(nats, "b");
    const auto b_port = b->port(10'000ms);
    REQUIRE_MESSAGE(b_port, b->state());

    auto alice = member(a.port(), "alice");
    auto alice_r1 = alice->join("r1");
    REQUIRE(alice_r1);
    REQUIRE(alice->join("r2"));
    auto bob = member(*b_port, "bob");
    auto carol = member(*b_port, "carol");
    REQUIRE(bob->join("r1"));
    REQUIRE(bob->join("r2"));
    REQUIRE(carol->join("r1"));
    // Alice has heard all three joins: node a knows b's members.
    auto joins = presences(*alice, 5000ms, 3);
    REQUIRE(joins.size() == 3);
    for (const auto& p : joins) CHECK(p.event == PresenceEvent::joined);

    const auto killed_at = Clock::now();
    b->signal(SIGKILL);
    REQUIRE(b->wait_exit(5000ms));
    // dead-after (1 s) + 1 s, and the read's own slack.
    auto gone = presences(*alice, 2000ms + 500ms, 3);
    const auto took = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - killed_at);
    REQUIRE(gone.size() == 3);
    CHECK(took <= 2000ms + 500ms);
    MESSAGE("three timed_out " << took.count() << " ms after the kill (dead-after 1000 ms)");
    std::multiset<std::pair<std::string, std::string>> seen;
    for (const auto& p : gone) {
        CHECK(p.event == PresenceEvent::timed_out);
        seen.emplace(p.room, p.nick);
    }
    CHECK(seen == std::multiset<std::pair<std::string, std::string>>{{"r1", "bob"}, {"r1", "carol"}, {"r2", "bob"}});
    // Exactly once: nothing more about them.
    auto more = presences(*alice, 500ms, 1);
    CHECK(more.empty());

    // The dead node's nicks are free again, on the living node.
    auto bob_again = member(a.port(), "bob");
    REQUIRE(bob_again->join("r1"));

    // b comes back under the same name: a new incarnation, none of its old sessions.
    auto b2 = node_process(nats, "b");
    const auto b2_port = b2->port(10'000ms);
    REQUIRE_MESSAGE(b2_port, b2->state());
    auto dave = member(*b2_port, "dave");
    auto dave_r1 = dave->join("r1");
    REQUIRE(dave_r1);
    CHECK(dave_r1->epoch == alice_r1->epoch);  // a node's restart is not a new history
    std::set<std::string> names;
    REQUIRE(TestServer::eventually([&] {
        dave->send(Who{"r1"});
        auto who = dave->read_until<Members>(5000ms);
        if (!who) return false;
        names = std::set<std::string>(who->nicks.begin(), who->nicks.end());
        return names.size() >= 3;
    }, 5000ms));
    CHECK(names == std::set<std::string>{"alice", "bob", "dave"});
    alice->send(Who{"r2"});
    auto who2 = alice->read_until<Members>(5000ms);
    REQUIRE(who2);
    CHECK(who2->nicks == std::vector<std::string>{"alice"});
    // carol's old claim is gone with the old incarnation: she may log in anew.
    auto carol_again = member(*b2_port, "carol");
    CHECK_FALSE(carol_again->closed());
}

TEST_CASE("on a three-server NATS cluster with R3 streams, killing the nats-server a node is on loses nothing") {
    NatsCluster nats;
    auto config = [&](const std::string& name) {
        // A history above the test's 160 messages: while node a waits out the
        // leader election (seconds) the stream must not trim what it has yet
        // to fetch. That case -- members told, not skipped silently -- is "a
        // node cut off longer than the history lasts" above.
        ServerConfig cfg = node_config(nats.server(0), name, 1000);
        cfg.cluster_servers = nats.urls();
        cfg.cluster_replicas = 3;
        // Failing over takes a stream leader election when the killed server
        // led the stream: longer than the 1 s of the other tests, shorter than this.
        cfg.cluster_dead_after = 5000ms;
        // One member is read at a time below, while the other's keep-alive waits.
        cfg.heartbeat_timeout = 30'000ms;
        return cfg;
    };
    // The first node creates the R3 stream: the cluster may still be finding its peers.
    std::unique_ptr<TestServer> a;
    REQUIRE(TestServer::eventually([&] {
        try {
            a = std::make_unique<TestServer>(config("a"));
            return true;
        } catch (const std::exception&) {
            return false;
        }
    }, 20'000ms));
    TestServer b(config("b"));
    auto alice = member(a->port(), "alice");
    auto bob = member(b.port(), "bob");
    REQUIRE(alice->join("lobby"));
    REQUIRE(bob->join("lobby"));

    constexpr int before = 40, during = 80, after = 40;
    for (int i = 0; i < before; ++i) alice->send(Say{"lobby", "m" + std::to_string(i)});
    REQUIRE(delivers(*bob, before).size() == before);

    // The server node a is connected to dies while alice is sending.
    char url[256] = {};
    REQUIRE(natsConnection_GetConnectedUrl(a->server().cluster()->nats_connection(), url, sizeof url) == NATS_OK);
    std::size_t victim = nats.size();
    for (std::size_t i = 0; i < nats.size(); ++i)
        if (nats.server(i).url() == url) victim = i;
    REQUIRE_MESSAGE(victim < nats.size(), url);
    for (int i = before; i < before + during; ++i) {
        if (i == before + during / 2) nats.server(victim).kill();
        alice->send(Say{"lobby", "m" + std::to_string(i)});
    }
    REQUIRE(TestServer::eventually([&] { return a->server().cluster()->stats().reconnects >= 1; }, 10'000ms));
    for (int i = before + during; i < before + during + after; ++i) bob->send(Say{"lobby", "m" + std::to_string(i)});

    constexpr int total = before + during + after;
    const auto reading = Clock::now();
    auto on_a = delivers(*alice, total, 30'000ms);
    MESSAGE("every message on node a after "
            << std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - reading).count() << " ms");
    auto on_b = delivers(*bob, total - before, 30'000ms);
    // On a failure: which texts each node is missing, and what its broker saw.
    const auto missing = [](const std::vector<Deliver>& got, int from, int to) {
        std::set<std::string> seen;
        for (const auto& d : got) seen.insert(d.text);
        std::string list;
        for (int i = from; i < to; ++i)
            if (!seen.count("m" + std::to_string(i))) list += " m" + std::to_string(i);
        return list.empty() ? std::string(" none") : list;
    };
    const auto broker = [](TestServer& node) {
        const auto s = node.server().cluster()->stats();
        return fmt::format("published {} acked {} duplicates {} retried {} failed {} refused {} live {} fetched {} "
                           "gaps {} missed {} reconnects {} unacked {}",
                           s.published, s.acked, s.duplicates, s.retried, s.failed, s.refused, s.live, s.fetched,
                           s.gaps, s.missed, s.reconnects, s.unacked);
    };
    INFO("missing on a:" << missing(on_a, 0, total) << "; on b:" << missing(on_b, before, total));
    INFO("node a: " << broker(*a) << "; node b: " << broker(b));
    REQUIRE(on_a.size() == total);
    REQUIRE(on_b.size() == total - before);
    // Every message once, in one order on both nodes.
    std::set<std::string> texts;
    for (std::size_t i = 0; i < on_a.size(); ++i) {
        texts.insert(on_a[i].text);
        if (i > 0) CHECK(on_a[i].position.seq > on_a[i - 1].position.seq);
        if (i >= static_cast<std::size_t>(before)) {
            CHECK(on_a[i].text == on_b[i - before].text);
            CHECK(on_a[i].position == on_b[i - before].position);
        }
    }
    CHECK(texts.size() == total);
    CHECK(no_more_delivers(*alice));
    CHECK(no_more_delivers(*bob));
    const auto stats = a->server().cluster()->stats();
    CHECK(stats.failed == 0);
    CHECK(stats.refused == 0);
    CHECK(stats.missed == 0);
    MESSAGE("node a: retried " << stats.retried << ", duplicates " << stats.duplicates);
}

namespace {

// The last `lines` lines of a file ("" if it cannot be read).
std::string tail_of(const std::string& path, std::size_t lines) {
    std::ifstream in(path);
    std::deque<std::string> kept;
    for (std::string line; std::getline(in, line);) {
        kept.push_back(std::move(line));
        if (kept.size() > lines) kept.pop_front();
    }
    std::string out;
    for (auto& line : kept) out += "    " + line + "\n";
    return out;
}

// What a process that outlived its stop is doing: its state, every thread's
// kernel wait and, where gdb is installed, every thread's stack.
std::string what_it_does(pid_t pid) {
    std::string out = "(gone)\n";
    std::ifstream status("/proc/" + std::to_string(pid) + "/status");
    for (std::string line; std::getline(status, line);)
        if (line.starts_with("State:")) out = line + "\n";
    std::error_code ec;
    for (const auto& task : std::filesystem::directory_iterator("/proc/" + std::to_string(pid) + "/task", ec)) {
        std::ifstream comm(task.path() / "comm"), wchan(task.path() / "wchan");
        std::string name, wait;
        std::getline(comm, name);
        std::getline(wchan, wait);
        out += "    thread " + task.path().filename().string() + " " + name + ": " + wait + "\n";
    }
    if (::access("/usr/bin/gdb", X_OK) == 0) {
        Subprocess gdb({"/usr/bin/gdb", "-p", std::to_string(pid), "-batch", "-ex", "thread apply all bt 12"});
        out += gdb.rest_of_stdout(60'000ms);  // read to EOF: a full pipe would stall gdb
        gdb.wait_exit(5'000ms);
    }
    return out;
}

// The processes whose command line contains `text`.
std::vector<pid_t> processes_naming(const std::string& text) {
    std::vector<pid_t> found;
    std::error_code ec;
    for (const auto& proc : std::filesystem::directory_iterator("/proc", ec)) {
        std::ifstream cmdline(proc.path() / "cmdline");
        const std::string args((std::istreambuf_iterator<char>(cmdline)), std::istreambuf_iterator<char>());
        const auto pid = static_cast<pid_t>(std::atoi(proc.path().filename().c_str()));
        if (pid > 0 && args.find(text) != std::string::npos) found.push_back(pid);
    }
    return found;
}

}  // namespace

TEST_CASE("scripts/pulsechat cluster: NATS and two nodes on free ports, one room across them, all gone after SIGTERM") {
    const char* source = std::getenv("PULSECHAT_SOURCE_DIR");
    REQUIRE_MESSAGE(source != nullptr, "meson sets PULSECHAT_SOURCE_DIR");
    Subprocess script({"/bin/bash", std::string(source) + "/scripts/pulsechat", "cluster", "--nodes", "2", "--",
                       "--heartbeat-interval", "1s"});
    // A failed check still lets the script stop its children (SIGKILL would orphan them).
    struct StopScript {
        Subprocess& p;
        ~StopScript() {
            p.signal(SIGTERM);
            p.wait_exit(15'000ms);
        }
    } stop_script{script};
    auto nats_line = script.wait_for("nats nats://127.0.0.1:", 15'000ms);
    REQUIRE_MESSAGE(nats_line, script.all_stderr());
    const std::string store = nats_line->substr(nats_line->find("store ") + 6,
                                                nats_line->rfind(')') - nats_line->find("store ") - 6);
    CHECK(std::filesystem::is_directory(store));
    // "nodeN listening on 127.0.0.1:PORT (pid P, log FILE)"
    std::vector<std::uint16_t> ports;
    std::vector<pid_t> pids;
    std::vector<std::string> logs;
    for (int n = 1; n <= 2; ++n) {
        auto line = script.wait_for("node" + std::to_string(n) + " listening on 127.0.0.1:", 15'000ms);
        REQUIRE_MESSAGE(line, script.all_stderr());
        ports.push_back(static_cast<std::uint16_t>(std::atoi(line->c_str() + line->find("127.0.0.1:") + 10)));
        pids.push_back(static_cast<pid_t>(std::atoi(line->c_str() + line->find("(pid ") + 5)));
        const auto log = line->find(", log ") + 6;
        logs.push_back(line->substr(log, line->rfind(')') - log));
    }
    const std::string run_dir = std::filesystem::path(logs.front()).parent_path().string();
    auto alice = member(ports[0], "alice");
    auto bob = member(ports[1], "bob");
    REQUIRE(alice->join("lobby"));
    REQUIRE(bob->join("lobby"));
    alice->send(Say{"lobby", "across the script's nodes"});
    auto got = delivers(*bob, 1);
    REQUIRE(got.size() == 1);
    CHECK(got[0].text == "across the script's nodes");

    script.signal(SIGTERM);
    const auto stopping = Clock::now();
    // Which of the script's processes hold it up, and what each is doing.
    const auto holding_up = [&] {
        std::string report = script.all_stderr();
        for (std::size_t i = 0; i < pids.size(); ++i) {
            report += fmt::format("node{} (pid {}): {}", i + 1, pids[i],
                                  ::kill(pids[i], 0) == 0 ? what_it_does(pids[i]) : "exited\n");
            report += "  " + logs[i] + ":\n" + tail_of(logs[i], 15);
        }
        report += "  " + run_dir + "/nats.log:\n" + tail_of(run_dir + "/nats.log", 15);
        // The script's nats-server is the process that names the run's store.
        for (pid_t pid : processes_naming(run_dir + "/jetstream"))
            report += fmt::format("nats-server (pid {}): {}", pid, what_it_does(pid));
        return report;
    };
    // Within 2 s here; a stop still going after 15 s is reported as it runs
    // (its stacks tell what it waits for), and one past 30 s fails.
    auto status = script.wait_exit(15'000ms);
    if (!status) {
        MESSAGE("the script is still stopping 15 s after SIGTERM\n" << holding_up());
        status = script.wait_exit(15'000ms);
    }
    if (!status) {
        const std::string report = holding_up();
        for (pid_t pid : pids) ::kill(pid, SIGKILL);
        for (pid_t pid : processes_naming(run_dir + "/jetstream")) ::kill(pid, SIGKILL);
        FAIL("the script did not finish within 30 s of SIGTERM\n" << report);
    }
    MESSAGE("the script stopped in "
            << std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - stopping).count() << " ms");
    CHECK(*status == 0);
    for (pid_t pid : pids) CHECK(::kill(pid, 0) != 0);  // reaped by the script: no such process
    CHECK_FALSE(std::filesystem::exists(store));
}
