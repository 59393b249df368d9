// Stateful libFuzzer target for the hub. The input is a script: several
// simulated clients connect (HELLO), send request frames, say BYE, time out,
// stall as slow consumers, and the cross-shard work is run when the script
// says so. Each client is a fake session that does what the real one does
// (server/session.hpp): it checks the HELLO nick with NickName::parse, turns request
// frames into a Request or a Refusal with vet_request, hands the hub what
// passed (directly on shard 0, posted with an OwnedRequest from shard 1), and
// leaves the hub through a posted disconnect when it closes.
//
// Checked (the counts after every hub call, the rest after every step, what
// needs all posted work run whenever none is pending, and all at the end):
//  - nothing throws and no sanitizer fires;
//  - every frame a client is given decodes (Decoder(1 << 24)), re-encodes to
//    the same bytes, has valid names and texts, and its free-text fields
//    (ERROR reason, PRESENCE detail) fit max_reason_length;
//  - every Participant call is made on the participant's own shard;
//  - session_count() == nick_count() == the fake sessions the hub accepted,
//    holder_of() maps each nick back to its session, rooms hold only live
//    sessions under their current nicks, room_count() == broker log_count();
//  - each direct answer (JOINED, own PRESENCE left, NICK, WHISPER, ROOMS,
//    MEMBERS, ERROR) is the one the hub's state at the time calls for;
//  - a JOINED is followed by its history_count history DELIVERs, contiguous,
//    ending at head_seq, within the replay budget, with missed + count
//    accounting for every message after the resume point;
//  - every member sees every DELIVER published to its room between its JOINED
//    and its own PRESENCE left exactly once, in order, seq dense (LocalBroker),
//    and nothing of a room it is not in; once all posted work has run this is
//    compared with a ledger the broker side kept (a session that closed may
//    only miss a tail);
//  - in rooms that announce everything, each member's view built from JOINED
//    and PRESENCE equals the room's nick list;
//  - when every client has gone: no session, nick, room, broker log or history byte left.
// A broken invariant aborts, which libFuzzer reports as a crash with the input saved.
//
// Script format (one byte chooses the setup, then operations until the input ends):
//   op byte: the letter (op & 0x1F, so 'S' and 's' are the same operation)
//   picks the operation, the case (bit 0x20) a variant; most take a client
//   slot byte next ('0'..'5', any byte works: slot = byte % 6).
//     C<slot><nick><token>  connect: a new connection in the slot sends HELLO (a
//                           connection still open there stays behind, half-open);
//                           'C' on shard slot%2, 'c' on the other shard.
//                           token byte % 4: 0 none, 1 the slot's last, 2 the next
//                           slot's last, 3 a string read from the script
//     J<slot><room><r>      JOIN; r % 4: 0 fresh, 1 resume after the last position
//                           the slot saw there, 2 <seq byte> resume at that seq,
//                           3 <byte> resume at UINT64_MAX - byte
//     L<slot><room>  LEAVE       S<slot><room><text>  SAY     W<slot><nick><text>  WHISPER
//     N<slot><nick>  NICK        R<slot>  LIST                M<slot><room>  WHO
//       request letters: upper case goes through encode and the session's
//       Decoder(max_frame) first; lower case hands the frame to vet_request as
//       is (so fields over 65,535 bytes, invalid UTF-8, ... reach it)
//     B<slot><text>   BYE with that reason ('B' through the decoder, 'b' as is but
//                     UTF-8 only, as a decoder would have it); the disconnect detail
//                     is "quit: " + the whole reason (the session clips it first:
//                     here the hub has to)
//     T<slot><text>   the session times out (heartbeat): disconnect timed_out with
//                     that detail if it is UTF-8 (else "heartbeat timeout"); 't'
//                     does it to a half-open connection instead
//     E<slot><code>   the session closes itself with a protocol error (code % 7)
//     Q<slot><n>      the session becomes a slow consumer after n % 16 more frames
//     P<shard><n>     run up to n % 8 + 1 posted jobs of that shard (byte % 2)
//     D               run all posted work
//   strings (<nick>, <room>, <text>): one byte s, then
//     s < 0x80          pool entry s % 8 ('0'..'7')
//     0x80..0xEF        s - 0x80 bytes from the script
//     0xF0..0xFE        a 2-byte big-endian length, then that many bytes
//     0xFF <i>          {255, 256, 257, 258, 65535, 65536, 65537, 70000}[i % 8] bytes:
//                       a pattern byte k, then k % 8 + 1 pattern bytes, repeated
//   setup byte c: max rooms/session {1,3,64}[c%3], presence limit {0,2,1000}[c/3%3],
//   max_frame c/9%2 ? 1 KiB : 64 KiB, history {0,3,100}[c/18%3], history memory
//   c/54%2 ? max_frame + 1 KiB : 64 MiB, queue limit (replay budget = half)
//   c/108%2 ? max_frame : 4 MiB.
// Seeds: test/corpus-hub. FUZZ_HUB_STATS=1 prints what each input did.
#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <string_view>
#include <tuple>
#include <unordered_map>
#include <utility>
#include <variant>
#include <vector>

#include "chat/server/broker.hpp"
#include "chat/server/hub.hpp"
#include "chat/proto/names.hpp"
#include "chat/server/participant.hpp"
#include "chat/proto/protocol.hpp"
#include "chat/proto/request.hpp"
#include "chat/server/room.hpp"

