// The directory of a cluster over NATS: carries the hub's PeerEvents between
// nodes and decides nick claims in JetStream key-value buckets.
//
//   pulsechat.dir.all           every node's events (online, offline, join, leave,
//                               rename, hello, state, beat), to every node
//   pulsechat.dir.node.<hex>    to one node: whisper, replace, hello
//   KV PULSECHAT_NICKS          nick (hex) -> "<node id> <sha-256 of the holder's resume token>";
//                               "" once released. Created with kvStore_Create and changed
//                               with kvStore_Update(revision): two nodes never both win a nick
//   KV PULSECHAT_NODES          node id (hex) -> "", put every dead-after/3 with a TTL of
//                               dead-after: a node whose key expired is dead, its nicks free
//
// Events go over core NATS (at most once): each node numbers its own, so a
// receiver that finds a gap asks the sender for its whole state (ClusterView).
// A node hears its own events too; one that has not heard itself for
// dead-after is cut off and declares nobody else dead meanwhile.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <string>

#include "chat/server/callback_gate.hpp"
#include "chat/server/cluster_broker.hpp"
#include "chat/server/directory.hpp"

typedef struct __natsSubscription natsSubscription;
typedef struct __natsMsg natsMsg;
typedef struct __kvStore kvStore;

namespace chat {

class ClusterDirectory final : public Directory {
public:
    ClusterDirectory(ClusterBroker& broker, std::chrono::milliseconds dead_after, int replicas);
    ~ClusterDirectory() override;
    ClusterDirectory(const ClusterDirectory&) = delete;
    ClusterDirectory& operator=(const ClusterDirectory&) = delete;

    // After the broker started: buckets, subscriptions, the first hello. Throws
    // std::runtime_error when NATS refuses.
    void start();
    void stop();

    const std::string& node() const noexcept override { return broker_.node_id(); }
    void claim(std::uint64_t request, const NickName& nick, std::string_view token,
               std::string_view presented) override;
    void release(const NickName& nick, std::string_view token) override;
    void announce(PeerEvent event) override;
    void send_to(const std::string& node, PeerEvent event) override;
    bool connected() const noexcept override;

private:
    static void on_message(natsConnection*, natsSubscription*, natsMsg* msg, void* closure);
    void received(natsMsg* msg);  // a libnats delivery thread, inside the gate
    void publish(const std::string& subject, const PeerEvent& event);
    void tick();  // worker thread
    bool node_alive(const std::string& node);  // worker thread
    Claim do_claim(const std::string& nick, const std::string& value, std::string_view presented,
                   std::string& previous_node);

    ClusterBroker& broker_;
    CallbackGate<ClusterDirectory>* gate_;  // the closure of the subscriptions
    std::chrono::milliseconds dead_after_;
    int replicas_;
    kvStore* nicks_ = nullptr;
    kvStore* nodes_ = nullptr;
    natsSubscription* all_ = nullptr;
    natsSubscription* mine_ = nullptr;
    std::string all_subject_;
    std::string my_subject_;
    std::uint64_t sequence_ = 0;  // hub thread
    std::atomic<std::uint64_t> latest_{0};
    std::atomic<std::int64_t> heard_self_ms_{0};
    std::int64_t last_beat_ms_ = 0;  // worker thread
};

}  // namespace chat
