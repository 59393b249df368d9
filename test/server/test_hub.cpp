#include <doctest/doctest.h>

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "chat/server/broker.hpp"
#include "chat/server/hub.hpp"
#include "chat/proto/names.hpp"
#include "chat/proto/protocol.hpp"
#include "chat/proto/request.hpp"
#include "utils/fakes.hpp"

using namespace chat;
using namespace chat::test;

namespace {

// A participant that also keeps the resume tokens it is given (FakeParticipant drops them).
class TokenParticipant final : public Participant {
public:
    explicit TokenParticipant(std::uint64_t id) : id_(id) {}

    std::uint64_t id() const noexcept override { return id_; }
    std::size_t shard() const noexcept override { return 0; }
    void deliver(const SharedFrame& frame) override { frames.push_back(frame); }
    void on_login(const std::string& nick, const std::string& token) override {
        logins.push_back(nick);
        tokens.push_back(token);
    }
    void on_renamed(const std::string& nick) override { renames.push_back(nick); }
    void close_with_error(ErrorCode code, const std::string&) override { errors.push_back(code); }

    std::vector<SharedFrame> frames;
    std::vector<std::string> logins;
    std::vector<std::string> tokens;
    std::vector<std::string> renames;
    std::vector<ErrorCode> errors;

private:
    std::uint64_t id_;
};

bool is_hex48(const std::string& token) {
    return token.size() == 48 &&
           std::all_of(token.begin(), token.end(), [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); });
}

std::vector<Message> received(const std::vector<SharedFrame>& frames) {
    std::vector<Message> out;
    for (const auto& f : frames) out.push_back(decode_one(*f));
    return out;
}

// The frames of type T among those a participant got, in order.
template <class T, class P>
std::vector<T> got(const P& p) {
    std::vector<T> out;
    for (auto& m : received(p.frames))
        if (auto* t = std::get_if<T>(&m)) out.push_back(std::move(*t));
    return out;
}

// The one frame a participant got, which must be a T.
template <class T, class P>
T only(const P& p) {
    REQUIRE(p.frames.size() == 1);
    auto m = decode_one(*p.frames[0]);
    REQUIRE(std::holds_alternative<T>(m));
    return std::get<T>(m);
}

struct HubFixture {
    LocalBroker broker{100, LocalBroker::default_history_memory, 1000};
    FakePoster poster;
    Hub hub;

    explicit HubFixture(HubLimits limits = {}, std::size_t shards = 1) : hub(broker, poster, shards, limits) {}

    std::shared_ptr<FakeParticipant> login(std::uint64_t id, std::string_view name, std::size_t shard = 0) {
        auto p = std::make_shared<FakeParticipant>(id, shard);
        hub.login(p, nick(name), "");
        if (shard != poster.here) poster.run_all();
        REQUIRE(p->logins == std::vector<std::string>{std::string(name)});
        REQUIRE(p->errors.empty());
        return p;
    }
    void join(std::uint64_t id, std::string_view room) { hub.handle(id, JoinRequest{room_name(room), false, {}}); }
    void leave(std::uint64_t id, std::string_view room) { hub.handle(id, LeaveRequest{room_name(room)}); }
    void say(std::uint64_t id, std::string_view room, std::string_view text) {
        hub.handle(id, SayRequest{room_name(room), text});
    }
    void whisper(std::uint64_t id, std::string_view to, std::string_view text) {
        hub.handle(id, WhisperRequest{nick(to), text});
    }
    void rename(std::uint64_t id, std::string_view to) { hub.handle(id, RenameRequest{nick(to)}); }
    void who(std::uint64_t id, std::string_view room) { hub.handle(id, WhoRequest{room_name(room)}); }
    void list(std::uint64_t id) { hub.handle(id, ListRequest{}); }
};

void clear(std::initializer_list<FakeParticipant*> ps) {
    for (auto* p : ps) p->frames.clear();
}

Presence presence(std::string room, std::string who, PresenceEvent event, std::string detail = {}) {
    return Presence{std::move(room), std::move(who), event, std::move(detail)};
}

Error error_of(ErrorCode code, const std::vector<SharedFrame>& frames) {
    REQUIRE(frames.size() == 1);
    auto m = decode_one(*frames[0]);
    REQUIRE(std::holds_alternative<Error>(m));
    auto e = std::get<Error>(m);
    CHECK(e.code == code);
    CHECK_FALSE(e.fatal);
    return e;
}

// A 30-character nick unique to i.
std::string long_nick(std::size_t i) {
    std::string s = "u" + std::to_string(i);
    s.resize(30, 'x');
    return s;
}

}  // namespace

