#include <doctest/doctest.h>

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "chat/broker.hpp"
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

}
