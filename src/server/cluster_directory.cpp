#include "chat/server/cluster_directory.hpp"

#include <array>
#include <stdexcept>

#include <fmt/format.h>
#include <nats/nats.h>
#include <openssl/evp.h>

namespace chat {

namespace {

std::int64_t now_ms() {
    return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now().time_since_epoch())
        .count();
}

std::string hex(std::string_view bytes) { return room_token(bytes); }

// The claim keeps a hash of the holder's resume token, never the token.
std::string token_hash(std::string_view token) {
    if (token.empty()) return {};
    std::array<unsigned char, EVP_MAX_MD_SIZE> digest{};
    unsigned int size = 0;
    if (EVP_Digest(token.data(), token.size(), digest.data(), &size, EVP_sha256(), nullptr) != 1) return {};
    return hex(std::string_view(reinterpret_cast<const char*>(digest.data()), size));
}

// "<node> <hash>"; "" when free.
std::pair<std::string, std::string> parse_claim(std::string_view value) {
    const auto space = value.find(' ');
    if (space == std::string_view::npos) return {std::string(value), {}};
    return {std::string(value.substr(0, space)), std::string(value.substr(space + 1))};
}

bool numbered(PeerEvent::Kind kind) {
    using Kind = PeerEvent::Kind;
    return kind == Kind::online || kind == Kind::offline || kind == Kind::join || kind == Kind::leave ||
           kind == Kind::rename;
}

kvStore* open_bucket(jsCtx* js, const char* name, std::int64_t ttl_ms, jsStorageType storage, int replicas) {
    // kvConfig.TTL is in nanoseconds in libnats 3.4 (the header does not say; JetStream wants >= 100 ms).
    kvStore* kv = nullptr;
    kvConfig cfg;
    kvConfig_Init(&cfg);
    cfg.Bucket = name;
    cfg.History = 1;
    cfg.TTL = ttl_ms * 1'000'000;
    cfg.StorageType = storage;
    cfg.Replicas = replicas;
    natsStatus s = js_CreateKeyValue(&kv, js, &cfg);
    if (s != NATS_OK) s = js_KeyValue(&kv, js, name);  // made by another node with other settings
    if (s != NATS_OK) {
        const char* why = nats_GetLastError(nullptr);
        throw std::runtime_error(fmt::format("cluster: key-value bucket {}: {}", name, why ? why : natsStatus_GetText(s)));
    }
    return kv;
}

}  // namespace

ClusterDirectory::ClusterDirectory(ClusterBroker& broker, std::chrono::milliseconds dead_after, int replicas)
    : broker_(broker), gate_(CallbackGate<ClusterDirectory>::open(this)), dead_after_(dead_after),
      replicas_(replicas) {
    const auto& prefix = broker_.config().subject_prefix;
    all_subject_ = prefix + ".dir.all";
    my_subject_ = prefix + ".dir.node." + hex(broker_.node_id());
    broker_.on_worker_tick([this] { tick(); });
    broker_.on_stopping([this] { stop(); });
    broker_.on_reconnected([this] {
        broker_.run_on_hub([this] {
            if (listener_) listener_->on_directory_reconnected();
        });
    });
}

// The broker's stop() has cleaned up (on_stopping); the broker may be gone by now.
ClusterDirectory::~ClusterDirectory() = default;

