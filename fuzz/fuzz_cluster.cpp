// libFuzzer target for what a cluster node reads from NATS, and for one room's
// log. Every input is used three ways:
//  - as bytes from NATS: decode_peer_event, decode_cluster_body and
//    room_from_token must not crash whatever they get; what decodes re-encodes
//    to a form that decodes again to the same encoding (the wire forms are
//    canonical), and a token that decodes is exactly the token of its room;
//  - as a script against a ClusterRoomLog (offers in any order, with any
//    links, fills, skipped gaps, resets, replays): every message is delivered
//    at most once and in increasing sequence between resets, the log holds at
//    most its limit, and every replay frame is a DELIVER with the history flag,
//    after the resume point, oldest first, ending at the head.
// Any disagreement aborts, which libFuzzer reports with the input saved.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "chat/proto/protocol.hpp"
#include "chat/server/cluster_codec.hpp"
#include "chat/server/cluster_room_log.hpp"
#include "chat/server/directory.hpp"

#include "fuzz_expect.hpp"

namespace {

using fuzz::expect;
using fuzz::fail;

void check_decoders(std::string_view bytes) {
    if (auto event = chat::decode_peer_event(bytes)) {
        const std::string once = chat::encode_peer_event(*event);
        auto again = chat::decode_peer_event(once);
        expect(again.has_value(), "a re-encoded peer event does not decode");
        expect(chat::encode_peer_event(*again) == once, "a peer event's encoding is not stable");
    }
    if (auto body = chat::decode_cluster_body(bytes)) {
        const std::string once = chat::encode_cluster_body(body->sender, body->timestamp_ms, body->text);
        expect(once == bytes, "a stored body is not canonical");
    }
    if (auto room = chat::room_from_token(bytes)) {
        expect(chat::room_token(*room) == bytes, "a room token does not round-trip");
    }
}

// Reads the script: one byte at a time, zero past the end.
struct Script {
    const std::uint8_t* data;
    std::size_t size;
    std::size_t at = 0;
    bool done() const { return at >= size; }
    std::uint8_t next() { return at < size ? data[at++] : 0; }
};

void check_room_log(const std::uint8_t* data, std::size_t size) {
    Script script{data, size};
    constexpr std::uint64_t epoch = 9;
    const std::size_t limit = 1 + script.next() % 8;
    chat::ClusterRoomLog log("r", limit);
    std::uint64_t last_delivered = 0;
    std::set<std::uint64_t> delivered;
    bool notice_waiting = false;
    auto deliver = [&](const chat::StoredMessage& m) {
        expect(m.position.epoch == epoch, "delivered in another epoch");
        expect(m.position.seq > last_delivered, "delivered out of order or twice");
        expect(delivered.insert(m.position.seq).second, "delivered twice");
        last_delivered = m.position.seq;
        notice_waiting = false;
    };
    // A messages_missed notice always comes right before the message that follows the loss.
    auto missed = [&] {
        expect(!notice_waiting, "two notices with no message between");
        notice_waiting = true;
    };
    auto entry = [&](std::uint64_t seq, std::uint64_t last) {
        return chat::ClusterRoomLog::Entry{seq, last, chat::ClusterBody{"alice", 1, "m" + std::to_string(seq)}};
    };
    // A sequence near the head (duplicates of delivered ones too), and a link
    // before it (or unknown).
    auto pick = [&](std::uint64_t& seq, std::uint64_t& last) {
        seq = (log.head() > 3 ? log.head() - 3 : 0) + 1 + script.next() % 14;
        const std::uint8_t l = script.next();
        last = l == 0xFF ? chat::ClusterRoomLog::unknown_link : (seq > 1 ? l % seq : 0);
    };

    while (!script.done()) {
        switch (script.next() % 7) {
            case 0:
            case 1: {  // a live message, or one fetched for a gap
                std::uint64_t seq = 0, last = 0;
                pick(seq, last);
                log.offer(entry(seq, last));
                break;
            }
            case 2: {
                const auto head_before = log.head();
                auto gap = log.advance(epoch, deliver, missed);
                expect(!notice_waiting, "a notice with no message after it");
                expect(log.head() >= head_before, "the head went back");
                expect(log.head() == 0 || log.head() == last_delivered, "the head is not the last delivered");
                if (gap) expect(gap->upto > gap->after, "a gap that ends before it starts");
                break;
            }
            case 3:
                log.skip_gap();
                break;
            case 4: {  // the room's first member here: a load (only onto an empty log)
                if (log.head() != 0 || log.waiting() != 0) break;
                std::vector<chat::ClusterRoomLog::Entry> entries;
                std::uint64_t seq = script.next() % 4;
                const std::size_t n = script.next() % 6;
                for (std::size_t i = 0; i < n; ++i) {
                    const std::uint64_t prev = seq;
                    seq += 1 + script.next() % 3;
                    entries.push_back(entry(seq, prev));
                }
                log.load(std::move(entries), script.next() % 2 == 1);
                break;
            }
            case 5: {
                chat::ReplayRequest request;
                request.resume = script.next() % 2 == 1;
                request.after = chat::Position{script.next() % 4 == 0 ? epoch + 1 : epoch, std::uint64_t{script.next()} % 24};
                if (script.next() % 4 == 0) request.byte_budget = script.next() * 4u;
                auto replay = log.replay(epoch, request);
                expect(replay.head_seq == log.head(), "replay head is not the log's");
                expect(replay.frames.size() <= log.held(), "replayed more than held");
                const std::uint64_t after =
                    request.resume && !replay.epoch_changed ? std::min(request.after.seq, log.head()) : 0;
                std::uint64_t previous = after;
                for (const auto& frame : replay.frames) {
                    chat::Decoder decoder;
                    decoder.feed(std::string_view(*frame));
                    chat::Message message;
                    expect(decoder.next(message) == chat::Decoder::Status::message, "a replay frame does not decode");
                    const auto* d = std::get_if<chat::Deliver>(&message);
                    expect(d != nullptr, "a replay frame is not a DELIVER");
                    expect(d->history, "a replay frame lacks the history flag");
                    expect(d->position.seq > previous, "replay out of order or before the resume point");
                    previous = d->position.seq;
                }
                if (!replay.frames.empty()) expect(previous == log.head(), "a replay that does not end at the head");
                break;
            }
            case 6:
                if (script.next() % 8 == 0) {  // the stream was recreated
                    log.reset();
                    last_delivered = 0;
                    delivered.clear();
                }
                break;
        }
        expect(log.held() <= limit, "the log holds more than its limit");
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    check_decoders(std::string_view(reinterpret_cast<const char*>(data), size));
    check_room_log(data, size);
    return 0;
}