TEST_SUITE("hub") {

    // --- login ---

    TEST_CASE("a login with a free nick is answered with on_login and a 48-hex-digit resume token") {
        HubFixture f;
        auto a = std::make_shared<TokenParticipant>(1);
        f.hub.login(a, nick("alice"), "");
        CHECK(a->logins == std::vector<std::string>{"alice"});
        REQUIRE(a->tokens.size() == 1);
        CHECK(is_hex48(a->tokens[0]));
        CHECK(a->errors.empty());
        CHECK(a->frames.empty());
        CHECK(f.hub.session_count() == 1);
        CHECK(f.hub.nick_count() == 1);
        CHECK(f.hub.holder_of("alice") == std::optional<std::uint64_t>{1});
    }

    TEST_CASE("make_resume_token gives 48 hex digits and a new value every call") {
        const auto t1 = make_resume_token();
        const auto t2 = make_resume_token();
        CHECK(is_hex48(t1));
        CHECK(is_hex48(t2));
        CHECK(t1 != t2);
    }

    TEST_CASE("every login gets its own resume token") {
        HubFixture f;
        auto a = std::make_shared<TokenParticipant>(1);
        auto b = std::make_shared<TokenParticipant>(2);
        f.hub.login(a, nick("alice"), "");
        f.hub.login(b, nick("bob"), "");
        REQUIRE(a->tokens.size() == 1);
        REQUIRE(b->tokens.size() == 1);
        CHECK(a->tokens[0] != b->tokens[0]);
    }

    TEST_CASE("a second login with a held nick and no or a wrong token fails with nick_taken, the holder keeps it") {
        HubFixture f;
        auto a = std::make_shared<TokenParticipant>(1);
        f.hub.login(a, nick("alice"), "");
        REQUIRE(a->tokens.size() == 1);
        std::string wrong = a->tokens[0];
        wrong[0] = wrong[0] == '0' ? '1' : '0';

        for (const std::string& token : {std::string(), wrong, a->tokens[0].substr(0, 47), a->tokens[0] + "0"}) {
            CAPTURE(token);
            auto b = std::make_shared<TokenParticipant>(2);
            f.hub.login(b, nick("alice"), token);
            CHECK(b->errors == std::vector<ErrorCode>{ErrorCode::nick_taken});
            CHECK(b->logins.empty());
            CHECK(a->errors.empty());
            CHECK(f.hub.holder_of("alice") == std::optional<std::uint64_t>{1});
            CHECK(f.hub.session_count() == 1);
            CHECK(f.hub.nick_count() == 1);
        }
    }

    TEST_CASE("a login with the holder's resume token takes the nick over and the old session's rooms see it go") {
        HubFixture f;
        auto a = std::make_shared<TokenParticipant>(1);
        f.hub.login(a, nick("alice"), "");
        REQUIRE(a->tokens.size() == 1);
        auto b = f.login(2, "bob");
        f.join(1, "r");
        f.join(2, "r");
        f.join(1, "s");
        b->frames.clear();

        auto a2 = std::make_shared<TokenParticipant>(3);
        f.hub.login(a2, nick("alice"), a->tokens[0]);
        CHECK(a->errors == std::vector<ErrorCode>{ErrorCode::replaced});
        CHECK(a2->errors.empty());
        CHECK(a2->logins == std::vector<std::string>{"alice"});
        REQUIRE(a2->tokens.size() == 1);
        CHECK(is_hex48(a2->tokens[0]));
        CHECK(a2->tokens[0] != a->tokens[0]);
        CHECK(f.hub.holder_of("alice") == std::optional<std::uint64_t>{3});
        CHECK(f.hub.session_count() == 2);
        CHECK(f.hub.nick_count() == 2);

        // The old session left both its rooms; "s" had nobody else and is gone.
        REQUIRE(b->frames.size() == 1);
        auto p = only<Presence>(*b);
        CHECK(p.room == "r");
        CHECK(p.nick == "alice");
        CHECK(p.event == PresenceEvent::disconnected);
        CHECK_FALSE(p.detail.empty());
        CHECK(f.hub.find_room("s") == nullptr);
        REQUIRE(f.hub.find_room("r") != nullptr);
        CHECK(f.hub.find_room("r")->size() == 1);
        // The new session starts with no rooms.
        f.say(3, "r", "hi");
        error_of(ErrorCode::not_in_room, a2->frames);

        // The old token is spent; the new one works.
        auto a3 = std::make_shared<TokenParticipant>(4);
        f.hub.login(a3, nick("alice"), a->tokens[0]);
        CHECK(a3->errors == std::vector<ErrorCode>{ErrorCode::nick_taken});
        auto a4 = std::make_shared<TokenParticipant>(5);
        f.hub.login(a4, nick("alice"), a2->tokens[0]);
        CHECK(a4->logins == std::vector<std::string>{"alice"});
        CHECK(a2->errors == std::vector<ErrorCode>{ErrorCode::replaced});
    }

    TEST_CASE("a resume token is ignored when nobody holds the nick") {
        HubFixture f;
        auto a = std::make_shared<TokenParticipant>(1);
        f.hub.login(a, nick("alice"), std::string(48, 'a'));
        CHECK(a->logins == std::vector<std::string>{"alice"});
        CHECK(a->errors.empty());
    }

    // --- join ---

    TEST_CASE("JOINED gives the room, epoch, head and members in join order with the joiner last") {
        HubFixture f;
        auto a = f.login(1, "alice");
        auto b = f.login(2, "bob");
        auto c = f.login(3, "carol");
        f.join(1, "r");
        auto ja = only<Joined>(*a);
        CHECK(ja.room == "r");
        CHECK(ja.epoch != 0);
        CHECK(ja.head_seq == 0);
        CHECK(ja.history_count == 0);
        CHECK(ja.missed == 0);
        CHECK_FALSE(ja.epoch_changed);
        CHECK_FALSE(ja.quiet);
        CHECK(ja.members == std::vector<std::string>{"alice"});

        f.join(2, "r");
        f.join(3, "r");
        auto jc = only<Joined>(*c);
        CHECK(jc.epoch == ja.epoch);
        CHECK(jc.members == std::vector<std::string>{"alice", "bob", "carol"});
        CHECK(f.hub.room_count() == 1);
        REQUIRE(f.hub.find_room("r") != nullptr);
        CHECK(f.hub.find_room("r")->size() == 3);
    }

    TEST_CASE("a join is announced to the room's other members but not to the joiner") {
        HubFixture f;
        auto a = f.login(1, "alice");
        auto b = f.login(2, "bob");
        auto c = f.login(3, "carol");
        f.join(1, "r");
        f.join(2, "r");
        clear({a.get(), b.get()});
        f.join(3, "r");
        CHECK(only<Presence>(*a) == presence("r", "carol", PresenceEvent::joined));
        CHECK(only<Presence>(*b) == presence("r", "carol", PresenceEvent::joined));
        CHECK(got<Presence>(*c).empty());
        CHECK(got<Joined>(*c).size() == 1);
    }

    TEST_CASE("a JOINED member list cut to fit max_frame keeps the joiner, last, and the frame within max_frame") {
        HubFixture f(HubLimits{.max_frame = 1024});
        constexpr std::size_t n = 60;
        std::vector<std::shared_ptr<FakeParticipant>> ps;
        for (std::size_t i = 0; i < n; ++i) {
            ps.push_back(f.login(i + 1, long_nick(i)));
            f.join(i + 1, "r");
        }
        auto& last = *ps.back();
        REQUIRE(last.frames.size() == 1);
        CHECK(last.frames[0]->size() - header_size <= 1024);
        auto j = only<Joined>(last);
        CHECK(j.members.size() > 1);
        CHECK(j.members.size() < n);
        CHECK(j.members.back() == long_nick(n - 1));
        for (std::size_t i = 0; i + 1 < j.members.size(); ++i) CHECK(j.members[i] == long_nick(i));
        CHECK_FALSE(j.quiet);
    }

    TEST_CASE("joining a room one is in already is refused with a non-fatal invalid_room") {
        HubFixture f;
        auto a = f.login(1, "alice");
        f.join(1, "r");
        a->frames.clear();
        f.join(1, "r");
        error_of(ErrorCode::invalid_room, a->frames);
        CHECK(a->errors.empty());
        CHECK(f.hub.find_room("r")->size() == 1);
    }

    TEST_CASE("a join over max_rooms_per_session is refused with too_many_rooms and makes no room") {
        HubFixture f(HubLimits{.max_rooms_per_session = 2});
        auto a = f.login(1, "alice");
        f.join(1, "r1");
        f.join(1, "r2");
        a->frames.clear();
        f.join(1, "r3");
        error_of(ErrorCode::too_many_rooms, a->frames);
        CHECK(a->errors.empty());
        CHECK(f.hub.room_count() == 2);
        CHECK(f.hub.find_room("r3") == nullptr);
        // Leaving one makes room for another.
        f.leave(1, "r1");
        a->frames.clear();
        f.join(1, "r3");
        CHECK(only<Joined>(*a).room == "r3");
    }

    TEST_CASE("a join replays the room's history after JOINED, oldest first, with the history flag") {
        HubFixture f;
        auto a = f.login(1, "alice");
        auto b = f.login(2, "bob");
        f.join(1, "r");
        f.say(1, "r", "one");
        f.say(1, "r", "two");
        f.say(1, "r", "three");
        f.join(2, "r");
        auto msgs = received(b->frames);
        REQUIRE(msgs.size() == 4);
        REQUIRE(std::holds_alternative<Joined>(msgs[0]));
        const auto& j = std::get<Joined>(msgs[0]);
        CHECK(j.head_seq == 3);
        CHECK(j.history_count == 3);
        CHECK(j.missed == 0);
        const std::vector<std::string> texts{"one", "two", "three"};
        for (std::size_t i = 0; i < 3; ++i) {
            REQUIRE(std::holds_alternative<Deliver>(msgs[i + 1]));
            const auto& d = std::get<Deliver>(msgs[i + 1]);
            CHECK(d.history);
            CHECK(d.text == texts[i]);
            CHECK(d.sender == "alice");
            CHECK(d.position == Position{j.epoch, i + 1});
        }
        b->frames.clear();
        f.say(1, "r", "four");
        auto live = decode_deliver(b->frames.at(0));
        CHECK_FALSE(live.history);
        CHECK(live.position.seq == 4);
    }

    TEST_CASE("a replay over the replay budget keeps the newest messages and counts the cut ones as missed") {
        HubFixture probe;
        auto p = probe.login(1, "alice");
        probe.join(1, "r");
        p->frames.clear();
        probe.say(1, "r", "msg-0");
        const std::size_t frame_size = p->frames.at(0)->size();

        HubFixture f(HubLimits{.replay_budget = 3 * frame_size + frame_size / 2});
        auto a = f.login(1, "alice");
        auto b = f.login(2, "bob");
        f.join(1, "r");
        for (int i = 0; i < 10; ++i) f.say(1, "r", "msg-" + std::to_string(i));
        for (const auto& fr : got<Deliver>(*a)) REQUIRE(encode(Message{fr}).size() == frame_size);
        f.join(2, "r");
        auto msgs = received(b->frames);
        REQUIRE(msgs.size() == 4);
        const auto& j = std::get<Joined>(msgs.at(0));
        CHECK(j.head_seq == 10);
        CHECK(j.history_count == 3);
        CHECK(j.missed == 7);
        for (std::size_t i = 0; i < 3; ++i) {
            const auto& d = std::get<Deliver>(msgs.at(i + 1));
            CHECK(d.history);
            CHECK(d.position.seq == 8 + i);
            CHECK(d.text == "msg-" + std::to_string(7 + i));
        }
    }

    // --- quiet rooms ---

    TEST_CASE("a room at exactly the presence limit still announces joins and lists its members") {
        HubFixture f(HubLimits{.presence_limit = 3});
        auto a = f.login(1, "alice");
        auto b = f.login(2, "bob");
        auto c = f.login(3, "carol");
        f.join(1, "r");
        f.join(2, "r");
        clear({a.get(), b.get()});
        f.join(3, "r");
        CHECK(only<Presence>(*a) == presence("r", "carol", PresenceEvent::joined));
        CHECK(only<Presence>(*b) == presence("r", "carol", PresenceEvent::joined));
        auto j = only<Joined>(*c);
        CHECK_FALSE(j.quiet);
        CHECK(j.members == std::vector<std::string>{"alice", "bob", "carol"});
    }

    TEST_CASE("a join that takes a room over the presence limit is not announced and JOINED is quiet with only the joiner") {
        HubFixture f(HubLimits{.presence_limit = 3});
        std::vector<std::shared_ptr<FakeParticipant>> ps;
        for (std::uint64_t id = 1; id <= 5; ++id) {
            ps.push_back(f.login(id, "n" + std::to_string(id)));
            f.join(id, "r");
        }
        for (std::size_t i = 0; i < 3; ++i) CHECK(got<Presence>(*ps[i]).size() == 2 - i);  // the joins up to 3 members
        for (std::size_t i = 3; i < 5; ++i) {
            CAPTURE(i);
            CHECK(got<Presence>(*ps[i]).empty());
            auto j = only<Joined>(*ps[i]);
            CHECK(j.quiet);
            CHECK(j.members == std::vector<std::string>{"n" + std::to_string(i + 1)});
        }
        // Messages still reach everyone.
        for (auto& p : ps) p->frames.clear();
        f.say(5, "r", "hello");
        for (auto& p : ps) CHECK(decode_deliver(p->frames.at(0)).text == "hello");
    }

    TEST_CASE("in a quiet room a leave or disconnect is not announced, but the leaver gets its own PRESENCE left") {
        HubFixture f(HubLimits{.presence_limit = 3});
        std::vector<std::shared_ptr<FakeParticipant>> ps;
        for (std::uint64_t id = 1; id <= 5; ++id) {
            ps.push_back(f.login(id, "n" + std::to_string(id)));
            f.join(id, "r");
        }
        for (auto& p : ps) p->frames.clear();

        f.leave(5, "r");  // 5 members: quiet
        CHECK(only<Presence>(*ps[4]) == presence("r", "n5", PresenceEvent::left));
        for (std::size_t i = 0; i < 4; ++i) CHECK(ps[i]->frames.empty());

        f.hub.disconnect(4, PresenceEvent::disconnected, "gone");  // 4 members: quiet
        for (std::size_t i = 0; i < 3; ++i) CHECK(ps[i]->frames.empty());

        f.hub.disconnect(3, PresenceEvent::timed_out, "");  // 3 members: at the limit, loud
        CHECK(only<Presence>(*ps[0]) == presence("r", "n3", PresenceEvent::timed_out));
        CHECK(only<Presence>(*ps[1]) == presence("r", "n3", PresenceEvent::timed_out));
        CHECK(f.hub.find_room("r")->size() == 2);
    }

    TEST_CASE("a rename in a quiet room is not announced but is confirmed") {
        HubFixture f(HubLimits{.presence_limit = 3});
        std::vector<std::shared_ptr<FakeParticipant>> ps;
        for (std::uint64_t id = 1; id <= 4; ++id) {
            ps.push_back(f.login(id, "n" + std::to_string(id)));
            f.join(id, "r");
        }
        for (auto& p : ps) p->frames.clear();
        f.rename(4, "renamed");
        CHECK(only<Nick>(*ps[3]) == Nick{"n4", "renamed"});
        CHECK(ps[3]->renames == std::vector<std::string>{"renamed"});
        for (std::size_t i = 0; i < 3; ++i) CHECK(ps[i]->frames.empty());
        f.who(1, "r");
        CHECK(only<Members>(*ps[0]).nicks == std::vector<std::string>{"n1", "n2", "n3", "renamed"});
    }

    TEST_CASE("a presence limit of 0 keeps every room loud") {
        HubFixture f(HubLimits{.presence_limit = 0});
        std::vector<std::shared_ptr<FakeParticipant>> ps;
        for (std::uint64_t id = 1; id <= 6; ++id) {
            ps.push_back(f.login(id, "n" + std::to_string(id)));
            f.join(id, "r");
        }
        auto j = got<Joined>(*ps.back()).at(0);
        CHECK_FALSE(j.quiet);
        CHECK(j.members.size() == 6);
        CHECK(got<Presence>(*ps[0]).size() == 5);
    }

    // --- leave ---

    TEST_CASE("a leave is confirmed to the leaver with its own nick and announced to the others") {
        HubFixture f;
        auto a = f.login(1, "alice");
        auto b = f.login(2, "bob");
        auto c = f.login(3, "carol");
        for (std::uint64_t id = 1; id <= 3; ++id) f.join(id, "r");
        clear({a.get(), b.get(), c.get()});
        f.leave(2, "r");
        CHECK(only<Presence>(*b) == presence("r", "bob", PresenceEvent::left));
        CHECK(only<Presence>(*a) == presence("r", "bob", PresenceEvent::left));
        CHECK(only<Presence>(*c) == presence("r", "bob", PresenceEvent::left));
        CHECK(f.hub.find_room("r")->size() == 2);
        // After the confirmation nothing more of the room reaches the leaver.
        clear({a.get(), b.get(), c.get()});
        f.say(1, "r", "after");
        CHECK(b->frames.empty());
        CHECK(a->frames.size() == 1);
    }

    TEST_CASE("leaving a room one is not in is refused with not_in_room") {
        HubFixture f;
        auto a = f.login(1, "alice");
        auto b = f.login(2, "bob");
        f.join(2, "r");
        b->frames.clear();
        f.leave(1, "r");  // exists, not a member
        error_of(ErrorCode::not_in_room, a->frames);
        a->frames.clear();
        f.leave(1, "nowhere");  // does not exist
        error_of(ErrorCode::not_in_room, a->frames);
        CHECK(b->frames.empty());
        CHECK(f.hub.room_count() == 1);
    }

    TEST_CASE("the last member leaving drops the room and the broker's log of it") {
        HubFixture f;
        auto a = f.login(1, "alice");
        f.join(1, "r");
        const auto epoch = only<Joined>(*a).epoch;
        f.say(1, "r", "one");
        f.say(1, "r", "two");
        CHECK(f.broker.log_count() == 1);
        CHECK(f.broker.history_bytes() > 0);
        f.leave(1, "r");
        CHECK(f.hub.room_count() == 0);
        CHECK(f.hub.find_room("r") == nullptr);
        CHECK(f.broker.log_count() == 0);
        CHECK(f.broker.history_bytes() == 0);
        CHECK(f.broker.history_messages() == 0);
        // The next join makes it anew, in a new epoch, with no history.
        a->frames.clear();
        f.join(1, "r");
        auto j = only<Joined>(*a);
        CHECK(j.epoch != epoch);
        CHECK(j.head_seq == 0);
        CHECK(j.history_count == 0);
    }

    // --- say ---

    TEST_CASE("a SAY reaches every member, the sender too, once, in publish order with increasing seq") {
        HubFixture f;
        auto a = f.login(1, "alice");
        auto b = f.login(2, "bob");
        auto c = f.login(3, "carol");
        for (std::uint64_t id = 1; id <= 3; ++id) f.join(id, "r");
        const auto epoch = got<Joined>(*a).at(0).epoch;
        clear({a.get(), b.get(), c.get()});
        f.say(1, "r", "one");
        f.say(2, "r", "two");
        f.say(3, "r", "three");
        f.say(1, "r", "four");
        const std::vector<std::pair<std::string, std::string>> want{
            {"alice", "one"}, {"bob", "two"}, {"carol", "three"}, {"alice", "four"}};
        for (auto* p : {a.get(), b.get(), c.get()}) {
            CAPTURE(p->id());
            REQUIRE(p->frames.size() == 4);
            for (std::size_t i = 0; i < 4; ++i) {
                auto d = decode_deliver(p->frames[i]);
                CHECK(d.room == "r");
                CHECK(d.sender == want[i].first);
                CHECK(d.text == want[i].second);
                CHECK(d.position == Position{epoch, i + 1});
                CHECK_FALSE(d.history);
                CHECK(d.timestamp_ms > 0);
            }
        }
        CHECK(seqs_of(a->frames) == std::vector<std::uint64_t>{1, 2, 3, 4});
    }

    TEST_CASE("a SAY to a room one has not joined is refused with not_in_room and reaches nobody") {
        HubFixture f;
        auto a = f.login(1, "alice");
        auto b = f.login(2, "bob");
        f.join(2, "r");
        b->frames.clear();
        f.say(1, "r", "let me in");
        error_of(ErrorCode::not_in_room, a->frames);
        CHECK(b->frames.empty());
        CHECK(f.broker.history_messages() == 0);
    }

    TEST_CASE("a SAY to a room that does not exist is refused with not_in_room and makes no room") {
        HubFixture f;
        auto a = f.login(1, "alice");
        f.say(1, "nowhere", "hello?");
        error_of(ErrorCode::not_in_room, a->frames);
        CHECK(f.hub.room_count() == 0);
        CHECK(f.broker.log_count() == 0);
    }

    // --- whisper ---

    TEST_CASE("a whisper reaches its target from the sender and comes back to the sender as an echo") {
        HubFixture f;
        auto a = f.login(1, "alice");
        auto b = f.login(2, "bob");
        auto c = f.login(3, "carol");
        f.whisper(1, "bob", "psst");
        auto to = only<Whisper>(*b);
        CHECK(to.peer == "alice");
        CHECK(to.text == "psst");
        CHECK_FALSE(to.echo);
        CHECK(to.timestamp_ms > 0);
        auto echo = only<Whisper>(*a);
        CHECK(echo.peer == "bob");
        CHECK(echo.text == "psst");
        CHECK(echo.echo);
        CHECK(echo.timestamp_ms == to.timestamp_ms);
        CHECK(c->frames.empty());
    }

    TEST_CASE("a whisper to a nick nobody holds is refused with no_such_nick") {
        HubFixture f;
        auto a = f.login(1, "alice");
        auto b = f.login(2, "bob");
        f.whisper(1, "nobody", "hello");
        error_of(ErrorCode::no_such_nick, a->frames);
        a->frames.clear();
        f.hub.disconnect(2, PresenceEvent::disconnected, "");
        f.whisper(1, "bob", "still there?");
        error_of(ErrorCode::no_such_nick, a->frames);
        CHECK(b->frames.empty());
    }

    // --- rename ---

    TEST_CASE("a rename is confirmed with NICK, announced as PRESENCE renamed in each room and reported by on_renamed") {
        HubFixture f;
        auto a = f.login(1, "alice");
        auto b = f.login(2, "bob");
        auto c = f.login(3, "carol");
        f.join(1, "r1");
        f.join(2, "r1");
        f.join(1, "r2");
        f.join(3, "r2");
        clear({a.get(), b.get(), c.get()});
        f.rename(1, "alicia");
        CHECK(only<Nick>(*a) == Nick{"alice", "alicia"});
        CHECK(a->renames == std::vector<std::string>{"alicia"});
        CHECK(only<Presence>(*b) == presence("r1", "alice", PresenceEvent::renamed, "alicia"));
        CHECK(only<Presence>(*c) == presence("r2", "alice", PresenceEvent::renamed, "alicia"));
        CHECK(f.hub.nick_count() == 3);
        CHECK(f.hub.holder_of("alicia") == std::optional<std::uint64_t>{1});
        CHECK_FALSE(f.hub.holder_of("alice").has_value());

        // The new nick is used from then on.
        clear({a.get(), b.get(), c.get()});
        f.say(1, "r1", "hi");
        CHECK(decode_deliver(b->frames.at(0)).sender == "alicia");
        b->frames.clear();
        f.who(2, "r1");
        CHECK(only<Members>(*b).nicks == std::vector<std::string>{"alicia", "bob"});
        c->frames.clear();
        f.whisper(3, "alicia", "found you");
        CHECK(got<Whisper>(*a).size() == 1);
    }

    TEST_CASE("the old nick is free after a rename") {
        HubFixture f;
        f.login(1, "alice");
        f.rename(1, "alicia");
        f.login(2, "alice");
        CHECK(f.hub.holder_of("alice") == std::optional<std::uint64_t>{2});
        CHECK(f.hub.nick_count() == 2);
        CHECK(f.hub.session_count() == 2);
    }

    TEST_CASE("a rename to a nick another session holds is refused with a non-fatal nick_taken and changes nothing") {
        HubFixture f;
        auto a = f.login(1, "alice");
        auto b = f.login(2, "bob");
        f.join(1, "r");
        f.join(2, "r");
        clear({a.get(), b.get()});
        f.rename(1, "bob");
        error_of(ErrorCode::nick_taken, a->frames);
        CHECK(a->errors.empty());
        CHECK(a->renames.empty());
        CHECK(b->frames.empty());
        CHECK(f.hub.holder_of("alice") == std::optional<std::uint64_t>{1});
        CHECK(f.hub.holder_of("bob") == std::optional<std::uint64_t>{2});
        CHECK(f.hub.nick_count() == 2);
    }

    TEST_CASE("a rename to the nick already held is confirmed and announced nowhere") {
        HubFixture f;
        auto a = f.login(1, "alice");
        auto b = f.login(2, "bob");
        f.join(1, "r");
        f.join(2, "r");
        clear({a.get(), b.get()});
        f.rename(1, "alice");
        CHECK(only<Nick>(*a) == Nick{"alice", "alice"});
        CHECK(b->frames.empty());
        CHECK(f.hub.holder_of("alice") == std::optional<std::uint64_t>{1});
        CHECK(f.hub.nick_count() == 2);
    }

    // --- list / who ---

    TEST_CASE("LIST answers ROOMS with every room and its member count") {
        HubFixture f;
        auto a = f.login(1, "alice");
        f.login(2, "bob");
        f.list(1);
        CHECK(only<Rooms>(*a).rooms.empty());
        f.join(1, "alpha");
        f.join(2, "alpha");
        f.join(2, "beta");
        a->frames.clear();
        f.list(1);
        auto rooms = only<Rooms>(*a).rooms;
        std::sort(rooms.begin(), rooms.end(), [](const RoomInfo& x, const RoomInfo& y) { return x.name < y.name; });
        CHECK(rooms == std::vector<RoomInfo>{{"alpha", 2}, {"beta", 1}});
    }

    TEST_CASE("a ROOMS list is cut to fit max_frame") {
        HubFixture f(HubLimits{.max_frame = 1024});
        auto a = f.login(1, "alice");
        for (int i = 0; i < 60; ++i) {
            std::string name = "room" + std::to_string(i);
            name.resize(60, 'z');
            f.join(1, name);  // max_rooms_per_session is 64
        }
        a->frames.clear();
        f.list(1);
        REQUIRE(a->frames.size() == 1);
        CHECK(a->frames[0]->size() - header_size <= 1024);
        auto rooms = only<Rooms>(*a).rooms;
        CHECK_FALSE(rooms.empty());
        CHECK(rooms.size() < 60);
    }

    TEST_CASE("WHO answers MEMBERS in join order, to members and non-members alike") {
        HubFixture f;
        auto a = f.login(1, "alice");
        auto b = f.login(2, "bob");
        auto c = f.login(3, "carol");
        f.join(2, "r");
        f.join(1, "r");
        clear({a.get(), b.get()});
        f.who(3, "r");
        auto m = only<Members>(*c);
        CHECK(m.room == "r");
        CHECK(m.nicks == std::vector<std::string>{"bob", "alice"});
        f.who(1, "r");
        CHECK(only<Members>(*a) == m);
    }

    TEST_CASE("a MEMBERS list is cut to fit max_frame") {
        HubFixture f(HubLimits{.max_frame = 1024});
        for (std::size_t i = 0; i < 60; ++i) {
            f.login(i + 1, long_nick(i));
            f.join(i + 1, "r");
        }
        auto asker = f.login(100, "asker");
        f.who(100, "r");
        REQUIRE(asker->frames.size() == 1);
        CHECK(asker->frames[0]->size() - header_size <= 1024);
        auto m = only<Members>(*asker);
        CHECK_FALSE(m.nicks.empty());
        CHECK(m.nicks.size() < 60);
        CHECK(m.nicks.front() == long_nick(0));
    }

    TEST_CASE("WHO of a room that does not exist is refused with invalid_room") {
        HubFixture f;
        auto a = f.login(1, "alice");
        f.who(1, "nowhere");
        error_of(ErrorCode::invalid_room, a->frames);
        CHECK(f.hub.room_count() == 0);
    }

    // --- disconnect ---

    TEST_CASE("a disconnect frees the nick, shows the given event in every room, and is idempotent") {
        HubFixture f;
        auto a = f.login(1, "alice");
        auto b = f.login(2, "bob");
        auto c = f.login(3, "carol");
        f.join(1, "r1");
        f.join(2, "r1");
        f.join(3, "r1");
        f.join(1, "r2");
        f.join(2, "r2");
        f.join(2, "solo");
        clear({a.get(), b.get(), c.get()});

        f.hub.disconnect(2, PresenceEvent::timed_out, "");
        CHECK(got<Presence>(*a) ==
              std::vector<Presence>{presence("r1", "bob", PresenceEvent::timed_out),
                                    presence("r2", "bob", PresenceEvent::timed_out)});
        CHECK(only<Presence>(*c) == presence("r1", "bob", PresenceEvent::timed_out));
        CHECK(b->frames.empty());
        CHECK(f.hub.session_count() == 2);
        CHECK(f.hub.nick_count() == 2);
        CHECK_FALSE(f.hub.holder_of("bob").has_value());
        CHECK(f.hub.find_room("solo") == nullptr);
        CHECK(f.hub.room_count() == 2);

        clear({a.get(), c.get()});
        f.hub.disconnect(2, PresenceEvent::timed_out, "");
        f.hub.disconnect(2, PresenceEvent::disconnected, "again");
        f.hub.disconnect(99, PresenceEvent::disconnected, "never was");
        CHECK(a->frames.empty());
        CHECK(c->frames.empty());
        CHECK(f.hub.session_count() == 2);

        // A request still on its way from the gone session is ignored.
        f.say(2, "r1", "ghost");
        f.join(2, "r3");
        CHECK(a->frames.empty());
        CHECK(b->frames.empty());
        CHECK(f.hub.room_count() == 2);

        // The nick can be had again.
        f.login(4, "bob");
        CHECK(f.hub.holder_of("bob") == std::optional<std::uint64_t>{4});
    }

    TEST_CASE("a disconnect reason far over a str16 is clipped in the PRESENCE detail and encodes") {
        for (const std::size_t size : {std::size_t{257}, std::size_t{65534}, std::size_t{65535}, std::size_t{70000}}) {
            CAPTURE(size);
            HubFixture f;
            auto a = f.login(1, "alice");
            f.login(2, "bob");
            f.join(1, "r");
            f.join(2, "r");
            a->frames.clear();
            CHECK_NOTHROW(f.hub.disconnect(2, PresenceEvent::disconnected, std::string(size, 'x')));
            auto p = only<Presence>(*a);
            CHECK(p.event == PresenceEvent::disconnected);
            CHECK(p.nick == "bob");
            CHECK(p.detail.size() <= max_reason_length);
            CHECK(p.detail.size() > 200);
            CHECK(p.detail.starts_with("xxxx"));
            CHECK(p.detail.ends_with("..."));
            CHECK(f.hub.session_count() == 1);
            CHECK(f.hub.nick_count() == 1);
        }
    }

    TEST_CASE("a long multibyte disconnect reason is clipped to valid UTF-8") {
        HubFixture f;
        auto a = f.login(1, "alice");
        f.login(2, "bob");
        f.join(1, "r");
        f.join(2, "r");
        a->frames.clear();
        std::string reason;
        for (int i = 0; i < 30000; ++i) reason += "\xE2\x82\xAC";  // euro sign
        CHECK_NOTHROW(f.hub.disconnect(2, PresenceEvent::disconnected, reason));
        auto p = only<Presence>(*a);  // decoding checks the UTF-8
        CHECK(p.detail.size() <= max_reason_length);
        CHECK(is_valid_utf8(p.detail));
        CHECK(p.detail.ends_with("..."));
    }

    // --- cross-shard ---

    TEST_CASE("a participant on another shard gets its frames only through posts, one per broadcast for the room") {
        HubFixture f(HubLimits{}, 2);
        auto a = f.login(1, "alice");
        auto remote = std::make_shared<FakeParticipant>(2, 1);
        f.hub.login(remote, nick("bob"), "");
        CHECK(remote->logins.empty());
        REQUIRE(f.poster.posted.size() == 1);
        CHECK(f.poster.posted[0].shard == 1);
        f.poster.run_all();
        CHECK(remote->logins == std::vector<std::string>{"bob"});
        auto c = f.login(3, "carol", 1);
        auto d = f.login(4, "dave", 1);

        f.join(1, "r");
        f.join(2, "r");
        CHECK(remote->frames.empty());  // its JOINED is on the way
        REQUIRE(f.poster.posted.size() == 1);
        f.poster.run_all();
        CHECK(only<Joined>(*remote).members == std::vector<std::string>{"alice", "bob"});
        f.join(3, "r");
        f.join(4, "r");
        f.poster.run_all();
        clear({a.get(), remote.get(), c.get(), d.get()});

        f.say(1, "r", "hello");
        REQUIRE(f.poster.posted.size() == 1);  // one post for the three members on shard 1
        CHECK(f.poster.posted[0].shard == 1);
        CHECK(a->frames.size() == 1);  // own shard: directly
        CHECK(remote->frames.empty());
        CHECK(c->frames.empty());
        CHECK(d->frames.empty());
        f.poster.run_all();
        for (auto* p : {remote.get(), c.get(), d.get()}) {
            REQUIRE(p->frames.size() == 1);
            CHECK(p->frames[0].get() == a->frames[0].get());  // the one buffer
            CHECK(decode_deliver(p->frames[0]).text == "hello");
        }

        // Presence of a shard-0 member's leave: one post too.
        clear({a.get(), remote.get(), c.get(), d.get()});
        f.leave(1, "r");
        CHECK(f.poster.posted.size() == 1);
        f.poster.run_all();
        for (auto* p : {remote.get(), c.get(), d.get()})
            CHECK(only<Presence>(*p) == presence("r", "alice", PresenceEvent::left));
    }

    TEST_CASE("errors, renames and whispers for a participant on another shard go through posts") {
        HubFixture f(HubLimits{}, 2);
        f.login(1, "alice");
        auto b = f.login(2, "bob", 1);
        auto dup = std::make_shared<FakeParticipant>(3, 1);
        f.hub.login(dup, nick("alice"), "");
        CHECK(dup->errors.empty());
        f.poster.run_all();
        CHECK(dup->errors == std::vector<ErrorCode>{ErrorCode::nick_taken});

        f.rename(2, "robert");
        CHECK(b->frames.empty());
        CHECK(b->renames.empty());
        f.poster.run_all();
        CHECK(b->renames == std::vector<std::string>{"robert"});
        CHECK(only<Nick>(*b) == Nick{"bob", "robert"});

        b->frames.clear();
        f.whisper(1, "robert", "hi");
        CHECK(b->frames.empty());
        f.poster.run_all();
        CHECK(only<Whisper>(*b).peer == "alice");

        b->frames.clear();
        f.say(2, "r", "x");
        CHECK(b->frames.empty());
        f.poster.run_all();
        error_of(ErrorCode::not_in_room, b->frames);
    }

    // --- nothing left behind ---

    TEST_CASE("after every session is disconnected the hub and the broker hold nothing") {
        HubFixture f(HubLimits{.presence_limit = 3}, 2);
        constexpr std::uint64_t n = 12;
        for (std::uint64_t id = 1; id <= n; ++id) {
            f.login(id, "n" + std::to_string(id), id % 2);
            f.join(id, "all");
            f.join(id, "g" + std::to_string(id % 3));
        }
        for (std::uint64_t id = 1; id <= n; ++id) {
            f.say(id, "all", "hello from " + std::to_string(id));
            f.say(id, "g" + std::to_string(id % 3), "group");
        }
        f.rename(1, "first");
        f.leave(2, "all");
        f.whisper(3, "first", "hi");
        f.poster.run_all();
        CHECK(f.hub.session_count() == n);
        CHECK(f.hub.room_count() == 4);
        CHECK(f.broker.history_bytes() > 0);

        for (std::uint64_t id = 1; id <= n; ++id)
            f.hub.disconnect(id, id % 2 ? PresenceEvent::timed_out : PresenceEvent::disconnected, "bye");
        f.poster.run_all();
        CHECK(f.hub.session_count() == 0);
        CHECK(f.hub.nick_count() == 0);
        CHECK(f.hub.room_count() == 0);
        CHECK(f.broker.log_count() == 0);
        CHECK(f.broker.history_bytes() == 0);
        CHECK(f.broker.history_messages() == 0);
    }
}

