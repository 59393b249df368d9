#include "chat/client/connection.hpp"

namespace chat {

std::string_view to_string(StatusEvent event) noexcept {
    switch (event) {
        case StatusEvent::connected: return "connected";
        case StatusEvent::server_timeout: return "server_timeout";
        case StatusEvent::reconnecting: return "reconnecting";
        case StatusEvent::disconnected: return "disconnected";
    }
    return "unknown";
}

}  // namespace chat
