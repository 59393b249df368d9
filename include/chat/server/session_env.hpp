// What every session of a server shares: settings, the hub, the shards' flush
// lists and hub gates, and the counters the server reports.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <asio/any_io_executor.hpp>
#include <spdlog/spdlog.h>

#include "chat/server/access.hpp"
#include "chat/server/flush_list.hpp"
#include "chat/server/hub.hpp"
#include "chat/server/hub_gate.hpp"
#include "chat/server/server_config.hpp"

namespace chat {

// What every session of a server shares. Lives as long as the server.
struct SessionEnv {
    const ServerConfig& config;
    Hub& hub;
    asio::any_io_executor hub_executor;
    std::shared_ptr<spdlog::logger> log;
    std::string server_version;
    // Called once on the session's own shard when all its coroutines ended.
    std::function<void(std::uint64_t id)> on_finished;
    // The most bytes one session has held for its peer at once (queued and in
    // flight): the figure --queue-limit bounds. For tests and metrics.
    std::atomic<std::size_t> peak_queued_bytes{0};
    // Checks HELLO's access token; null: none needed.
    AccessControl* access = nullptr;
    // One per shard: where sessions with frames to write wait for the write pass.
    std::vector<std::unique_ptr<FlushList>> flush_lists{};
    // One per shard: its requests on their way to the hub (used when shard != 0).
    std::vector<std::unique_ptr<HubGate>> hub_gates{};
    // A handler threw (a bug): close session `id` on `shard` with ERROR internal.
    // Called on any thread.
    std::function<void(std::size_t shard, std::uint64_t id)> close_after_bug{};

    // Counters for logs, tests and metrics (relaxed; none is on the per-delivery path).
    // Heartbeat expiries not carried out because the peer's bytes were waiting
    // in the socket: the peer was alive, the server behind.
    std::atomic<std::uint64_t> expiries_averted{0};
    // Handlers that threw: each is a bug, logged once and survived.
    std::atomic<std::uint64_t> bugs{0};
    // Connections that ended before their HELLO, and refused ones: summed up
    // in one log line per second rather than logged one by one.
    std::atomic<std::uint64_t> ended_before_hello{0};
    std::atomic<std::uint64_t> refused{0};
};

// Largest payload a connection may send before its HELLO: a HELLO is a nick
// and two tokens, so a stranger cannot make the server buffer a whole max_frame.
inline constexpr std::uint32_t max_frame_before_hello = 4096;

}  // namespace chat