namespace {

using namespace chat;

[[noreturn]] void fail(const std::string& what) {
    std::fprintf(stderr, "fuzz_hub: invariant broken: %s\n", what.c_str());
    std::abort();
}

#define EXPECT(cond, ...)                                      \
    do {                                                       \
        if (!(cond)) fail(fmt::format(__VA_ARGS__));           \
    } while (0)

constexpr std::size_t kShards = 2;
constexpr std::size_t kSlots = 6;
constexpr std::size_t kMaxConns = 32;
constexpr std::size_t kUnlimited = std::numeric_limits<std::size_t>::max();
constexpr std::size_t kListSlack = 512;  // hub.cpp's list_budget_slack

constexpr std::array<std::string_view, 8> nick_pool = {
    "alice", "bob", "carol", "dave", "eve", "x", "nnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnn", "-bad"};
constexpr std::array<std::string_view, 8> room_pool = {
    "#lobby", "#dev", "general", "r", "#", "#xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
    "#LOBBY", "bad room"};
constexpr std::array<std::string_view, 8> text_pool = {
    "hello", "", "hi\tthere", "h\xc3\xa9llo w\xc3\xb6rld \xe2\x9c\x93", "\x01" "bell", "a", "\xff\xfe", "\xc2\x85nel"};
constexpr std::array<std::size_t, 8> big_sizes = {255, 256, 257, 258, 65535, 65536, 65537, 70000};

std::string show(std::string_view s) { return log_safe(s, 80); }

bool stats_wanted() {
    static const bool wanted = std::getenv("FUZZ_HUB_STATS") != nullptr;
    return wanted;
}

// --- the script ---------------------------------------------------------------

class Script {
public:
    Script(const std::uint8_t* data, std::size_t size) : data_(data), size_(size) {}
    bool done() const noexcept { return at_ >= size_; }
    std::uint8_t byte() noexcept { return at_ < size_ ? data_[at_++] : 0; }
    std::string bytes(std::size_t n) {
        n = std::min(n, size_ - at_);
        std::string out(reinterpret_cast<const char*>(data_ + at_), n);
        at_ += n;
        return out;
    }
    std::string str(const std::array<std::string_view, 8>& pool) {
        const std::uint8_t s = byte();
        if (s < 0x80) return std::string(pool[s % pool.size()]);
        if (s < 0xF0) return bytes(s - 0x80u);
        if (s < 0xFF) {
            const std::size_t n = (std::size_t{byte()} << 8) | byte();
            return bytes(n);
        }
        // Rare (two bytes must line up): big strings are slow to check.
        const std::size_t n = big_sizes[byte() % big_sizes.size()];
        std::string pattern = bytes(byte() % 8u + 1);
        if (pattern.empty()) pattern = "a";
        // Doubling copies: a handful of memcpy calls, not one per repetition.
        std::string out(n, '\0');
        std::size_t filled = std::min(pattern.size(), n);
        std::memcpy(out.data(), pattern.data(), filled);
        while (filled < n) {
            const std::size_t k = std::min(filled, n - filled);
            std::memcpy(out.data() + filled, out.data(), k);
            filled += k;
        }
        return out;
    }

private:
    const std::uint8_t* data_;
    std::size_t size_;
    std::size_t at_ = 0;
};

struct Setup {
    HubLimits limits;
    std::size_t history = 100;
    std::size_t history_memory = LocalBroker::default_history_memory;
    // Every join and leave is announced and no list is ever cut: a member's view
    // of a room, kept from JOINED and PRESENCE, must equal the room's list.
    bool views_exact = false;
};

Setup setup_from(std::uint8_t c) {
    Setup s;
    static constexpr std::size_t rooms[] = {1, 3, 64};
    static constexpr std::size_t presence[] = {0, 2, 1000};
    static constexpr std::size_t history[] = {0, 3, 100};
    s.limits.max_rooms_per_session = rooms[c % 3];
    s.limits.presence_limit = presence[c / 3 % 3];
    s.limits.max_frame = c / 9 % 2 ? 1024 : 64 * 1024;
    s.history = history[c / 18 % 3];
    s.history_memory = c / 54 % 2 ? s.limits.max_frame + 1024 : LocalBroker::default_history_memory;
    const std::size_t queue_limit = c / 108 % 2 ? s.limits.max_frame : 4 * 1024 * 1024;
    s.limits.replay_budget = queue_limit / 2;
    s.views_exact = (s.limits.presence_limit == 0 || s.limits.presence_limit >= kMaxConns) &&
                    s.limits.max_frame >= 64 * 1024;
    return s;
}

// --- the shards ----------------------------------------------------------------

// One FIFO queue per shard, like an io_context with one thread; run when the script says.
class Poster final : public ShardPoster {
public:
    std::size_t current_shard() const noexcept override { return here; }
    void post(std::size_t shard, std::function<void()> work) override {
        EXPECT(shard < kShards, "post to shard {}", shard);
        queues[shard].push_back(std::move(work));
        ++posts;
    }
    bool run_one(std::size_t shard) {
        if (queues[shard].empty()) return false;
        auto work = std::move(queues[shard].front());
        queues[shard].pop_front();
        const std::size_t saved = here;
        here = shard;
        work();
        here = saved;
        return true;
    }
    bool idle() const noexcept { return queues[0].empty() && queues[1].empty(); }
    void drain() {
        while (!idle())
            for (std::size_t s = 0; s < kShards; ++s) run_one(s);
    }

    std::size_t here = 0;
    std::array<std::deque<std::function<void()>>, kShards> queues;
    std::uint64_t posts = 0;
};

// --- the broker, seen from the side ---------------------------------------------

struct World;

// LocalBroker with a window on publish: each message is checked and entered in
// the ledger of every session that is a member at that moment.
class RecordingBroker final : public Broker {
public:
    RecordingBroker(World& world, std::size_t history, std::size_t memory)
        : inner(history, memory, 1000), world_(world) {}

    std::uint64_t subscribe(std::string_view room, Subscriber& subscriber) override {
        auto& proxy = proxies_[std::string(room)];
        proxy = std::make_unique<Proxy>(*this, std::string(room), subscriber);
        proxy->epoch = inner.subscribe(room, *proxy);
        return proxy->epoch;
    }
    void unsubscribe(std::string_view room) override {
        inner.unsubscribe(room);
        proxies_.erase(std::string(room));
    }
    PublishResult publish(std::string_view room, std::string_view sender, std::string_view text,
                          std::uint64_t timestamp_ms, std::uint64_t sender_id) override {
        return inner.publish(room, sender, text, timestamp_ms, sender_id);
    }
    Replay replay(std::string_view room, const ReplayRequest& request) override { return inner.replay(room, request); }

    // (epoch, messages published so far) of a room's current log.
    std::pair<std::uint64_t, std::uint64_t> head_of(std::string_view room) const {
        auto it = proxies_.find(std::string(room));
        EXPECT(it != proxies_.end(), "room '{}' has no broker log", show(room));
        return {it->second->epoch, it->second->published};
    }
    std::size_t proxy_count() const noexcept { return proxies_.size(); }

    LocalBroker inner;
    std::uint64_t publishes = 0;

private:
    struct Proxy final : Subscriber {
        Proxy(RecordingBroker& b, std::string n, Subscriber& s) : broker(b), name(std::move(n)), target(s) {}
        void on_message(const StoredMessage& message) override;
        RecordingBroker& broker;
        std::string name;
        Subscriber& target;
        std::uint64_t epoch = 0;
        std::uint64_t published = 0;
    };
    World& world_;
    std::map<std::string, std::unique_ptr<Proxy>> proxies_;
};

// --- the fake session -------------------------------------------------------------

// What a session must be sent next among the hub's direct answers.
struct Expect {
    explicit Expect(Message m) : message(std::move(m)) {}
    Message message;
    // JOINED only: what the answer depends on.
    std::uint64_t serial = 0;
    bool known_head = false;  // epoch/head filled in once the hub call returned
    std::uint64_t epoch = 0;
    std::uint64_t head = 0;
    bool quiet = false;
    bool resume = false;
    Position after;
    std::vector<std::string> members_before;
};

struct RoomView {
    std::uint64_t epoch = 0;
    std::uint64_t last_seq = 0;
    std::vector<std::string> members;
};

class Conn final : public Participant, public std::enable_shared_from_this<Conn> {
public:
    Conn(World& world, std::uint64_t id, std::size_t shard, std::size_t slot)
        : slot(slot), world_(world), id_(id), shard_(shard) {}

    std::uint64_t id() const noexcept override { return id_; }
    std::size_t shard() const noexcept override { return shard_; }
    void deliver(const SharedFrame& frame) override;
    void on_login(const std::string& nick, const std::string& resume_token) override;
    void on_renamed(const std::string& nick) override;
    void close_with_error(ErrorCode code, const std::string& reason) override;

    // The session's own end (leave_hub): it takes no more frames, and the hub
    // hears of it through a posted disconnect.
    void session_close(PresenceEvent event, std::string detail);

    const std::size_t slot;
    bool open = true;
    // The session as the hub should have it: its nick, empty when it holds none.
    std::string hub_nick;
    // The client's side: what it learnt from on_login, NICK, JOINED, PRESENCE.
    std::string client_nick;
    std::string token;
    std::map<std::string, RoomView> rooms;
    std::deque<Expect> expected;
    // History DELIVERs still due after a JOINED.
    std::uint32_t history_left = 0;
    std::string history_room;
    std::uint64_t history_epoch = 0;
    std::uint64_t history_head = 0;
    std::size_t history_bytes = 0;
    // Ledger: live DELIVER positions the broker side published to this
    // session's rooms while it was a member, and those it saw.
    std::map<std::string, std::vector<Position>> ledger;
    std::map<std::string, std::vector<Position>> seen;
    // Participant calls made by the hub, and those it should have made.
    std::vector<ErrorCode> closes;
    std::vector<ErrorCode> expected_closes;
    std::vector<std::string> logins;
    std::vector<std::string> expected_logins;
    std::vector<std::string> renames;
    std::vector<std::string> expected_renames;
    std::optional<std::size_t> slow_after;
    std::uint64_t frames = 0;

private:
    void take(const Message& m, const SharedFrame& frame);
    void answer(const Message& got);

