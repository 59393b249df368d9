#include "chat/client/display.hpp"

#include <chrono>
#include <ctime>

#include <fmt/format.h>

#include "chat/common/json.hpp"

namespace chat {
namespace {

// SGR sequences; only ever emitted in OutputStyle::colour.
constexpr std::string_view reset = "\033[0m";
constexpr std::string_view dim = "\033[2m";
constexpr std::string_view bold = "\033[1m";
constexpr std::string_view red = "\033[31m";
constexpr std::string_view green = "\033[32m";
constexpr std::string_view yellow = "\033[33m";
constexpr std::string_view magenta = "\033[35m";
constexpr std::string_view cyan = "\033[36m";
constexpr std::string_view bold_cyan = "\033[1;36m";
constexpr std::string_view bold_green = "\033[1;32m";

std::string join_names(const std::vector<std::string>& names) {
    std::string out;
    for (const auto& n : names) {
        if (!out.empty()) out += ", ";
        out += terminal_safe(n);
    }
    return out;
}

std::string plural(std::uint64_t n, std::string_view one, std::string_view many) {
    return fmt::format("{} {}", n, n == 1 ? one : many);
}

std::uint64_t ms(Duration d) { return static_cast<std::uint64_t>(std::max<Duration::rep>(0, d.count())); }

}  // namespace

std::uint64_t unix_now_ms() {
    return static_cast<std::uint64_t>(
        std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
            .count());
}

std::string format_clock(std::uint64_t unix_ms) {
    const std::time_t seconds = static_cast<std::time_t>(unix_ms / 1000);
    std::tm local{};
    localtime_r(&seconds, &local);
    char text[16];
    const auto n = std::strftime(text, sizeof text, "%H:%M:%S", &local);
    return std::string(text, n);
}

std::string terminal_safe(std::string_view text) {
    static constexpr std::string_view replacement = "\xEF\xBF\xBD";
    std::string out;
    out.reserve(text.size());
    for (std::size_t i = 0; i < text.size();) {
        const std::size_t n = utf8_sequence_length(text, i);
        const auto c = static_cast<unsigned char>(text[i]);
        if (n == 0) {
            out += replacement;
            ++i;
            continue;
        }
        const bool c0 = n == 1 && ((c < 0x20 && c != '\t') || c == 0x7F);
        // C1 controls (U+0080..U+009F) include CSI, which terminals obey too.
        const bool c1 = n == 2 && c == 0xC2 && static_cast<unsigned char>(text[i + 1]) < 0xA0;
        if (c0 || c1)
            out += replacement;
        else
            out.append(text.substr(i, n));
        i += n;
    }
    return out;
}

std::string room_label(std::string_view room) { return "#" + terminal_safe(room); }

std::string EventFormatter::paint(std::string_view colour, std::string_view text) const {
    if (style_ != OutputStyle::colour || colour.empty()) return std::string(text);
    std::string out;
    out.reserve(colour.size() + text.size() + reset.size());
    out.append(colour).append(text).append(reset);
    return out;
}

std::string EventFormatter::line(std::uint64_t unix_ms, std::string_view colour, std::string_view text) const {
    return paint(dim, "[" + format_clock(unix_ms) + "]") + " " + paint(colour, text);
}

std::string EventFormatter::frame(const Message& message, const FrameNote& note, std::string_view own_nick) const {
    if (style_ == OutputStyle::json) return json(message, note, own_nick);
    return human(message, note, own_nick);
}

std::string EventFormatter::human(const Message& message, const FrameNote& note, std::string_view own_nick) const {
    const auto now = unix_now_ms();
    if (const auto* d = std::get_if<Deliver>(&message)) {
        const bool own = d->sender == own_nick;
        std::string nick = "<" + terminal_safe(d->sender) + ">";
        if (style_ == OutputStyle::colour) {
            // Replayed history is dimmed as a whole; live lines get a coloured nick.
            if (d->history)
                return paint(dim, "[" + format_clock(d->timestamp_ms) + "] " + room_label(d->room) + " " + nick + " " +
                                      terminal_safe(d->text));
            return paint(dim, "[" + format_clock(d->timestamp_ms) + "]") + " " + paint(cyan, room_label(d->room)) +
                   " " + paint(own ? bold_green : bold, nick) + " " + terminal_safe(d->text);
        }
        return "[" + format_clock(d->timestamp_ms) + "] " + room_label(d->room) + " " + nick + " " +
               terminal_safe(d->text);
    }
    if (const auto* w = std::get_if<Whisper>(&message)) {
        const auto ts = w->timestamp_ms != 0 ? w->timestamp_ms : now;
        if (w->echo) return line(ts, magenta, "-> *" + terminal_safe(w->peer) + "* " + terminal_safe(w->text));
        return line(ts, magenta, "*" + terminal_safe(w->peer) + "* " + terminal_safe(w->text));
    }
    if (const auto* p = std::get_if<Presence>(&message)) {
        const std::string who = p->nick == own_nick ? std::string("you") : terminal_safe(p->nick);
        std::string what;
        switch (p->event) {
            case PresenceEvent::joined: what = who + " joined"; break;
            case PresenceEvent::left: what = who + " left"; break;
            case PresenceEvent::timed_out: what = who + " timed out"; break;
            case PresenceEvent::disconnected:
                what = who + " disconnected";
                if (!p->detail.empty()) what += " (" + terminal_safe(p->detail) + ")";
                break;
            case PresenceEvent::renamed: what = who + " is now known as " + terminal_safe(p->detail); break;
        }
        return line(now, yellow, room_label(p->room) + " -- " + what);
    }
    if (const auto* j = std::get_if<Joined>(&message)) {
        std::string text = room_label(j->room) + " -- ";
        if (note.rejoin) {
            text += "rejoined";
            if (j->epoch_changed)
                text += "; the room was started anew while you were away, so messages sent before that are lost";
            if (j->missed == missed_unknown)
                text += "; you missed messages the server no longer holds (it cannot tell how many)";
            else if (j->missed > 0)
                text += "; you missed " + plural(j->missed, "message", "messages") + " the server no longer holds";
            if (j->history_count > 0)
                text += "; " + plural(j->history_count, "message", "messages") + " from while you were away follow";
            else if (j->missed == 0 && !j->epoch_changed)
                text += "; nothing was said while you were away";
        } else if (j->quiet) {
            text += "joined a large room: joins and leaves are not shown here; /who " + terminal_safe(j->room) +
                    " lists who is in it";
        } else {
            text += "joined; here: " + join_names(j->members);
        }
        return line(now, yellow, text);
    }
    if (const auto* n = std::get_if<Nick>(&message))
        return line(now, yellow, "-- you are now known as " + terminal_safe(n->new_nick));
    if (const auto* r = std::get_if<Rooms>(&message)) {
        if (r->rooms.empty()) return line(now, cyan, "** no rooms");
        std::string text = "** rooms:";
        for (const auto& room : r->rooms) text += fmt::format(" {} ({})", room_label(room.name), room.members);
        return line(now, cyan, text);
    }
    if (const auto* m = std::get_if<Members>(&message))
        return line(now, cyan, "** " + room_label(m->room) + ": " + join_names(m->nicks));
    if (const auto* e = std::get_if<Error>(&message)) {
        std::string text = "!! " + terminal_safe(e->reason) + " (" + std::string(to_string(e->code)) + ")";
        if (note.retry) text += "; sending it again in " + format_duration(note.retry_in);
        return line(now, red, text);
    }
    return {};
}

std::string EventFormatter::json(const Message& message, const FrameNote& note, std::string_view own_nick) const {
    if (const auto* d = std::get_if<Deliver>(&message)) {
        return JsonObject()
            .add("type", "message")
            .add("room", d->room)
            .add("nick", d->sender)
            .add("text", d->text)
            .add("ts", d->timestamp_ms)
            .add("seq", d->position.seq)
            .add("history", d->history)
            .str();
    }
    if (const auto* w = std::get_if<Whisper>(&message)) {
        return JsonObject()
            .add("type", "whisper")
            .add("from", w->echo ? own_nick : std::string_view(w->peer))
            .add("to", w->echo ? std::string_view(w->peer) : own_nick)
            .add("text", w->text)
            .add("ts", w->timestamp_ms)
            .str();
    }
    if (const auto* p = std::get_if<Presence>(&message)) {
        JsonObject o;
        o.add("type", "presence").add("room", p->room).add("nick", p->nick).add("event", to_string(p->event));
        if (p->event == PresenceEvent::renamed) o.add("new_nick", p->detail);
        if (p->event == PresenceEvent::disconnected && !p->detail.empty()) o.add("reason", p->detail);
        return o.str();
    }
    if (const auto* j = std::get_if<Joined>(&message)) {
        return JsonObject()
            .add("type", "joined")
            .add("room", j->room)
            .add("members", j->members)
            .add("history", j->history_count)
            .add("missed", j->missed)
            .add("epoch_changed", j->epoch_changed)
            .add("quiet", j->quiet)
            .add("resumed", note.rejoin)
            .str();
    }
    if (const auto* n = std::get_if<Nick>(&message))
        return JsonObject().add("type", "nick").add("old", n->old_nick).add("new", n->new_nick).str();
    if (const auto* r = std::get_if<Rooms>(&message)) {
        std::string list = "[";
        for (const auto& room : r->rooms) {
            if (list.size() > 1) list += ",";
            list += JsonObject().add("name", room.name).add("members", room.members).str();
        }
        list += "]";
        return JsonObject().add("type", "rooms").add_raw("rooms", list).str();
    }
    if (const auto* m = std::get_if<Members>(&message))
        return JsonObject().add("type", "members").add("room", m->room).add("nicks", m->nicks).str();
    if (const auto* e = std::get_if<Error>(&message)) {
        JsonObject o;
        o.add("type", "error").add("code", to_string(e->code)).add("text", e->reason).add("fatal", e->fatal);
        if (note.retry) o.add("retry_ms", ms(note.retry_in));
        return o.str();
    }
    return {};
}

std::string EventFormatter::status(const ClientStatus& s) const {
    if (style_ == OutputStyle::json) {
        JsonObject o;
        o.add("type", "status").add("event", to_string(s.event)).add("server", s.server).add("ts", unix_now_ms());
        switch (s.event) {
            case StatusEvent::connected:
                o.add("nick", s.nick)
                    .add("reconnect", s.reconnect)
                    .add("server_name", s.server_name)
                    .add("server_version", s.server_version)
                    .add("heartbeat_interval_ms", ms(s.heartbeat_interval))
                    .add("heartbeat_timeout_ms", ms(s.heartbeat_timeout));
                break;
            case StatusEvent::server_timeout:
                o.add("silent_ms", ms(s.silent)).add("timeout_ms", ms(s.timeout));
                break;
            case StatusEvent::reconnecting:
                o.add("attempt", s.attempt).add("delay_ms", ms(s.delay)).add("reason", s.detail);
                break;
            case StatusEvent::disconnected:
                o.add("reason", s.detail);
                break;
        }
        return o.str();
    }
    const auto now = unix_now_ms();
    switch (s.event) {
        case StatusEvent::connected:
            return line(now, green,
                        fmt::format("** {} {} ({} {}) as {}", s.reconnect ? "reconnected to" : "connected to", s.server,
                                    terminal_safe(s.server_name), terminal_safe(s.server_version),
                                    terminal_safe(s.nick)));
        case StatusEvent::server_timeout:
            return line(now, red,
                        fmt::format("** server not responding: nothing received for {} (timeout {}); closing",
                                    format_duration(s.silent), format_duration(s.timeout)));
        case StatusEvent::reconnecting: {
            std::string text = fmt::format("** reconnecting in {} (attempt {})", format_duration(s.delay), s.attempt);
            if (s.attempt > 1 && !s.detail.empty()) text += "; last attempt: " + terminal_safe(s.detail);
            return line(now, yellow, text);
        }
        case StatusEvent::disconnected:
            return line(now, red, "** disconnected: " + terminal_safe(s.detail));
    }
    return {};
}

std::string EventFormatter::error(std::string_view code, std::string_view text) const {
    if (style_ == OutputStyle::json)
        return JsonObject().add("type", "error").add("code", code).add("text", text).add("fatal", false).str();
    return line(unix_now_ms(), red, "!! " + std::string(text));
}

std::string EventFormatter::info(std::string_view text) const {
    if (style_ == OutputStyle::json) return JsonObject().add("type", "info").add("text", text).str();
    // Continuation lines line up under the first line's text.
    std::string indented;
    for (char c : text) {
        indented.push_back(c);
        if (c == '\n') indented += "           ";
    }
    return line(unix_now_ms(), cyan, indented);
}

std::string EventFormatter::finished(std::string_view reason, int exit_code) const {
    if (style_ == OutputStyle::json) {
        return JsonObject()
            .add("type", "status")
            .add("event", "disconnected")
            .add("ts", unix_now_ms())
            .add("reason", reason)
            .add("exit", static_cast<unsigned>(exit_code))
            .str();
    }
    return line(unix_now_ms(), exit_code == 0 ? cyan : red, "** " + std::string(reason));
}

std::string EventFormatter::prompt(std::string_view room) const {
    const std::string text = room.empty() ? std::string(">") : room_label(room) + ">";
    if (style_ != OutputStyle::colour) return text + " ";
    // \001 and \002 tell the line editor that what lies between takes no columns.
    return "\001" + std::string(bold_cyan) + "\002" + text + "\001" + std::string(reset) + "\002 ";
}

}  // namespace chat
