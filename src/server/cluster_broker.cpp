#include "chat/server/cluster_broker.hpp"

#include "chat/server/callback_gate.hpp"

#include <unistd.h>

#include <algorithm>
#include <array>
#include <charconv>
#include <random>
#include <stdexcept>

#include <fmt/format.h>
#include <nats/nats.h>
#include <spdlog/spdlog.h>

#include "chat/proto/names.hpp"

namespace chat {

// --- names and bodies -----------------------------------------------------------

std::string make_node_name() {
    std::array<char, 256> host{};
    if (::gethostname(host.data(), host.size() - 1) != 0) host = {'n', 'o', 'd', 'e'};
    std::random_device random;
    return fmt::format("{}-{:06x}", host.data(), random() & 0xFFFFFF);
}

// --- the broker ------------------------------------------------------------------

struct ClusterBroker::RoomState {
    RoomState(std::string name, std::size_t history, std::uint64_t gen, std::uint64_t give_up_ms)
        : log(std::move(name), history), generation(gen), gap_wait(give_up_ms) {}
    ClusterRoomLog log;
    Subscriber* subscriber = nullptr;
    std::uint64_t generation;
    bool ready = false;
    bool filling = false;  // a fill is on its way: one at a time per room
    // A fill did not find the message the gap needs (trimmed from the stream,
    // its live copy still on its way): no new fill until something arrives
    // for the room or the next gap check (retry_gaps), and since when.
    bool fill_paused = false;
    GapWait gap_wait;
};

namespace {

std::uint64_t now_ms() {
    return static_cast<std::uint64_t>(
        std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now().time_since_epoch())
            .count());
}

std::uint64_t header_u64(natsMsg* msg, const char* key, std::uint64_t fallback) {
    const char* value = nullptr;
    if (natsMsgHeader_Get(msg, key, &value) != NATS_OK || value == nullptr) return fallback;
    std::uint64_t out = 0;
    const std::string_view text(value);
    auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), out);
    if (ec != std::errc{} || end != text.data() + text.size()) return fallback;
    return out;
}

std::string status_text(natsStatus s) {
    std::string text = natsStatus_GetText(s);
    const char* last = nats_GetLastError(nullptr);
    if (last != nullptr && *last != '\0' && text != last) text += fmt::format(" ({})", last);
    return text;
}

}  // namespace

struct ClusterBroker::Impl {
    ClusterBroker& broker;
    natsOptions* options = nullptr;
    natsConnection* connection = nullptr;
    jsCtx* js = nullptr;
    std::string node_id;  // node name and incarnation: the prefix of every Nats-Msg-Id
    std::atomic<std::uint64_t> next_msg = 1;

    // The worker: blocking requests, in order.
    std::mutex jobs_mutex;
    std::condition_variable jobs_ready;
    std::deque<std::function<void()>> jobs;
    bool jobs_stop = false;
    std::thread worker;

    // Live subscriptions (worker thread only).
    std::unordered_map<std::string, natsSubscription*> subscriptions;

    // Publishes without an acknowledgment, by their number (oldest first).
    struct Unacked {
        std::uint64_t sender_id;
        std::string room;
        std::uint64_t first_sent_ms;
        std::uint64_t sent_ms;
        natsMsg* resend = nullptr;  // set when it has to go again
    };
    std::mutex unacked_mutex;
    std::map<std::uint64_t, Unacked> unacked;
    std::atomic<std::size_t> unacked_count = 0;
    std::atomic<bool> link_up = true;
    std::atomic<std::uint64_t> link_down_since_ms = 0;
    bool last_available = true;  // worker thread
    std::vector<std::function<void()>> tick_hooks;       // set before start()
    std::vector<std::function<void()>> reconnect_hooks;  // set before start()
    std::vector<std::function<void()>> stop_hooks;       // set before start()

    // The closure of every libnats callback (see callback_gate.hpp).
    using Gate = CallbackGate<Impl>;
    Gate* gate;

    explicit Impl(ClusterBroker& b) : broker(b), gate(Gate::open(this)) {}

    void submit(std::function<void()> job) {
        {
            std::lock_guard lock(jobs_mutex);
            if (jobs_stop) return;
            jobs.push_back(std::move(job));
        }
        jobs_ready.notify_one();
    }

    void run_worker() {
        std::unique_lock lock(jobs_mutex);
        while (!jobs_stop) {
            // Every 100 ms (or sooner, for a job): resends and the availability check.
            jobs_ready.wait_for(lock, std::chrono::milliseconds(100), [this] { return jobs_stop || !jobs.empty(); });
            while (!jobs.empty() && !jobs_stop) {
                auto job = std::move(jobs.front());
                jobs.pop_front();
                lock.unlock();
                job();
                lock.lock();
            }
            if (jobs_stop) break;
            lock.unlock();
            check_unacked();
            for (auto& hook : tick_hooks) hook();
            lock.lock();
        }
    }