    World& world_;
    std::uint64_t id_;
    std::size_t shard_;
};

// --- the world ---------------------------------------------------------------------

struct Stats {
    std::uint64_t ops = 0, logins = 0, refused_logins = 0, takeovers = 0, requests = 0, refusals = 0,
                  unsendable = 0, decode_closes = 0, publishes = 0, frames = 0, joined = 0, history = 0;
};

struct World {
    explicit World(const Setup& s)
        : setup(s), broker(*this, s.history, s.history_memory), hub(broker, poster, kShards, s.limits) {}

    Setup setup;
    Poster poster;
    RecordingBroker broker;
    Hub hub;
    std::vector<std::shared_ptr<Conn>> conns;
    std::unordered_map<std::uint64_t, Conn*> by_id;
    std::array<std::shared_ptr<Conn>, kSlots> slots;
    std::array<std::string, kSlots> last_token;
    std::array<std::map<std::string, Position>, kSlots> last_position;
    std::set<std::string> known_rooms;  // every room name the hub was asked to join
    std::uint64_t next_id = 1;
    std::uint64_t next_serial = 1;
    Stats stats;
    // The SAY being handled, for the broker-side check of what it publishes.
    struct SayContext {
        std::string room, sender, text;
    };
    std::optional<SayContext> saying;
    // The last frame delivered, held so its address is not reused, and what it decoded to.
    SharedFrame checked_frame;
    Message checked_message;

    Conn* conn_of(std::uint64_t id) {
        auto it = by_id.find(id);
        return it == by_id.end() ? nullptr : it->second;
    }
    std::size_t rooms_of(const Conn& c) const {
        std::size_t n = 0;
        for (const auto& name : known_rooms)
            if (const Room* r = hub.find_room(name); r != nullptr && r->contains(c.id())) ++n;
        return n;
    }

    // --- the hub, called as the session would, then checked ---

    void hub_login(Conn& c, const NickName& nick, const std::string& token) {
        EXPECT(poster.here == 0, "hub called on shard {}", poster.here);
        const auto holder = hub.holder_of(nick.view());
        Conn* old = holder ? conn_of(*holder) : nullptr;
        EXPECT(!holder || old, "nick '{}' held by unknown id {}", nick.view(), *holder);
        EXPECT(c.hub_nick.empty(), "a second login for session {}", c.id());
        const bool takeover = old != nullptr && !old->token.empty() && old->token == token;
        const bool accepted = !holder || takeover;
        if (accepted) {
            c.expected_logins.push_back(nick.str());
            if (takeover) old->expected_closes.push_back(ErrorCode::replaced);
        } else {
            c.expected_closes.push_back(ErrorCode::nick_taken);
        }
        hub.login(c.shared_from_this(), nick, token);
        if (accepted) {
            ++stats.logins;
            if (takeover) {
                ++stats.takeovers;
                old->hub_nick.clear();
            }
            c.hub_nick = nick.str();
        } else {
            ++stats.refused_logins;
        }
        check_hub();
    }

    void hub_disconnect(Conn& c, PresenceEvent event, const std::string& detail) {
        EXPECT(poster.here == 0, "hub called on shard {}", poster.here);
        hub.disconnect(c.id(), event, detail);
        c.hub_nick.clear();
        check_hub();
    }

    void hub_handle(Conn& c, const Request& request) {
        EXPECT(poster.here == 0, "hub called on shard {}", poster.here);
        ++stats.requests;
        const std::uint64_t id = c.id();
        const bool session = !c.hub_nick.empty();
        const std::string nick = c.hub_nick;
        const auto error = [&](ErrorCode code) { c.expected.push_back(Expect{make_error(code, {}, false)}); };
        std::optional<std::uint64_t> joined_serial;
        std::string joined_room;
        bool publish = false;
        std::optional<std::string> renamed_to;

        if (const auto* j = std::get_if<JoinRequest>(&request)) known_rooms.insert(j->room.str());
        if (session) {
            std::visit(
                [&](const auto& r) {
                    using R = std::decay_t<decltype(r)>;
                    if constexpr (std::is_same_v<R, JoinRequest>) {
                        const Room* room = hub.find_room(r.room.view());
                        if (room != nullptr && room->contains(id)) {
                            error(ErrorCode::invalid_room);
                        } else if (rooms_of(c) >= setup.limits.max_rooms_per_session) {
                            error(ErrorCode::too_many_rooms);
                        } else {
                            Joined want;
                            want.room = r.room.str();
                            Expect e{std::move(want)};
                            e.serial = next_serial++;
                            const std::size_t before = room != nullptr ? room->size() : 0;
                            e.quiet = setup.limits.presence_limit > 0 && before + 1 > setup.limits.presence_limit;
                            e.resume = r.resume;
                            e.after = r.after;
                            if (room != nullptr) e.members_before = room->nicks(kUnlimited, kUnlimited);
                            joined_serial = e.serial;
                            joined_room = r.room.str();
                            c.expected.push_back(std::move(e));
                        }
                    } else if constexpr (std::is_same_v<R, LeaveRequest>) {
                        const Room* room = hub.find_room(r.room.view());
                        if (room != nullptr && room->contains(id))
                            c.expected.push_back(Expect{Presence{r.room.str(), nick, PresenceEvent::left, {}}});
                        else
                            error(ErrorCode::not_in_room);
                    } else if constexpr (std::is_same_v<R, SayRequest>) {
                        const Room* room = hub.find_room(r.room.view());
                        if (room != nullptr && room->contains(id)) {
                            publish = true;
                            saying = SayContext{r.room.str(), nick, std::string(r.text)};
                        } else {
                            error(ErrorCode::not_in_room);
                        }
                    } else if constexpr (std::is_same_v<R, WhisperRequest>) {
                        const auto to = hub.holder_of(r.to.view());
                        Conn* target = to ? conn_of(*to) : nullptr;
                        if (target == nullptr) {
                            EXPECT(!to, "whisper target id {} unknown", *to);
                            error(ErrorCode::no_such_nick);
                        } else {
                            target->expected.push_back(Expect{Whisper{nick, 0, std::string(r.text), false}});
                            c.expected.push_back(Expect{Whisper{r.to.str(), 0, std::string(r.text), true}});
                        }
                    } else if constexpr (std::is_same_v<R, RenameRequest>) {
                        if (r.nick == nick) {
                            c.expected.push_back(Expect{Nick{nick, nick}});
                        } else if (hub.holder_of(r.nick.view())) {
                            error(ErrorCode::nick_taken);
                        } else {
                            c.expected.push_back(Expect{Nick{nick, r.nick.str()}});
                            c.expected_renames.push_back(r.nick.str());
                            renamed_to = r.nick.str();
                        }
                    } else if constexpr (std::is_same_v<R, ListRequest>) {
                        Rooms all;
                        for (const auto& name : known_rooms)
                            if (const Room* room = hub.find_room(name))
                                all.rooms.push_back(RoomInfo{name, static_cast<std::uint32_t>(room->size())});
                        c.expected.push_back(Expect{std::move(all)});
                    } else {
                        if (const Room* room = hub.find_room(r.room.view()))
                            c.expected.push_back(Expect{Members{r.room.str(), room->nicks(kUnlimited, kUnlimited)}});
                        else
                            error(ErrorCode::invalid_room);
                    }
                },
                request);
        }

        const std::uint64_t publishes_before = broker.publishes;
        hub.handle(id, request);
        saying.reset();
        EXPECT(broker.publishes - publishes_before == (publish ? 1u : 0u), "a SAY published {} messages, expected {}",
               broker.publishes - publishes_before, publish ? 1 : 0);
        if (joined_serial) {
            const Room* room = hub.find_room(joined_room);
            EXPECT(room != nullptr && room->contains(id), "JOIN '{}' left session {} outside", show(joined_room), id);
            const auto [epoch, head] = broker.head_of(joined_room);
            for (auto& e : c.expected)
                if (e.serial == *joined_serial) {
                    e.known_head = true;
                    e.epoch = epoch;
                    e.head = head;
                }
        }
        if (renamed_to) {
            EXPECT(hub.holder_of(*renamed_to) == id, "rename to '{}' did not take", *renamed_to);
            c.hub_nick = *renamed_to;
        }
        if (const auto* l = std::get_if<LeaveRequest>(&request)) {
            const Room* room = hub.find_room(l->room.view());
            EXPECT(room == nullptr || !room->contains(id), "LEAVE '{}' kept session {}", l->room.view(), id);
        }
        check_hub();
    }

