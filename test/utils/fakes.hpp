// Test doubles for the pure units (room, hub, broker): participants that record
// what they get, a poster that holds cross-shard work until told to run it.
#pragma once

#include <doctest/doctest.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "chat/server/broker.hpp"
#include "chat/proto/names.hpp"
#include "chat/server/participant.hpp"
#include "chat/proto/protocol.hpp"
#include "chat/server/room.hpp"

namespace chat::test {

inline RoomName room_name(std::string_view text) {
    auto name = RoomName::parse(text);
    REQUIRE(name);
    return *name;
}

inline NickName nick(std::string_view text) {
    auto name = NickName::parse(text);
    REQUIRE(name);
    return *name;
}

// A member that records what it was given.
class FakeParticipant final : public Participant {
public:
    FakeParticipant(std::uint64_t id, std::size_t shard) : id_(id), shard_(shard) {}

    std::uint64_t id() const noexcept override { return id_; }
    std::size_t shard() const noexcept override { return shard_; }
    void deliver(const SharedFrame& frame) override { frames.push_back(frame); }
    void on_login(const std::string& nick, const std::string&) override { logins.push_back(nick); }
    void on_renamed(const std::string& nick) override { renames.push_back(nick); }
    void close_with_error(ErrorCode code, const std::string&) override { errors.push_back(code); }

    std::vector<SharedFrame> frames;
    std::vector<std::string> logins;
    std::vector<std::string> renames;
    std::vector<ErrorCode> errors;

private:
    std::uint64_t id_;
    std::size_t shard_;
};

// Holds posted work instead of running it, so a test sees each crossing.
class FakePoster final : public ShardPoster {
public:
    std::size_t current_shard() const noexcept override { return here; }
    void post(std::size_t shard, std::function<void()> work) override { posted.push_back({shard, std::move(work)}); }

    // Runs what was posted, as the other shards' threads would.
    void run_all() {
        auto work = std::move(posted);
        posted.clear();
        for (auto& [shard, fn] : work) {
            const auto saved = here;
            here = shard;
            fn();
            here = saved;
        }
    }

    struct Posted {
        std::size_t shard;
        std::function<void()> work;
    };
    std::size_t here = 0;
    std::vector<Posted> posted;
};

class FakeSubscriber final : public Broker::Subscriber {
public:
    void on_message(const StoredMessage& message) override { got.push_back(message); }
    std::vector<StoredMessage> got;
};

inline Message decode_one(const std::string& frame) {
    Decoder decoder(1 << 20);
    decoder.feed(frame);
    Message m;
    REQUIRE(decoder.next(m) == Decoder::Status::message);
    CHECK(decoder.buffered() == 0);
    return m;
}

inline Deliver decode_deliver(const SharedFrame& frame) {
    auto m = decode_one(*frame);
    REQUIRE(std::holds_alternative<Deliver>(m));
    return std::get<Deliver>(m);
}

inline std::vector<std::uint64_t> seqs_of(const std::vector<SharedFrame>& frames) {
    std::vector<std::uint64_t> out;
    for (const auto& f : frames) out.push_back(decode_deliver(f).position.seq);
    return out;
}

// n messages published to `room`.
inline void publish_n(LocalBroker& broker, const std::string& room, int n, int first = 1) {
    for (int i = first; i < first + n; ++i) broker.publish(room, "alice", "m" + std::to_string(i), 1000 + i);
}


}  // namespace chat::test
