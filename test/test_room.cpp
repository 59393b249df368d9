#include <doctest/doctest.h>

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "chat/broker.hpp"
#include "chat/config.hpp"
#include "chat/participant.hpp"
#include "chat/rate_limiter.hpp"
#include "chat/room.hpp"

using namespace chat;
using namespace std::chrono_literals;

namespace {

// A member that records what it was given.
class FakeParticipant final : public Participant {
public:
    FakeParticipant(std::uint64_t id, std::size_t shard) : id_(id), shard_(shard) {}

    std::uint64_t id() const noexcept override { return id_; }
    std::size_t shard() const noexcept override { return shard_; }
    void deliver(const SharedFrame& frame) override { frames.push_back(frame); }
    void on_login(const std::string& nick, const std::string&) override { logins.push_back(nick); }
    void on_renamed(const std::string& nick) override { renames.push_back(nick); }
    void close_with_error(ErrorCode code, const std::string&) override { errors.push_back(code); }

    std::vector<SharedFrame> frames;
    std::vector<std::string> logins;
    std::vector<std::string> renames;
    std::vector<ErrorCode> errors;

private:
    std::uint64_t id_;
    std::size_t shard_;
};

// Holds posted work instead of running it, so a test sees each crossing.
class FakePoster final : public ShardPoster {
public:
    std::size_t current_shard() const noexcept override { return here; }
    void post(std::size_t shard, std::function<void()> work) override { posted.push_back({shard, std::move(work)}); }

    // Runs what was posted, as the other shards' threads would.
    void run_all() {
        auto work = std::move(posted);
        posted.clear();
        for (auto& [shard, fn] : work) {
            const auto saved = here;
            here = shard;
            fn();
            here = saved;
        }
    }

    struct Posted {
        std::size_t shard;
        std::function<void()> work;
    };
    std::size_t here = 0;
    std::vector<Posted> posted;
};

class FakeSubscriber final : public Broker::Subscriber {
public:
    void on_message(const StoredMessage& message) override { got.push_back(message); }
    std::vector<StoredMessage> got;
};

Message decode_one(const std::string& frame) {
    Decoder decoder(1 << 20);
    decoder.feed(frame);
    Message m;
    REQUIRE(decoder.next(m) == Decoder::Status::message);
    CHECK(decoder.buffered() == 0);
    return m;
}

Deliver decode_deliver(const SharedFrame& frame) {
    auto m = decode_one(*frame);
    REQUIRE(std::holds_alternative<Deliver>(m));
    return std::get<Deliver>(m);
}

std::vector<std::uint64_t> seqs_of(const std::vector<SharedFrame>& frames) {
    std::vector<std::uint64_t> out;
    for (const auto& f : frames) out.push_back(decode_deliver(f).position.seq);
    return out;
}

// n messages published to `room`.
void publish_n(LocalBroker& broker, const std::string& room, int n, int first = 1) {
    for (int i = first; i < first + n; ++i) broker.publish(room, "alice", "m" + std::to_string(i), 1000 + i);
}

}  // namespace