    // --- invariants ---

    // The hub's books against the fakes', on the hub's thread between two
    // calls: the counts after every call, the rooms' members after every step.
    void check_hub(bool members = false) {
        std::size_t sessions = 0;
        for (const auto& c : conns) {
            if (c->hub_nick.empty()) continue;
            ++sessions;
            EXPECT(hub.holder_of(c->hub_nick) == c->id(), "nick '{}' does not map back to session {}", c->hub_nick,
                   c->id());
        }
        EXPECT(hub.session_count() == sessions, "session_count {} but {} sessions logged in", hub.session_count(),
               sessions);
        EXPECT(hub.nick_count() == sessions, "nick_count {} but {} sessions logged in", hub.nick_count(), sessions);
        EXPECT(hub.room_count() == broker.inner.log_count(), "{} rooms but {} broker logs", hub.room_count(),
               broker.inner.log_count());
        EXPECT(broker.proxy_count() == hub.room_count(), "broker subscribed {} rooms for {}", broker.proxy_count(),
               hub.room_count());
        if (hub.room_count() == 0)
            EXPECT(broker.inner.history_bytes() == 0 && broker.inner.history_messages() == 0,
                   "no room but {} history bytes ({} messages)", broker.inner.history_bytes(),
                   broker.inner.history_messages());
        if (!members) return;
        std::size_t live = 0;
        std::unordered_map<std::uint64_t, std::size_t> rooms_per_session;
        for (const auto& name : known_rooms) {
            const Room* room = hub.find_room(name);
            if (room == nullptr) continue;
            ++live;
            EXPECT(!room->empty(), "room '{}' kept empty", show(name));
            std::vector<std::string> nicks;
            for (const auto& c : conns) {
                if (!room->contains(c->id())) continue;
                EXPECT(!c->hub_nick.empty(), "room '{}' holds session {} which the hub dropped", show(name), c->id());
                nicks.push_back(c->hub_nick);
                ++rooms_per_session[c->id()];
            }
            EXPECT(nicks.size() == room->size(), "room '{}' has {} members, {} known", show(name), room->size(),
                   nicks.size());
            auto listed = room->nicks(kUnlimited, kUnlimited);
            std::sort(nicks.begin(), nicks.end());
            std::sort(listed.begin(), listed.end());
            EXPECT(nicks == listed, "room '{}' lists stale nicks", show(name));
        }
        for (const auto& [id, n] : rooms_per_session)
            EXPECT(n <= setup.limits.max_rooms_per_session, "session {} in {} rooms", id, n);
        EXPECT(hub.room_count() == live, "room_count {} but {} rooms known", hub.room_count(), live);
    }

    // Once all posted work has run: every session got what it should have.
    void check_quiescent() {
        for (const auto& c : conns) {
            EXPECT(c->closes == c->expected_closes, "session {}: {} close_with_error calls, {} expected", c->id(),
                   c->closes.size(), c->expected_closes.size());
            EXPECT(c->logins == c->expected_logins, "session {}: {} on_login calls, {} expected", c->id(),
                   c->logins.size(), c->expected_logins.size());
            EXPECT(c->renames == c->expected_renames, "session {}: {} on_renamed calls, {} expected", c->id(),
                   c->renames.size(), c->expected_renames.size());
            std::set<std::string> names;
            for (const auto& [room, _] : c->ledger) names.insert(room);
            for (const auto& [room, _] : c->seen) names.insert(room);
            for (const auto& room : names) {
                const auto& want = c->ledger[room];
                const auto& got = c->seen[room];
                if (c->open) {
                    EXPECT(got == want, "session {} saw {} DELIVERs in '{}', {} were published to it", c->id(),
                           got.size(), show(room), want.size());
                } else {
                    EXPECT(got.size() <= want.size() && std::equal(got.begin(), got.end(), want.begin()),
                           "closed session {} saw DELIVERs in '{}' not published to it", c->id(), show(room));
                }
            }
            if (!c->open) {
                EXPECT(c->hub_nick.empty(), "closed session {} still in the hub", c->id());
                continue;
            }
            EXPECT(!c->hub_nick.empty(), "open session {} is not in the hub", c->id());
            EXPECT(c->expected.empty(), "session {} still waits for {} answers", c->id(), c->expected.size());
            EXPECT(c->history_left == 0, "session {} still waits for {} history frames", c->id(), c->history_left);
            EXPECT(c->client_nick == c->hub_nick, "session {} thinks it is '{}', the hub says '{}'", c->id(),
                   c->client_nick, c->hub_nick);
            std::size_t in = 0;
            for (const auto& name : known_rooms) {
                const Room* room = hub.find_room(name);
                const bool member = room != nullptr && room->contains(c->id());
                auto view = c->rooms.find(name);
                EXPECT(member == (view != c->rooms.end()), "session {} {} room '{}' but thinks otherwise", c->id(),
                       member ? "is in" : "is not in", show(name));
                if (!member) continue;
                ++in;
                if (setup.views_exact)
                    EXPECT(view->second.members == room->nicks(kUnlimited, kUnlimited),
                           "session {}'s view of '{}' differs from the room's members", c->id(), show(name));
            }
            EXPECT(in == c->rooms.size(), "session {} thinks it is in {} rooms, is in {}", c->id(), c->rooms.size(),
                   in);
        }
    }

    bool anyone_open() const {
        return std::any_of(conns.begin(), conns.end(), [](const auto& c) { return c->open; });
    }

    void check_empty() {
        EXPECT(hub.session_count() == 0, "every client gone, {} sessions left", hub.session_count());
        EXPECT(hub.nick_count() == 0, "every client gone, {} nicks left", hub.nick_count());
        EXPECT(hub.room_count() == 0, "every client gone, {} rooms left", hub.room_count());
        EXPECT(broker.inner.log_count() == 0, "every client gone, {} broker logs left", broker.inner.log_count());
        EXPECT(broker.inner.history_bytes() == 0, "every client gone, {} history bytes left",
               broker.inner.history_bytes());
    }

    void after_step() {
        check_hub(true);
        if (!poster.idle()) return;
        check_quiescent();
        if (!anyone_open()) check_empty();
    }

