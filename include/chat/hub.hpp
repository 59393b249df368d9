// The one owner of rooms and nicknames. Every call runs on the hub shard (shard 0).
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>

#include "chat/broker.hpp"
#include "chat/participant.hpp"
#include "chat/protocol.hpp"
#include "chat/room.hpp"

namespace chat {

struct HubLimits {
    std::size_t max_rooms_per_session = 64;
    // Lists (JOINED members, MEMBERS, ROOMS) are cut to keep a payload within this.
    std::uint32_t max_frame = default_max_frame;
    // A JOIN's replay is cut (oldest first) to fit these bytes, so that a joiner
    // is never a slow consumer by the history alone; what was cut counts as missed.
    std::size_t replay_budget = 2 * 1024 * 1024;
};

class Hub {
public:
    Hub(Broker& broker, ShardPoster& poster, std::size_t shard_count, HubLimits limits);

    // HELLO, after the session checked the nick's form. Answers through
    // on_login() or close_with_error().
    void login(const std::shared_ptr<Participant>& participant, std::string nick,
               const std::string& resume_token);
    void join(std::uint64_t id, const Join& join);
    void leave(std::uint64_t id, std::string_view room);
    void say(std::uint64_t id, std::string_view room, std::string_view text);
    void whisper(std::uint64_t id, std::string_view to, std::string_view text);
    void rename(std::uint64_t id, std::string nick);
    void list(std::uint64_t id);
    void who(std::uint64_t id, std::string_view room);
    // The session is gone: its rooms see `event`, its nick is free. Idempotent.
    void disconnect(std::uint64_t id, PresenceEvent event, std::string_view detail);

    std::size_t session_count() const noexcept { return sessions_.size(); }
    std::size_t room_count() const noexcept { return rooms_.size(); }
    const Room* find_room(std::string_view name) const;

private:
    struct SessionRecord {
        std::shared_ptr<Participant> participant;
        std::string nick;
        std::string resume_token;
        std::vector<std::string> rooms;  // join order
    };
    struct StringHash {
        using is_transparent = void;
        std::size_t operator()(std::string_view s) const noexcept { return std::hash<std::string_view>{}(s); }
    };

    void send(const SessionRecord& to, SharedFrame frame);
    void send(const SessionRecord& to, const Message& message) { send(to, make_frame(message)); }
    void send_error(const SessionRecord& to, ErrorCode code, std::string reason);
    SessionRecord* find(std::uint64_t id);
    void remove_from_room(SessionRecord& record, std::string_view room, PresenceEvent event,
                          std::string_view detail);
    std::string make_resume_token();
    static std::uint64_t now_ms();

    Broker& broker_;
    ShardPoster& poster_;
    std::size_t shard_count_;
    HubLimits limits_;
    std::unordered_map<std::uint64_t, SessionRecord> sessions_;
    std::unordered_map<std::string, std::uint64_t, StringHash, std::equal_to<>> nicks_;
    std::map<std::string, std::unique_ptr<Room>, std::less<>> rooms_;
    std::mt19937_64 rng_;
};

}  // namespace chat
