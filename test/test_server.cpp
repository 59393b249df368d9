#include <doctest/doctest.h>

#include "utils/live.hpp"

using namespace chat;
using namespace chat::test;

TEST_SUITE("server (live)") {
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
}
