// Server frames as the client tests need them, with the fields that matter set.
#pragma once

#include <cstdint>
#include <string>
#include <utility>

#include "chat/proto/protocol.hpp"

namespace chat::test {

inline Deliver deliver(std::string room, std::string sender, std::string text, Position at, bool history = false) {
    Deliver d;
    d.room = std::move(room);
    d.sender = std::move(sender);
    d.text = std::move(text);
    d.position = at;
    d.timestamp_ms = 5000;
    d.history = history;
    return d;
}

inline Joined joined(std::string room, std::uint64_t epoch, std::uint64_t head, std::uint32_t history = 0) {
    Joined j;
    j.room = std::move(room);
    j.epoch = epoch;
    j.head_seq = head;
    j.history_count = history;
    j.members = {"alice"};
    return j;
}

}  // namespace chat::test