    // --- set-up ---

    void connect() {
        natsStatus s = natsOptions_Create(&options);
        if (s != NATS_OK) throw std::runtime_error("cluster: natsOptions_Create: " + status_text(s));
        std::vector<const char*> urls;
        for (const auto& url : broker.config_.servers) urls.push_back(url.c_str());
        natsOptions_SetServers(options, urls.data(), static_cast<int>(urls.size()));
        natsOptions_SetName(options, node_id.c_str());
        natsOptions_SetMaxReconnect(options, -1);  // forever: the node outlives NATS restarts
        natsOptions_SetReconnectWait(options, 250);
        natsOptions_SetReconnectBufSize(options, 64 * 1024 * 1024);
        // A NATS server that stops answering is noticed within dead-after.
        const auto dead_after = static_cast<std::int64_t>(broker.config_.dead_after.count());
        natsOptions_SetPingInterval(options, std::max<std::int64_t>(250, dead_after / 3));
        natsOptions_SetMaxPingsOut(options, 2);
        natsOptions_SetTimeout(options, std::max<std::int64_t>(1000, dead_after));
        natsOptions_UseGlobalMessageDelivery(options, true);  // a pool, not a thread per room
        natsOptions_SetDisconnectedCB(options, &Impl::on_disconnected, gate);
        natsOptions_SetReconnectedCB(options, &Impl::on_reconnected, gate);
        natsOptions_SetErrorHandler(options, &Impl::on_error, gate);
        s = natsConnection_Connect(&connection, options);
        if (s != NATS_OK)
            throw std::runtime_error(fmt::format("cluster: cannot connect to {}: {}",
                                                 fmt::join(broker.config_.servers, ","), status_text(s)));
        jsOptions jo;
        jsOptions_Init(&jo);
        jo.Wait = std::max<std::int64_t>(1000, dead_after);
        jo.PublishAsync.MaxPending = static_cast<std::int64_t>(2 * broker.config_.max_unacked);
        jo.PublishAsync.AckHandler = &Impl::on_ack;
        jo.PublishAsync.AckHandlerClosure = gate;
        s = natsConnection_JetStream(&js, connection, &jo);
        if (s != NATS_OK) throw std::runtime_error("cluster: JetStream context: " + status_text(s));
    }

    // Creates the stream, or makes an existing one match our settings; returns its epoch.
    std::optional<std::uint64_t> ensure_stream(std::string* error) {
        const auto& cfg = broker.config_;
        const std::string subjects = cfg.subject_prefix + ".room.*";
        const std::string republish_from = cfg.subject_prefix + ".room.>";
        const std::string republish_to = cfg.subject_prefix + ".live.>";
        const char* subject_list[] = {subjects.c_str()};
        jsStreamConfig sc;
        jsStreamConfig_Init(&sc);
        sc.Name = cfg.stream.c_str();
        sc.Subjects = subject_list;
        sc.SubjectsLen = 1;
        sc.Storage = js_FileStorage;
        sc.Retention = js_LimitsPolicy;
        sc.MaxMsgsPerSubject = static_cast<std::int64_t>(std::max<std::size_t>(1, cfg.history));
        if (cfg.history_age) sc.MaxAge = static_cast<std::int64_t>(cfg.history_age->count()) * 1'000'000;
        sc.Replicas = cfg.replicas;
        sc.Duplicates = 120LL * 1'000'000'000;  // two minutes: above publish_retry_for
        sc.AllowDirect = true;
        jsRePublish rp;
        jsRePublish_Init(&rp);
        rp.Source = republish_from.c_str();
        rp.Destination = republish_to.c_str();
        sc.RePublish = &rp;

        jsStreamInfo* info = nullptr;
        jsErrCode code = static_cast<jsErrCode>(0);
        natsStatus s = js_AddStream(&info, js, &sc, nullptr, &code);
        if (s != NATS_OK && code == JSStreamNameExistErr) {
            // It exists with other settings (a changed --history): bring it in line.
            s = js_UpdateStream(&info, js, &sc, nullptr, &code);
        }
        if (s != NATS_OK) {
            if (error) *error = fmt::format("stream {}: {} (JetStream error {})", cfg.stream, status_text(s),
                                            static_cast<int>(code));
            return std::nullopt;
        }
        const auto epoch = static_cast<std::uint64_t>(info->Created);
        jsStreamInfo_Destroy(info);
        return epoch == 0 ? 1 : epoch;
    }

    // --- rooms ---

    std::string live_subject(std::string_view room) const {
        return broker.config_.subject_prefix + ".live." + room_token(room);
    }
    std::string room_subject(std::string_view room) const {
        return broker.config_.subject_prefix + ".room." + room_token(room);
    }