    // --- what the sessions do ---

    void connect(std::size_t slot, std::size_t shard, const std::string& nick_text, const std::string& token) {
        if (conns.size() >= kMaxConns) return;
        auto c = std::make_shared<Conn>(*this, next_id++, shard, slot);
        conns.push_back(c);
        by_id.emplace(c->id(), c.get());
        slots[slot] = c;  // one still open there stays behind, half-open, until it times out
        poster.here = shard;
        // session.hpp on_hello: the nick is checked before the hub sees it.
        if (auto nick = NickName::parse(nick_text)) {
            if (shard == 0) {
                hub_login(*c, *nick, token);
            } else {
                poster.post(0, [this, c, nick = *nick, token] { hub_login(*c, nick, token); });
            }
        } else {
            EXPECT(!is_valid_nick(nick_text), "NickName::parse refused valid nick '{}'", show(nick_text));
            c->session_close(PresenceEvent::disconnected, "nickname must be 1-32 characters");
        }
        poster.here = 0;
    }

    // A frame as the session's decoder hands it over (through_wire), or as is.
    std::optional<Message> receive(Conn& c, const Message& frame, bool through_wire) {
        if (!through_wire) return frame;
        std::string bytes;
        try {
            bytes = encode(frame);
        } catch (const std::length_error&) {
            ++stats.unsendable;  // no client can send it
            return std::nullopt;
        }
        Decoder decoder(setup.limits.max_frame);
        decoder.feed(bytes);
        Message m;
        const auto status = decoder.next(m);
        if (status == Decoder::Status::error) {
            ++stats.decode_closes;  // protocol_violation: a fatal ERROR, then the session closes
            const auto error = make_error(to_error_code(decoder.error()), to_string(decoder.error()), true);
            (void)encode(error);
            c.session_close(PresenceEvent::disconnected, std::string(to_string(decoder.error())));
            return std::nullopt;
        }
        EXPECT(status == Decoder::Status::message && decoder.buffered() == 0, "own frame does not decode whole");
        return m;
    }

    void request(Conn& c, const Message& frame, bool through_wire) {
        if (!c.open) return;
        poster.here = c.shard();
        auto m = receive(c, frame, through_wire);
        if (m) vet_and_submit(c, *m);
        poster.here = 0;
    }

    void vet_and_submit(Conn& c, const Message& m) {
        EXPECT(is_request_frame(m), "not a request frame");
        auto vetted = vet_request(m);
        check_vetting(m, vetted);
        if (const auto* refusal = std::get_if<Refusal>(&vetted)) {
            ++stats.refusals;
            EXPECT(refusal->reason.size() <= max_reason_length, "refusal reason of {} bytes", refusal->reason.size());
            (void)encode(make_error(refusal->code, refusal->reason, false));
            return;
        }
        const Request& r = std::get<Request>(vetted);
        if (c.shard() == 0) {
            hub_handle(c, r);
        } else {
            OwnedRequest owned(r);
            auto moved = std::make_shared<OwnedRequest>(std::move(owned));
            poster.post(0, [this, c = c.shared_from_this(), moved] { hub_handle(*c, moved->get()); });
        }
    }

    // vet_request against the rules it applies, field by field.
    static void check_vetting(const Message& m, const std::variant<Request, Refusal>& vetted) {
        const Refusal* refusal = std::get_if<Refusal>(&vetted);
        const Request* request = std::get_if<Request>(&vetted);
        const auto refused_with = [&](std::optional<ErrorCode> code) {
            if (code) {
                EXPECT(refusal && refusal->code == *code, "vet_request: expected refusal {}", to_string(*code));
            } else {
                EXPECT(request, "vet_request refused a valid request: {}", refusal ? refusal->reason : "");
            }
        };
        const auto room_rule = [](const std::string& room) -> std::optional<ErrorCode> {
            if (!is_valid_room(room)) return ErrorCode::invalid_room;
            return std::nullopt;
        };
        if (const auto* j = std::get_if<Join>(&m)) {
            refused_with(room_rule(j->room));
            if (request) {
                const auto& r = std::get<JoinRequest>(*request);
                EXPECT(r.room == j->room && r.resume == j->resume && r.after == j->after, "JOIN vetted wrong");
            }
        } else if (const auto* l = std::get_if<Leave>(&m)) {
            refused_with(room_rule(l->room));
            if (request) EXPECT(std::get<LeaveRequest>(*request).room == l->room, "LEAVE vetted wrong");
        } else if (const auto* w = std::get_if<Who>(&m)) {
            refused_with(room_rule(w->room));
            if (request) EXPECT(std::get<WhoRequest>(*request).room == w->room, "WHO vetted wrong");
        } else if (const auto* s = std::get_if<Say>(&m)) {
            auto code = room_rule(s->room);
            if (!code && !is_valid_text(s->text)) code = ErrorCode::invalid_text;
            refused_with(code);
            if (request) {
                const auto& r = std::get<SayRequest>(*request);
                EXPECT(r.room == s->room && r.text == s->text, "SAY vetted wrong");
            }
        } else if (const auto* w = std::get_if<Whisper>(&m)) {
            std::optional<ErrorCode> code;
            if (!is_valid_nick(w->peer))
                code = ErrorCode::no_such_nick;
            else if (!is_valid_text(w->text))
                code = ErrorCode::invalid_text;
            refused_with(code);
            if (request) {
                const auto& r = std::get<WhisperRequest>(*request);
                EXPECT(r.to == w->peer && r.text == w->text, "WHISPER vetted wrong");
            }
        } else if (const auto* n = std::get_if<Nick>(&m)) {
            refused_with(is_valid_nick(n->new_nick) ? std::nullopt : std::optional{ErrorCode::invalid_nick});
            if (request) EXPECT(std::get<RenameRequest>(*request).nick == n->new_nick, "NICK vetted wrong");
        } else {
            refused_with(std::nullopt);
            EXPECT(std::holds_alternative<ListRequest>(*request), "LIST vetted wrong");
        }
    }

    void bye(Conn& c, const std::string& reason, bool through_wire) {
        if (!c.open) return;
        poster.here = c.shard();
        std::optional<Message> m = Message{Bye{reason}};
        if (through_wire) m = receive(c, *m, true);
        if (m && !is_valid_utf8(std::get<Bye>(*m).reason)) {
            // Only reachable as is: the session's decoder refuses such a BYE
            // (protocol_violation), it never becomes a disconnect detail.
            c.session_close(PresenceEvent::disconnected, "BYE: invalid_utf8");
            m.reset();
        }
        if (m) {
            const auto& said = std::get<Bye>(*m).reason;
            // The session clips the reason; this passes it whole, for the hub to clip.
            c.session_close(PresenceEvent::disconnected, said.empty() ? std::string("quit") : "quit: " + said);
        }
        poster.here = 0;
    }

