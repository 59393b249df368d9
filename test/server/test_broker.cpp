#include <doctest/doctest.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <limits>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "chat/server/broker.hpp"
#include "utils/fakes.hpp"

using namespace chat;
using namespace chat::test;
using namespace std::chrono_literals;

TEST_SUITE("broker") {
    // --- LocalBroker ---

    TEST_CASE("the broker numbers a room's messages in increasing order and hands each to the subscriber") {
        LocalBroker broker(100, LocalBroker::default_history_memory, 5000);
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
        LocalBroker broker(100, LocalBroker::default_history_memory, 1);
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
        LocalBroker broker(3, LocalBroker::default_history_memory, 1);
        FakeSubscriber sub;
        const auto epoch = broker.subscribe("r", sub);
        publish_n(broker, "r", 5);
        auto replay = broker.replay("r", ReplayRequest{false, {}});
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
        LocalBroker broker(10, LocalBroker::default_history_memory, 1);
        FakeSubscriber sub;
        const auto epoch = broker.subscribe("r", sub);
        publish_n(broker, "r", 6);
        auto replay = broker.replay("r", ReplayRequest{true, Position{epoch, 4}});
        CHECK(seqs_of(replay.frames) == std::vector<std::uint64_t>{5, 6});
        CHECK(replay.missed == 0);
        CHECK_FALSE(replay.epoch_changed);
        auto at_head = broker.replay("r", ReplayRequest{true, Position{epoch, 6}});
        CHECK(at_head.frames.empty());
        CHECK(at_head.missed == 0);
        CHECK(at_head.head_seq == 6);
        auto from_start = broker.replay("r", ReplayRequest{true, Position{epoch, 0}});
        CHECK(from_start.frames.size() == 6);
        CHECK(from_start.missed == 0);
    }

    TEST_CASE("a resume older than the history gets what it holds and the count it missed") {
        LocalBroker broker(3, LocalBroker::default_history_memory, 1);
        FakeSubscriber sub;
        const auto epoch = broker.subscribe("r", sub);
        publish_n(broker, "r", 10);  // holds 8, 9, 10
        auto replay = broker.replay("r", ReplayRequest{true, Position{epoch, 2}});
        CHECK(seqs_of(replay.frames) == std::vector<std::uint64_t>{8, 9, 10});
        CHECK(replay.missed == 5);  // 3..7
        auto edge = broker.replay("r", ReplayRequest{true, Position{epoch, 7}});
        CHECK(edge.missed == 0);
        CHECK(edge.frames.size() == 3);
    }

    TEST_CASE("a broker that keeps no history reports every message after a resume as missed") {
        LocalBroker broker(0, LocalBroker::default_history_memory, 1);
        FakeSubscriber sub;
        const auto epoch = broker.subscribe("r", sub);
        publish_n(broker, "r", 4);
        CHECK(sub.got.size() == 4);
        auto replay = broker.replay("r", ReplayRequest{true, Position{epoch, 1}});
        CHECK(replay.frames.empty());
        CHECK(replay.missed == 3);
        CHECK(broker.replay("r", ReplayRequest{false, {}}).frames.empty());
    }

    TEST_CASE("a resume from another epoch gets epoch_changed and the whole history") {
        LocalBroker broker(5, LocalBroker::default_history_memory, 1);
        FakeSubscriber sub;
        const auto old_epoch = broker.subscribe("r", sub);
        publish_n(broker, "r", 3);
        broker.unsubscribe("r");  // the room emptied
        const auto new_epoch = broker.subscribe("r", sub);
        CHECK(new_epoch > old_epoch);
        publish_n(broker, "r", 2);
        CHECK(sub.got.back().position == Position{new_epoch, 2});  // numbering starts over
        auto replay = broker.replay("r", ReplayRequest{true, Position{old_epoch, 3}});
        CHECK(replay.epoch_changed);
        CHECK(replay.epoch == new_epoch);
        CHECK(replay.missed == 0);
        CHECK(seqs_of(replay.frames) == std::vector<std::uint64_t>{1, 2});
    }

    TEST_CASE("an unknown room has no log: publish is dropped and replay is empty") {
        LocalBroker broker(5, LocalBroker::default_history_memory, 1);
        broker.publish("nowhere", "alice", "hi", 1);
        auto replay = broker.replay("nowhere", ReplayRequest{false, {}});
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

    // --- --history-memory ---

    TEST_CASE("--history-memory bounds all rooms' history together and evicts the server's oldest message first") {
        constexpr std::size_t memory = 8 * 1024;
        LocalBroker broker(100, memory, 1);  // the per-room cap (100) is never reached here
        FakeSubscriber sa, sb, sc;
        std::map<std::string, std::uint64_t> epoch{{"a", broker.subscribe("a", sa)},
                                                   {"b", broker.subscribe("b", sb)},
                                                   {"c", broker.subscribe("c", sc)}};
        // Every message has the same size (one-letter rooms, fixed-width texts),
        // so each costs the same and the bound holds exactly floor(memory / cost).
        struct Sent {
            std::string room;
            std::uint64_t seq;
        };
        std::vector<Sent> order;  // server-wide publish order
        std::map<std::string, std::uint64_t> head;
        std::size_t cost = 0;
        auto publish = [&](const std::string& room, int count) {
            for (int i = 0; i < count; ++i) {
                broker.publish(room, "alice", fmt::format("{:04}", order.size()) + std::string(400, 'x'), 1);
                order.push_back({room, ++head[room]});
                if (cost == 0) cost = broker.history_bytes();
                CHECK(broker.history_bytes() <= memory);
            }
        };
        publish("a", 6);  // the oldest
        publish("b", 6);
        publish("c", 6);
        REQUIRE(cost > 0);
        const std::size_t fits = memory / cost;
        CAPTURE(cost);
        CAPTURE(fits);
        // The scenario needs some of a's messages gone and none of b's or c's.
        REQUIRE(fits >= 12);
        REQUIRE(fits < 18);
        CHECK(broker.history_messages() == fits);
        CHECK(broker.history_bytes() == fits * cost);
        CHECK(broker.evicted_for_memory() == 18 - fits);
        // Newer messages of a room that lost its old ones: b's oldest now go
        // before a's newest.
        publish("a", 4);
        CHECK(broker.history_messages() == fits);
        CHECK(broker.evicted_for_memory() == order.size() - fits);

        // What must be held: the newest `fits` messages of the server, whatever their room.
        std::map<std::string, std::vector<std::uint64_t>> held;
        std::map<std::string, std::uint64_t> gone;
        for (std::size_t i = 0; i < order.size(); ++i) {
            if (i + fits >= order.size())
                held[order[i].room].push_back(order[i].seq);
            else
                ++gone[order[i].room];
        }
        CHECK(gone["a"] == 6);  // a's old messages went first...
        CHECK(gone["b"] >= 1);  // ...then b's oldest, before a's newer ones
        CHECK(held["a"] == std::vector<std::uint64_t>{7, 8, 9, 10});

        // One resume per subcase: a replay adds the flagged copies to what is
        // held, which may evict more, so each room is checked on a fresh run.
        for (const std::string room : {"a", "b", "c"}) {
            SUBCASE(("a resume of room " + room).c_str()) {
                auto replay = broker.replay(room, ReplayRequest{true, Position{epoch[room], 0}});
                CHECK(replay.head_seq == head[room]);
                CHECK(replay.missed == gone[room]);
                CHECK(seqs_of(replay.frames) == held[room]);
                CHECK_FALSE(replay.epoch_changed);
                // The flagged copies count against the bound too.
                CHECK(broker.history_bytes() <= memory);
                CHECK(broker.evicted_for_memory() == order.size() - broker.history_messages());
            }
        }
        SUBCASE("an unsubscribed room frees its bytes and its stale order entries evict nothing") {
            const std::size_t a_held = held["a"].size();
            broker.unsubscribe("a");
            CHECK(broker.history_messages() == fits - a_held);
            CHECK(broker.history_bytes() == (fits - a_held) * cost);
            const auto evicted = broker.evicted_for_memory();
            // c fills the freed space, then evicts b's and its own oldest; the
            // entries of a's gone messages are skipped, not counted.
            publish("c", 20);
            CHECK(broker.history_messages() == fits);
            CHECK(broker.evicted_for_memory() == evicted + (fits - a_held) + 20 - fits);
            broker.unsubscribe("b");
            broker.unsubscribe("c");
            CHECK(broker.history_bytes() == 0);
            CHECK(broker.history_messages() == 0);
            CHECK(broker.log_count() == 0);
            // A room opened afterwards starts with an empty bound.
            FakeSubscriber sd;
            broker.subscribe("d", sd);
            broker.publish("d", "alice", "fresh", 1);
            CHECK(broker.history_messages() == 1);
            CHECK(broker.history_bytes() < cost);
        }
        SUBCASE("every room unsubscribed holds nothing, flagged copies included") {
            broker.replay("c", ReplayRequest{false, {}});  // makes flagged copies
            broker.unsubscribe("a");
            broker.unsubscribe("b");
            broker.unsubscribe("c");
            CHECK(broker.history_bytes() == 0);
            CHECK(broker.history_messages() == 0);
            CHECK(broker.log_count() == 0);
        }
    }

    TEST_CASE("a resume position at or beyond the head of the current epoch is up to date, whatever its size") {
        for (std::size_t history : {std::size_t{100}, std::size_t{3}}) {
            CAPTURE(history);
            LocalBroker broker(history, LocalBroker::default_history_memory, 1);
            FakeSubscriber sub;
            const auto epoch = broker.subscribe("r", sub);
            publish_n(broker, "r", 10);
            for (const std::uint64_t seq :
                 {std::uint64_t{10}, std::uint64_t{11}, std::uint64_t{1} << 63,
                  std::numeric_limits<std::uint64_t>::max() - 1, std::numeric_limits<std::uint64_t>::max()}) {
                CAPTURE(seq);
                auto replay = broker.replay("r", ReplayRequest{true, Position{epoch, seq}});
                CHECK(replay.frames.empty());
                CHECK(replay.missed == 0);
                CHECK(replay.head_seq == 10);
                CHECK_FALSE(replay.epoch_changed);
            }
        }
    }

    // --- byte budget ---

    TEST_CASE("a replay's byte budget keeps the newest messages that fit and counts the cut ones as missed") {
        LocalBroker broker(100, LocalBroker::default_history_memory, 1);
        FakeSubscriber sub;
        const auto epoch = broker.subscribe("r", sub);
        for (int i = 1; i <= 10; ++i) broker.publish("r", "alice", fmt::format("m{:02}", i), 1000 + i);
        const std::size_t frame = sub.got.front().frame->size();
        for (const auto& m : sub.got) REQUIRE(m.frame->size() == frame);  // equal sizes: the arithmetic below

        SUBCASE("a budget of three and a half frames keeps the newest three") {
            auto replay = broker.replay("r", ReplayRequest{false, {}, 3 * frame + frame / 2});
            CHECK(seqs_of(replay.frames) == std::vector<std::uint64_t>{8, 9, 10});
            CHECK(replay.missed == 7);
            auto resumed = broker.replay("r", ReplayRequest{true, Position{epoch, 4}, 3 * frame + frame / 2});
            CHECK(seqs_of(resumed.frames) == std::vector<std::uint64_t>{8, 9, 10});
            CHECK(resumed.missed == 3);  // 5, 6, 7
        }
        SUBCASE("a budget of exactly three frames keeps three") {
            auto replay = broker.replay("r", ReplayRequest{false, {}, 3 * frame});
            CHECK(seqs_of(replay.frames) == std::vector<std::uint64_t>{8, 9, 10});
            CHECK(replay.missed == 7);
        }
        SUBCASE("a budget of one byte less than a frame keeps nothing") {
            auto replay = broker.replay("r", ReplayRequest{false, {}, frame - 1});
            CHECK(replay.frames.empty());
            CHECK(replay.missed == 10);
        }
        SUBCASE("a budget of 0 sends nothing and counts everything as missed") {
            auto replay = broker.replay("r", ReplayRequest{false, {}, 0});
            CHECK(replay.frames.empty());
            CHECK(replay.missed == 10);
            auto resumed = broker.replay("r", ReplayRequest{true, Position{epoch, 4}, 0});
            CHECK(resumed.frames.empty());
            CHECK(resumed.missed == 6);
            // What fell out of the history and what the budget cut add up.
            LocalBroker small(3, LocalBroker::default_history_memory, 1);
            FakeSubscriber s2;
            const auto e2 = small.subscribe("r", s2);
            publish_n(small, "r", 10);  // holds 8, 9, 10
            auto both = small.replay("r", ReplayRequest{true, Position{e2, 2}, 0});
            CHECK(both.frames.empty());
            CHECK(both.missed == 8);  // 3..7 gone, 8..10 cut
        }
        SUBCASE("the flagged copies are made once and shared, and the live frame keeps no flag") {
            std::vector<std::string> live_before;
            for (const auto& m : sub.got) live_before.push_back(*m.frame);
            auto first = broker.replay("r", ReplayRequest{false, {}});
            auto second = broker.replay("r", ReplayRequest{false, {}});
            auto cut = broker.replay("r", ReplayRequest{false, {}, 2 * frame});
            REQUIRE(first.frames.size() == 10);
            REQUIRE(second.frames.size() == 10);
            REQUIRE(cut.frames.size() == 2);
            for (std::size_t i = 0; i < 10; ++i) {
                CAPTURE(i);
                CHECK(first.frames[i].get() == second.frames[i].get());
                CHECK(decode_deliver(first.frames[i]).history);
                // The live frame: another string, unchanged, unflagged.
                CHECK(first.frames[i].get() != sub.got[i].frame.get());
                CHECK(*sub.got[i].frame == live_before[i]);
                CHECK_FALSE(decode_deliver(sub.got[i].frame).history);
                // The copy differs from it in the history flag only.
                std::string unflagged = *first.frames[i];
                unflagged[3] = static_cast<char>(static_cast<unsigned char>(unflagged[3]) & ~flag_history);
                CHECK(unflagged == live_before[i]);
            }
            CHECK(cut.frames[0].get() == first.frames[8].get());
            CHECK(cut.frames[1].get() == first.frames[9].get());
        }
    }

}
