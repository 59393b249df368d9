#include <doctest/doctest.h>

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "utils/fakes.hpp"

using namespace chat;
using namespace chat::test;
using namespace std::chrono_literals;

TEST_SUITE("room") {

    // --- Room ---

    TEST_CASE("a broadcast reaches every member of one shard once, in the order of broadcasts") {
        FakePoster poster;
        Room room(room_name("lobby"), 1, poster);
        auto a = std::make_shared<FakeParticipant>(1, 0);
        auto b = std::make_shared<FakeParticipant>(2, 0);
        CHECK(room.add(a, nick("a")));
        CHECK(room.add(b, nick("b")));
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
        Room room(room_name("lobby"), 2, poster);
        std::vector<std::shared_ptr<FakeParticipant>> here, there;
        for (std::uint64_t id = 1; id <= 3; ++id) here.push_back(std::make_shared<FakeParticipant>(id, 0));
        for (std::uint64_t id = 10; id < 15; ++id) there.push_back(std::make_shared<FakeParticipant>(id, 1));
        for (auto& p : here) room.add(p, nick("h" + std::to_string(p->id())));
        for (auto& p : there) room.add(p, nick("t" + std::to_string(p->id())));

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
        Room room(room_name("lobby"), 3, poster);
        auto a = std::make_shared<FakeParticipant>(1, 0);
        auto b = std::make_shared<FakeParticipant>(2, 1);
        room.add(a, nick("a"));
        room.add(b, nick("b"));  // shard 2 stays empty
        room.broadcast(make_frame(List{}));
        REQUIRE(poster.posted.size() == 1);
        CHECK(poster.posted[0].shard == 0);
        CHECK(b->frames.size() == 1);
        poster.run_all();
        CHECK(a->frames.size() == 1);
    }

    TEST_CASE("a broadcast skips the member it excepts, on every shard") {
        FakePoster poster;
        Room room(room_name("lobby"), 2, poster);
        auto a = std::make_shared<FakeParticipant>(1, 0);
        auto b = std::make_shared<FakeParticipant>(2, 1);
        auto c = std::make_shared<FakeParticipant>(3, 1);
        room.add(a, nick("a"));
        room.add(b, nick("b"));
        room.add(c, nick("c"));
        room.broadcast(make_frame(List{}), 2);
        room.broadcast(make_frame(List{}), 1);
        poster.run_all();
        CHECK(a->frames.size() == 1);
        CHECK(b->frames.size() == 1);
        CHECK(c->frames.size() == 2);
    }

    TEST_CASE("members are kept in join order, once each, and can be renamed and removed") {
        FakePoster poster;
        Room room(room_name("lobby"), 2, poster);
        auto a = std::make_shared<FakeParticipant>(1, 1);
        auto b = std::make_shared<FakeParticipant>(2, 0);
        auto c = std::make_shared<FakeParticipant>(3, 1);
        CHECK(room.empty());
        CHECK(room.add(a, nick("alice")));
        CHECK(room.add(b, nick("bob")));
        CHECK(room.add(c, nick("carol")));
        CHECK_FALSE(room.add(a, nick("alice")));
        CHECK(room.size() == 3);
        CHECK(room.contains(2));
        CHECK(room.nicks(1 << 20) == std::vector<std::string>{"alice", "bob", "carol"});
        room.rename(2, nick("robert"));
        CHECK(room.nicks(1 << 20) == std::vector<std::string>{"alice", "robert", "carol"});
        CHECK(room.remove(1));
        CHECK_FALSE(room.remove(1));
        CHECK_FALSE(room.contains(1));
        CHECK(room.nicks(1 << 20) == std::vector<std::string>{"robert", "carol"});
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
        Room room(room_name("lobby"), 2, poster);
        auto b = std::make_shared<FakeParticipant>(2, 1);
        auto late = std::make_shared<FakeParticipant>(3, 1);
        room.add(b, nick("b"));
        room.broadcast(make_frame(List{}));
        room.remove(2);     // b left after the message: it still gets it, before its leave
        room.add(late, nick("late"));  // late joined after it: it does not
        poster.run_all();
        CHECK(b->frames.size() == 1);
        CHECK(late->frames.empty());
    }

    TEST_CASE("messages the broker says never came are told to every member as a non-fatal messages_missed") {
        FakePoster poster;
        Room room(room_name("lobby"), 2, poster);
        auto a = std::make_shared<FakeParticipant>(1, 0);
        auto b = std::make_shared<FakeParticipant>(2, 1);
        room.add(a, nick("a"));
        room.add(b, nick("b"));
        room.on_missed();
        poster.run_all();
        for (auto* p : {a.get(), b.get()}) {
            REQUIRE(p->frames.size() == 1);
            auto decoded = decode_one(*p->frames[0]);
            auto* e = std::get_if<Error>(&decoded);
            REQUIRE(e != nullptr);
            CHECK(e->code == ErrorCode::messages_missed);
            CHECK_FALSE(e->fatal);
            CHECK(e->reason.find("'lobby'") != std::string::npos);
        }
        CHECK(a->frames[0].get() == b->frames[0].get());  // encoded once
    }

    TEST_CASE("a room passes the broker's messages on as they are") {
        FakePoster poster;
        Room room(room_name("lobby"), 1, poster);
        auto a = std::make_shared<FakeParticipant>(1, 0);
        room.add(a, nick("a"));
        StoredMessage m{Position{7, 1}, make_frame(List{})};
        room.on_message(m);
        REQUIRE(a->frames.size() == 1);
        CHECK(a->frames[0].get() == m.frame.get());
    }

}