    bool follow(const std::string& room) {
        if (subscriptions.contains(room)) return true;
        natsSubscription* sub = nullptr;
        const std::string subject = live_subject(room);
        natsStatus s = natsConnection_Subscribe(&sub, connection, subject.c_str(), &Impl::on_live, gate);
        if (s != NATS_OK) return false;
        natsSubscription_SetPendingLimits(sub, -1, -1);  // the inbox is the bound
        subscriptions.emplace(room, sub);
        // The server has the interest once a round trip came back: whatever is
        // stored after this reaches us live, whatever before, the fetch finds.
        natsConnection_FlushTimeout(connection, 2'000);
        return true;
    }

    void unfollow(const std::string& room) {
        auto it = subscriptions.find(room);
        if (it == subscriptions.end()) return;
        natsSubscription_Unsubscribe(it->second);
        natsSubscription_Destroy(it->second);
        subscriptions.erase(it);
    }

    // The room's messages after `after` (up to `upto`, 0: all), oldest first,
    // each linked to the one before it; false if NATS did not answer.
    //
    // The stream keeps a suffix of each room (the oldest go first), so those
    // links are exact, but for the first message: it follows `after` only if
    // nothing between them was dropped. For a fill from the head (upto 0,
    // after a reconnect) that is checked: when the stream no longer holds the
    // head itself, what came between the head and the oldest message kept is
    // gone, and the first message's link is unknown (its members are told,
    // ClusterRoomLog::advance). A gap fill does not check: its messages'
    // live copies may still be coming, and GapWait covers it.
    bool fetch(const std::string& room, std::uint64_t after, std::uint64_t upto,
               std::vector<ClusterRoomLog::Entry>& out) {
        const std::string subject = room_subject(room);
        std::uint64_t previous = after;
        bool first_link_known = true;
        if (upto == 0 && after > 0) {
            jsDirectGetMsgOptions dg;
            jsDirectGetMsgOptions_Init(&dg);
            dg.Sequence = after;
            dg.NextBySubject = subject.c_str();
            natsMsg* msg = nullptr;
            natsStatus s = js_DirectGetMsg(&msg, js, broker.config_.stream.c_str(), nullptr, &dg);
            if (s == NATS_NOT_FOUND) return true;  // nothing at or after the head
            if (s != NATS_OK) return false;
            first_link_known = natsMsg_GetSequence(msg) == after;
            natsMsg_Destroy(msg);
        }
        for (;;) {
            jsDirectGetMsgOptions dg;
            jsDirectGetMsgOptions_Init(&dg);
            dg.Sequence = previous + 1;
            dg.NextBySubject = subject.c_str();
            natsMsg* msg = nullptr;
            natsStatus s = js_DirectGetMsg(&msg, js, broker.config_.stream.c_str(), nullptr, &dg);
            if (s == NATS_NOT_FOUND) return true;  // nothing more
            if (s != NATS_OK) return false;
            const std::uint64_t seq = natsMsg_GetSequence(msg);
            if (seq <= previous) {  // cannot happen; never loop on it
                natsMsg_Destroy(msg);
                return true;
            }
            auto body = decode_cluster_body(
                std::string_view(natsMsg_GetData(msg), static_cast<std::size_t>(natsMsg_GetDataLength(msg))));
            natsMsg_Destroy(msg);
            if (body) {
                const bool unknown = previous == after && !first_link_known;
                out.push_back(
                    ClusterRoomLog::Entry{seq, unknown ? ClusterRoomLog::unknown_link : previous, std::move(*body)});
            } else {
                broker.log_->warn("cluster: message {} of room '{}' is malformed; skipped", seq, log_safe(room));
            }
            previous = seq;
            if (upto != 0 && seq >= upto) return true;
        }
    }

    void load(const std::string& room, std::uint64_t generation) {
        std::vector<ClusterRoomLog::Entry> entries;
        bool ok = follow(room);
        if (ok) ok = fetch(room, 0, 0, entries);
        const bool full = entries.size() >= broker.config_.history || broker.config_.history_age.has_value();
        const auto count = entries.size();
        broker.push(LoadedEvent{room, generation, std::move(entries), ok, full});
        if (ok) broker.log_->debug("cluster: room '{}' loaded, {} message(s)", log_safe(room), count);
    }

    void fill(const std::string& room, std::uint64_t generation, std::uint64_t after, std::uint64_t upto) {
        std::vector<ClusterRoomLog::Entry> entries;
        const bool ok = fetch(room, after, upto, entries);
        // A fill from the start of a room that had nothing yet: when the stream
        // holds its limit, older messages may have been dropped uncounted.
        if (ok && after == 0 && upto == 0 && !entries.empty() && entries.size() >= broker.config_.history)
            entries.front().last = ClusterRoomLog::unknown_link;
        broker.push(FilledEvent{room, generation, std::move(entries), ok, upto});
    }

    // --- publishing ---

    // Hub thread. False: not sent (NATS refused at once, or too many in flight).
    bool publish(std::string_view room, std::string_view sender, std::string_view text, std::uint64_t ts,
                 std::uint64_t sender_id) {
        if (unacked_count.load(std::memory_order_relaxed) >= broker.config_.max_unacked) return false;
        const std::uint64_t number = next_msg.fetch_add(1, std::memory_order_relaxed);
        const std::string subject = room_subject(room);
        const std::string body = encode_cluster_body(sender, ts, text);
        natsMsg* msg = nullptr;
        if (natsMsg_Create(&msg, subject.c_str(), nullptr, body.data(), static_cast<int>(body.size())) != NATS_OK)
            return false;
        const std::string msg_id = fmt::format("{}.{}", node_id, number);
        natsMsgHeader_Set(msg, "Nats-Msg-Id", msg_id.c_str());
        const std::uint64_t now = now_ms();
        {
            std::lock_guard lock(unacked_mutex);
            unacked.emplace(number, Unacked{sender_id, std::string(room), now, now, nullptr});
        }
        unacked_count.fetch_add(1, std::memory_order_relaxed);
        jsPubOptions po;
        jsPubOptions_Init(&po);
        po.MaxWait = static_cast<std::int64_t>(broker.config_.dead_after.count());
        const natsStatus s = js_PublishMsgAsync(js, &msg, &po);
        if (s != NATS_OK) {
            natsMsg_Destroy(msg);
            std::lock_guard lock(unacked_mutex);
            unacked.erase(number);
            unacked_count.fetch_sub(1, std::memory_order_relaxed);
            return false;
        }
        return true;
    }

    static std::uint64_t number_of(natsMsg* msg) {
        const char* id = nullptr;
        if (natsMsgHeader_Get(msg, "Nats-Msg-Id", &id) != NATS_OK || id == nullptr) return 0;
        const std::string_view text(id);
        const auto dot = text.rfind('.');
        if (dot == std::string_view::npos) return 0;
        std::uint64_t n = 0;
        std::from_chars(text.data() + dot + 1, text.data() + text.size(), n);
        return n;
    }

    // libnats thread: the outcome of one asynchronous publish.
    static void on_ack(jsCtx*, natsMsg* msg, jsPubAck* pa, jsPubAckErr* pae, void* closure) {
        if (!Gate::enter_from(closure, [&](Impl& self) { self.acked(msg, pa, pae); })) natsMsg_Destroy(msg);
    }
    void acked(natsMsg* msg, jsPubAck* pa, jsPubAckErr* pae) {
        Impl& self = *this;
        const std::uint64_t number = number_of(msg);
        bool keep_msg = false;
        if (pa != nullptr) {
            bool found = false;
            {
                std::lock_guard lock(self.unacked_mutex);
                found = self.unacked.erase(number) > 0;
            }
            if (found) self.unacked_count.fetch_sub(1, std::memory_order_relaxed);
            self.broker.push(AckEvent{1, pa->Duplicate ? 1u : 0u});
        } else if (pae != nullptr) {
            // Timed out, or refused (no stream while it is being recreated): it
            // goes again from the worker, with the same Nats-Msg-Id.
            std::lock_guard lock(self.unacked_mutex);
            if (auto it = self.unacked.find(number); it != self.unacked.end() && it->second.resend == nullptr) {
                it->second.resend = msg;
                keep_msg = true;
            }
        }
        if (!keep_msg) natsMsg_Destroy(msg);
    }

    // Worker thread, every 100 ms: resends, gives up on what waited too long,
    // and tells the hub when the cluster became (un)available.
    void check_unacked() {
        std::uint64_t now = now_ms();
        const auto dead_after = static_cast<std::uint64_t>(broker.config_.dead_after.count());
        const auto retry_for = static_cast<std::uint64_t>(broker.config_.publish_retry_for.count());
        std::vector<natsMsg*> resend;
        std::vector<FailedEvent> failed;
        std::uint64_t oldest_sent = now;
        {
            std::lock_guard lock(unacked_mutex);
            // Read under the lock: an entry added meanwhile is never "older" than now
            // (an unsigned age would wrap and give it up at once).
            now = now_ms();
            oldest_sent = now;
            for (auto it = unacked.begin(); it != unacked.end();) {
                Unacked& u = it->second;
                if (now > u.first_sent_ms && now - u.first_sent_ms > retry_for) {
                    if (u.resend) natsMsg_Destroy(u.resend);
                    failed.push_back(FailedEvent{u.sender_id, std::move(u.room),
                                                 "the cluster did not acknowledge it in time"});
                    it = unacked.erase(it);
                    unacked_count.fetch_sub(1, std::memory_order_relaxed);
                    continue;
                }
                if (u.resend != nullptr && link_up.load()) {
                    resend.push_back(u.resend);
                    u.resend = nullptr;
                    u.sent_ms = now;
                }
                oldest_sent = std::min(oldest_sent, u.sent_ms);
                ++it;
            }
        }
        std::size_t retried = 0;
        for (natsMsg* msg : resend) {
            jsPubOptions po;
            jsPubOptions_Init(&po);
            po.MaxWait = static_cast<std::int64_t>(dead_after);
            if (js_PublishMsgAsync(js, &msg, &po) != NATS_OK) {
                // Not even queued: keep it for the next round.
                std::lock_guard lock(unacked_mutex);
                if (auto it = unacked.find(number_of(msg)); it != unacked.end() && it->second.resend == nullptr)
                    it->second.resend = msg;
                else
                    natsMsg_Destroy(msg);
            } else {
                ++retried;
            }
        }
        if (retried > 0) broker.push(AckEvent{0, 0});  // wakes stats; cheap
        for (auto& f : failed) broker.push(std::move(f));
        retried_total.fetch_add(retried, std::memory_order_relaxed);

        const bool down_too_long = !link_up.load() && now - link_down_since_ms.load() >= dead_after;
        const bool acks_too_late = now > oldest_sent && now - oldest_sent >= dead_after;
        const bool available = !down_too_long && !acks_too_late;
        if (available != last_available) {
            last_available = available;
            broker.push(AvailabilityEvent{available});
        }
    }
    std::atomic<std::uint64_t> retried_total = 0;

    // --- libnats callbacks ---

    static void on_live(natsConnection*, natsSubscription*, natsMsg* msg, void* closure) {
        if (!Gate::enter_from(closure, [&](Impl& self) { self.received(msg); })) natsMsg_Destroy(msg);
    }
    void received(natsMsg* msg) {
        Impl& self = *this;
        const std::string_view subject(natsMsg_GetSubject(msg));
        const auto dot = subject.rfind('.');
        auto room = dot == std::string_view::npos ? std::nullopt : room_from_token(subject.substr(dot + 1));
        const std::uint64_t seq = header_u64(msg, "Nats-Sequence", 0);
        const std::uint64_t last = header_u64(msg, "Nats-Last-Sequence", ClusterRoomLog::unknown_link);
        auto body = decode_cluster_body(
            std::string_view(natsMsg_GetData(msg), static_cast<std::size_t>(natsMsg_GetDataLength(msg))));
        natsMsg_Destroy(msg);
        if (!room || seq == 0 || !body) {
            self.broker.log_->warn("cluster: a malformed message on {} was dropped", log_safe(subject));
            return;
        }
        self.broker.push(LiveEvent{std::move(*room), ClusterRoomLog::Entry{seq, last, std::move(*body)}});
    }

    static void on_disconnected(natsConnection*, void* closure) {
        Gate::enter_from(closure, [](Impl& self) { self.disconnected(); });
    }
    void disconnected() {
        Impl& self = *this;
        self.link_down_since_ms = now_ms();
        self.link_up = false;
        self.broker.push(LinkEvent{false});
    }

    static void on_reconnected(natsConnection*, void* closure) {
        Gate::enter_from(closure, [](Impl& self) { self.reconnected(); });
    }
    void reconnected() {
        Impl& self = *this;
        self.link_up = true;
        self.broker.push(LinkEvent{true});
        // The stream may be new (a wiped store): check it before anything
        // received from now on is put on a room's log.
        self.submit([&self] { self.verify_stream(); });
        for (auto& hook : self.reconnect_hooks) hook();
    }

    void verify_stream() {
        std::string error;
        for (int attempt = 0; attempt < 50; ++attempt) {
            if (auto epoch = ensure_stream(&error)) {
                broker.push(EpochEvent{*epoch});
                return;
            }
            {
                std::unique_lock lock(jobs_mutex);
                if (jobs_ready.wait_for(lock, std::chrono::milliseconds(200), [this] { return jobs_stop; })) return;
            }
        }
        broker.log_->error("cluster: cannot set the stream up again: {}", error);
    }

    static void on_error(natsConnection*, natsSubscription*, natsStatus err, void* closure) {
        Gate::enter_from(closure,
                         [err](Impl& self) { self.broker.log_->warn("cluster: NATS: {}", natsStatus_GetText(err)); });
    }
};

ClusterBroker::ClusterBroker(ClusterConfig config, HubPoster post_to_hub, std::shared_ptr<spdlog::logger> log)
    : config_(std::move(config)), post_to_hub_(std::move(post_to_hub)), log_(std::move(log)),
      impl_(std::make_unique<Impl>(*this)) {
    if (config_.node_name.empty()) config_.node_name = make_node_name();
    std::random_device random;
    // The incarnation: a restarted node never reuses a Nats-Msg-Id.
    impl_->node_id = fmt::format("{}.{:08x}{:08x}", config_.node_name, random(), random());
}

ClusterBroker::~ClusterBroker() { stop(std::chrono::milliseconds(0)); }

void ClusterBroker::start() {
    impl_->connect();
    std::string error;
    auto epoch = impl_->ensure_stream(&error);
    if (!epoch) throw std::runtime_error("cluster: " + error + " (is JetStream enabled on the NATS server?)");
    epoch_ = *epoch;
    impl_->tick_hooks.push_back([this] {
        if (gaps_waiting_.load(std::memory_order_relaxed)) push(HubWork{[this] { retry_gaps(); }});
    });
    impl_->worker = std::thread([this] { impl_->run_worker(); });
    log_->info("cluster: node {} on {}, stream {} (epoch {}), {} message(s) per room", config_.node_name,
               fmt::join(config_.servers, ","), config_.stream, epoch_, config_.history);
}

void ClusterBroker::stop(std::chrono::milliseconds grace) {
    {
        std::lock_guard lock(inbox_mutex_);
        if (stopping_) return;
        stopping_ = true;
    }
    inbox_space_.notify_all();
    if (impl_->connection != nullptr && impl_->js != nullptr && grace.count() > 0) {
        jsPubOptions po;
        jsPubOptions_Init(&po);
        po.MaxWait = grace.count();
        js_PublishAsyncComplete(impl_->js, &po);
    }
    {
        std::lock_guard lock(impl_->jobs_mutex);
        impl_->jobs_stop = true;
    }
    impl_->jobs_ready.notify_all();
    if (impl_->worker.joinable()) impl_->worker.join();
    // From here no libnats callback reaches this broker: what is inside one
    // now finishes (a push returns at once, stopping_ is set), what comes
    // later -- the disconnected callback natsConnection_Close posts, a
    // message a pool thread already took -- finds the gate closed.
    impl_->gate->close();
    for (auto& hook : impl_->stop_hooks) hook();
    impl_->stop_hooks.clear();
    for (auto& [room, sub] : impl_->subscriptions) natsSubscription_Destroy(sub);
    impl_->subscriptions.clear();
    if (impl_->connection != nullptr) natsConnection_Close(impl_->connection);
    {
        std::lock_guard lock(impl_->unacked_mutex);
        for (auto& [n, u] : impl_->unacked)
            if (u.resend) natsMsg_Destroy(u.resend);
        impl_->unacked.clear();
    }
    if (impl_->js != nullptr) jsCtx_Destroy(impl_->js);
    if (impl_->connection != nullptr) natsConnection_Destroy(impl_->connection);
    if (impl_->options != nullptr) natsOptions_Destroy(impl_->options);
    impl_->js = nullptr;
    impl_->connection = nullptr;
    impl_->options = nullptr;
}

natsConnection* ClusterBroker::nats_connection() const noexcept { return impl_->connection; }
jsCtx* ClusterBroker::jetstream() const noexcept { return impl_->js; }
const std::string& ClusterBroker::node_id() const noexcept { return impl_->node_id; }
void ClusterBroker::run_on_worker(std::function<void()> job) { impl_->submit(std::move(job)); }
void ClusterBroker::run_on_hub(std::function<void()> work) { push(HubWork{std::move(work)}); }
void ClusterBroker::on_worker_tick(std::function<void()> hook) { impl_->tick_hooks.push_back(std::move(hook)); }
void ClusterBroker::on_reconnected(std::function<void()> hook) { impl_->reconnect_hooks.push_back(std::move(hook)); }
void ClusterBroker::on_stopping(std::function<void()> hook) { impl_->stop_hooks.push_back(std::move(hook)); }
bool ClusterBroker::link_up() const noexcept { return impl_->link_up.load(); }

// --- the inbox ---

void ClusterBroker::push(Event event) {
    bool post = false;
    {
        std::unique_lock lock(inbox_mutex_);
        // Backpressure onto libnats' thread (and so onto NATS' flow control),
        // never onto an io_context thread: the hub only takes from here.
        inbox_space_.wait(lock, [this] { return stopping_ || inbox_.size() < inbox_capacity; });
        if (stopping_) return;
        inbox_.push_back(std::move(event));
        if (!drain_posted_) {
            drain_posted_ = true;
            post = true;
        }
    }
    if (post) post_to_hub_([this] { drain(); });
}

void ClusterBroker::drain() {
    std::deque<Event> batch;
    {
        std::lock_guard lock(inbox_mutex_);
        batch.swap(inbox_);
        drain_posted_ = false;
    }
    inbox_space_.notify_all();
    for (auto& event : batch) std::visit([this](auto& e) { handle(e); }, event);
}

// --- hub thread ---

std::uint64_t ClusterBroker::subscribe(std::string_view room, Subscriber& subscriber) {
    const std::string name(room);
    auto it = rooms_.find(name);
    if (it != rooms_.end()) {
        it->second->subscriber = &subscriber;
        return it->second->ready ? epoch_ : 0;
    }
    auto state = std::make_unique<RoomState>(name, config_.history, next_generation_++, gap_give_up_ms());
    state->subscriber = &subscriber;
    RoomState& r = *state;
    rooms_.emplace(name, std::move(state));
    counters_.rooms.store(rooms_.size(), std::memory_order_relaxed);
    request_load(name, r);
    return 0;
}

void ClusterBroker::request_load(const std::string& name, RoomState& room) {
    room.ready = false;
    room.filling = false;
    room.log.reset();
    const std::uint64_t generation = room.generation = next_generation_++;
    impl_->submit([this, name, generation] { impl_->load(name, generation); });
}

void ClusterBroker::unsubscribe(std::string_view room) {
    const std::string name(room);
    if (rooms_.erase(name) == 0) return;
    counters_.rooms.store(rooms_.size(), std::memory_order_relaxed);
    impl_->submit([this, name] { impl_->unfollow(name); });
}

PublishResult ClusterBroker::publish(std::string_view room, std::string_view sender, std::string_view text,
                                     std::uint64_t timestamp_ms, std::uint64_t sender_id) {
    if (!available() || !impl_->publish(room, sender, text, timestamp_ms, sender_id)) {
        bump(counters_.refused);
        return PublishResult::unavailable;
    }
    bump(counters_.published);
    return PublishResult::accepted;
}

Replay ClusterBroker::replay(std::string_view room, const ReplayRequest& request) {
    auto it = rooms_.find(std::string(room));
    if (it == rooms_.end()) return Replay{};
    return it->second->log.replay(epoch_, request);
}

void ClusterBroker::advance(const std::string& name, RoomState& room) {
    if (!verified_) return;  // after a disconnect: wait until the stream is checked
    Subscriber* subscriber = room.subscriber;
    auto gap = room.log.advance(
        epoch_,
        [subscriber](const StoredMessage& m) {
            if (subscriber) subscriber->on_message(m);
        },
        [this, &name, subscriber] {
            bump(counters_.missed);
            log_->warn("cluster: room '{}': messages never reached this node and are gone from the stream; "
                       "its members are told",
                       log_safe(name));
            if (subscriber) subscriber->on_missed();
        });
    if (gap && !room.filling && !room.fill_paused) {
        bump(counters_.gaps);
        room.filling = true;
        const std::uint64_t generation = room.generation;
        impl_->submit([this, name, generation, gap = *gap] { impl_->fill(name, generation, gap.after, gap.upto); });
    }
}

void ClusterBroker::handle(LiveEvent& e) {
    bump(counters_.live);
    auto it = rooms_.find(e.room);
    if (it == rooms_.end()) return;  // no longer followed here
    RoomState& room = *it->second;
    room.log.offer(std::move(e.entry));
    room.fill_paused = false;  // news for the room: a gap may have closed, or a fill may now reach
    if (room.ready) advance(e.room, room);
}

void ClusterBroker::handle(LoadedEvent& e) {
    auto it = rooms_.find(e.room);
    if (it == rooms_.end() || it->second->generation != e.generation) return;
    RoomState& room = *it->second;
    bump(counters_.fetched, e.entries.size());
    if (!e.ok) {
        // NATS did not answer: open the room with what arrives from now on
        // and fetch the rest once the link is back (LinkEvent, EpochEvent).
        log_->warn("cluster: could not load the history of room '{}'; it opens without it", log_safe(e.room));
    }
    room.log.load(std::move(e.entries), e.full || !e.ok);
    // No members yet (their JOINs wait for on_ready): the loaded messages go
    // onto the log without being delivered to anyone.
    Subscriber* subscriber = room.subscriber;
    room.subscriber = nullptr;
    advance(e.room, room);
    room.subscriber = subscriber;
    room.ready = true;
    if (subscriber) subscriber->on_ready();
}

void ClusterBroker::handle(FilledEvent& e) {
    auto it = rooms_.find(e.room);
    if (it == rooms_.end() || it->second->generation != e.generation) return;
    RoomState& room = *it->second;
    room.filling = false;
    bump(counters_.fetched, e.entries.size());
    // A fill for a gap must find the message the waiting one links to. When
    // the stream has already dropped it (the per-room limit, at a high rate),
    // its live copy is still on its way: what the fill found beyond it would
    // otherwise be linked over it, and the live copies dropped as seen.
    // The gap may have closed meanwhile (the live copy came, out of order):
    // then there is nothing to wait for.
    bool reached = e.upto == 0 || room.log.head() >= e.upto;
    for (auto& entry : e.entries) {
        if (e.upto != 0 && entry.seq > e.upto) continue;
        if (entry.seq == e.upto) reached = true;
        room.log.offer(std::move(entry));
    }
    if (!e.ok) return;  // tried again when the link comes back
    if (reached) {
        room.gap_wait.closed();
    } else if (room.gap_wait.short_fill(e.upto, now_ms()) == GapWait::Verdict::skip) {
        // The live copy never came (lost while this node was cut off, and
        // trimmed since): go on; a resume from before it counts "unknown".
        log_->warn("cluster: room '{}': message {} is no longer in the stream and never arrived; skipped",
                   log_safe(e.room), e.upto);
        room.log.skip_gap();
    } else {
        room.fill_paused = true;
        gaps_waiting_.store(true, std::memory_order_relaxed);
    }
    if (room.ready) advance(e.room, room);
}

// Two seconds, not dead-after: a live copy that is merely out of order comes
// within a fill's round trip (well under a second at full load), while a link
// to a message the stream never committed (a NATS server killed after it
// republished, before its replicas had it) is never filled, and every such
// gap in a row holds the room for this long.
std::uint64_t ClusterBroker::gap_give_up_ms() const noexcept { return 2'000; }

// Hub thread, from the worker's tick: rooms whose fill came back short try again.
void ClusterBroker::retry_gaps() {
    bool still = false;
    for (auto& [name, room] : rooms_) {
        if (!room->fill_paused) continue;
        room->fill_paused = false;
        if (room->ready) advance(name, *room);
        still = still || room->gap_wait.waiting();
    }
    gaps_waiting_.store(still, std::memory_order_relaxed);
}

void ClusterBroker::handle(LinkEvent& e) {
    if (!e.up) {
        verified_ = false;
        log_->warn("cluster: disconnected from NATS; reconnecting");
    } else {
        bump(counters_.reconnects);
        log_->info("cluster: reconnected to NATS");
    }
}

void ClusterBroker::handle(EpochEvent& e) {
    verified_ = true;
    if (e.epoch != epoch_) {
        bump(counters_.epoch_changes);
        log_->warn("cluster: stream {} is new (epoch {} -> {}): the rooms' history is gone", config_.stream, epoch_,
                   e.epoch);
        epoch_ = e.epoch;
        for (auto& [name, room] : rooms_) {
            if (!room->ready) {
                request_load(name, *room);
                continue;
            }
            room->log.reset();
        }
    }
    // Whatever was stored while this node was cut off came on no live subject:
    // fetch every followed room from its head.
    for (auto& [name, room] : rooms_) {
        if (!room->ready) continue;
        room->filling = true;
        const std::uint64_t generation = ++room->generation;  // answers to older fills are stale now
        const std::uint64_t head = room->log.head();
        impl_->submit([this, name = name, generation, head] { impl_->fill(name, generation, head, 0); });
    }
}

void ClusterBroker::handle(AvailabilityEvent& e) {
    available_.store(e.available, std::memory_order_relaxed);
    if (e.available)
        log_->info("cluster: available again");
    else
        log_->warn("cluster: unavailable (no acknowledgment from NATS within {}); SAYs are refused",
                   format_duration(config_.dead_after));
}

void ClusterBroker::handle(AckEvent& e) {
    bump(counters_.acked, e.acked);
    bump(counters_.duplicates, e.duplicates);
}

void ClusterBroker::handle(FailedEvent& e) {
    bump(counters_.failed);
    log_->warn("cluster: a message of session {} to room '{}' was lost: {}", e.sender_id, log_safe(e.room), e.reason);
    if (listener_ != nullptr) listener_->on_publish_failed(e.sender_id, e.room, e.reason);
}

ClusterBroker::Stats ClusterBroker::stats() const {
    Stats s;
    const auto& c = counters_;
    s.published = c.published.load(std::memory_order_relaxed);
    s.acked = c.acked.load(std::memory_order_relaxed);
    s.duplicates = c.duplicates.load(std::memory_order_relaxed);
    s.failed = c.failed.load(std::memory_order_relaxed);
    s.refused = c.refused.load(std::memory_order_relaxed);
    s.live = c.live.load(std::memory_order_relaxed);
    s.fetched = c.fetched.load(std::memory_order_relaxed);
    s.gaps = c.gaps.load(std::memory_order_relaxed);
    s.missed = c.missed.load(std::memory_order_relaxed);
    s.reconnects = c.reconnects.load(std::memory_order_relaxed);
    s.epoch_changes = c.epoch_changes.load(std::memory_order_relaxed);
    s.rooms = c.rooms.load(std::memory_order_relaxed);
    s.unacked = impl_->unacked_count.load(std::memory_order_relaxed);
    s.retried = impl_->retried_total.load(std::memory_order_relaxed);
    return s;
}

}  // namespace chat
