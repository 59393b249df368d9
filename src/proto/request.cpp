#include "chat/proto/request.hpp"

#include <type_traits>

namespace chat {

namespace {
constexpr std::string_view bad_room =
    "room names are 1-64 characters of letters, digits, '_', '-', '.', '#', starting with a letter, digit or '#'";
constexpr std::string_view bad_nick =
    "nicknames are 1-32 characters of letters, digits, '_', '-', '.', starting with a letter or digit";
constexpr std::string_view bad_text = "text must be non-empty UTF-8 without control characters";
constexpr std::string_view bad_peer = "nobody is called that (not a valid nickname)";
}  // namespace

bool is_request_frame(const Message& frame) noexcept {
    return std::holds_alternative<Join>(frame) || std::holds_alternative<Leave>(frame) ||
           std::holds_alternative<Say>(frame) || std::holds_alternative<Whisper>(frame) ||
           std::holds_alternative<Nick>(frame) || std::holds_alternative<List>(frame) ||
           std::holds_alternative<Who>(frame);
}

std::variant<Request, Refusal> vet_request(const Message& frame) noexcept {
    using Result = std::variant<Request, Refusal>;
    const auto room_or_refusal = [](std::string_view text, auto make) -> Result {
        if (auto room = RoomName::parse(text)) return Request{make(*room)};
        return Refusal{ErrorCode::invalid_room, bad_room};
    };
    if (const auto* join = std::get_if<Join>(&frame))
        return room_or_refusal(join->room,
                               [&](const RoomName& r) { return JoinRequest{r, join->resume, join->after}; });
    if (const auto* leave = std::get_if<Leave>(&frame))
        return room_or_refusal(leave->room, [](const RoomName& r) { return LeaveRequest{r}; });
    if (const auto* who = std::get_if<Who>(&frame))
        return room_or_refusal(who->room, [](const RoomName& r) { return WhoRequest{r}; });
    if (const auto* say = std::get_if<Say>(&frame)) {
        auto room = RoomName::parse(say->room);
        if (!room) return Refusal{ErrorCode::invalid_room, bad_room};
        if (!is_valid_text(say->text)) return Refusal{ErrorCode::invalid_text, bad_text};
        return Request{SayRequest{*room, say->text}};
    }
    if (const auto* whisper = std::get_if<Whisper>(&frame)) {
        // Nobody can hold a nick that breaks the rules: no_such_nick, as for a free one.
        auto to = NickName::parse(whisper->peer);
        if (!to) return Refusal{ErrorCode::no_such_nick, bad_peer};
        if (!is_valid_text(whisper->text)) return Refusal{ErrorCode::invalid_text, bad_text};
        return Request{WhisperRequest{*to, whisper->text}};
    }
    if (const auto* nick = std::get_if<Nick>(&frame)) {
        auto wanted = NickName::parse(nick->new_nick);
        if (!wanted) return Refusal{ErrorCode::invalid_nick, bad_nick};
        return Request{RenameRequest{*wanted}};
    }
    if (std::holds_alternative<List>(frame)) return Request{ListRequest{}};
    // Not a request frame: the caller broke the precondition.
    return Refusal{ErrorCode::unknown_type, "not a request"};
}

OwnedRequest::OwnedRequest(const Request& request) : request_(request) {
    if (const auto* say = std::get_if<SayRequest>(&request_)) text_.assign(say->text);
    if (const auto* whisper = std::get_if<WhisperRequest>(&request_)) text_.assign(whisper->text);
    rebind();
}

OwnedRequest::OwnedRequest(OwnedRequest&& other) noexcept
    : text_(std::move(other.text_)), request_(other.request_) {
    rebind();
}

void OwnedRequest::rebind() noexcept {
    if (auto* say = std::get_if<SayRequest>(&request_)) say->text = text_;
    if (auto* whisper = std::get_if<WhisperRequest>(&request_)) whisper->text = text_;
}

std::string_view request_name(const Request& request) noexcept {
    constexpr std::string_view names[] = {"JOIN", "LEAVE", "SAY", "WHISPER", "NICK", "LIST", "WHO"};
    return names[request.index()];
}

}  // namespace chat
