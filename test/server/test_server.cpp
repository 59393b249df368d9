#include <doctest/doctest.h>

#include <fcntl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <fstream>
#include <map>
#include <set>
#include <thread>

#include "utils/live.hpp"

using namespace chat;
using namespace chat::test;

namespace {

// For tests about something other than heartbeats: a client that is busy
// reading another client's socket must not be expired meanwhile.
ServerConfig relaxed_config(unsigned threads = 1) {
    ServerConfig cfg = fast_config();
    cfg.heartbeat_interval = 1000ms;
    cfg.heartbeat_timeout = 5000ms;
    cfg.threads = threads;
    return cfg;
}

std::chrono::milliseconds since(Clock::time_point t) {
    return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t);
}

// Reads until the server closes the connection and returns the ERROR it sent
// last, if any.
std::optional<Error> error_then_close(TestClient& c, std::chrono::milliseconds limit = 3000ms) {
    std::optional<Error> last;
    for (auto& m : c.read_until_closed(limit))
        if (auto* e = std::get_if<Error>(&m)) last = *e;
    return last;
}

void check_fatal_close(TestClient& c, ErrorCode code) {
    auto e = error_then_close(c);
    REQUIRE(e);
    CHECK(to_string(e->code) == to_string(code));
    CHECK(e->fatal);
    CHECK(c.closed());
}

// The header of a frame with an arbitrary version, type and length.
std::string header(std::uint8_t version, std::uint8_t type, std::uint32_t length, std::uint16_t flags = 0) {
    std::string h(header_size, '\0');
    h[0] = static_cast<char>(version);
    h[1] = static_cast<char>(type);
    h[2] = static_cast<char>(flags >> 8);
    h[3] = static_cast<char>(flags & 0xFF);
    for (int i = 0; i < 4; ++i) h[4 + i] = static_cast<char>((length >> (24 - 8 * i)) & 0xFF);
    return h;
}

// Whole process CPU time (user + system): the server runs on threads of this process.
std::chrono::milliseconds process_cpu_time() {
    rusage u{};
    ::getrusage(RUSAGE_SELF, &u);
    return std::chrono::milliseconds{(u.ru_utime.tv_sec + u.ru_stime.tv_sec) * 1000 +
                                     (u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1000};
}

#if defined(__SANITIZE_ADDRESS__)
constexpr bool under_asan = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
constexpr bool under_asan = true;
#else
constexpr bool under_asan = false;
#endif
#else
constexpr bool under_asan = false;
#endif

std::size_t resident_bytes() {
    std::FILE* f = std::fopen("/proc/self/statm", "r");
    if (f == nullptr) return 0;
    unsigned long size = 0, resident = 0;
    const int n = std::fscanf(f, "%lu %lu", &size, &resident);
    std::fclose(f);
    return n == 2 ? resident * static_cast<std::size_t>(::sysconf(_SC_PAGESIZE)) : 0;
}

// A client logged in and in `room`.
std::unique_ptr<TestClient> member(TestServer& server, const std::string& nick, const std::string& room,
                                   int receive_buffer = 0) {
    auto c = receive_buffer > 0 ? std::make_unique<TestClient>(server.port(), receive_buffer)
                                : std::make_unique<TestClient>(server.port());
    REQUIRE(c->login(nick));
    REQUIRE(c->join(room));
    return c;
}

// Reads the next DELIVER, noting the PRESENCE frames passed on the way.
std::optional<Deliver> next_deliver(TestClient& c, std::vector<Presence>* presences = nullptr,
                                    std::chrono::milliseconds limit = 3000ms) {
    const auto deadline = Clock::now() + limit;
    while (Clock::now() < deadline) {
        auto m = c.read(std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()));
        if (!m) return std::nullopt;
        if (auto* d = std::get_if<Deliver>(&*m)) return *d;
        if (auto* p = std::get_if<Presence>(&*m); p && presences) presences->push_back(*p);
    }
    return std::nullopt;
}

std::optional<Presence> presence_of(TestClient& c, const std::string& nick, PresenceEvent event,
                                    std::chrono::milliseconds limit = 3000ms) {
    const auto deadline = Clock::now() + limit;
    while (Clock::now() < deadline) {
        auto p = c.read_until<Presence>(std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()));
        if (!p) return std::nullopt;
        if (p->nick == nick && p->event == event) return p;
    }
    return std::nullopt;
}


// What one non-blocking send loop did.
struct SendResult {
    std::size_t sent = 0;
    int error = 0;  // errno of the send that failed, 0: none did
};

// Sends `bytes` without ever blocking the test: non-blocking sends, each wait
// for room bounded, until everything is sent, a send fails or `limit` passes.
// The socket is blocking again afterwards.
SendResult send_without_blocking(TestClient& c, std::string_view bytes, std::chrono::milliseconds limit = 3000ms) {
    const int fd = c.socket().native_handle();
    const int flags = ::fcntl(fd, F_GETFL);
    ::fcntl(fd, F_SETFL, flags | O_NONBLOCK);
    SendResult r;
    const auto deadline = Clock::now() + limit;
    while (r.sent < bytes.size() && Clock::now() < deadline) {
        const auto n = ::send(fd, bytes.data() + r.sent, bytes.size() - r.sent, MSG_NOSIGNAL);
        if (n > 0) {
            r.sent += static_cast<std::size_t>(n);
            continue;
        }
        if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
            r.error = errno;
            break;
        }
        pollfd p{fd, POLLOUT, 0};
        ::poll(&p, 1, 10);
    }
    ::fcntl(fd, F_SETFL, flags);
    return r;
}

// What a raw read to the end of the stream found.
struct RawRead {
    std::size_t bytes = 0;
    bool eof = false;
    int error = 0;  // errno of the read that failed (ECONNRESET...), 0: none did
};

// Reads and counts bytes straight from the socket until EOF, an error or `limit`.
RawRead read_raw_to_end(int fd, std::chrono::milliseconds limit) {
    RawRead r;
    std::vector<char> buffer(256 * 1024);
    const auto deadline = Clock::now() + limit;
    while (Clock::now() < deadline) {
        pollfd p{fd, POLLIN, 0};
        const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
        if (::poll(&p, 1, static_cast<int>(std::max<long long>(1, left.count()))) <= 0) continue;
        const auto n = ::recv(fd, buffer.data(), buffer.size(), MSG_DONTWAIT);
        if (n > 0) {
            r.bytes += static_cast<std::size_t>(n);
        } else if (n == 0) {
            r.eof = true;
            break;
        } else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
            r.error = errno;
            break;
        }
    }
    return r;
}

// The most a TCP send buffer grows to by autotuning (tcp_wmem's maximum).
std::size_t tcp_send_buffer_max() {
    std::ifstream f("/proc/sys/net/ipv4/tcp_wmem");
    std::size_t min = 0, initial = 0, max = 0;
    if (f >> min >> initial >> max && max > 0) return max;
    return 4 * 1024 * 1024;
}

}  // namespace

