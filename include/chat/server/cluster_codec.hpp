// What a cluster node puts into NATS and reads back, sans-io: the subject
// token of a room and the body of a stored message. Decoding checks every
// field as the hub checks a client's (a node trusts no byte from NATS more
// than one from a client); fuzz/fuzz_cluster.cpp feeds it arbitrary bytes.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace chat {

// The subject token of a room: its bytes in lowercase hex (room names may hold
// bytes a subject may not, such as '.', '*' and '>').
std::string room_token(std::string_view room);
std::optional<std::string> room_from_token(std::string_view token);

// A message as stored in the stream: [u8 nick length][nick][u64 timestamp_ms, big
// endian][text]. Decoding checks every field as the hub would (a node trusts no
// byte from NATS more than one from a client).
std::string encode_cluster_body(std::string_view sender, std::uint64_t timestamp_ms, std::string_view text);
struct ClusterBody {
    std::string sender;
    std::uint64_t timestamp_ms = 0;
    std::string text;
};
std::optional<ClusterBody> decode_cluster_body(std::string_view body);

}  // namespace chat
