// The closure handed to libnats for its callbacks.
//
// libnats calls back from its own threads and may do so after the object the
// closure names is gone: natsConnection_Close posts the disconnected callback
// to its callback thread and returns; a delivery-pool thread may be inside a
// message handler while natsSubscription_Destroy runs; a publish
// acknowledgment can arrive while the JetStream context is torn down. So the
// closure is never the owner itself but a gate: open while the owner lives,
// closed by its stop(), which waits out callbacks already inside. A gate is
// never freed (one per broker or directory ever started, a few bytes): a
// callback that comes late still finds it, closed.
#pragma once

#include <mutex>
#include <shared_mutex>
#include <vector>
#include <memory>

namespace chat {

template <class Owner>
class CallbackGate {
public:
    // A new open gate for `owner`, kept for the life of the process.
    static CallbackGate* open(Owner* owner) {
        auto gate = std::unique_ptr<CallbackGate>(new CallbackGate(owner));
        CallbackGate* raw = gate.get();
        static std::mutex kept_mutex;
        static std::vector<std::unique_ptr<CallbackGate>> kept;
        std::lock_guard lock(kept_mutex);
        kept.push_back(std::move(gate));
        return raw;
    }

    // Runs `f(owner)` while the gate is open, and nothing once it is closed;
    // true if it ran. Callbacks may run side by side (a shared lock: no
    // contention between libnats' threads on the message path).
    template <class F>
    bool enter(F&& f) {
        std::shared_lock lock(mutex_);
        if (owner_ == nullptr) return false;
        f(*owner_);
        return true;
    }

    // Closes the gate; returns once no callback is inside. Never call it from
    // inside a callback of the same gate.
    void close() {
        std::unique_lock lock(mutex_);
        owner_ = nullptr;
    }

    static bool enter_from(void* closure, auto&& f) {
        return static_cast<CallbackGate*>(closure)->enter(std::forward<decltype(f)>(f));
    }

private:
    explicit CallbackGate(Owner* owner) : owner_(owner) {}
    std::shared_mutex mutex_;
    Owner* owner_;
};

}  // namespace chat