TEST_SUITE("server (live)") {
    // --- handshake ---

    TEST_CASE("a frame before HELLO gets a fatal ERROR hello_required and a close") {
        TestServer server;
        TestClient c(server.port());
        c.send(Join{"lobby", false, {}});
        check_fatal_close(c, ErrorCode::hello_required);
    }

    TEST_CASE("an invalid nickname gets a fatal ERROR invalid_nick and a close") {
        TestServer server;
        for (const std::string& nick :
             std::vector<std::string>{"", "-dash", "has space", std::string(33, 'a'), "caf\xc3\xa9"}) {
            CAPTURE(nick);
            TestClient c(server.port());
            c.send(Hello{nick, {}, {}});
            check_fatal_close(c, ErrorCode::invalid_nick);
        }
    }

    TEST_CASE("a nickname in use gets ERROR nick_taken naming it while the holder keeps its session") {
        TestServer server;
        auto alice = member(server, "alice", "lobby");
        TestClient copy(server.port());
        copy.send(Hello{"alice", {}, {}});
        auto e = error_then_close(copy);
        REQUIRE(e);
        CHECK(e->code == ErrorCode::nick_taken);
        CHECK(e->reason.find("alice") != std::string::npos);
        CHECK(copy.closed());
        alice->send(Say{"lobby", "still here"});
        auto d = alice->read_until<Deliver>();
        REQUIRE(d);
        CHECK(d->text == "still here");
    }

    TEST_CASE("a second HELLO on one connection gets a fatal ERROR duplicate_hello and a close") {
        TestServer server;
        TestClient c(server.port());
        REQUIRE(c.login("alice"));
        c.send(Hello{"alice", {}, {}});
        check_fatal_close(c, ErrorCode::duplicate_hello);
    }

    TEST_CASE("a frame of another protocol version gets ERROR unsupported_version and a close") {
        TestServer server;
        SUBCASE("as the first frame") {
            TestClient c(server.port());
            std::string hello = encode(Hello{"alice", {}, {}});
            hello[0] = static_cast<char>(protocol_version + 1);
            c.send_raw(hello);
            check_fatal_close(c, ErrorCode::unsupported_version);
        }
        SUBCASE("after the handshake") {
            TestClient c(server.port());
            REQUIRE(c.login("alice"));
            std::string list = encode(List{});
            list[0] = static_cast<char>(protocol_version + 1);
            c.send_raw(list);
            check_fatal_close(c, ErrorCode::unsupported_version);
        }
    }

    TEST_CASE("a frame type a client may not send gets a fatal ERROR unknown_type") {
        TestServer server;
        TestClient c(server.port());
        REQUIRE(c.login("alice"));
        c.send(Rooms{});
        check_fatal_close(c, ErrorCode::unknown_type);
    }

    TEST_CASE("a connection without HELLO is closed with ERROR handshake_timeout within the handshake timeout") {
        ServerConfig cfg = fast_config();
        cfg.handshake_timeout = 300ms;
        TestServer server(cfg);
        SUBCASE("silent") {
            const auto start = Clock::now();
            TestClient c(server.port());
            check_fatal_close(c, ErrorCode::handshake_timeout);
            const auto took = since(start);
            CHECK(took >= 300ms);
            // Timer plus one loopback write; 10% covers scheduling.
            CHECK(took <= 330ms);
        }
        SUBCASE("trickling a HELLO one byte at a time (slowloris)") {
            const auto start = Clock::now();
            TestClient c(server.port());
            const std::string hello = encode(Hello{"slowpoke", {}, {}});
            std::optional<Error> e;
            // One byte every 40ms would take far longer than the timeout; the
            // bytes must not push the handshake deadline forward.
            for (std::size_t i = 0; i + 1 < hello.size() && !c.closed(); ++i) {
                c.send_raw(hello.substr(i, 1));
                if (auto m = c.read(40ms)) {
                    if (auto* err = std::get_if<Error>(&*m)) e = *err;
                    break;
                }
            }
            if (!e) e = error_then_close(c);
            REQUIRE(e);
            CHECK(e->code == ErrorCode::handshake_timeout);
            CHECK(since(start) <= 330ms);
        }
    }

    TEST_CASE("WELCOME carries the configured heartbeat interval, timeout and max frame") {
        ServerConfig cfg = fast_config();
        cfg.heartbeat_interval = 250ms;
        cfg.heartbeat_timeout = 900ms;
        cfg.max_frame = 20000;
        cfg.server_name = "testbed";
        TestServer server(cfg);
        TestClient c(server.port());
        auto w = c.login("alice");
        REQUIRE(w);
        CHECK(w->heartbeat_interval_ms == 250);
        CHECK(w->heartbeat_timeout_ms == 900);
        CHECK(w->max_frame == 20000);
        CHECK(w->nick == "alice");
        CHECK(w->server_name == "testbed");
        CHECK(w->session_id != 0);
        CHECK(!w->resume_token.empty());
    }

    TEST_CASE("a SAY of exactly max_frame bytes is accepted and one byte more is frame_too_large") {
        ServerConfig cfg = fast_config();
        cfg.max_frame = 4096;
        TestServer server(cfg);
        auto alice = member(server, "alice", "r");
        // SAY payload: u16 room length, room, u32 text length, text.
        const std::string fits(4096 - 2 - 1 - 4, 'x');
        alice->send(Say{"r", fits});
        auto d = alice->read_until<Deliver>();
        REQUIRE(d);
        CHECK(d->text == fits);
        alice->send(Say{"r", fits + "y"});
        check_fatal_close(*alice, ErrorCode::frame_too_large);
    }

    // --- order ---

    TEST_CASE("two clients in one room receive every message in the same order") {
        TestServer server;
        TestClient alice(server.port()), bob(server.port());
        REQUIRE(alice.login("alice"));
        REQUIRE(bob.login("bob"));
        auto j1 = alice.join("lobby");
        REQUIRE(j1);
        auto j2 = bob.join("lobby");
        REQUIRE(j2);
        CHECK(j2->members == std::vector<std::string>{"alice", "bob"});
        auto p = alice.read_until<Presence>();
        REQUIRE(p);
        CHECK(p->nick == "bob");
        CHECK(p->event == PresenceEvent::joined);
        for (int i = 0; i < 20; ++i) (i % 2 ? alice : bob).send(Say{"lobby", "m" + std::to_string(i)});
        std::vector<std::string> a, b;
        std::vector<std::uint64_t> seqs;
        for (int i = 0; i < 20; ++i) {
            auto da = alice.read_until<Deliver>();
            auto db = bob.read_until<Deliver>();
            REQUIRE(da);
            REQUIRE(db);
            a.push_back(da->text);
            b.push_back(db->text);
            seqs.push_back(da->position.seq);
        }
        CHECK(a == b);
        CHECK(std::is_sorted(seqs.begin(), seqs.end()));
    }

    TEST_CASE("fifty clients in one room all see every message in one order") {
        for (unsigned threads : {1u, 2u}) {
            CAPTURE(threads);
            TestServer server(relaxed_config(threads));
            constexpr int clients = 50;
            constexpr int per_client = 8;
            std::vector<std::unique_ptr<TestClient>> c;
            for (int i = 0; i < clients; ++i) c.push_back(member(server, "u" + std::to_string(i), "big"));
            for (int round = 0; round < per_client; ++round)
                for (int i = 0; i < clients; ++i)
                    c[i]->send(Say{"big", "u" + std::to_string(i) + "#" + std::to_string(round)});

            std::vector<std::string> first;
            for (int i = 0; i < clients; ++i) {
                CAPTURE(i);
                std::vector<std::string> texts;
                std::vector<std::uint64_t> seqs;
                std::map<std::string, int> next_round;  // per sender: its messages keep their order
                for (int k = 0; k < clients * per_client; ++k) {
                    auto d = c[i]->read_until<Deliver>();
                    REQUIRE(d);
                    texts.push_back(d->text);
                    seqs.push_back(d->position.seq);
                    const auto hash = d->text.find('#');
                    CHECK(d->sender == d->text.substr(0, hash));
                    CHECK(std::stoi(d->text.substr(hash + 1)) == next_round[d->sender]++);
                }
                CHECK(std::adjacent_find(seqs.begin(), seqs.end(), std::greater_equal<>()) == seqs.end());
                if (i == 0)
                    first = texts;
                else
                    CHECK(texts == first);
            }
            CHECK(std::set<std::string>(first.begin(), first.end()).size() == clients * per_client);
        }
    }

    // --- heartbeats ---

    TEST_CASE("the server PINGs a client it has sent nothing to for one interval") {
        ServerConfig cfg = fast_config();
        cfg.heartbeat_interval = 200ms;
        cfg.heartbeat_timeout = 1000ms;
        TestServer server(cfg);
        TestClient c(server.port());
        REQUIRE(c.login("quiet"));
        const auto welcomed = Clock::now();
        auto ping = c.read_until<Ping>(1000ms);
        REQUIRE(ping);
        const auto took = since(welcomed);
        CHECK(took >= 190ms);  // the WELCOME's write ended a little before we read it
        CHECK(took <= 260ms);
        // The answer counts as traffic; the next PING again waits an interval.
        c.send(Pong{ping->nonce});
        const auto ponged = Clock::now();
        auto again = c.read_until<Ping>(1000ms);
        REQUIRE(again);
        CHECK(again->nonce != ping->nonce);
        CHECK(since(ponged) <= 260ms);
    }

    TEST_CASE("a client that stops sending is expired within the heartbeat timeout plus 10% and its room sees "
              "PRESENCE timed_out") {
        for (unsigned threads : {1u, 2u}) {
            CAPTURE(threads);
            ServerConfig cfg = fast_config();
            cfg.threads = threads;
            cfg.heartbeat_interval = 250ms;
            cfg.heartbeat_timeout = 1000ms;
            TestServer server(cfg);
            auto alice = member(server, "alice", "room");
            alice->keep_alive(100ms);
            TestClient bob(server.port());
            REQUIRE(bob.login("bob"));
            bob.send(Join{"room", false, {}});
            const auto last_sent = Clock::now();  // bob's last frame: the server received it after this
            REQUIRE(bob.read_until<Joined>());

            auto p = presence_of(*alice, "bob", PresenceEvent::timed_out, 3000ms);
            const auto took = since(last_sent);
            REQUIRE(p);
            CHECK(p->room == "room");
            CHECK(took >= 1000ms);
            // The watchdog fires at the deadline itself; telling the room is two
            // posts and a loopback write, well inside the 10% (100ms).
            CHECK(took <= 1100ms);
            // Bob is told why, and closed.
            auto e = error_then_close(bob);
            REQUIRE(e);
            CHECK(e->code == ErrorCode::heartbeat_timeout);
            CHECK(bob.closed());
            CHECK(TestServer::eventually([&] { return server.server().live_sessions() == 1; }));
        }
    }

    TEST_CASE("a client that sends HEARTBEAT every interval is never expired") {
        ServerConfig cfg = fast_config();
        cfg.heartbeat_interval = 100ms;
        cfg.heartbeat_timeout = 300ms;
        TestServer server(cfg);
        TestClient c(server.port());
        REQUIRE(c.login("steady"));
        c.keep_alive(100ms);
        // Over five timeouts nothing but PINGs may come; a read that ends with
        // no message is simply the 1.5s passing.
        const auto start = Clock::now();
        while (since(start) < 1500ms) {
            auto m = c.read(1500ms - since(start));
            if (m) CHECK(std::holds_alternative<Ping>(*m));
            REQUIRE(!c.closed());
        }
        c.send(List{});
        CHECK(c.read_until<Rooms>());
    }

    TEST_CASE("a client that only answers PINGs is never expired") {
        ServerConfig cfg = fast_config();
        cfg.heartbeat_interval = 100ms;
        cfg.heartbeat_timeout = 300ms;
        TestServer server(cfg);
        TestClient c(server.port());
        REQUIRE(c.login("echo"));
        int pings = 0;
        const auto start = Clock::now();
        while (since(start) < 1500ms) {
            auto m = c.read(1500ms - since(start));
            REQUIRE(!c.closed());
            if (!m) continue;
            auto* ping = std::get_if<Ping>(&*m);
            REQUIRE(ping);
            c.send(Pong{ping->nonce});
            ++pings;
        }
        CHECK(pings >= 10);
        c.send(List{});
        CHECK(c.read_until<Rooms>());
    }

    // --- slow consumers and memory ---

    TEST_CASE("a member that never reads is disconnected as a slow consumer while the others receive every "
              "message") {
        for (unsigned threads : {1u, 2u}) {
            CAPTURE(threads);
            ServerConfig cfg = relaxed_config(threads);
            cfg.queue_limit = 64 * 1024;
            cfg.max_frame = 16 * 1024;
            cfg.write_timeout = 5000ms;  // the queue bound, not the write timeout, must catch it
            TestServer server(cfg);
            auto alice = member(server, "alice", "room");
            auto carol = member(server, "carol", "room");
            constexpr int sleepers = 4;
            std::vector<std::unique_ptr<TestClient>> slow;
            for (int i = 0; i < sleepers; ++i)
                slow.push_back(member(server, "sleeper" + std::to_string(i), "room", 4096));
            REQUIRE(presence_of(*carol, "sleeper3", PresenceEvent::joined));
            const std::size_t rss_before = resident_bytes();

            constexpr int messages = 300;  // 4.5MB to each member: 70 times the queue limit
            const std::string big(15 * 1024, 'z');
            std::vector<Presence> seen;
            for (int i = 0; i < messages; ++i) {
                alice->send(Say{"room", std::to_string(i) + big});
                auto own = next_deliver(*alice);
                auto other = next_deliver(*carol, &seen);
                REQUIRE(own);
                REQUIRE(other);
                CHECK(std::stoi(other->text) == i);
            }
            std::set<std::string> gone;
            for (const auto& p : seen) {
                CHECK(p.event == PresenceEvent::disconnected);
                CHECK(p.detail.find("slow consumer") != std::string::npos);
                gone.insert(p.nick);
            }
            CHECK(gone.size() == sleepers);
            // The server never held more than the bound for any one of them.
            CHECK(server.server().peak_queued_bytes() <= cfg.queue_limit);
            if (!under_asan) {
                // Unbounded queues would have grown by sleepers x 4.5MB = 18MB.
                CHECK(resident_bytes() < rss_before + 8 * 1024 * 1024);
            }
            for (auto& s : slow) {
                s->read_until_closed(3000ms);
                CHECK(s->closed());
            }
            CHECK(TestServer::eventually([&] { return server.server().live_sessions() == 2; }));
        }
    }

    TEST_CASE("a write that does not finish within the write timeout makes a slow consumer") {
        ServerConfig cfg = relaxed_config();
        cfg.queue_limit = 16 * 1024 * 1024;  // big enough that only the write timeout can trigger
        cfg.max_frame = 64 * 1024;
        cfg.write_timeout = 300ms;
        TestServer server(cfg);
        auto alice = member(server, "alice", "room");
        auto sleeper = member(server, "sleeper", "room", 4096);
        REQUIRE(presence_of(*alice, "sleeper", PresenceEvent::joined));
        const std::string big(60 * 1024, 'w');
        std::optional<Presence> gone;
        std::vector<Presence> seen;
        // Enough to fill the kernel buffers; then the write blocks for 300ms.
        for (int i = 0; i < 200 && seen.empty(); ++i) {
            alice->send(Say{"room", big});
            REQUIRE(next_deliver(*alice, &seen));
        }
        if (seen.empty()) {
            auto p = presence_of(*alice, "sleeper", PresenceEvent::disconnected, 2000ms);
            REQUIRE(p);
            seen.push_back(*p);
        }
        CHECK(seen.front().nick == "sleeper");
        CHECK(seen.front().detail.find("slow consumer") != std::string::npos);
    }

    TEST_CASE("a client that floods PINGs without reading cannot grow its queue past the limit") {
        ServerConfig cfg = relaxed_config();
        cfg.queue_limit = 64 * 1024;
        cfg.max_frame = 16 * 1024;
        cfg.write_timeout = 2000ms;
        TestServer server(cfg);
        TestClient flood(server.port(), 4096);
        REQUIRE(flood.login("flood"));
        // 64K PINGs per batch; each PONG is 16 bytes, so 4MB of answers per
        // batch against a 64KiB bound.
        std::string batch;
        for (int i = 0; i < 4096; ++i) batch += encode(Ping{static_cast<std::uint64_t>(i)});
        const auto start = Clock::now();
        ::fcntl(flood.socket().native_handle(), F_SETFL,
                ::fcntl(flood.socket().native_handle(), F_GETFL) | O_NONBLOCK);
        std::size_t sent = 0;
        while (since(start) < 1000ms) {
            const auto n = ::send(flood.socket().native_handle(), batch.data(), batch.size(), MSG_NOSIGNAL);
            if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK) break;  // the server closed it
            if (n > 0) sent += static_cast<std::size_t>(n);
            pollfd p{flood.socket().native_handle(), POLLOUT, 0};
            ::poll(&p, 1, 10);
        }
        CAPTURE(sent);
        REQUIRE(sent > 4 * cfg.queue_limit);  // the flood was big enough to matter
        CHECK(server.server().peak_queued_bytes() <= cfg.queue_limit + 1024);
    }

    TEST_CASE("a closing session whose peer neither reads nor writes does not busy-wait") {
        ServerConfig cfg = fast_config();  // heartbeat timeout 600ms passes during the drain
        cfg.queue_limit = 16 * 1024 * 1024;
        cfg.write_timeout = 1500ms;
        cfg.drain_timeout = 3000ms;
        TestServer server(cfg);
        auto alice = member(server, "alice", "room");
        alice->keep_alive(100ms);
        auto sleeper = member(server, "sleeper", "room", 4096);
        REQUIRE(presence_of(*alice, "sleeper", PresenceEvent::joined));
        const std::string big(60 * 1024, 's');
        for (int i = 0; i < 60; ++i) {
            alice->send(Say{"room", big});
            REQUIRE(next_deliver(*alice));
        }
        // Alice leaves; the sleeper's write is stuck: the drain lasts until its
        // grace (the write timeout) ends.
        alice.reset();
        const auto cpu_before = process_cpu_time();
        const auto start = Clock::now();
        server.stop();
        const auto wall = since(start);
        const auto cpu = process_cpu_time() - cpu_before;
        CAPTURE(wall.count());
        CHECK(wall >= 500ms);  // it did wait for the stuck peer
        CHECK(cpu < wall / 4);
    }

    TEST_CASE("a JOIN whose history is larger than the queue limit does not disconnect the joiner") {
        ServerConfig cfg = relaxed_config();
        cfg.queue_limit = 64 * 1024;
        cfg.max_frame = 16 * 1024;
        cfg.history = 10;
        TestServer server(cfg);
        auto alice = member(server, "alice", "room");
        const std::string big(15 * 1024, 'h');
        for (int i = 0; i < 10; ++i) {
            alice->send(Say{"room", big});
            REQUIRE(next_deliver(*alice));
        }
        TestClient bob(server.port());
        REQUIRE(bob.login("bob"));
        auto joined = bob.join("room");
        REQUIRE(joined);
        std::uint32_t replayed = 0;
        while (replayed < joined->history_count) {
            auto d = next_deliver(bob);
            REQUIRE(d);
            CHECK(d->history);
            ++replayed;
        }
        CHECK(replayed > 0);
        bob.send(Say{"room", "hello"});
        auto d = next_deliver(bob);
        REQUIRE(d);
        CHECK(d->text == "hello");
        CHECK(!bob.closed());
    }

    // --- flood control ---

    TEST_CASE("the message after a burst gets a non-fatal ERROR rate_limited and repeated abuse is "
              "disconnected") {
        ServerConfig cfg = fast_config();
        cfg.rate = 5;
        cfg.burst = 5;
        cfg.rate_strikes = 4;
        TestServer server(cfg);
        TestClient c(server.port());
        REQUIRE(c.login("eager"));
        c.send(Join{"r", false, {}});  // the first token
        REQUIRE(c.read_until<Joined>());
        for (int i = 0; i < 5; ++i) c.send(Say{"r", "m" + std::to_string(i)});
        // The ERROR is a control frame: it may overtake the DELIVERs queued
        // before it, so the order of the two kinds is not checked.
        int delivered = 0;
        std::optional<Error> refused;
        while (!refused || delivered < 4) {
            auto m = c.read(2000ms);
            REQUIRE(m);
            if (std::holds_alternative<Deliver>(*m)) ++delivered;
            if (auto* e = std::get_if<Error>(&*m)) refused = *e;
        }
        CHECK(delivered == 4);  // JOIN took one of the five
        CHECK(refused->code == ErrorCode::rate_limited);
        CHECK(!refused->fatal);
        SUBCASE("the bucket refills at the rate") {
            // 1/5 s later one token is back.
            REQUIRE(!c.read_until<Deliver>(250ms));  // waits for the refill, and nothing else came
            c.send(Say{"r", "later"});
            auto d = c.read_until<Deliver>();
            REQUIRE(d);
            CHECK(d->text == "later");
        }
        SUBCASE("refused messages in a row end the session") {
            for (int i = 0; i < 10; ++i) c.send(Say{"r", "spam"});
            check_fatal_close(c, ErrorCode::rate_limited);
        }
    }

    // --- malformed input ---

    TEST_CASE("malformed input gets ERROR and a close while another member of the room keeps receiving") {
        ServerConfig cfg = fast_config();
        cfg.max_frame = 4096;
        TestServer server(cfg);
        auto alice = member(server, "alice", "room");
        alice->keep_alive(100ms);
        auto bob = member(server, "bob", "room");
        bob->keep_alive(100ms);
        auto mallory = member(server, "mallory", "room");

        ErrorCode expected = ErrorCode::internal;
        SUBCASE("garbage bytes") {
            mallory->send_raw("GET / HTTP/1.1\r\nHost: example\r\n\r\n");
            expected = ErrorCode::unsupported_version;
        }
        SUBCASE("an unknown frame type") {
            mallory->send_raw(header(protocol_version, 0xEE, 0));
            expected = ErrorCode::unknown_type;
        }
        SUBCASE("a length over the maximum") {
            mallory->send_raw(header(protocol_version, static_cast<std::uint8_t>(FrameType::say), 0x7FFFFFFF));
            expected = ErrorCode::frame_too_large;
        }
        SUBCASE("a field that runs past the end of its frame") {
            // SAY whose room length says 200 bytes but the payload holds 3.
            mallory->send_raw(header(protocol_version, static_cast<std::uint8_t>(FrameType::say), 5) +
                              std::string("\x00\xC8" "abc", 5));
            expected = ErrorCode::malformed_frame;
        }
        SUBCASE("trailing bytes after the fields") {
            std::string say = encode(Say{"room", "hi"});
            say += "!!";
            const std::uint32_t len = static_cast<std::uint32_t>(say.size() - header_size);
            say.replace(0, header_size, header(protocol_version, static_cast<std::uint8_t>(FrameType::say), len));
            mallory->send_raw(say);
            expected = ErrorCode::malformed_frame;
        }
        SUBCASE("invalid UTF-8 in a text") {
            mallory->send(Say{"room", "bad \xff byte"});
            expected = ErrorCode::invalid_utf8;
        }
        SUBCASE("a frame cut short by the client's half-close") {
            const std::string say = encode(Say{"room", "never finished"});
            mallory->send_raw(say.substr(0, say.size() - 4));
            mallory->shutdown_send();
            expected = ErrorCode::malformed_frame;
        }
        CAPTURE(to_string(expected));
        check_fatal_close(*mallory, expected);
        auto gone = presence_of(*alice, "mallory", PresenceEvent::disconnected);
        REQUIRE(gone);
        // The others are untouched: they keep talking and hearing each other.
        for (int i = 0; i < 5; ++i) {
            bob->send(Say{"room", "after " + std::to_string(i)});
            auto a = alice->read_until<Deliver>();
            auto b = bob->read_until<Deliver>();
            REQUIRE(a);
            REQUIRE(b);
            CHECK(a->text == "after " + std::to_string(i));
            CHECK(b->text == a->text);
        }
    }

    // --- rooms ---

    TEST_CASE("JOIN replays the last N messages of the room flagged as history") {
        ServerConfig cfg = fast_config();
        cfg.history = 5;
        TestServer server(cfg);
        auto alice = member(server, "alice", "room");
        for (int i = 1; i <= 8; ++i) {
            alice->send(Say{"room", "m" + std::to_string(i)});
            REQUIRE(alice->read_until<Deliver>());
        }
        TestClient bob(server.port());
        REQUIRE(bob.login("bob"));
        auto joined = bob.join("room");
        REQUIRE(joined);
        CHECK(joined->head_seq > 0);
        CHECK(joined->history_count == 5);
        CHECK(joined->missed == 0);
        CHECK(!joined->epoch_changed);
        CHECK(joined->members == std::vector<std::string>{"alice", "bob"});
        std::vector<std::string> texts;
        for (std::uint32_t i = 0; i < joined->history_count; ++i) {
            auto d = bob.read_until<Deliver>();
            REQUIRE(d);
            CHECK(d->history);
            CHECK(d->position.epoch == joined->epoch);
            CHECK(d->sender == "alice");
            texts.push_back(d->text);
            if (i + 1 == joined->history_count) CHECK(d->position.seq == joined->head_seq);
        }
        CHECK(texts == std::vector<std::string>{"m4", "m5", "m6", "m7", "m8"});
        // Live traffic after the replay carries no history flag.
        alice->send(Say{"room", "live"});
        auto live = bob.read_until<Deliver>();
        REQUIRE(live);
        CHECK(live->text == "live");
        CHECK(!live->history);
        CHECK(live->position.seq > joined->head_seq);
    }

    TEST_CASE("a JOIN that resumes from a position gets what followed it") {
        ServerConfig cfg = relaxed_config();
        cfg.history = 5;
        TestServer server(cfg);
        auto alice = member(server, "alice", "room");
        auto bob = member(server, "bob", "room");
        std::vector<Position> positions;
        bool bob_in = true;
        auto say = [&](const std::string& text) {
            alice->send(Say{"room", text});
            auto d = alice->read_until<Deliver>();
            REQUIRE(d);
            if (bob_in) REQUIRE(bob->read_until<Deliver>());
            positions.push_back(d->position);
        };
        say("a");
        say("b");
        const Position seen = positions.back();
        bob->send(Leave{"room"});
        bob_in = false;
        REQUIRE(presence_of(*alice, "bob", PresenceEvent::left));
        REQUIRE(bob->read_until<Presence>());  // bob's own confirmation

        SUBCASE("exactly the messages after it while the history reaches back") {
            say("c");
            say("d");
            bob->send(Join{"room", true, seen});
            auto joined = bob->read_until<Joined>();
            REQUIRE(joined);
            CHECK(joined->missed == 0);
            CHECK(!joined->epoch_changed);
            REQUIRE(joined->history_count == 2);
            auto c = bob->read_until<Deliver>();
            auto d = bob->read_until<Deliver>();
            REQUIRE(c);
            REQUIRE(d);
            CHECK(c->text == "c");
            CHECK(d->text == "d");
            CHECK(c->history);
            CHECK(d->position == positions.back());
        }
        SUBCASE("what the history holds plus the count it missed when it no longer reaches back") {
            for (int i = 0; i < 8; ++i) say("n" + std::to_string(i));  // 8 after `seen`, 5 held
            bob->send(Join{"room", true, seen});
            auto joined = bob->read_until<Joined>();
            REQUIRE(joined);
            CHECK(!joined->epoch_changed);
            CHECK(joined->history_count == 5);
            CHECK(joined->missed == 3);
            std::vector<std::string> texts;
            for (int i = 0; i < 5; ++i) {
                auto d = bob->read_until<Deliver>();
                REQUIRE(d);
                texts.push_back(d->text);
            }
            CHECK(texts == std::vector<std::string>{"n3", "n4", "n5", "n6", "n7"});
        }
        SUBCASE("nothing when nothing followed it") {
            bob->send(Join{"room", true, seen});
            auto joined = bob->read_until<Joined>();
            REQUIRE(joined);
            CHECK(joined->history_count == 0);
            CHECK(joined->missed == 0);
            CHECK(joined->head_seq == seen.seq);
        }
    }

    TEST_CASE("a resume point from an earlier epoch of a room gets epoch_changed and the whole history") {
        TestServer server(relaxed_config());
        auto alice = member(server, "alice", "room");
        alice->send(Say{"room", "old"});
        auto old = alice->read_until<Deliver>();
        REQUIRE(old);
        // Alone, alice's LEAVE empties the room: it is removed, its log too.
        alice->send(Leave{"room"});
        REQUIRE(presence_of(*alice, "alice", PresenceEvent::left));
        CHECK(TestServer::eventually([&] { return server.server().live_sessions() == 1; }));
        auto bob = member(server, "bob", "room");  // a new room of the same name
        bob->send(Say{"room", "new"});
        REQUIRE(bob->read_until<Deliver>());
        alice->send(Join{"room", true, old->position});
        auto joined = alice->read_until<Joined>();
        REQUIRE(joined);
        CHECK(joined->epoch_changed);
        CHECK(joined->epoch != old->position.epoch);
        REQUIRE(joined->history_count == 1);
        auto d = alice->read_until<Deliver>();
        REQUIRE(d);
        CHECK(d->text == "new");
        CHECK(d->position.epoch == joined->epoch);
    }

    TEST_CASE("LEAVE confirms to the leaver and tells the others; a room one is not in is not_in_room") {
        TestServer server(relaxed_config());
        auto alice = member(server, "alice", "room");
        auto bob = member(server, "bob", "room");
        bob->send(Leave{"room"});
        auto own = bob->read_until<Presence>();
        REQUIRE(own);
        CHECK(own->nick == "bob");
        CHECK(own->event == PresenceEvent::left);
        CHECK(presence_of(*alice, "bob", PresenceEvent::left));
        // Bob hears nothing more from the room.
        alice->send(Say{"room", "bye bob"});
        REQUIRE(alice->read_until<Deliver>());
        bob->send(Leave{"room"});
        auto e = bob->read_until<Error>();
        REQUIRE(e);
        CHECK(e->code == ErrorCode::not_in_room);
        CHECK(!e->fatal);
        bob->send(Say{"room", "hello?"});
        auto e2 = bob->read(1000ms);
        REQUIRE(e2);
        REQUIRE(std::holds_alternative<Error>(*e2));  // not the DELIVER of "bye bob"
        CHECK(std::get<Error>(*e2).code == ErrorCode::not_in_room);
    }

    TEST_CASE("WHO lists a room's members in join order and LIST names every room with its size") {
        TestServer server(relaxed_config());
        auto alice = member(server, "alice", "one");
        auto bob = member(server, "bob", "one");
        bob->send(Join{"two", false, {}});
        REQUIRE(bob->read_until<Joined>());
        alice->send(Who{"one"});
        auto who = alice->read_until<Members>();
        REQUIRE(who);
        CHECK(who->room == "one");
        CHECK(who->nicks == std::vector<std::string>{"alice", "bob"});
        alice->send(List{});
        auto rooms = alice->read_until<Rooms>();
        REQUIRE(rooms);
        std::map<std::string, std::uint32_t> sizes;
        for (const auto& r : rooms->rooms) sizes[r.name] = r.members;
        CHECK(sizes == std::map<std::string, std::uint32_t>{{"one", 2}, {"two", 1}});
        alice->send(Who{"nowhere"});
        auto e = alice->read_until<Error>();
        REQUIRE(e);
        CHECK(!e->fatal);
    }

    TEST_CASE("a LIST answer is cut to fit the frame bound clients size their decoder with") {
        ServerConfig cfg = relaxed_config();
        cfg.max_frame = 1024;  // clients accept server payloads up to 1024 + max_frame_overhead
        cfg.max_rooms_per_session = 100;
        TestServer server(cfg);
        TestClient c(server.port());
        REQUIRE(c.login("collector"));
        // 100 rooms of 25-byte names: about 3KB of ROOMS payload uncut.
        for (int i = 0; i < 100; ++i) c.send(Join{fmt::format("a-rather-long-room-nam{:03}", i), false, {}});
        for (int i = 0; i < 100; ++i) REQUIRE(c.read_until<Joined>());
        c.send(List{});
        auto rooms = c.read_until<Rooms>();
        REQUIRE(rooms);
        CHECK(!rooms->rooms.empty());
        CHECK(encode(*rooms).size() - header_size <= cfg.max_frame + max_frame_overhead);
    }

    TEST_CASE("a bad room name, a bad text or a second JOIN get non-fatal errors and the session goes on") {
        TestServer server(relaxed_config());
        auto alice = member(server, "alice", "room");
        alice->send(Join{"bad room", false, {}});
        auto e1 = alice->read_until<Error>();
        REQUIRE(e1);
        CHECK(e1->code == ErrorCode::invalid_room);
        CHECK(!e1->fatal);
        alice->send(Join{"room", false, {}});
        auto e2 = alice->read_until<Error>();
        REQUIRE(e2);
        CHECK(e2->code == ErrorCode::invalid_room);
        CHECK(!e2->fatal);
        alice->send(Say{"room", "line\nbreak"});
        auto e3 = alice->read_until<Error>();
        REQUIRE(e3);
        CHECK(e3->code == ErrorCode::invalid_text);
        CHECK(!e3->fatal);
        alice->send(Say{"room", ""});
        auto e4 = alice->read_until<Error>();
        REQUIRE(e4);
        CHECK(e4->code == ErrorCode::invalid_text);
        alice->send(Nick{{}, "no spaces allowed"});
        auto e5 = alice->read_until<Error>();
        REQUIRE(e5);
        CHECK(e5->code == ErrorCode::invalid_nick);
        CHECK(!e5->fatal);
        alice->send(Say{"room", "fine"});
        auto d = alice->read_until<Deliver>();
        REQUIRE(d);
        CHECK(d->text == "fine");
    }

    TEST_CASE("WHISPER reaches its target and echoes to the sender; an unknown nick is no_such_nick") {
        TestServer server(relaxed_config());
        TestClient alice(server.port()), bob(server.port());
        REQUIRE(alice.login("alice"));
        REQUIRE(bob.login("bob"));
        alice.send(Whisper{"bob", 0, "psst", false});
        auto got = bob.read_until<Whisper>();
        REQUIRE(got);
        CHECK(got->peer == "alice");
        CHECK(got->text == "psst");
        CHECK(!got->echo);
        CHECK(got->timestamp_ms > 0);
        auto echo = alice.read_until<Whisper>();
        REQUIRE(echo);
        CHECK(echo->peer == "bob");
        CHECK(echo->text == "psst");
        CHECK(echo->echo);
        alice.send(Whisper{"nobody", 0, "hello?", false});
        auto e = alice.read_until<Error>();
        REQUIRE(e);
        CHECK(e->code == ErrorCode::no_such_nick);
        CHECK(!e->fatal);
    }

    TEST_CASE("NICK renames the session and tells its rooms; a nick in use gets a non-fatal nick_taken") {
        TestServer server(relaxed_config());
        auto alice = member(server, "alice", "room");
        auto bob = member(server, "bob", "room");
        bob->send(Nick{{}, "robert"});
        auto confirmed = bob->read_until<Nick>();
        REQUIRE(confirmed);
        CHECK(confirmed->old_nick == "bob");
        CHECK(confirmed->new_nick == "robert");
        auto renamed = presence_of(*alice, "bob", PresenceEvent::renamed);
        REQUIRE(renamed);
        CHECK(renamed->detail == "robert");
        bob->send(Say{"room", "it's me"});
        auto d = alice->read_until<Deliver>();
        REQUIRE(d);
        CHECK(d->sender == "robert");
        // The old nick is free again, the new one is taken.
        TestClient newbob(server.port());
        CHECK(newbob.login("bob"));
        bob->send(Nick{{}, "alice"});
        auto e = bob->read_until<Error>();
        REQUIRE(e);
        CHECK(e->code == ErrorCode::nick_taken);
        CHECK(!e->fatal);
        bob->send(Who{"room"});
        auto who = bob->read_until<Members>();
        REQUIRE(who);
        CHECK(who->nicks == std::vector<std::string>{"alice", "robert"});
    }

    // --- limits ---

    TEST_CASE("over --max-connections a connection gets ERROR server_full and a close") {
        ServerConfig cfg = relaxed_config();
        cfg.max_connections = 2;
        TestServer server(cfg);
        TestClient a(server.port()), b(server.port());
        REQUIRE(a.login("a"));
        REQUIRE(b.login("b"));
        TestClient c(server.port());
        check_fatal_close(c, ErrorCode::server_full);
        // Once one leaves, there is room again.
        a.send(Bye{"done"});
        a.read_until_closed();
        REQUIRE(TestServer::eventually([&] { return server.server().live_sessions() == 1; }));
        TestClient d(server.port());
        CHECK(d.login("d"));
    }

    TEST_CASE("over --max-per-ip a connection gets ERROR too_many_connections_from_address") {
        ServerConfig cfg = relaxed_config();
        cfg.max_per_ip = 2;
        TestServer server(cfg);
        TestClient a(server.port()), b(server.port());
        REQUIRE(a.login("a"));
        REQUIRE(b.login("b"));
        TestClient c(server.port());
        check_fatal_close(c, ErrorCode::too_many_connections_from_address);
    }

    TEST_CASE("over --max-rooms-per-session a JOIN gets a non-fatal too_many_rooms") {
        ServerConfig cfg = relaxed_config();
        cfg.max_rooms_per_session = 2;
        TestServer server(cfg);
        TestClient c(server.port());
        REQUIRE(c.login("roamer"));
        REQUIRE(c.join("r1"));
        REQUIRE(c.join("r2"));
        c.send(Join{"r3", false, {}});
        auto e = c.read_until<Error>();
        REQUIRE(e);
        CHECK(e->code == ErrorCode::too_many_rooms);
        CHECK(!e->fatal);
        c.send(Leave{"r1"});
        REQUIRE(c.read_until<Presence>());
        CHECK(c.join("r3"));
    }

    TEST_CASE("a HELLO with the resume token takes over a nick from a stale session, which gets ERROR "
              "replaced") {
        TestServer server(relaxed_config());
        auto observer = member(server, "observer", "room");
        TestClient old(server.port());
        auto welcome = old.login("alice");
        REQUIRE(welcome);
        REQUIRE(old.join("room"));
        SUBCASE("the right token") {
            TestClient fresh(server.port());
            auto again = fresh.login("alice", welcome->resume_token);
            REQUIRE(again);
            CHECK(again->nick == "alice");
            check_fatal_close(old, ErrorCode::replaced);
            CHECK(presence_of(*observer, "alice", PresenceEvent::disconnected));
            // The nick belongs to the new session.
            observer->send(Whisper{"alice", 0, "you again?", false});
            auto w = fresh.read_until<Whisper>();
            REQUIRE(w);
            CHECK(w->text == "you again?");
        }
        SUBCASE("a wrong token") {
            TestClient fresh(server.port());
            fresh.send(Hello{"alice", {}, "0123456789abcdef0123456789abcdef"});
            check_fatal_close(fresh, ErrorCode::nick_taken);
            old.send(List{});
            CHECK(old.read_until<Rooms>());
        }
    }

    // --- shutdown ---

    TEST_CASE("a shutdown delivers what was queued, then BYE, then closes") {
        ServerConfig cfg = relaxed_config();
        cfg.queue_limit = 16 * 1024 * 1024;
        cfg.max_frame = 64 * 1024;
        cfg.drain_timeout = 5000ms;
        cfg.write_timeout = 5000ms;
        TestServer server(cfg);
        auto alice = member(server, "alice", "room");
        auto bob = member(server, "bob", "room", 4096);
        REQUIRE(presence_of(*alice, "bob", PresenceEvent::joined));
        // 8.4MB: the kernel takes up to 4MB (tcp_wmem's maximum) plus bob's
        // small window; the rest waits in bob's queue at the server.
        constexpr int messages = 140;
        const std::string big(60 * 1024, 'q');
        for (int i = 0; i < messages; ++i) {
            alice->send(Say{"room", std::to_string(i) + big});
            REQUIRE(next_deliver(*alice));
        }
        server.server().request_shutdown("maintenance");
        auto got = bob->read_until_closed(5000ms);
        CHECK(bob->closed());
        std::vector<int> order;
        std::optional<std::size_t> bye_at;
        for (std::size_t i = 0; i < got.size(); ++i) {
            if (auto* d = std::get_if<Deliver>(&got[i])) order.push_back(std::stoi(d->text));
            if (auto* b = std::get_if<Bye>(&got[i])) {
                bye_at = i;
                CHECK(b->reason == "maintenance");
            }
        }
        REQUIRE(bye_at);
        CHECK(*bye_at == got.size() - 1);
        REQUIRE(order.size() == messages);
        for (int i = 0; i < messages; ++i) CHECK(order[i] == i);
        server.stop();
    }

    TEST_CASE("a client's BYE closes its session and its rooms see it go") {
        TestServer server(relaxed_config());
        auto alice = member(server, "alice", "room");
        auto bob = member(server, "bob", "room");
        bob->send(Bye{"off to lunch"});
        bob->read_until_closed();
        CHECK(bob->closed());
        auto p = presence_of(*alice, "bob", PresenceEvent::disconnected);
        REQUIRE(p);
        CHECK(p->detail.find("off to lunch") != std::string::npos);
    }

    // --- closing without a reset ---

    TEST_CASE("a fatal close is not a reset even when the client's input is unread") {
        // Closing a socket with unread input makes the kernel send a reset, and
        // a reset makes the peer's kernel report ECONNRESET and may drop what
        // came last (the fatal ERROR). The server drains until the peer's EOF
        // instead: the client gets its ERROR, then an orderly EOF.
        TestServer server(relaxed_config());
        const std::string more(1024 * 1024, 'j');  // many reads' worth, sent before reading anything
        SUBCASE("after a fatal ERROR") {
            TestClient c(server.port());
            REQUIRE(c.login("mallory"));
            const auto r = send_without_blocking(c, header(protocol_version, 0xEE, 0) + more);
            CAPTURE(r.sent);
            CAPTURE(r.error);
            CHECK(r.error == 0);  // the server read it all: no reset while we sent
            auto got = c.read_until_closed(3000ms);
            REQUIRE(c.closed());
            CHECK(c.close_reason() == asio::error::eof);  // an orderly end, not ECONNRESET
            REQUIRE(!got.empty());
            auto* e = std::get_if<Error>(&got.back());
            REQUIRE(e);
            CHECK(e->code == ErrorCode::unknown_type);
            CHECK(e->fatal);
        }
        SUBCASE("after the client's BYE") {
            auto c = member(server, "leaver", "room");
            const auto r = send_without_blocking(*c, encode(Bye{"bye"}) + more);
            CAPTURE(r.sent);
            CAPTURE(r.error);
            CHECK(r.error == 0);
            auto got = c->read_until_closed(3000ms);
            REQUIRE(c->closed());
            CHECK(c->close_reason() == asio::error::eof);
            for (const auto& m : got) CHECK_FALSE(std::holds_alternative<Error>(m));
        }
    }

    // --- slow consumers: the write timeout ---

    TEST_CASE("a slow consumer is found within the write timeout even when it is shorter than the heartbeat "
              "interval") {
        ServerConfig cfg = fast_config();
        cfg.write_timeout = 300ms;
        cfg.heartbeat_interval = 2000ms;  // a watchdog that slept towards the next PING would find it 2s late
        cfg.heartbeat_timeout = 6000ms;
        cfg.queue_limit = 64 * 1024 * 1024;  // the queue bound is not what fires
        TestServer server(cfg);
        auto alice = member(server, "alice", "room");
        alice->keep_alive(200ms);
        auto sleeper = member(server, "sleeper", "room", 4096);
        REQUIRE(presence_of(*alice, "sleeper", PresenceEvent::joined));

        // When the sleeper's buffers are full cannot be seen from here, but it
        // is bounded: the server's send buffer grows to tcp_wmem's maximum at
        // most, the sleeper's receive buffer is a few KiB, and 256 KiB covers
        // the kernels' accounting slack. Once more than that was sent to the
        // room, a write to the sleeper has been waiting (since `full_by` at the
        // latest, its batch started no later), so the write timeout must fire
        // by full_by + 300ms; 1.5s leaves room for a loaded machine and stays
        // below the 2s heartbeat interval. The flood stops there, so the queue
        // holds a few frames, nowhere near its limit.
        const std::size_t kernel_bound = tcp_send_buffer_max() + 256 * 1024;
        const std::string big(32 * 1024, 'w');
        std::vector<Presence> seen;
        std::size_t flooded = 0;
        std::optional<Clock::time_point> full_by;
        const auto start = Clock::now();
        while (seen.empty() && flooded <= kernel_bound + 4 * big.size() && since(start) < 10s) {
            alice->send(Say{"room", big});
            auto own = next_deliver(*alice, &seen);
            REQUIRE(own);
            flooded += encode(*own).size();  // the sleeper's copy is the same DELIVER
            if (!full_by && flooded > kernel_bound) full_by = Clock::now();
        }
        const auto flood_took = since(start);
        CAPTURE(flooded);
        CAPTURE(flood_took.count());
        if (seen.empty()) {
            auto p = presence_of(*alice, "sleeper", PresenceEvent::disconnected, 3000ms);
            REQUIRE(p);
            seen.push_back(*p);
        }
        const auto found = Clock::now();
        CHECK(seen.front().nick == "sleeper");
        CHECK(seen.front().event == PresenceEvent::disconnected);
        CHECK(seen.front().detail.find("slow consumer") != std::string::npos);
        const auto after_full = std::chrono::duration_cast<std::chrono::milliseconds>(found - full_by.value_or(found));
        CAPTURE(after_full.count());
        CHECK(after_full < 1500ms);
        CHECK(found - start >= cfg.write_timeout);  // no sooner than a write could have been late
        // The sleeper is closed (it gets what the kernel held, maybe the ERROR).
        sleeper->read_until_closed(5000ms);
        CHECK(sleeper->closed());
    }

    // --- hub backpressure ---

    TEST_CASE("with --threads 2 the hub backlog of a shard stays bounded") {
        ServerConfig cfg = relaxed_config(2);
        cfg.rate = 0;
        cfg.hub_backlog = 64;
        // Neither member is to become a slow consumer: both are read, and the
        // bounds leave room for a loaded machine.
        cfg.queue_limit = 64 * 1024 * 1024;
        cfg.write_timeout = 5000ms;
        TestServer server(cfg);
        const HubGate& gate = server.server().hub_gate(1);
        // Sessions are dealt round-robin: the first to shard 0 (the hub's own,
        // which passes no gate), the second to shard 1.
        auto bystander = member(server, "bystander", "room");
        bystander->keep_alive(200ms);
        REQUIRE(gate.peak() == 0);
        auto flooder = member(server, "flooder", "room");
        REQUIRE(gate.peak() >= 1);  // its JOIN went through shard 1's gate
        REQUIRE(presence_of(*bystander, "flooder", PresenceEvent::joined));

        constexpr int messages = 200'000;
        std::string flood;
        for (int i = 0; i < messages; ++i) flood += encode(Say{"room", fmt::format("{:06}", i)});
        const std::size_t frame = flood.size() / messages;  // all the same size
        REQUIRE(frame * messages == flood.size());
        // The reader checks the gate after each read of up to 64 KiB; a read
        // may also complete the frame a previous one began.
        const std::size_t bound = cfg.hub_backlog + 64 * 1024 / frame + 1;

        const int fd = flooder->socket().native_handle();
        std::atomic<bool> done{false};
        std::atomic<std::size_t> sent{0};
        std::atomic<std::size_t> echoed{0};
        const auto start = Clock::now();
        std::thread sender([&] {
            const auto deadline = Clock::now() + 20s;
            std::size_t at = 0;
            while (at < flood.size() && Clock::now() < deadline && !done) {
                pollfd p{fd, POLLOUT, 0};
                if (::poll(&p, 1, 50) <= 0) continue;
                const auto n = ::send(fd, flood.data() + at, flood.size() - at, MSG_NOSIGNAL | MSG_DONTWAIT);
                if (n > 0) at += static_cast<std::size_t>(n);
                else if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) break;
            }
            sent = at;
        });
        // The flooder's own DELIVERs are read and dropped, so that it is no slow consumer.
        std::thread drain([&] {
            std::vector<char> buffer(256 * 1024);
            const auto deadline = Clock::now() + 25s;
            while (!done && Clock::now() < deadline) {
                pollfd p{fd, POLLIN, 0};
                if (::poll(&p, 1, 50) <= 0) continue;
                const auto n = ::recv(fd, buffer.data(), buffer.size(), MSG_DONTWAIT);
                if (n > 0) echoed += static_cast<std::size_t>(n);
                else if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) break;
            }
        });
        int received = 0;
        bool in_order = true;
        const auto deadline = Clock::now() + 20s;
        while (received < messages && Clock::now() < deadline) {
            auto d = bystander->read_until<Deliver>(5000ms);
            if (!d) break;
            if (d->sender != "flooder" || d->text != fmt::format("{:06}", received)) {
                in_order = false;
                break;
            }
            ++received;
        }
        const auto took = since(start);
        done = true;
        sender.join();
        drain.join();
        CAPTURE(took.count());
        CAPTURE(sent.load());
        CAPTURE(echoed.load());
        CAPTURE(gate.peak());
        CAPTURE(gate.pauses());
        CHECK(sent == flood.size());
        CHECK(in_order);
        CHECK(received == messages);  // nothing lost, nothing out of order
        CHECK(gate.peak() >= cfg.hub_backlog);  // the flood did press against the gate...
        CHECK(gate.peak() <= bound);            // ...and the gate held
        CHECK(gate.pauses() > 0);
        CHECK(!flooder->closed());
        CHECK(took < 15s);
    }

    // --- decoder errors on the wire ---

    TEST_CASE("a decoder error's reason names the frame type and the error") {
        TestServer server(relaxed_config());
        TestClient c(server.port());
        REQUIRE(c.login("mallory"));
        std::string expected;
        SUBCASE("a SAY field that runs past the payload") {
            // The room length says 200 bytes but the payload holds 3.
            c.send_raw(header(protocol_version, static_cast<std::uint8_t>(FrameType::say), 5) +
                       std::string("\x00\xC8" "abc", 5));
            expected = "SAY: truncated_field";
        }
        SUBCASE("a SAY with bytes after its fields") {
            std::string say = encode(Say{"room", "hi"});
            say += "!!";
            const auto len = static_cast<std::uint32_t>(say.size() - header_size);
            say.replace(0, header_size, header(protocol_version, static_cast<std::uint8_t>(FrameType::say), len));
            c.send_raw(say);
            expected = "SAY: trailing_bytes";
        }
        SUBCASE("a JOIN cut inside its room name") {
            c.send_raw(header(protocol_version, static_cast<std::uint8_t>(FrameType::join), 4) +
                       std::string("\x00\x09" "ab", 4));
            expected = "JOIN: truncated_field";
        }
        CAPTURE(expected);
        auto e = error_then_close(c);
        REQUIRE(e);
        CHECK(e->code == ErrorCode::malformed_frame);
        CHECK(e->fatal);
        CHECK(e->reason == expected);
        CHECK(c.closed());
    }

    // --- BYE ---

    TEST_CASE("a client's BYE drops what was queued for it") {
        ServerConfig cfg = relaxed_config();
        cfg.heartbeat_timeout = 10000ms;
        cfg.queue_limit = 8 * 1024 * 1024;
        cfg.write_timeout = 5000ms;  // bob's stalled write is not what ends him
        TestServer server(cfg);
        auto alice = member(server, "alice", "room");
        auto bob = member(server, "bob", "room", 4096);
        REQUIRE(presence_of(*alice, "bob", PresenceEvent::joined));
        // Bob reads nothing while the room is flooded: the kernel buffers take
        // what they can (loopback autotuning took some 2.8 MB on a 4 MiB
        // tcp_wmem maximum), the rest waits in bob's queue at the server. The
        // flood goes on until at least 2 MiB wait there.
        const std::string big(60 * 1024, 'q');
        const std::size_t flood_cap = tcp_send_buffer_max() + 4 * 1024 * 1024;  // under the queue limit
        std::size_t flooded = 0;
        std::size_t frame = 0;
        while (server.server().peak_queued_bytes() < 2 * 1024 * 1024 && flooded < flood_cap) {
            alice->send(Say{"room", big});
            auto d = next_deliver(*alice);
            REQUIRE(d);
            frame = encode(*d).size();
            flooded += frame;
        }
        REQUIRE(!bob->closed());
        // Bob's: the others read theirs. It is what waits at the server, the
        // write in flight included; what the kernel took is the rest.
        const std::size_t held = server.server().peak_queued_bytes();
        CAPTURE(flooded);
        CAPTURE(held);
        REQUIRE(held >= 2 * 1024 * 1024);
        bob->send(Bye{"enough"});
        const auto bye_sent = Clock::now();
        // Bob reads only once the server has taken his BYE (its presence goes
        // out when the BYE is handled): a read before that makes his socket
        // writable, and on a loaded machine the server's flush can then send
        // the whole queue before it reads the BYE waiting behind it.
        REQUIRE(presence_of(*alice, "bob", PresenceEvent::disconnected));
        const auto got = read_raw_to_end(bob->socket().native_handle(), 3000ms);
        const auto took = since(bye_sent);
        CAPTURE(got.bytes);
        CAPTURE(got.error);
        CAPTURE(took.count());
        CHECK(got.eof);
        CHECK(got.error == 0);
        CHECK(took < 1500ms);
        // Only what the kernel buffers held and the rest of the write in flight
        // (its batch was taken when the socket filled: a frame or two) came,
        // not the queue; without the drop bob would read all `flooded` bytes.
        CHECK(got.bytes <= flooded - held + 4 * frame);
        CHECK(got.bytes + 1536 * 1024 <= flooded);  // well under what was sent: 1.5 MiB of it never came
    }
}
