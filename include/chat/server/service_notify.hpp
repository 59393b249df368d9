// Telling systemd how the server is doing (sd_notify): READY=1 once every
// listener is up, STOPPING=1 when a drain begins, and WATCHDOG=1 from the hub
// shard's event loop, so that a wedged server is restarted: the heartbeat
// idea applied to the server itself (deploy/pulsechat.service).
//
// Through libsystemd when the build has it (meson option `systemd`); without
// it, or when the process was not started by systemd (no $NOTIFY_SOCKET),
// every call does nothing.
#pragma once

#include <chrono>
#include <optional>
#include <string>

namespace chat {

class ServiceNotifier {
public:
    // Reads $NOTIFY_SOCKET and $WATCHDOG_USEC (and $WATCHDOG_PID) once.
    ServiceNotifier();

    // Whether a service manager listens.
    bool active() const noexcept { return active_; }
    // How often to send WATCHDOG=1: half of WatchdogSec=, or nothing when
    // the unit asks for no watchdog.
    std::optional<std::chrono::microseconds> watchdog_interval() const noexcept { return watchdog_interval_; }

    void ready(const std::string& status) const;
    void stopping(const std::string& status) const;
    void watchdog() const;

private:
    void notify(const std::string& state) const;

    bool active_ = false;
    std::optional<std::chrono::microseconds> watchdog_interval_;
};

}  // namespace chat