namespace {

// A broker that opens a room's log only when the test says so (as a cluster
// broker does once it has loaded the room), and can refuse publishes.
class LateBroker final : public Broker {
public:
    std::uint64_t subscribe(std::string_view room, Subscriber& subscriber) override {
        waiting.emplace_back(std::string(room), &subscriber);
        return 0;
    }
    void unsubscribe(std::string_view room) override {
        ++unsubscribed;
        inner.unsubscribe(room);
    }
    PublishResult publish(std::string_view room, std::string_view sender, std::string_view text,
                          std::uint64_t ts, std::uint64_t sender_id) override {
        if (refuse) return PublishResult::unavailable;
        last_sender = sender_id;
        return inner.publish(room, sender, text, ts, sender_id);
    }
    Replay replay(std::string_view room, const ReplayRequest& request) override { return inner.replay(room, request); }

    // Opens the oldest waiting room.
    void open_next() {
        REQUIRE_FALSE(waiting.empty());
        auto [room, subscriber] = waiting.front();
        waiting.erase(waiting.begin());
        inner.subscribe(room, *subscriber);
        subscriber->on_ready();
    }
    void fail_publish(std::uint64_t sender, std::string_view room) { listener_->on_publish_failed(sender, room, "test"); }

    LocalBroker inner{100, LocalBroker::default_history_memory, 1000};
    std::vector<std::pair<std::string, Subscriber*>> waiting;
    bool refuse = false;
    std::uint64_t last_sender = 0;
    int unsubscribed = 0;
};

struct LateHubFixture {
    LateBroker broker;
    FakePoster poster;
    Hub hub{broker, poster, 1, HubLimits{}};

