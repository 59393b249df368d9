// The one owner of rooms and nicknames. Every call runs on the hub shard (shard 0).
//
// The hub takes only checked input (RoomName, NickName, Request: see
// request.hpp), and every frame it builds from a client's words goes through
// the clipping builders of names.hpp, so no request can make it throw.
#pragma once

#include <algorithm>
#include <array>
#include <chrono>
#include <deque>
#include <set>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "chat/server/broker.hpp"
#include "chat/server/directory.hpp"
#include "chat/proto/names.hpp"
#include "chat/server/participant.hpp"
#include "chat/proto/protocol.hpp"
#include "chat/proto/request.hpp"
#include "chat/server/room.hpp"

namespace chat {

struct HubLimits {
    std::size_t max_rooms_per_session = 64;
    // Lists (JOINED members, MEMBERS, ROOMS) are cut to keep a payload within this.
    std::uint32_t max_frame = default_max_frame;
    // A JOIN's replay is cut (oldest first) to fit these bytes, so that a joiner
    // is never a slow consumer by the history alone; what was cut counts as missed.
    std::size_t replay_budget = 2 * 1024 * 1024;
    // Rooms with more members than this are quiet (IRC's auditorium mode): joins,
    // leaves, renames and disconnects are not announced, and JOINED lists only
    // the joiner. 0: every room announces everything.
    std::size_t presence_limit = 250;
    // With a directory (a cluster): a node not heard from for this long is
    // dead; its members time out in every room here.
    std::chrono::milliseconds peer_dead_after{3000};
};

// Where resume tokens come from: 192 bits from OpenSSL's RAND_bytes (the
// kernel's getrandom() without OpenSSL), as 48 hex digits. Empty, meaning
// "no resumption offered", only if neither source works.
std::string make_resume_token() noexcept;

class Hub final : private Broker::Listener, private Directory::Listener {
public:
    Hub(Broker& broker, ShardPoster& poster, std::size_t shard_count, HubLimits limits);
    ~Hub() override;
    // Makes this hub one node of a cluster: nicks are claimed through
    // `directory`, and the other nodes' members are part of every room.
    void set_directory(Directory* directory);
    Hub(const Hub&) = delete;
    Hub& operator=(const Hub&) = delete;

    // HELLO, after the session checked the nick. Answers through on_login()
    // or close_with_error().
    void login(const std::shared_ptr<Participant>& participant, const NickName& nick,
               std::string_view resume_token);
    // Any checked request of a logged-in session; unknown ids are ignored (the
    // session may have gone while its request was on the way).
    void handle(std::uint64_t id, const Request& request);
    // The session is gone: its rooms see `event`, its nick is free. Idempotent.
    void disconnect(std::uint64_t id, PresenceEvent event, std::string_view detail);

    // --- for tests, the fuzz target and metrics ---
    std::size_t session_count() const noexcept { return sessions_.size(); }
    std::size_t nick_count() const noexcept { return nicks_.size(); }
    std::size_t room_count() const noexcept { return rooms_.size(); }
    // Room memberships summed over the rooms (a scrape walks the rooms once).
    std::size_t member_count() const noexcept;
    // What the hub counted since the start (plain integers: the hub's shard only).
    struct Stats {
        std::uint64_t published = 0;      // SAYs and WHISPERs accepted
        std::uint64_t resumes_full = 0;   // JOIN with resume: every missed message replayed
        std::uint64_t resumes_gap = 0;    // ...some were gone (or over the replay budget)
        std::uint64_t resumes_epoch = 0;  // ...the room's epoch changed
        std::uint64_t unavailable = 0;    // SAYs the broker could not take or store
    };
    const Stats& stats() const noexcept { return stats_; }
    const Room* find_room(std::string_view name) const;
    // The session holding `nick`, if any.
    std::optional<std::uint64_t> holder_of(std::string_view nick) const;
    const HubLimits& limits() const noexcept { return limits_; }
    const ClusterView& cluster_view() const noexcept { return view_; }

private:
    // A resume token kept inline: a 10,000-member room holds 10,000 of them.
    class TokenSlot {
    public:
        void assign(std::string_view token) noexcept {
            size_ = static_cast<std::uint8_t>(std::min(token.size(), bytes_.size()));
            token.copy(bytes_.data(), size_);
        }
        std::string_view view() const noexcept { return {bytes_.data(), size_}; }

