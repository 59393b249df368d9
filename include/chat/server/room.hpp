// A named room: its members, grouped by shard, and the fan-out of every frame to them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <unordered_set>
#include <vector>

#include "chat/server/broker.hpp"
#include "chat/proto/names.hpp"
#include "chat/server/participant.hpp"

namespace chat {

// Runs work on the io_context of another shard. The room uses it to cross
// threads once per shard for each message, never once per member.
class ShardPoster {
public:
    virtual ~ShardPoster() = default;
    virtual std::size_t current_shard() const noexcept = 0;
    virtual void post(std::size_t shard, std::function<void()> work) = 0;
};

class Room final : public Broker::Subscriber {
public:
    Room(const RoomName& name, std::size_t shard_count, ShardPoster& poster);

    const RoomName& name() const noexcept { return name_; }
    std::size_t size() const noexcept { return members_.size(); }
    bool empty() const noexcept { return members_.empty(); }
    // O(members): the hub knows its sessions' rooms and does not ask; for tests.
    bool contains(std::uint64_t id) const;

    // Returns false if the participant is a member already (O(members), like a
    // removal; a join storm stays cheap because quiet rooms skip the rest).
    bool add(std::shared_ptr<Participant> participant, const NickName& nick);
    // Returns false if it was not a member.
    bool remove(std::uint64_t id);
    void rename(std::uint64_t id, const NickName& nick);
    // Nicks in join order, as many as fit `budget` bytes of a list<str16>
    // (2 + length each) and at most `max_count`: only those are copied.
    std::vector<std::string> nicks(std::size_t budget, std::size_t max_count = 0xFFFF) const;

    // Queues `frame` to every member (but `except`, when non-zero) in one order.
    void broadcast(const SharedFrame& frame, std::uint64_t except = 0);

    // From the broker: a message published to this room.
    void on_message(const StoredMessage& message) override { broadcast(message.frame); }
    // From the broker: the room's log is open (only when subscribe() returned 0).
    void on_ready() override {
        if (ready_handler_) ready_handler_(*this);
    }
    void set_ready_handler(std::function<void(Room&)> handler) { ready_handler_ = std::move(handler); }
    // From the broker: messages of the room never reached this server; every
    // member is told with a non-fatal ERROR messages_missed.
    void on_missed() override;

private:
    struct Member {
        std::uint64_t id;
        std::shared_ptr<Participant> participant;
        NickName nick;
    };
    using Snapshot = std::vector<std::shared_ptr<Participant>>;

    // The list of `shard`'s members, ready to change: the one in use if no
    // fan-out on its way to that shard holds it, else a fresh copy.
    Snapshot& writable_shard(std::size_t shard);

    RoomName name_;
    ShardPoster& poster_;
    std::vector<Member> members_;  // join order
    // Per shard, the list of that shard's members: a message to another shard
    // carries this pointer rather than a copy of the list. Changed in place
    // while nothing else holds it (so a join storm costs O(1) per join, not a
    // copy of the room), copied when a fan-out in flight still does.
    std::vector<std::shared_ptr<Snapshot>> by_shard_;
    std::function<void(Room&)> ready_handler_;
};

}  // namespace chat
