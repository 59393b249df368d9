#include "chat/client/client_state.hpp"

#include <algorithm>

namespace chat {

ClientState::ClientState(std::string nick, const std::vector<std::string>& rooms, std::string token)
    : nick_(std::move(nick)), token_(std::move(token)) {
    for (const auto& room : rooms) {
        if (find(room) != nullptr) continue;
        rooms_.emplace_back(room);
    }
    if (!rooms_.empty()) current_ = rooms_.front().name;
}

ClientState::Room* ClientState::find(const std::string& name) {
    auto it = std::find_if(rooms_.begin(), rooms_.end(), [&](const Room& r) { return r.name == name; });
    return it == rooms_.end() ? nullptr : &*it;
}

const ClientState::Room* ClientState::find(const std::string& name) const {
    auto it = std::find_if(rooms_.begin(), rooms_.end(), [&](const Room& r) { return r.name == name; });
    return it == rooms_.end() ? nullptr : &*it;
}

bool ClientState::joined(const std::string& room) const {
    const Room* r = find(room);
    return r != nullptr && r->joined;
}

std::vector<std::string> ClientState::rooms() const {
    std::vector<std::string> names;
    names.reserve(rooms_.size());
    for (const auto& r : rooms_) names.push_back(r.name);
    return names;
}

std::optional<Position> ClientState::last_position(const std::string& room) const {
    const Room* r = find(room);
    return r == nullptr ? std::nullopt : r->last;
}

void ClientState::forget_room(const std::string& name) {
    std::erase_if(rooms_, [&](const Room& r) { return r.name == name; });
    if (current_ == name) current_ = rooms_.empty() ? std::string() : rooms_.back().name;
}

std::optional<std::string> ClientState::say(std::string text) {
    if (current_.empty()) return "you are in no room: /join ROOM first";
    queue_.push_back(Say{current_, std::move(text)});
    return std::nullopt;
}

std::optional<std::string> ClientState::whisper(std::string nick, std::string text) {
    queue_.push_back(Whisper{std::move(nick), 0, std::move(text), false});
    return std::nullopt;
}

std::optional<std::string> ClientState::join(std::string room) {
    if (find(room) != nullptr) return "already in #" + room;
    rooms_.emplace_back(room);
    current_ = room;
    queue_.push_back(Join{std::move(room), false, {}});
    return std::nullopt;
}

std::optional<std::string> ClientState::leave(const std::string& room) {
    if (find(room) == nullptr) return "not in #" + room;
    forget_room(room);
    queue_.push_back(Leave{room});
    return std::nullopt;
}

std::optional<std::string> ClientState::switch_to(const std::string& room) {
    if (find(room) == nullptr) return "not in #" + room + ": /join " + room + " first";
    current_ = room;
    return std::nullopt;
}

std::optional<std::string> ClientState::rename(std::string nick) {
    queue_.push_back(Nick{{}, std::move(nick)});
    return std::nullopt;
}

std::optional<std::string> ClientState::list() {
    queue_.push_back(List{});
    return std::nullopt;
}

std::optional<std::string> ClientState::who(std::string room) {
    queue_.push_back(Who{std::move(room)});
    return std::nullopt;
}

Hello ClientState::hello() const { return Hello{nick_, token_, resume_token_}; }

void ClientState::on_welcome(const Welcome& welcome) {
    connected_ = true;
    nick_ = welcome.nick;
    resume_token_ = welcome.resume_token;
    paused_until_ = {};
    // A message of unknown fate for a room the user left meanwhile is dropped:
    // no rejoin will show whether it arrived.
    if (unconfirmed_ && find(unconfirmed_->room) == nullptr) unconfirmed_.reset();
    // Rejoins go first, in the original join order, each resuming after the
    // newest message seen there.
    for (auto it = rooms_.rbegin(); it != rooms_.rend(); ++it) {
        it->joined = false;
        it->rejoining = false;
        it->history_left = 0;
        queue_.push_front(Join{it->name, it->last.has_value(), it->last.value_or(Position{})});
    }
}

std::vector<std::string> ClientState::on_disconnected() {
    std::vector<std::string> notices;
    connected_ = false;
    if (in_flight_) {
        std::visit(
            [&](auto& request) {
                using T = std::decay_t<decltype(request)>;
                if constexpr (std::is_same_v<T, Say>) {
                    if (unconfirmed_)
                        queue_.push_front(std::move(request));
                    else
                        unconfirmed_ = std::move(request);
                } else if constexpr (std::is_same_v<T, Whisper>) {
                    notices.push_back("the private message to " + request.peer +
                                      " may not have arrived (the connection was lost)");
                } else if constexpr (std::is_same_v<T, Nick> || std::is_same_v<T, List> || std::is_same_v<T, Who>) {
                    // Asking again does no harm.
                    queue_.push_front(std::move(request));
                }
                // JOIN and LEAVE: the rejoin after reconnecting covers them.
            },
            *in_flight_);
        in_flight_.reset();
    }
    // Queued joins and leaves are already in rooms_, which the rejoin follows.
    std::erase_if(queue_, [](const Message& m) {
        return std::holds_alternative<Join>(m) || std::holds_alternative<Leave>(m);
    });
    for (auto& room : rooms_) {
        room.joined = false;
        room.rejoining = false;
        room.history_left = 0;
    }
    return notices;
}

bool ClientState::answers(const Message& reply) const {
    if (!in_flight_) return false;
    const Message& request = *in_flight_;
    if (const auto* error = std::get_if<Error>(&reply)) return !error->fatal;
    if (const auto* joined = std::get_if<Joined>(&reply)) {
        const auto* join = std::get_if<Join>(&request);
        return join != nullptr && join->room == joined->room;
    }
    if (const auto* presence = std::get_if<Presence>(&reply)) {
        const auto* leave = std::get_if<Leave>(&request);
        return leave != nullptr && presence->event == PresenceEvent::left && presence->nick == nick_ &&
               presence->room == leave->room;
    }
    if (const auto* deliver = std::get_if<Deliver>(&reply)) {
        const auto* say = std::get_if<Say>(&request);
        return say != nullptr && !deliver->history && deliver->sender == nick_ && deliver->room == say->room &&
               deliver->text == say->text;
    }
    if (const auto* whisper = std::get_if<Whisper>(&reply)) {
        const auto* sent = std::get_if<Whisper>(&request);
        return sent != nullptr && whisper->echo && whisper->peer == sent->peer && whisper->text == sent->text;
    }
    if (std::holds_alternative<Nick>(reply)) return std::holds_alternative<Nick>(request);
    if (std::holds_alternative<Rooms>(reply)) return std::holds_alternative<List>(request);
    if (const auto* members = std::get_if<Members>(&reply)) {
        const auto* who = std::get_if<Who>(&request);
        return who != nullptr && who->room == members->room;
    }
    return false;
}

// The rejoin history of `room` is complete: a message of unknown fate that
// did not show up in it never reached the server, so it goes again.
void ClientState::history_done(Room& room, FrameNote& note) {
    room.rejoining = false;
    if (unconfirmed_ && unconfirmed_->room == room.name) {
        note.notice = "sending again what may not have reached the server: " + unconfirmed_->text;
        queue_.push_front(std::move(*unconfirmed_));
        unconfirmed_.reset();
    }
}

FrameNote ClientState::on_frame(const Message& message, Clock::time_point now) {
    FrameNote note;
    note.answer = answers(message);
    std::optional<Message> request;
    if (note.answer) {
        request = std::move(in_flight_);
        in_flight_.reset();
    }

    if (const auto* joined = std::get_if<Joined>(&message)) {
        Room* room = find(joined->room);
        const auto* join = request ? std::get_if<Join>(&*request) : nullptr;
        if (room != nullptr) {
            room->joined = true;
            room->rejoining = join != nullptr && join->resume;
            note.rejoin = room->rejoining;
            if (!room->last || room->last->epoch != joined->epoch) room->last = Position{joined->epoch, 0};
            room->history_left = joined->history_count;
            if (joined->history_count == 0) {
                room->last->seq = std::max(room->last->seq, joined->head_seq);
                history_done(*room, note);
            }
        }
    } else if (const auto* deliver = std::get_if<Deliver>(&message)) {
        if (Room* room = find(deliver->room)) {
            if (!room->last || room->last->epoch != deliver->position.epoch || room->last->seq < deliver->position.seq)
                room->last = deliver->position;
            if (deliver->history && room->history_left > 0) {
                note.rejoin = room->rejoining;
                if (unconfirmed_ && unconfirmed_->room == deliver->room && deliver->sender == nick_ &&
                    deliver->text == unconfirmed_->text)
                    unconfirmed_.reset();  // it did arrive before the connection died
                if (--room->history_left == 0) history_done(*room, note);
            }
        }
    } else if (const auto* nick = std::get_if<Nick>(&message)) {
        nick_ = nick->new_nick;
    } else if (const auto* error = std::get_if<Error>(&message); error != nullptr && request) {
        if (error->code == ErrorCode::rate_limited) {
            // Refused, not lost: the same request goes again after a pause
            // that doubles while the server keeps refusing.
            note.retry = true;
            note.retry_in = retry_delay_;
            paused_until_ = now + retry_delay_;
            retry_delay_ = std::min<Duration>(retry_delay_ * 2, Duration{3'200});
            queue_.push_front(std::move(*request));
            return note;
        }
        if (const auto* join = std::get_if<Join>(&*request)) {
            if (const Room* room = find(join->room); room != nullptr && !room->joined) forget_room(join->room);
        }
    }
    if (note.answer && !std::holds_alternative<Error>(message)) retry_delay_ = Duration{100};
    return note;
}

std::optional<Message> ClientState::next_request(Clock::time_point now) {
    if (!connected_ || in_flight_ || queue_.empty() || now < paused_until_) return std::nullopt;
    in_flight_ = std::move(queue_.front());
    queue_.pop_front();
    return in_flight_;
}

std::optional<ClientState::Clock::time_point> ClientState::paused_until(Clock::time_point now) const {
    if (now < paused_until_) return paused_until_;
    return std::nullopt;
}

}  // namespace chat