    private:
        std::array<char, 48> bytes_{};
        std::uint8_t size_ = 0;
    };
    struct SessionRecord {
        std::shared_ptr<Participant> participant;
        NickName nick;
        TokenSlot resume_token;
        // Join order. The hub owns the rooms; a room is dropped only when its
        // last member leaves, so no record points at a room that is gone.
        std::vector<Room*> rooms;
        // A JOIN waits while its room's log is being opened (a cluster broker
        // loads it), and so does every later request of the session, so that
        // the session's requests are still answered in the order it sent them.
        std::size_t waiting = 0;
        std::deque<Request> held;
    };
    // A nick claim on its way through the directory: a login, or a rename.
    struct PendingClaim {
        std::shared_ptr<Participant> participant;
        NickName nick;
        std::string token;  // login: the new session's resume token
        bool rename = false;
    };
    // A room whose log the broker is still opening: the JOINs waiting for it.
    struct OpeningRoom {
        std::vector<std::pair<std::uint64_t, JoinRequest>> joins;
    };
    struct StringHash {
        using is_transparent = void;
        std::size_t operator()(std::string_view s) const noexcept { return std::hash<std::string_view>{}(s); }
    };

    void join(SessionRecord& record, const JoinRequest& join);
    void room_ready(Room& room);
    void release_held(std::uint64_t id);
    void drop_if_unused(Room& room);
    void on_publish_failed(std::uint64_t sender_id, std::string_view room, std::string_view reason) override;
    void on_nick_claimed(std::uint64_t request, Directory::Claim outcome, std::string_view previous_node) override;
    void on_peer_event(const PeerEvent& event) override;
    void on_directory_tick(std::chrono::steady_clock::time_point now) override;
    void on_directory_reconnected() override;
    void complete_login(const std::shared_ptr<Participant>& participant, const NickName& nick, std::string token);
    void complete_rename(SessionRecord& record, const NickName& nick);
    void apply_changes(const std::vector<ClusterView::Change>& changes);
    void announce(PeerEvent::Kind kind, const NickName& nick, std::string_view room = {},
                  PresenceEvent presence = PresenceEvent::left, std::string_view detail = {});
    PeerEvent state_event() const;
    // Members here and on the other nodes.
    std::size_t population(const Room& room) const;
    void leave(SessionRecord& record, const RoomName& room);
    void say(SessionRecord& record, const RoomName& room, std::string_view text);
    void whisper(SessionRecord& record, const NickName& to, std::string_view text);
    void rename(SessionRecord& record, const NickName& nick);
    void list(SessionRecord& record);
    void who(SessionRecord& record, const RoomName& room);

    void send(const SessionRecord& to, SharedFrame frame);
    void send(const SessionRecord& to, const Message& message) { send(to, make_frame(message)); }
    void send_error(const SessionRecord& to, ErrorCode code, std::string_view reason);
    SessionRecord* find(std::uint64_t id);
    // A room with more members than the presence limit announces nothing.
    bool quiet(std::size_t members) const noexcept {
        return limits_.presence_limit > 0 && members > limits_.presence_limit;
    }
    static bool is_member(const SessionRecord& record, const Room* room) noexcept;
    // `tell_cluster`: announce the leave (a disconnect announces one offline instead).
    void remove_from_room(SessionRecord& record, Room& room, PresenceEvent event, std::string_view detail,
                          bool tell_cluster = true);
    static std::uint64_t now_ms();

    Broker& broker_;
    ShardPoster& poster_;
    std::size_t shard_count_;
    HubLimits limits_;
    std::unordered_map<std::uint64_t, SessionRecord> sessions_;
    std::unordered_map<std::string, std::uint64_t, StringHash, std::equal_to<>> nicks_;
    std::map<std::string, std::unique_ptr<Room>, std::less<>> rooms_;
    std::unordered_map<const Room*, OpeningRoom> opening_;
    Directory* directory_ = nullptr;
    ClusterView view_;
    std::unordered_map<std::uint64_t, PendingClaim> claims_;  // by claim number
    std::unordered_map<std::uint64_t, std::uint64_t> claim_of_;  // session id -> its claim
    std::set<std::string, std::less<>> claiming_;  // nicks with a claim on the way
    std::uint64_t next_claim_ = 1;
    Stats stats_;
};

}  // namespace chat
