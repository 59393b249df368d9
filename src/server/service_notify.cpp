#include "chat/server/service_notify.hpp"

#include <cstdint>
#include <cstdlib>

#include "pulsechat_config.h"

#if PULSECHAT_HAVE_SYSTEMD
#include <systemd/sd-daemon.h>
#endif

namespace chat {

ServiceNotifier::ServiceNotifier() {
#if PULSECHAT_HAVE_SYSTEMD
    const char* socket = std::getenv("NOTIFY_SOCKET");
    active_ = socket != nullptr && *socket != '\0';
    std::uint64_t usec = 0;
    // > 0: the watchdog is on for this process ($WATCHDOG_PID, if set, is ours).
    if (active_ && sd_watchdog_enabled(0, &usec) > 0 && usec > 0)
        watchdog_interval_ = std::chrono::microseconds(static_cast<std::int64_t>(usec / 2));
#endif
}

void ServiceNotifier::notify(const std::string& state) const {
#if PULSECHAT_HAVE_SYSTEMD
    if (active_) sd_notify(0, state.c_str());
#else
    (void)state;
#endif
}

void ServiceNotifier::ready(const std::string& status) const { notify("READY=1\nSTATUS=" + status); }
void ServiceNotifier::stopping(const std::string& status) const { notify("STOPPING=1\nSTATUS=" + status); }
void ServiceNotifier::watchdog() const { notify("WATCHDOG=1"); }

}  // namespace chat
