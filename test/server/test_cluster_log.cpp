// The cluster's sans-io parts without NATS: room subject tokens, the stored
// message body, and one room's log (order by links, gaps, replay).
#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "chat/server/cluster_codec.hpp"
#include "chat/server/cluster_room_log.hpp"

using namespace chat;

namespace {

// A message of the room `seq`, linked to the one before it, `last`.
ClusterRoomLog::Entry entry(std::uint64_t seq, std::uint64_t last) {
    return ClusterRoomLog::Entry{seq, last, ClusterBody{"alice", 1, "m" + std::to_string(seq)}};
}

}  // namespace

TEST_CASE("room names become subject tokens and back; bodies decode only when every field is valid") {
    CHECK(room_token("lobby") == "6c6f626279");
    CHECK(room_from_token("6c6f626279") == "lobby");
    CHECK_FALSE(room_from_token("6c6f62627"));   // odd
    CHECK_FALSE(room_from_token("zz"));          // not hex
    CHECK_FALSE(room_from_token("6c6f62627A"));  // upper case is not what we make
    CHECK_FALSE(room_from_token(""));
    const auto body = encode_cluster_body("alice", 0x0102030405060708ULL, "hi there");
    auto decoded = decode_cluster_body(body);
    REQUIRE(decoded);
    CHECK(decoded->sender == "alice");
    CHECK(decoded->timestamp_ms == 0x0102030405060708ULL);
    CHECK(decoded->text == "hi there");
    CHECK_FALSE(decode_cluster_body(body.substr(0, 6)));                           // truncated
    CHECK_FALSE(decode_cluster_body(encode_cluster_body("bad nick!", 1, "x")));    // nick rules
    CHECK_FALSE(decode_cluster_body(encode_cluster_body("alice", 1, "")));         // empty text
    CHECK_FALSE(decode_cluster_body(encode_cluster_body("alice", 1, "a\x01z")));   // control character
    CHECK_FALSE(decode_cluster_body(encode_cluster_body("alice", 1, "\xC3\x28")));  // not UTF-8
}

TEST_CASE("a room log delivers in the stream's order, waits for gaps and knows what it cannot count") {
    ClusterRoomLog log("r", 3);
    std::vector<std::uint64_t> seen;
    auto deliver = [&](const StoredMessage& m) { seen.push_back(m.position.seq); };
    log.load({entry(3, 0), entry(7, 3)}, false);
    CHECK_FALSE(log.advance(9, deliver));
    CHECK(seen == std::vector<std::uint64_t>{3, 7});
    CHECK(log.head() == 7);

    // 12 links to 10, which has not come: a gap from 7 to 10.
    log.offer(entry(12, 10));
    auto gap = log.advance(9, deliver);
    REQUIRE(gap);
    CHECK(gap->after == 7);
    CHECK(gap->upto == 10);
    CHECK(seen.size() == 2);
    log.offer(entry(10, 7));  // the fill
    log.offer(entry(7, 3));   // a duplicate: ignored
    CHECK_FALSE(log.advance(9, deliver));
    CHECK(seen == std::vector<std::uint64_t>{3, 7, 10, 12});
    CHECK(log.held() == 3);  // the cap: 3 went

    // Resume from 10: complete. From 3 (gone, but 7 links to it): complete.
    // From 2: 3 went and was not counted: unknown.
    auto r = log.replay(9, ReplayRequest{true, Position{9, 10}});
    CHECK(r.missed == 0);
    CHECK(r.frames.size() == 1);
    r = log.replay(9, ReplayRequest{true, Position{9, 7}});  // 7 is the oldest held's link
    CHECK(r.missed == 0);
    CHECK(r.frames.size() == 2);
    r = log.replay(9, ReplayRequest{true, Position{9, 3}});
    CHECK(r.missed == 0);
    CHECK(r.frames.size() == 3);
    r = log.replay(9, ReplayRequest{true, Position{9, 2}});
    CHECK(r.missed == missed_unknown);
    CHECK(r.frames.size() == 3);
    r = log.replay(10, ReplayRequest{true, Position{9, 3}});
    CHECK(r.epoch_changed);
    CHECK(r.missed == 0);

    // A full history loaded from the stream: what came before it is uncounted.
    ClusterRoomLog full("r", 2);
    full.load({entry(20, 0), entry(25, 20)}, true);
    full.advance(9, nullptr);
    CHECK(full.replay(9, ReplayRequest{true, Position{9, 5}}).missed == missed_unknown);
    CHECK(full.replay(9, ReplayRequest{true, Position{9, 20}}).missed == 0);
    // Not full: nothing was dropped, so an old resume point missed nothing.
    ClusterRoomLog partial("r", 5);
    partial.load({entry(20, 0)}, false);
    partial.advance(9, nullptr);
    CHECK(partial.replay(9, ReplayRequest{true, Position{9, 5}}).missed == 0);
}