    std::shared_ptr<FakeParticipant> login(std::uint64_t id, std::string_view name) {
        auto p = std::make_shared<FakeParticipant>(id, 0);
        hub.login(p, nick(name), "");
        REQUIRE(p->logins.size() == 1);
        return p;
    }
};

}  // namespace

TEST_CASE("a JOIN waits for its room's log, and the session's later requests wait behind it in order") {
    LateHubFixture f;
    auto alice = f.login(1, "alice");
    auto bob = f.login(2, "bob");
    f.hub.handle(1, JoinRequest{room_name("lobby"), false, {}});
    f.hub.handle(1, SayRequest{room_name("lobby"), "first"});  // sent before JOINED came: must follow it
    f.hub.handle(1, WhoRequest{room_name("lobby")});
    f.hub.handle(2, JoinRequest{room_name("lobby"), false, {}});
    CHECK(alice->frames.empty());
    CHECK(bob->frames.empty());
    REQUIRE(f.broker.waiting.size() == 1);  // one load for the room, however many wait

    f.broker.open_next();
    auto a = received(alice->frames);
    REQUIRE(a.size() >= 3);
    CHECK(std::holds_alternative<Joined>(a[0]));
    // Both JOINs are answered first, in order (so alice sees bob join), then
    // alice's held SAY and WHO, in the order she sent them.
    std::vector<std::string> order;
    for (auto& m : a) {
        if (std::holds_alternative<Joined>(m)) order.push_back("joined");
        if (std::holds_alternative<Presence>(m)) order.push_back("presence");
        if (auto* d = std::get_if<Deliver>(&m)) order.push_back("deliver " + d->text);
        if (std::holds_alternative<Members>(m)) order.push_back("members");
    }
    CHECK(order == std::vector<std::string>{"joined", "presence", "deliver first", "members"});
    CHECK(f.broker.last_sender == 1);
    CHECK(got<Joined>(*bob).size() == 1);
    CHECK(got<Deliver>(*bob).size() == 1);  // published once bob was a member
    CHECK(got<Members>(*alice).at(0).nicks == std::vector<std::string>{"alice", "bob"});
}

