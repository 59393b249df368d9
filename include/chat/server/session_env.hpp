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
#include "chat/server/metrics.hpp"
#include "chat/server/server_config.hpp"
#include "chat/server/session_core.hpp"

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
    // Checks HELLO's access token; null: none needed.
    AccessControl* access = nullptr;
    // One per shard: where sessions with frames to write wait for the write pass.
    std::vector<std::unique_ptr<FlushList>> flush_lists{};
    // One per shard: its requests on their way to the hub (used when shard != 0).
    std::vector<std::unique_ptr<HubGate>> hub_gates{};
    // A handler threw (a bug): close session `id` on `shard` with ERROR internal.
    // Called on any thread.
    std::function<void(std::size_t shard, std::uint64_t id)> close_after_bug{};

    // What the sessions count, for logs, tests and metrics.
    SessionCounters counters{};
    // One per shard: its counts for /metrics, written on that shard only.
    std::vector<std::unique_ptr<ShardMetrics>> shard_metrics{};
};

}  // namespace chat
