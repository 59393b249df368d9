// The checks every request frame passes at the edge (vet_request), and OwnedRequest for cross-shard posts.
#include <doctest/doctest.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_set>
#include <utility>
#include <variant>
#include <vector>

#include "chat/proto/names.hpp"
#include "chat/proto/protocol.hpp"
#include "chat/proto/request.hpp"

using namespace chat;
using namespace std::string_literals;

namespace {

template <class R>
R request_of(const std::variant<Request, Refusal>& vetted) {
    REQUIRE(std::holds_alternative<Request>(vetted));
    const auto& request = std::get<Request>(vetted);
    REQUIRE(std::holds_alternative<R>(request));
    return std::get<R>(request);
}

Refusal refusal_of(const std::variant<Request, Refusal>& vetted) {
    REQUIRE(std::holds_alternative<Refusal>(vetted));
    return std::get<Refusal>(vetted);
}

}  // namespace

TEST_SUITE("request") {
    TEST_CASE("vet_request turns JOIN, LEAVE and WHO into requests and refuses a bad room with invalid_room") {
        auto j = request_of<JoinRequest>(vet_request(Join{"#lobby", false, {}}));
        CHECK(j.room == std::string_view("#lobby"));
        CHECK_FALSE(j.resume);
        auto jr = request_of<JoinRequest>(vet_request(Join{"r", true, Position{5, 7}}));
        CHECK(jr.resume);
        CHECK(jr.after == Position{5, 7});
        CHECK(request_of<LeaveRequest>(vet_request(Leave{"r"})).room == std::string_view("r"));
        CHECK(request_of<WhoRequest>(vet_request(Who{"r"})).room == std::string_view("r"));

        for (const std::string& bad : {""s, std::string(65, 'a'), "_r"s, "a b"s, "caf\xC3\xA9"s, "r\n"s}) {
            CAPTURE(bad);
            const Message frames[] = {Join{bad, false, {}}, Leave{bad}, Who{bad}, Say{bad, "hello"}};
            for (const auto& frame : frames) {
                CHECK(is_request_frame(frame));
                auto r = refusal_of(vet_request(frame));
                CHECK(r.code == ErrorCode::invalid_room);
                CHECK_FALSE(r.reason.empty());
            }
        }
    }

    TEST_CASE("vet_request turns SAY into a request whose text points into the frame") {
        const Message frame = Say{"r", "hello\tworld \xE2\x82\xAC"};
        auto say = request_of<SayRequest>(vet_request(frame));
        CHECK(say.room == std::string_view("r"));
        CHECK(say.text == std::get<Say>(frame).text);
        CHECK(say.text.data() == std::get<Say>(frame).text.data());
    }

    TEST_CASE("vet_request refuses SAY and WHISPER text that is empty or holds a control character with invalid_text") {
        for (const std::string& bad : {""s, "a\nb"s, "a\rb"s, std::string("a\0b", 3), "\x1b[2J"s, "del\x7f"s,
                                       "c1 \xC2\x85"s, "c1 \xC2\x9F"s}) {
            CAPTURE(bad);
            CHECK(refusal_of(vet_request(Say{"r", bad})).code == ErrorCode::invalid_text);
            CHECK(refusal_of(vet_request(Whisper{"bob", 0, bad, false})).code == ErrorCode::invalid_text);
        }
    }

    TEST_CASE("vet_request turns WHISPER into a request and refuses an invalid nick with no_such_nick") {
        const Message frame = Whisper{"bob", 0, "psst", false};
        auto w = request_of<WhisperRequest>(vet_request(frame));
        CHECK(w.to == std::string_view("bob"));
        CHECK(w.text == "psst");
        CHECK(w.text.data() == std::get<Whisper>(frame).text.data());
        for (const std::string& bad : {""s, "#bob"s, std::string(33, 'b'), "b b"s}) {
            CAPTURE(bad);
            CHECK(refusal_of(vet_request(Whisper{bad, 0, "psst", false})).code == ErrorCode::no_such_nick);
        }
    }

    TEST_CASE("vet_request turns NICK into a rename and refuses an invalid nick with invalid_nick") {
        CHECK(request_of<RenameRequest>(vet_request(Nick{"", "robert"})).nick == std::string_view("robert"));
        for (const std::string& bad : {""s, "_bob"s, std::string(33, 'b'), "zo\xC3\xAB"s}) {
            CAPTURE(bad);
            CHECK(refusal_of(vet_request(Nick{"", bad})).code == ErrorCode::invalid_nick);
        }
    }

    TEST_CASE("vet_request turns LIST into a ListRequest, and only request frames are request frames") {
        const auto list = vet_request(List{});
        REQUIRE(std::holds_alternative<Request>(list));
        CHECK(std::holds_alternative<ListRequest>(std::get<Request>(list)));
        CHECK(request_name(std::get<Request>(list)) == "LIST");
        for (const Message& m : {Message{Join{}}, Message{Leave{}}, Message{Say{}}, Message{Whisper{}},
                                 Message{Nick{}}, Message{List{}}, Message{Who{}}})
            CHECK(is_request_frame(m));
        for (const Message& m : {Message{Hello{}}, Message{Welcome{}}, Message{Joined{}}, Message{Deliver{}},
                                 Message{Presence{}}, Message{Rooms{}}, Message{Members{}}, Message{Heartbeat{}},
                                 Message{Ping{}}, Message{Pong{}}, Message{Error{}}, Message{Bye{}}})
            CHECK_FALSE(is_request_frame(m));
    }

    TEST_CASE("a refusal's reason quotes nothing of the client's") {
        const std::string marker = "EVIL_MARKER";
        CHECK(refusal_of(vet_request(Join{marker + " x", false, {}})).reason.find(marker) == std::string_view::npos);
        CHECK(refusal_of(vet_request(Nick{"", "_" + marker})).reason.find(marker) == std::string_view::npos);
        CHECK(refusal_of(vet_request(Whisper{"#" + marker, 0, "x", false})).reason.find(marker) ==
              std::string_view::npos);
        CHECK(refusal_of(vet_request(Say{"r", marker + "\n"})).reason.find(marker) == std::string_view::npos);
    }

    // --- OwnedRequest ---

    TEST_CASE("an OwnedRequest keeps its text after the source frame is changed and destroyed") {
        for (const std::string& text : {"hi"s, std::string(1000, 'L')}) {
            CAPTURE(text.size());
            std::optional<OwnedRequest> say;
            std::optional<OwnedRequest> whisper;
            {
                Message say_frame = Say{"r", text};
                Message whisper_frame = Whisper{"bob", 0, text, false};
                say.emplace(std::get<Request>(vet_request(say_frame)));
                whisper.emplace(std::get<Request>(vet_request(whisper_frame)));
                // Overwrite the frames' bytes in place: a view into them would see it.
                auto& s = std::get<Say>(say_frame).text;
                auto& w = std::get<Whisper>(whisper_frame).text;
                std::fill(s.begin(), s.end(), '#');
                std::fill(w.begin(), w.end(), '#');
                CHECK(std::get<SayRequest>(say->get()).text.data() != s.data());
            }
            const auto& sr = std::get<SayRequest>(say->get());
            CHECK(sr.text == text);
            CHECK(sr.room == std::string_view("r"));
            const auto& wr = std::get<WhisperRequest>(whisper->get());
            CHECK(wr.text == text);
            CHECK(wr.to == std::string_view("bob"));
        }
    }

    TEST_CASE("an OwnedRequest keeps its text after being moved, short texts included") {
        for (const std::string& text : {"x"s, "hi there"s, std::string(15, 's'), std::string(16, 's'),
                                        std::string(5000, 'L')}) {
            CAPTURE(text.size());
            std::optional<OwnedRequest> first;
            first.emplace(Request{SayRequest{*RoomName::parse("r"), text}});
            OwnedRequest second(std::move(*first));
            // Reuse the moved-from object's storage for a different text of the same size:
            // a view left pointing into it would now read that text.
            first.reset();
            const std::string other(text.size(), '#');
            first.emplace(Request{SayRequest{*RoomName::parse("q"), other}});
            CHECK(std::get<SayRequest>(second.get()).text == text);
            CHECK(std::get<SayRequest>(first->get()).text == other);

            std::optional<OwnedRequest> third;
            third.emplace(std::move(second));
            CHECK(std::get<SayRequest>(third->get()).text == text);
            CHECK(std::get<SayRequest>(third->get()).room == std::string_view("r"));

            // Whispers the same way.
            std::optional<OwnedRequest> w1;
            w1.emplace(Request{WhisperRequest{*NickName::parse("bob"), text}});
            OwnedRequest w2(std::move(*w1));
            w1.reset();
            w1.emplace(Request{WhisperRequest{*NickName::parse("eve"), other}});
            CHECK(std::get<WhisperRequest>(w2.get()).text == text);
            CHECK(std::get<WhisperRequest>(w2.get()).to == std::string_view("bob"));
        }
    }

    TEST_CASE("an OwnedRequest of a request without text keeps the request") {
        OwnedRequest join(Request{JoinRequest{*RoomName::parse("r"), true, Position{1, 2}}});
        OwnedRequest moved(std::move(join));
        const auto& j = std::get<JoinRequest>(moved.get());
        CHECK(j.room == std::string_view("r"));
        CHECK(j.resume);
        CHECK(j.after == Position{1, 2});
        CHECK(request_name(moved.get()) == "JOIN");
    }
}