TEST_SUITE("room") {
    // --- Room ---

    TEST_CASE("a broadcast reaches every member of one shard once, in the order of broadcasts") {
        FakePoster poster;
        Room room("lobby", 1, poster);
        auto a = std::make_shared<FakeParticipant>(1, 0);
        auto b = std::make_shared<FakeParticipant>(2, 0);
        CHECK(room.add(a, "a"));
        CHECK(room.add(b, "b"));
        auto f1 = make_frame(Say{"lobby", "one"});
        auto f2 = make_frame(Say{"lobby", "two"});
        room.broadcast(f1);
        room.broadcast(f2);
        CHECK(poster.posted.empty());
        CHECK(a->frames == std::vector<SharedFrame>{f1, f2});
        CHECK(b->frames == std::vector<SharedFrame>{f1, f2});
    }

    TEST_CASE("a broadcast crosses to another shard with one post however many members live there") {
        FakePoster poster;
        Room room("lobby", 2, poster);
        std::vector<std::shared_ptr<FakeParticipant>> here, there;
        for (std::uint64_t id = 1; id <= 3; ++id) here.push_back(std::make_shared<FakeParticipant>(id, 0));
        for (std::uint64_t id = 10; id < 15; ++id) there.push_back(std::make_shared<FakeParticipant>(id, 1));
        for (auto& p : here) room.add(p, "h" + std::to_string(p->id()));
        for (auto& p : there) room.add(p, "t" + std::to_string(p->id()));

        auto frame = make_frame(Say{"lobby", "hello"});
        room.broadcast(frame);
        REQUIRE(poster.posted.size() == 1);
        CHECK(poster.posted[0].shard == 1);
        for (auto& p : here) CHECK(p->frames.size() == 1);  // own shard: directly
        for (auto& p : there) CHECK(p->frames.empty());    // not before the post runs
        poster.run_all();
        for (auto& p : there) {
            REQUIRE(p->frames.size() == 1);
            CHECK(p->frames[0].get() == frame.get());  // the one buffer, never a copy
        }

        for (int i = 0; i < 10; ++i) room.broadcast(frame);
        CHECK(poster.posted.size() == 10);  // one per broadcast, not one per member
    }

    TEST_CASE("a broadcast from another shard posts to every shard that has members but its own") {
        FakePoster poster;
        poster.here = 1;
        Room room("lobby", 3, poster);
        auto a = std::make_shared<FakeParticipant>(1, 0);
        auto b = std::make_shared<FakeParticipant>(2, 1);
        room.add(a, "a");
        room.add(b, "b");  // shard 2 stays empty
        room.broadcast(make_frame(List{}));
        REQUIRE(poster.posted.size() == 1);
        CHECK(poster.posted[0].shard == 0);
        CHECK(b->frames.size() == 1);
        poster.run_all();
        CHECK(a->frames.size() == 1);
    }

    TEST_CASE("a broadcast skips the member it excepts, on every shard") {
        FakePoster poster;
        Room room("lobby", 2, poster);
        auto a = std::make_shared<FakeParticipant>(1, 0);
        auto b = std::make_shared<FakeParticipant>(2, 1);
        auto c = std::make_shared<FakeParticipant>(3, 1);
        room.add(a, "a");
        room.add(b, "b");
        room.add(c, "c");
        room.broadcast(make_frame(List{}), 2);
        room.broadcast(make_frame(List{}), 1);
        poster.run_all();
        CHECK(a->frames.size() == 1);
        CHECK(b->frames.size() == 1);
        CHECK(c->frames.size() == 2);
    }

    TEST_CASE("members are kept in join order, once each, and can be renamed and removed") {
        FakePoster poster;
        Room room("lobby", 2, poster);
        auto a = std::make_shared<FakeParticipant>(1, 1);
        auto b = std::make_shared<FakeParticipant>(2, 0);
        auto c = std::make_shared<FakeParticipant>(3, 1);
        CHECK(room.empty());
        CHECK(room.add(a, "alice"));
        CHECK(room.add(b, "bob"));
        CHECK(room.add(c, "carol"));
        CHECK_FALSE(room.add(a, "alice"));
        CHECK(room.size() == 3);
        CHECK(room.contains(2));
        CHECK(room.nicks() == std::vector<std::string>{"alice", "bob", "carol"});
        room.rename(2, "robert");
        CHECK(room.nicks() == std::vector<std::string>{"alice", "robert", "carol"});
        CHECK(room.remove(1));
        CHECK_FALSE(room.remove(1));
        CHECK_FALSE(room.contains(1));
        CHECK(room.nicks() == std::vector<std::string>{"robert", "carol"});
        room.broadcast(make_frame(List{}));
        poster.run_all();
        CHECK(a->frames.empty());
        CHECK(c->frames.size() == 1);
        CHECK(room.remove(2));
        CHECK(room.remove(3));
        CHECK(room.empty());
        room.broadcast(make_frame(List{}));
        CHECK(poster.posted.empty());  // nobody anywhere: no post either
    }

    TEST_CASE("a post carries the membership of its broadcast, not of the moment it runs") {
        FakePoster poster;
        Room room("lobby", 2, poster);
        auto b = std::make_shared<FakeParticipant>(2, 1);
        auto late = std::make_shared<FakeParticipant>(3, 1);
        room.add(b, "b");
        room.broadcast(make_frame(List{}));
        room.remove(2);     // b left after the message: it still gets it, before its leave
        room.add(late, "late");  // late joined after it: it does not
        poster.run_all();
        CHECK(b->frames.size() == 1);
        CHECK(late->frames.empty());
    }

    TEST_CASE("a room passes the broker's messages on as they are") {
        FakePoster poster;
        Room room("lobby", 1, poster);
        auto a = std::make_shared<FakeParticipant>(1, 0);
        room.add(a, "a");
        StoredMessage m{Position{7, 1}, make_frame(List{})};
        room.on_message(m);
        REQUIRE(a->frames.size() == 1);
        CHECK(a->frames[0].get() == m.frame.get());
    }

    // --- LocalBroker ---

    TEST_CASE("the broker numbers a room's messages in increasing order and hands each to the subscriber") {
        LocalBroker broker(100, 5000);
        FakeSubscriber sub;
        const auto epoch = broker.subscribe("r", sub);
        CHECK(epoch > 5000);
        publish_n(broker, "r", 3);
        REQUIRE(sub.got.size() == 3);
        for (std::size_t i = 0; i < 3; ++i) {
            CHECK(sub.got[i].position.epoch == epoch);
            CHECK(sub.got[i].position.seq == i + 1);
            auto d = decode_deliver(sub.got[i].frame);
            CHECK(d.room == "r");
            CHECK(d.sender == "alice");
            CHECK(d.text == "m" + std::to_string(i + 1));
            CHECK(d.timestamp_ms == 1001 + i);
            CHECK(d.position == sub.got[i].position);
            CHECK_FALSE(d.history);
        }
    }

    TEST_CASE("rooms have their own epochs and sequences, and a second subscribe keeps the log") {
        LocalBroker broker(100, 1);
        FakeSubscriber a, b;
        const auto ea = broker.subscribe("a", a);
        const auto eb = broker.subscribe("b", b);
        CHECK(ea != eb);
        publish_n(broker, "a", 2);
        publish_n(broker, "b", 1);
        CHECK(b.got.back().position.seq == 1);
        FakeSubscriber a2;
        CHECK(broker.subscribe("a", a2) == ea);
        publish_n(broker, "a", 1, 3);
        CHECK(a2.got.back().position.seq == 3);
    }

    TEST_CASE("a JOIN gets the last N messages flagged as history, oldest first") {
        LocalBroker broker(3, 1);
        FakeSubscriber sub;
        const auto epoch = broker.subscribe("r", sub);
        publish_n(broker, "r", 5);
        auto replay = broker.replay("r", Join{"r", false, {}});
        CHECK(replay.epoch == epoch);
        CHECK(replay.head_seq == 5);
        CHECK(replay.missed == 0);
        CHECK_FALSE(replay.epoch_changed);
        CHECK(seqs_of(replay.frames) == std::vector<std::uint64_t>{3, 4, 5});
        for (const auto& f : replay.frames) {
            auto d = decode_deliver(f);
            CHECK(d.history);
            CHECK(d.position.epoch == epoch);
        }
        // The stored frame is untouched: live subscribers never see the flag.
        CHECK_FALSE(decode_deliver(sub.got.back().frame).history);
    }

    TEST_CASE("a resume gets exactly what followed its position while the history reaches back") {
        LocalBroker broker(10, 1);
        FakeSubscriber sub;
        const auto epoch = broker.subscribe("r", sub);
        publish_n(broker, "r", 6);
        auto replay = broker.replay("r", Join{"r", true, Position{epoch, 4}});
        CHECK(seqs_of(replay.frames) == std::vector<std::uint64_t>{5, 6});
        CHECK(replay.missed == 0);
        CHECK_FALSE(replay.epoch_changed);
        auto at_head = broker.replay("r", Join{"r", true, Position{epoch, 6}});
        CHECK(at_head.frames.empty());
        CHECK(at_head.missed == 0);
        CHECK(at_head.head_seq == 6);
        auto from_start = broker.replay("r", Join{"r", true, Position{epoch, 0}});
        CHECK(from_start.frames.size() == 6);
        CHECK(from_start.missed == 0);
    }

    TEST_CASE("a resume older than the history gets what it holds and the count it missed") {
        LocalBroker broker(3, 1);
        FakeSubscriber sub;
        const auto epoch = broker.subscribe("r", sub);
        publish_n(broker, "r", 10);  // holds 8, 9, 10
        auto replay = broker.replay("r", Join{"r", true, Position{epoch, 2}});
        CHECK(seqs_of(replay.frames) == std::vector<std::uint64_t>{8, 9, 10});
        CHECK(replay.missed == 5);  // 3..7
        auto edge = broker.replay("r", Join{"r", true, Position{epoch, 7}});
        CHECK(edge.missed == 0);
        CHECK(edge.frames.size() == 3);
    }

    TEST_CASE("a broker that keeps no history reports every message after a resume as missed") {
        LocalBroker broker(0, 1);
        FakeSubscriber sub;
        const auto epoch = broker.subscribe("r", sub);
        publish_n(broker, "r", 4);
        CHECK(sub.got.size() == 4);
        auto replay = broker.replay("r", Join{"r", true, Position{epoch, 1}});
        CHECK(replay.frames.empty());
        CHECK(replay.missed == 3);
        CHECK(broker.replay("r", Join{"r", false, {}}).frames.empty());
    }

    TEST_CASE("a resume from another epoch gets epoch_changed and the whole history") {
        LocalBroker broker(5, 1);
        FakeSubscriber sub;
        const auto old_epoch = broker.subscribe("r", sub);
        publish_n(broker, "r", 3);
        broker.unsubscribe("r");  // the room emptied
        const auto new_epoch = broker.subscribe("r", sub);
        CHECK(new_epoch > old_epoch);
        publish_n(broker, "r", 2);
        CHECK(sub.got.back().position == Position{new_epoch, 2});  // numbering starts over
        auto replay = broker.replay("r", Join{"r", true, Position{old_epoch, 3}});
        CHECK(replay.epoch_changed);
        CHECK(replay.epoch == new_epoch);
        CHECK(replay.missed == 0);
        CHECK(seqs_of(replay.frames) == std::vector<std::uint64_t>{1, 2});
    }

    TEST_CASE("an unknown room has no log: publish is dropped and replay is empty") {
        LocalBroker broker(5, 1);
        broker.publish("nowhere", "alice", "hi", 1);
        auto replay = broker.replay("nowhere", Join{"nowhere", false, {}});
        CHECK(replay.frames.empty());
        CHECK(replay.head_seq == 0);
        CHECK(replay.epoch == 0);
        broker.unsubscribe("nowhere");  // harmless
    }

    TEST_CASE("epochs of brokers made at different times do not meet") {
        // The default base is the clock in ms shifted left by 20 bits.
        LocalBroker broker(5);
        FakeSubscriber sub;
        const auto epoch = broker.subscribe("r", sub);
        const auto now_ms = static_cast<std::uint64_t>(
            std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
                .count());
        CHECK((epoch >> 20) <= now_ms);
        CHECK((epoch >> 20) + 1000 >= now_ms);
    }

    // --- RateLimiter ---

    TEST_CASE("a token bucket starts full and refuses once the burst is spent") {
        RateLimiter limiter(5, 5);
        const RateLimiter::Clock::time_point t0{std::chrono::seconds{100}};
        for (int i = 0; i < 5; ++i) CHECK(limiter.try_take(t0));
        CHECK_FALSE(limiter.try_take(t0));
        CHECK_FALSE(limiter.try_take(t0 + 100ms));  // half a token
    }

    TEST_CASE("a token bucket refills at its rate and saves up no more than its burst") {
        RateLimiter limiter(5, 3);
        RateLimiter::Clock::time_point t{std::chrono::seconds{100}};
        for (int i = 0; i < 3; ++i) CHECK(limiter.try_take(t));
        CHECK_FALSE(limiter.try_take(t));
        t += 200ms;  // exactly one token at 5/s
        CHECK(limiter.try_take(t));
        CHECK_FALSE(limiter.try_take(t));
        t += 100ms;
        CHECK_FALSE(limiter.try_take(t));
        t += 100ms;  // the two halves make one
        CHECK(limiter.try_take(t));
        t += std::chrono::hours{1};  // a long idle fills it to the burst only
        for (int i = 0; i < 3; ++i) CHECK(limiter.try_take(t));
        CHECK_FALSE(limiter.try_take(t));
    }

    TEST_CASE("a refused attempt does not cost a token") {
        RateLimiter limiter(10, 1);
        RateLimiter::Clock::time_point t{std::chrono::seconds{100}};
        CHECK(limiter.try_take(t));
        for (int i = 1; i < 10; ++i) CHECK_FALSE(limiter.try_take(t + i * 10ms));
        CHECK(limiter.try_take(t + 100ms));
    }

    TEST_CASE("a token bucket with rate 0 is unlimited") {
        RateLimiter limiter(0, 0);
        const RateLimiter::Clock::time_point t{std::chrono::seconds{100}};
        for (int i = 0; i < 10000; ++i) REQUIRE(limiter.try_take(t));
    }

    // --- config ---

    TEST_CASE("durations parse with ms, s, m, min and h, a bare number being seconds") {
        CHECK(parse_duration("250ms") == Duration{250});
        CHECK(parse_duration("5s") == Duration{5000});
        CHECK(parse_duration("5") == Duration{5000});
        CHECK(parse_duration("1.5s") == Duration{1500});
        CHECK(parse_duration("2m") == Duration{120'000});
        CHECK(parse_duration("2min") == Duration{120'000});
        CHECK(parse_duration("1h") == Duration{3'600'000});
        CHECK(parse_duration(" 50ms ") == Duration{50});
        CHECK(parse_duration("0") == Duration{0});
        for (const char* bad : {"", "ms", "1x", "-5s", "5 seconds", "1.2.3s", "1e3ms", "abc", "5s5", "nan", "inf"}) {
            CAPTURE(bad);
            CHECK_FALSE(parse_duration(bad));
        }
    }

    TEST_CASE("durations are formatted in the largest exact unit and read back the same") {
        CHECK(format_duration(Duration{0}) == "0ms");
        CHECK(format_duration(Duration{250}) == "250ms");
        CHECK(format_duration(Duration{1500}) == "1500ms");
        CHECK(format_duration(Duration{5000}) == "5s");
        CHECK(format_duration(Duration{120'000}) == "2m");
        CHECK(format_duration(Duration{7'200'000}) == "2h");
        for (long ms : {1L, 50L, 999L, 1000L, 61'000L, 3'600'000L})
            CHECK(parse_duration(format_duration(Duration{ms})) == Duration{ms});
    }

    TEST_CASE("sizes parse with binary units and bare bytes") {
        CHECK(parse_size("65536") == 65536u);
        CHECK(parse_size("64k") == 65536u);
        CHECK(parse_size("64KiB") == 65536u);
        CHECK(parse_size("4MiB") == 4u * 1024 * 1024);
        CHECK(parse_size("4M") == 4u * 1024 * 1024);
        CHECK(parse_size("1GiB") == 1024u * 1024 * 1024);
        CHECK(parse_size("1.5KiB") == 1536u);
        CHECK(parse_size("10B") == 10u);
        for (const char* bad : {"", "KiB", "-1", "4 parsecs", "4TiB", "1..5k"}) {
            CAPTURE(bad);
            CHECK_FALSE(parse_size(bad));
        }
        CHECK(format_size(4u * 1024 * 1024) == "4MiB");
        CHECK(format_size(65536) == "64KiB");
        CHECK(format_size(1000) == "1000B");
        CHECK(parse_size(format_size(1536)) == 1536u);
    }

    TEST_CASE("TCP keepalive settings are three positive numbers") {
        auto k = parse_tcp_keepalive("10,5,3");
        REQUIRE(k);
        CHECK(k->idle_s == 10);
        CHECK(k->interval_s == 5);
        CHECK(k->count == 3);
        CHECK(parse_tcp_keepalive(" 60 , 10 , 6 "));
        for (const char* bad : {"", "10", "10,5", "10,5,3,1", "0,5,3", "10,-5,3", "a,b,c", "10,,3", "10,5,3x"}) {
            CAPTURE(bad);
            CHECK_FALSE(parse_tcp_keepalive(bad));
        }
    }

    TEST_CASE("the default settings are valid and each inconsistency is named") {
        CHECK(validate(ServerConfig{}).empty());
        struct Case {
            std::function<void(ServerConfig&)> change;
            const char* names;
        };
        const std::vector<Case> cases = {
            {[](ServerConfig& c) { c.heartbeat_interval = Duration{10}; }, "--heartbeat-interval"},
            {[](ServerConfig& c) { c.heartbeat_timeout = Duration{40}; }, "--heartbeat-timeout"},
            {[](ServerConfig& c) { c.heartbeat_timeout = c.heartbeat_interval; }, "--heartbeat-timeout"},
            {[](ServerConfig& c) { c.handshake_timeout = Duration{0}; }, "--handshake-timeout"},
            {[](ServerConfig& c) { c.write_timeout = Duration{1}; }, "--write-timeout"},
            {[](ServerConfig& c) { c.max_frame = 100; }, "--max-frame"},
            {[](ServerConfig& c) { c.max_frame = 32u * 1024 * 1024; }, "--max-frame"},
            {[](ServerConfig& c) { c.queue_limit = c.max_frame - 1; }, "--queue-limit"},
            {[](ServerConfig& c) { c.threads = 0; }, "--threads"},
            {[](ServerConfig& c) { c.threads = 65; }, "--threads"},
            {[](ServerConfig& c) { c.rate = -1; }, "--rate"},
            {[](ServerConfig& c) { c.burst = 0.5; }, "--burst"},
            {[](ServerConfig& c) { c.max_connections = 0; }, "--max-connections"},
            {[](ServerConfig& c) { c.max_rooms_per_session = 0; }, "--max-rooms-per-session"},
            {[](ServerConfig& c) { c.tcp_user_timeout = Duration{0}; }, "--tcp-user-timeout"},
        };
        for (const auto& test : cases) {
            ServerConfig cfg;
            test.change(cfg);
            const auto problem = validate(cfg);
            CAPTURE(test.names);
            CAPTURE(problem);
            CHECK(problem.find(test.names) != std::string::npos);
        }
        ServerConfig unlimited;
        unlimited.rate = 0;
        unlimited.burst = 0;
        CHECK(validate(unlimited).empty());
        ServerConfig shortest;
        shortest.heartbeat_interval = Duration{50};
        shortest.heartbeat_timeout = Duration{51};
        CHECK(validate(shortest).empty());
    }

    TEST_CASE("the worst-case detection time is the heartbeat timeout") {
        ServerConfig cfg;
        cfg.heartbeat_timeout = Duration{1234};
        CHECK(cfg.worst_case_detection() == Duration{1234});
    }
}