TEST_CASE("a session that leaves while its JOIN waits is forgotten, and the room with it") {
    LateHubFixture f;
    auto alice = f.login(1, "alice");
    f.hub.handle(1, JoinRequest{room_name("lobby"), false, {}});
    f.hub.disconnect(1, PresenceEvent::disconnected, "gone");
    f.broker.open_next();
    CHECK(alice->frames.empty());
    CHECK(f.hub.room_count() == 0);
    CHECK(f.broker.unsubscribed == 1);
}

TEST_CASE("a session flooding requests behind a waiting JOIN is disconnected") {
    LateHubFixture f;
    auto alice = f.login(1, "alice");
    f.hub.handle(1, JoinRequest{room_name("lobby"), false, {}});
    for (int i = 0; i < 1025; ++i) f.hub.handle(1, ListRequest{});
    REQUIRE(alice->errors.size() == 1);
    CHECK(alice->errors[0] == ErrorCode::rate_limited);
    CHECK(f.hub.session_count() == 0);
}

TEST_CASE("a SAY the broker cannot take, and one it could not store, are answered unavailable") {
    LateHubFixture f;
    auto alice = f.login(1, "alice");
    f.hub.handle(1, JoinRequest{room_name("lobby"), false, {}});
    f.broker.open_next();
    alice->frames.clear();
    f.broker.refuse = true;
    f.hub.handle(1, SayRequest{room_name("lobby"), "hello"});
    auto e = error_of(ErrorCode::unavailable, alice->frames);
    CHECK(e.reason.find("lobby") != std::string::npos);
    alice->frames.clear();
    f.broker.fail_publish(1, "lobby");
    error_of(ErrorCode::unavailable, alice->frames);
    CHECK(f.hub.stats().unavailable == 2);
    f.broker.fail_publish(99, "lobby");  // a sender that has gone: nothing to tell
}