void ClusterDirectory::start() {
    jsCtx* js = broker_.jetstream();
    nicks_ = open_bucket(js, "PULSECHAT_NICKS", 0, js_FileStorage, replicas_);
    nodes_ = open_bucket(js, "PULSECHAT_NODES", dead_after_.count(), js_MemoryStorage, replicas_);
    const std::string key = hex(broker_.node_id());
    std::uint64_t rev = 0;
    kvStore_PutString(&rev, nodes_, key.c_str(), "");
    natsConnection* nc = broker_.nats_connection();
    if (natsConnection_Subscribe(&all_, nc, all_subject_.c_str(), &ClusterDirectory::on_message, gate_) != NATS_OK ||
        natsConnection_Subscribe(&mine_, nc, my_subject_.c_str(), &ClusterDirectory::on_message, gate_) != NATS_OK)
        throw std::runtime_error("cluster: cannot subscribe to the directory subjects");
    natsSubscription_SetPendingLimits(all_, -1, -1);
    natsSubscription_SetPendingLimits(mine_, -1, -1);
    natsConnection_FlushTimeout(nc, 2'000);
    heard_self_ms_ = now_ms();
    PeerEvent hello;
    hello.kind = PeerEvent::Kind::hello;
    announce(std::move(hello));  // the others answer with their state
}

void ClusterDirectory::stop() {
    gate_->close();  // a message already taken by a pool thread finds it closed
    if (all_ != nullptr) {
        natsSubscription_Unsubscribe(all_);
        natsSubscription_Destroy(all_);
        all_ = nullptr;
    }
    if (mine_ != nullptr) {
        natsSubscription_Unsubscribe(mine_);
        natsSubscription_Destroy(mine_);
        mine_ = nullptr;
    }
    if (nodes_ != nullptr) {
        // Leaving cleanly: the others need not wait for the TTL to free our nicks.
        kvStore_Purge(nodes_, hex(broker_.node_id()).c_str(), nullptr);
        kvStore_Destroy(nodes_);
        nodes_ = nullptr;
    }
    if (nicks_ != nullptr) {
        kvStore_Destroy(nicks_);
        nicks_ = nullptr;
    }
}

bool ClusterDirectory::connected() const noexcept {
    return broker_.link_up() && now_ms() - heard_self_ms_.load() < dead_after_.count();
}

void ClusterDirectory::publish(const std::string& subject, const PeerEvent& event) {
    const std::string bytes = encode_peer_event(event);
    // Non-blocking: libnats buffers it (and across a reconnection).
    natsConnection_Publish(broker_.nats_connection(), subject.c_str(), bytes.data(), static_cast<int>(bytes.size()));
}

void ClusterDirectory::announce(PeerEvent event) {
    event.node = broker_.node_id();
    if (numbered(event.kind))
        event.sequence = ++sequence_;
    else if (event.kind == PeerEvent::Kind::state)
        event.sequence = sequence_;
    latest_.store(sequence_, std::memory_order_relaxed);
    publish(all_subject_, event);
}

void ClusterDirectory::send_to(const std::string& node, PeerEvent event) {
    event.node = broker_.node_id();
    publish(broker_.config().subject_prefix + ".dir.node." + hex(node), event);
}

void ClusterDirectory::on_message(natsConnection*, natsSubscription*, natsMsg* msg, void* closure) {
    if (!CallbackGate<ClusterDirectory>::enter_from(closure, [msg](ClusterDirectory& self) { self.received(msg); }))
        natsMsg_Destroy(msg);
}

void ClusterDirectory::received(natsMsg* msg) {
    ClusterDirectory& self = *this;
    auto event =
        decode_peer_event(std::string_view(natsMsg_GetData(msg), static_cast<std::size_t>(natsMsg_GetDataLength(msg))));
    natsMsg_Destroy(msg);
    if (!event) return;  // not ours, or damaged: a node trusts NATS no more than a client
    if (event->node == self.broker_.node_id()) {
        self.heard_self_ms_ = now_ms();  // the link works both ways
        return;
    }
    self.broker_.run_on_hub([&self, e = std::move(*event)] {
        if (self.listener_) self.listener_->on_peer_event(e);
    });
}

void ClusterDirectory::tick() {
    const std::int64_t now = now_ms();
    const std::int64_t every = std::max<std::int64_t>(100, dead_after_.count() / 4);
    if (now - last_beat_ms_ >= every && nodes_ != nullptr) {
        last_beat_ms_ = now;
        std::uint64_t rev = 0;
        kvStore_PutString(&rev, nodes_, hex(broker_.node_id()).c_str(), "");
        PeerEvent beat;
        beat.kind = PeerEvent::Kind::beat;
        beat.node = broker_.node_id();
        beat.sequence = latest_.load(std::memory_order_relaxed);
        publish(all_subject_, beat);
    }
    broker_.run_on_hub([this] {
        if (listener_) listener_->on_directory_tick(std::chrono::steady_clock::now());
    });
}

bool ClusterDirectory::node_alive(const std::string& node) {
    if (node == broker_.node_id()) return false;  // ours but not held here: a release that got lost
    kvEntry* entry = nullptr;
    const natsStatus s = kvStore_Get(&entry, nodes_, hex(node).c_str());
    if (entry != nullptr) kvEntry_Destroy(entry);
    return s == NATS_OK;
}

Directory::Claim ClusterDirectory::do_claim(const std::string& nick, const std::string& value,
                                            std::string_view presented, std::string& previous_node) {
    const std::string key = hex(nick);
    for (int attempt = 0; attempt < 4; ++attempt) {
        std::uint64_t rev = 0;
        if (kvStore_CreateString(&rev, nicks_, key.c_str(), value.c_str()) == NATS_OK) return Claim::granted;
        kvEntry* entry = nullptr;
        const natsStatus s = kvStore_Get(&entry, nicks_, key.c_str());
        if (s == NATS_NOT_FOUND) continue;  // deleted meanwhile: create again
        if (s != NATS_OK) return Claim::unavailable;
        const std::string held(kvEntry_ValueString(entry) ? kvEntry_ValueString(entry) : "");
        const std::uint64_t revision = kvEntry_Revision(entry);
        kvEntry_Destroy(entry);
        auto [owner, hash] = parse_claim(held);
        Claim outcome = Claim::taken;
        if (owner.empty() || !node_alive(owner)) {
            outcome = Claim::granted;
        } else if (!presented.empty() && !hash.empty() && token_hash(presented) == hash) {
            outcome = Claim::resumed;
            previous_node = owner;
        }
        if (outcome == Claim::taken) return outcome;
        if (kvStore_UpdateString(&rev, nicks_, key.c_str(), value.c_str(), revision) == NATS_OK) return outcome;
        previous_node.clear();  // someone else changed it first: look again
    }
    return Claim::taken;
}

void ClusterDirectory::claim(std::uint64_t request, const NickName& nick, std::string_view token,
                             std::string_view presented) {
    std::string value = broker_.node_id() + " " + token_hash(token);
    broker_.run_on_worker([this, request, nick = nick.str(), value = std::move(value),
                           presented = std::string(presented)] {
        std::string previous;
        const Claim outcome = nicks_ != nullptr ? do_claim(nick, value, presented, previous) : Claim::unavailable;
        broker_.run_on_hub([this, request, outcome, previous = std::move(previous)] {
            if (listener_) listener_->on_nick_claimed(request, outcome, previous);
        });
    });
}

void ClusterDirectory::release(const NickName& nick, std::string_view token) {
    const std::string mine = broker_.node_id() + " " + token_hash(token);
    broker_.run_on_worker([this, key = hex(nick.view()), mine] {
        if (nicks_ == nullptr) return;
        kvEntry* entry = nullptr;
        if (kvStore_Get(&entry, nicks_, key.c_str()) != NATS_OK) return;
        const bool ours = kvEntry_ValueString(entry) != nullptr && mine == kvEntry_ValueString(entry);
        const std::uint64_t revision = kvEntry_Revision(entry);
        kvEntry_Destroy(entry);
        // Only the claim this session made: a resume elsewhere has replaced it.
        std::uint64_t rev = 0;
        if (ours) kvStore_UpdateString(&rev, nicks_, key.c_str(), "", revision);
    });
}

}  // namespace chat