    void finish() {
        poster.drain();
        check_hub(true);
        check_quiescent();
        for (const auto& c : conns) c->session_close(PresenceEvent::disconnected, "end of script");
        poster.drain();
        check_hub(true);
        check_quiescent();
        check_empty();
    }
};

Message check_server_frame(const std::string& bytes, const Setup& setup);

void RecordingBroker::Proxy::on_message(const StoredMessage& message) {
    World& w = broker.world_;
    EXPECT(w.saying.has_value(), "a message published to '{}' outside a SAY", show(name));
    ++broker.publishes;
    ++published;
    ++w.stats.publishes;
    // The room hands this very frame to every member: check it once, here.
    w.checked_message = check_server_frame(*message.frame, w.setup);
    w.checked_frame = message.frame;
    const auto* d = std::get_if<Deliver>(&w.checked_message);
    EXPECT(d != nullptr, "stored frame is not a DELIVER");
    EXPECT(d->room == name && w.saying->room == name && d->sender == w.saying->sender && d->text == w.saying->text &&
               !d->history && d->position == message.position,
           "stored DELIVER differs from the SAY");
    EXPECT(message.position.epoch == epoch && message.position.seq == published,
           "DELIVER at {}:{} in a log of epoch {} with {} published", message.position.epoch, message.position.seq,
           epoch, published);
    const Room* room = w.hub.find_room(name);
    EXPECT(room != nullptr, "published to room '{}' the hub does not have", show(name));
    for (const auto& c : w.conns)
        if (room->contains(c->id())) c->ledger[name].push_back(message.position);
    target.on_message(message);
}

// --- the fake session's side of the Participant calls ----------------------------

// Any frame the hub makes: it decodes, encodes back to the same bytes, and
// carries names, texts and bounded free text as the protocol says.
Message check_server_frame(const std::string& bytes, const Setup& setup) {
    Decoder decoder(1 << 24);
    decoder.feed(bytes);
    Message m;
    const auto status = decoder.next(m);
    EXPECT(status == Decoder::Status::message, "server frame does not decode: {}", to_string(decoder.error()));
    EXPECT(decoder.buffered() == 0, "server frame has {} bytes after it", decoder.buffered());
    EXPECT(encode(m) == bytes, "server frame is not what its message encodes to");
    const std::size_t payload = bytes.size() - header_size;
    const auto distinct_nicks = [](const std::vector<std::string>& nicks) {
        std::set<std::string> seen;
        for (const auto& n : nicks)
            if (!is_valid_nick(n) || !seen.insert(n).second) return false;
        return true;
    };
    std::visit(
        [&](const auto& f) {
            using F = std::decay_t<decltype(f)>;
            if constexpr (std::is_same_v<F, Deliver>) {
                EXPECT(is_valid_room(f.room) && is_valid_nick(f.sender) && is_valid_text(f.text), "bad DELIVER fields");
                EXPECT(payload - f.text.size() <= max_frame_overhead, "DELIVER wraps its text in {} bytes",
                       payload - f.text.size());
            } else if constexpr (std::is_same_v<F, Whisper>) {
                EXPECT(is_valid_nick(f.peer) && is_valid_text(f.text), "bad WHISPER fields");
                EXPECT(payload - f.text.size() <= max_frame_overhead, "WHISPER wraps its text in {} bytes",
                       payload - f.text.size());
            } else {
                EXPECT(payload <= setup.limits.max_frame + max_frame_overhead, "{} frame of {} bytes",
                       to_string(frame_type(m)), payload);
                if constexpr (std::is_same_v<F, Error>) {
                    EXPECT(f.reason.size() <= max_reason_length, "ERROR reason of {} bytes", f.reason.size());
                    EXPECT(!f.fatal, "the hub sent a fatal ERROR");
                } else if constexpr (std::is_same_v<F, Presence>) {
                    EXPECT(is_valid_room(f.room) && is_valid_nick(f.nick), "bad PRESENCE names");
                    EXPECT(f.detail.size() <= max_reason_length, "PRESENCE detail of {} bytes", f.detail.size());
                    if (f.event == PresenceEvent::renamed)
                        EXPECT(is_valid_nick(f.detail), "PRESENCE renamed to '{}'", show(f.detail));
                    if (f.event == PresenceEvent::joined || f.event == PresenceEvent::left)
                        EXPECT(f.detail.empty(), "PRESENCE {} with detail", to_string(f.event));
                } else if constexpr (std::is_same_v<F, Joined>) {
                    EXPECT(is_valid_room(f.room) && !f.members.empty() && distinct_nicks(f.members), "bad JOINED");
                } else if constexpr (std::is_same_v<F, Nick>) {
                    EXPECT(is_valid_nick(f.old_nick) && is_valid_nick(f.new_nick), "bad NICK");
                } else if constexpr (std::is_same_v<F, Rooms>) {
                    for (std::size_t i = 0; i < f.rooms.size(); ++i) {
                        EXPECT(is_valid_room(f.rooms[i].name) && f.rooms[i].members > 0, "bad ROOMS entry");
                        EXPECT(i == 0 || f.rooms[i - 1].name < f.rooms[i].name, "ROOMS not sorted");
                    }
                } else if constexpr (std::is_same_v<F, Members>) {
                    EXPECT(is_valid_room(f.room) && distinct_nicks(f.nicks), "bad MEMBERS");
                } else {
                    fail(fmt::format("the hub sent a {} frame", to_string(frame_type(m))));
                }
            }
        },
        m);
    return m;
}

void Conn::deliver(const SharedFrame& frame) {
    EXPECT(world_.poster.here == shard_, "deliver() for shard {} on shard {}", shard_, world_.poster.here);
    EXPECT(frame != nullptr, "null frame");
    // A room hands every member the same frame object: check it once.
    if (frame != world_.checked_frame) {
        world_.checked_message = check_server_frame(*frame, world_.setup);
        world_.checked_frame = frame;
    }
    const Message& m = world_.checked_message;
    ++world_.stats.frames;
    if (!open) return;  // a closing session drops room traffic
    if (slow_after) {
        if (*slow_after == 0) {
            // session.hpp has_room_for -> slow_consumer: the frame is dropped, the session leaves.
            slow_after.reset();
            session_close(PresenceEvent::disconnected, "slow consumer");
            return;
        }
        --*slow_after;
    }
    ++frames;
    take(m, frame);
}

void Conn::take(const Message& m, const SharedFrame& frame) {
    if (history_left > 0) {
        const auto* d = std::get_if<Deliver>(&m);
        EXPECT(d != nullptr && d->history, "session {}: {} history DELIVERs of '{}' due, got {}", id_, history_left,
               show(history_room), to_string(frame_type(m)));
        EXPECT(d->room == history_room && d->position.epoch == history_epoch &&
                   d->position.seq == history_head - history_left + 1,
               "session {}: history DELIVER {}:{} of '{}', expected {}:{} of '{}'", id_, d->position.epoch,
               d->position.seq, show(d->room), history_epoch, history_head - history_left + 1, show(history_room));
        history_bytes += frame->size();
        --history_left;
        if (history_left == 0)
            EXPECT(history_bytes <= world_.setup.limits.replay_budget, "replay of {} bytes over the budget of {}",
                   history_bytes, world_.setup.limits.replay_budget);
        ++world_.stats.history;
        world_.last_position[slot][d->room] = d->position;
        return;
    }
    if (const auto* d = std::get_if<Deliver>(&m)) {
        EXPECT(!d->history, "session {}: history DELIVER of '{}' outside a replay", id_, show(d->room));
        auto view = rooms.find(d->room);
        EXPECT(view != rooms.end(), "session {}: DELIVER of '{}', a room it is not in", id_, show(d->room));
        EXPECT(d->position.epoch == view->second.epoch && d->position.seq == view->second.last_seq + 1,
               "session {}: DELIVER {}:{} in '{}' after {}:{}", id_, d->position.epoch, d->position.seq,
               show(d->room), view->second.epoch, view->second.last_seq);
        view->second.last_seq = d->position.seq;
        seen[d->room].push_back(d->position);
        world_.last_position[slot][d->room] = d->position;
        return;
    }
    if (const auto* p = std::get_if<Presence>(&m)) {
        auto view = rooms.find(p->room);
        EXPECT(view != rooms.end(), "session {}: PRESENCE in '{}', a room it is not in", id_, show(p->room));
        if (p->nick == client_nick) {
            // Only the leaver's own confirmation names it.
            answer(m);
            rooms.erase(view);
            return;
        }
        if (!world_.setup.views_exact) return;
        auto& members = view->second.members;
        auto at = std::find(members.begin(), members.end(), p->nick);
        if (p->event == PresenceEvent::joined) {
            EXPECT(at == members.end(), "session {}: '{}' joined '{}' twice", id_, p->nick, show(p->room));
            members.push_back(p->nick);
        } else {
            EXPECT(at != members.end(), "session {}: PRESENCE {} of '{}' in '{}', who is not there", id_,
                   to_string(p->event), p->nick, show(p->room));
            if (p->event == PresenceEvent::renamed)
                *at = p->detail;
            else
                members.erase(at);
        }
        return;
    }
    answer(m);
    if (const auto* j = std::get_if<Joined>(&m)) {
        ++world_.stats.joined;
        EXPECT(!rooms.contains(j->room), "session {}: JOINED '{}' while in it", id_, show(j->room));
        rooms[j->room] = RoomView{j->epoch, j->head_seq, j->members};
        history_left = j->history_count;
        history_room = j->room;
        history_epoch = j->epoch;
        history_head = j->head_seq;
        history_bytes = 0;
    } else if (const auto* n = std::get_if<Nick>(&m)) {
        for (auto& [_, view] : rooms)
            std::replace(view.members.begin(), view.members.end(), n->old_nick, n->new_nick);
        client_nick = n->new_nick;
    }
}

// A direct answer of the hub: the next one this session should get.
void Conn::answer(const Message& got) {
    EXPECT(!expected.empty(), "session {}: unexpected {} frame", id_, to_string(frame_type(got)));
    Expect e = std::move(expected.front());
    expected.pop_front();
    EXPECT(got.index() == e.message.index(), "session {}: got {}, expected {}", id_, to_string(frame_type(got)),
           to_string(frame_type(e.message)));
    const std::uint32_t max_frame = world_.setup.limits.max_frame;
    if (const auto* err = std::get_if<Error>(&got)) {
        const auto& want = std::get<Error>(e.message);
        EXPECT(err->code == want.code, "session {}: ERROR {} ('{}'), expected {}", id_, to_string(err->code),
               show(err->reason), to_string(want.code));
    } else if (const auto* w = std::get_if<Whisper>(&got)) {
        const auto& want = std::get<Whisper>(e.message);
        EXPECT(w->peer == want.peer && w->text == want.text && w->echo == want.echo, "session {}: wrong WHISPER",
               id_);
    } else if (const auto* r = std::get_if<Rooms>(&got)) {
        const auto& want = std::get<Rooms>(e.message).rooms;
        EXPECT(r->rooms.size() <= want.size() && std::equal(r->rooms.begin(), r->rooms.end(), want.begin()),
               "session {}: ROOMS is not the hub's room list", id_);
        if (r->rooms.size() < want.size()) {
            std::size_t used = 0;
            for (std::size_t i = 0; i <= r->rooms.size(); ++i) used += 2 + want[i].name.size() + 4;
            EXPECT(used > max_frame - kListSlack || r->rooms.size() == 0xFFFF, "session {}: ROOMS cut short", id_);
        }
    } else if (const auto* mem = std::get_if<Members>(&got)) {
        const auto& want = std::get<Members>(e.message);
        EXPECT(mem->room == want.room && mem->nicks.size() <= want.nicks.size() &&
                   std::equal(mem->nicks.begin(), mem->nicks.end(), want.nicks.begin()),
               "session {}: MEMBERS is not the room's list", id_);
        if (mem->nicks.size() < want.nicks.size()) {
            std::size_t used = 0;
            for (std::size_t i = 0; i <= mem->nicks.size(); ++i) used += 2 + want.nicks[i].size();
            EXPECT(used > max_frame - kListSlack, "session {}: MEMBERS cut short", id_);
        }
    } else if (const auto* j = std::get_if<Joined>(&got)) {
        const auto& want = std::get<Joined>(e.message);
        EXPECT(j->room == want.room, "session {}: JOINED '{}', expected '{}'", id_, show(j->room), show(want.room));
        if (!e.known_head) {
            // Delivered within the hub's join call: the log is the one it opened or found.
            std::tie(e.epoch, e.head) = world_.broker.head_of(j->room);
        }
        EXPECT(j->epoch == e.epoch && j->head_seq == e.head, "session {}: JOINED at {}:{}, the log is at {}:{}", id_,
               j->epoch, j->head_seq, e.epoch, e.head);
        EXPECT(j->quiet == e.quiet, "session {}: JOINED quiet={}, expected {}", id_, j->quiet, e.quiet);
        EXPECT(j->members.back() == client_nick, "session {}: JOINED lists '{}' last, not '{}'", id_,
               j->members.back(), client_nick);
        const std::size_t others = j->members.size() - 1;
        if (e.quiet) {
            EXPECT(others == 0, "session {}: quiet JOINED lists {} others", id_, others);
        } else {
            EXPECT(others <= e.members_before.size() &&
                       std::equal(j->members.begin(), j->members.end() - 1, e.members_before.begin()),
                   "session {}: JOINED members are not the room's", id_);
            if (others < e.members_before.size()) {
                std::size_t used = 0;
                for (std::size_t i = 0; i <= others; ++i) used += 2 + e.members_before[i].size();
                EXPECT(others == 0xFFFF - 1 || used > max_frame - kListSlack - (2 + client_nick.size()),
                       "session {}: JOINED members cut short", id_);
            }
        }
        const bool same_epoch = e.resume && e.after.epoch == j->epoch;
        EXPECT(j->epoch_changed == (e.resume && !same_epoch), "session {}: JOINED epoch_changed={}", id_,
               j->epoch_changed);
        EXPECT(j->history_count <= world_.setup.history && j->history_count <= j->head_seq,
               "session {}: JOINED with {} history frames", id_, j->history_count);
        if (same_epoch) {
            const std::uint64_t after = std::min(e.after.seq, j->head_seq);
            EXPECT(j->missed + j->history_count == j->head_seq - after,
                   "session {}: resume after {} at head {}: missed {} + history {}", id_, e.after.seq, j->head_seq,
                   j->missed, j->history_count);
        } else {
            EXPECT(j->missed + j->history_count <= j->head_seq, "session {}: missed {} + history {} over head {}",
                   id_, j->missed, j->history_count, j->head_seq);
        }
    } else {
        EXPECT(got == e.message, "session {}: got another {} than expected", id_, to_string(frame_type(got)));
    }
}

void Conn::on_login(const std::string& nick, const std::string& resume_token) {
    EXPECT(world_.poster.here == shard_, "on_login() for shard {} on shard {}", shard_, world_.poster.here);
    logins.push_back(nick);
    EXPECT(resume_token.size() == 48 &&
               std::all_of(resume_token.begin(), resume_token.end(),
                           [](char ch) { return (ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'f'); }),
           "resume token '{}' is not 48 hex digits", show(resume_token));
    if (!open) return;  // a closing session sends no WELCOME
    client_nick = nick;
    token = resume_token;
    world_.last_token[slot] = resume_token;
}

void Conn::on_renamed(const std::string& nick) {
    EXPECT(world_.poster.here == shard_, "on_renamed() for shard {} on shard {}", shard_, world_.poster.here);
    renames.push_back(nick);
    // The NICK frame went first on the same path.
    if (open) EXPECT(client_nick == nick, "on_renamed('{}') before its NICK frame (client has '{}')", nick, client_nick);
}

void Conn::close_with_error(ErrorCode code, const std::string& reason) {
    EXPECT(world_.poster.here == shard_, "close_with_error() for shard {} on shard {}", shard_, world_.poster.here);
    closes.push_back(code);
    if (!open) return;
    (void)encode(make_error(code, reason, true));  // what the session sends
    session_close(code == ErrorCode::heartbeat_timeout ? PresenceEvent::timed_out : PresenceEvent::disconnected,
                  reason);
}

void Conn::session_close(PresenceEvent event, std::string detail) {
    if (!open) return;
    open = false;
    world_.poster.post(0, [&w = world_, self = shared_from_this(), event, detail = std::move(detail)] {
        w.hub_disconnect(*self, event, detail);
    });
}

// --- one input ------------------------------------------------------------------

Position resume_point(World& w, std::size_t slot, const std::string& room, std::uint8_t mode, Script& s) {
    const auto it = w.last_position[slot].find(room);
    const Position last = it == w.last_position[slot].end() ? Position{} : it->second;
    switch (mode) {
        case 1: return last;
        case 2: return Position{last.epoch, s.byte()};
        default: return Position{last.epoch, std::numeric_limits<std::uint64_t>::max() - s.byte()};
    }
}

void step(World& w, Script& s) {
    const std::uint8_t op = s.byte();
    const bool upper = (op & 0x20) == 0;
    const char letter = static_cast<char>('@' + (op & 0x1F));
    ++w.stats.ops;
    const auto conn_at = [&](std::size_t slot) -> Conn* {
        Conn* c = w.slots[slot].get();
        return c != nullptr && c->open ? c : nullptr;
    };
    switch (letter) {
        case 'C': {
            const std::size_t slot = s.byte() % kSlots;
            const std::string nick = s.str(nick_pool);
            std::string token;
            switch (s.byte() % 4) {
                case 0: break;
                case 1: token = w.last_token[slot]; break;
                case 2: token = w.last_token[(slot + 1) % kSlots]; break;
                default: token = s.str(text_pool); break;
            }
            w.connect(slot, upper ? slot % kShards : 1 - slot % kShards, nick, token);
            break;
        }
        case 'J': {
            const std::size_t slot = s.byte() % kSlots;
            Join join;
            join.room = s.str(room_pool);
            const std::uint8_t mode = s.byte() % 4;
            if (mode != 0) {
                join.resume = true;
                join.after = resume_point(w, slot, join.room, mode, s);
            }
            if (Conn* c = conn_at(slot)) w.request(*c, join, upper);
            break;
        }
        case 'L': {
            const std::size_t slot = s.byte() % kSlots;
            Leave leave{s.str(room_pool)};
            if (Conn* c = conn_at(slot)) w.request(*c, leave, upper);
            break;
        }
        case 'S': {
            const std::size_t slot = s.byte() % kSlots;
            Say say;
            say.room = s.str(room_pool);
            say.text = s.str(text_pool);
            if (Conn* c = conn_at(slot)) w.request(*c, say, upper);
            break;
        }
        case 'W': {
            const std::size_t slot = s.byte() % kSlots;
            Whisper whisper;
            whisper.peer = s.str(nick_pool);
            whisper.text = s.str(text_pool);
            if (Conn* c = conn_at(slot)) w.request(*c, whisper, upper);
            break;
        }
        case 'N': {
            const std::size_t slot = s.byte() % kSlots;
            Nick nick{{}, s.str(nick_pool)};
            if (Conn* c = conn_at(slot)) w.request(*c, nick, upper);
            break;
        }
        case 'R': {
            const std::size_t slot = s.byte() % kSlots;
            if (Conn* c = conn_at(slot)) w.request(*c, List{}, upper);
            break;
        }
        case 'M': {
            const std::size_t slot = s.byte() % kSlots;
            Who who{s.str(room_pool)};
            if (Conn* c = conn_at(slot)) w.request(*c, who, upper);
            break;
        }
        case 'B': {
            const std::size_t slot = s.byte() % kSlots;
            const std::string reason = s.str(text_pool);
            if (Conn* c = conn_at(slot)) w.bye(*c, reason, upper);
            break;
        }
        case 'T': {
            const std::size_t slot = s.byte() % kSlots;
            const std::string detail = s.str(text_pool);
            Conn* c = nullptr;
            if (upper) {
                c = conn_at(slot);
            } else {
                // A half-open connection: open, but no longer any slot's current one.
                std::vector<Conn*> behind;
                for (const auto& conn : w.conns)
                    if (conn->open && w.slots[conn->slot] != conn) behind.push_back(conn.get());
                if (!behind.empty()) c = behind[slot % behind.size()];
            }
            // The session's details are its own words, always UTF-8 ("heartbeat
            // timeout"); any other UTF-8 here tests the hub's clipping.
            if (c != nullptr)
                c->session_close(PresenceEvent::timed_out, is_valid_utf8(detail) ? detail : "heartbeat timeout");
            break;
        }
        case 'E': {
            static constexpr ErrorCode codes[] = {ErrorCode::malformed_frame, ErrorCode::rate_limited,
                                                  ErrorCode::heartbeat_timeout, ErrorCode::slow_consumer,
                                                  ErrorCode::duplicate_hello,   ErrorCode::shutting_down,
                                                  ErrorCode::internal};
            const std::size_t slot = s.byte() % kSlots;
            const ErrorCode code = codes[s.byte() % 7];
            if (Conn* c = conn_at(slot)) {
                w.poster.here = c->shard();
                (void)encode(make_error(code, "closed by the session", true));
                c->session_close(code == ErrorCode::heartbeat_timeout ? PresenceEvent::timed_out
                                                                      : PresenceEvent::disconnected,
                                 std::string("session: ") + std::string(to_string(code)));
                w.poster.here = 0;
            }
            break;
        }
        case 'Q': {
            const std::size_t slot = s.byte() % kSlots;
            const std::size_t n = s.byte() % 16;
            if (Conn* c = conn_at(slot)) c->slow_after = n;
            break;
        }
        case 'P': {
            const std::size_t shard = s.byte() % kShards;
            const std::size_t n = s.byte() % 8 + 1;
            for (std::size_t i = 0; i < n && w.poster.run_one(shard); ++i) {
            }
            break;
        }
        case 'D': w.poster.drain(); break;
        default: break;
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    Script script(data, size);
    World world(setup_from(script.byte()));
    while (!script.done()) {
        step(world, script);
        world.after_step();
    }
    world.finish();
    if (stats_wanted()) {
        const Stats& s = world.stats;
        std::fprintf(stderr,
                     "fuzz_hub: %zu bytes: %llu ops, %zu connections, %llu logins (%llu refused, %llu taken over), "
                     "%llu requests to the hub, %llu refused by vet_request, %llu unsendable, %llu closed by the "
                     "decoder, %llu published, %llu frames delivered (%llu JOINED, %llu history), %llu posts\n",
                     size, (unsigned long long)s.ops, world.conns.size(), (unsigned long long)s.logins,
                     (unsigned long long)s.refused_logins, (unsigned long long)s.takeovers,
                     (unsigned long long)s.requests, (unsigned long long)s.refusals,
                     (unsigned long long)s.unsendable, (unsigned long long)s.decode_closes,
                     (unsigned long long)s.publishes, (unsigned long long)s.frames, (unsigned long long)s.joined,
                     (unsigned long long)s.history, (unsigned long long)world.poster.posts);
    }
    return 0;
}