TEST_CASE("a gap the stream can no longer fill is skipped: later messages go on, a resume before it counts as unknown") {
    ClusterRoomLog log("r", 10);
    std::vector<std::uint64_t> seen;
    auto deliver = [&](const StoredMessage& m) { seen.push_back(m.position.seq); };
    log.load({entry(1, 0)}, false);
    log.advance(9, deliver);
    // 5 links to 4, and 4 is gone from the stream (trimmed) with its live copy lost.
    log.offer(entry(5, 4));
    log.offer(entry(6, 5));
    auto gap = log.advance(9, deliver);
    REQUIRE(gap);
    CHECK(gap->upto == 4);
    CHECK(seen == std::vector<std::uint64_t>{1});
    log.skip_gap();
    CHECK_FALSE(log.advance(9, deliver));
    CHECK(seen == std::vector<std::uint64_t>{1, 5, 6});
    CHECK(log.waiting() == 0);
    // A member who had 1 missed 4, which nobody can count any more.
    auto r = log.replay(9, ReplayRequest{true, Position{9, 1}});
    CHECK(r.missed == missed_unknown);
    CHECK(r.frames.size() == 2);
    // Nothing is delivered twice after the skip.
    log.offer(entry(5, 4));
    CHECK_FALSE(log.advance(9, deliver));
    CHECK(seen.size() == 3);
}

TEST_CASE("the members are told before the first message after ones this node never got, and only then") {
    ClusterRoomLog log("r", 10);
    std::vector<std::string> events;
    auto deliver = [&](const StoredMessage& m) { events.push_back(std::to_string(m.position.seq)); };
    auto missed = [&] { events.push_back("missed"); };
    // A full history's oldest message links to an unknown past, but nobody
    // here was in the room for it: no notice.
    log.load({entry(3, 0), entry(4, 3)}, true);
    CHECK_FALSE(log.advance(9, deliver, missed));
    CHECK(events == std::vector<std::string>{"3", "4"});
    // A gap that never fills: skipped, and the members hear of it before 7.
    log.offer(entry(7, 6));
    REQUIRE(log.advance(9, deliver, missed));
    log.skip_gap();
    CHECK_FALSE(log.advance(9, deliver, missed));
    CHECK(events == std::vector<std::string>{"3", "4", "missed", "7"});
    // A fill from the head that found the head dropped: its first message's
    // link is unknown; a live copy of it with its real link wins.
    log.offer(entry(12, ClusterRoomLog::unknown_link));
    log.offer(entry(12, 7));
    log.offer(entry(13, 12));
    CHECK_FALSE(log.advance(9, deliver, missed));
    CHECK(events == std::vector<std::string>{"3", "4", "missed", "7", "12", "13"});
    log.offer(entry(20, ClusterRoomLog::unknown_link));
    CHECK_FALSE(log.advance(9, deliver, missed));
    CHECK(events == std::vector<std::string>{"3", "4", "missed", "7", "12", "13", "missed", "20"});
    // A resume from before it cannot count what it missed.
    CHECK(log.replay(9, ReplayRequest{true, Position{9, 13}}).missed == missed_unknown);
    CHECK(log.replay(9, ReplayRequest{true, Position{9, 20}}).missed == 0);
}

TEST_CASE("the wait for a gap's live copy is per gap: a gap that closed does not shorten the next one's") {
    GapWait wait(3000);
    CHECK_FALSE(wait.waiting());
    CHECK(wait.short_fill(46, 1000) == GapWait::Verdict::wait);
    CHECK(wait.waiting());
    CHECK(wait.short_fill(46, 2500) == GapWait::Verdict::wait);
    // Gap 46 closed by its live copy; no closed() was called because the fill
    // for a later gap came back first. The later gap starts its own wait:
    CHECK(wait.short_fill(2876, 3900) == GapWait::Verdict::wait);   // 2.9 s after gap 46's start
    CHECK(wait.short_fill(2876, 6800) == GapWait::Verdict::wait);   // 2.9 s into its own
    CHECK(wait.short_fill(2876, 6900) == GapWait::Verdict::skip);   // 3.0 s: given up
    CHECK_FALSE(wait.waiting());
    // After closed(), a short fill for the same gap starts afresh too.
    CHECK(wait.short_fill(9000, 10'000) == GapWait::Verdict::wait);
    wait.closed();
    CHECK_FALSE(wait.waiting());
    CHECK(wait.short_fill(9000, 12'500) == GapWait::Verdict::wait);
    CHECK(wait.short_fill(9000, 15'499) == GapWait::Verdict::wait);
    CHECK(wait.short_fill(9000, 15'500) == GapWait::Verdict::skip);
}
