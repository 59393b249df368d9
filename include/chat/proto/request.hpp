// A logged-in client's requests, checked against PROTOCOL.md: the only form in
// which they reach the hub.
//
// Pure code, no Asio. The session turns each request frame (JOIN, LEAVE, SAY,
// WHISPER, NICK, LIST, WHO) into a Request or a Refusal here; the stateful fuzz
// target does the same, so what it proves about the hub holds for what a
// client can really make it do.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <variant>

#include "chat/proto/names.hpp"
#include "chat/proto/protocol.hpp"

namespace chat {

struct JoinRequest {
    RoomName room;
    bool resume = false;
    Position after;
};
struct LeaveRequest {
    RoomName room;
};
// `text` is a view into the frame it came from (no copy on the hub's own
// shard); whoever carries a request across threads copies it (OwnedRequest).
struct SayRequest {
    RoomName room;
    std::string_view text;
};
struct WhisperRequest {
    NickName to;
    std::string_view text;
};
struct RenameRequest {
    NickName nick;
};
struct ListRequest {};
struct WhoRequest {
    RoomName room;
};

using Request =
    std::variant<JoinRequest, LeaveRequest, SayRequest, WhisperRequest, RenameRequest, ListRequest, WhoRequest>;

// A request that breaks a rule: answered with a non-fatal ERROR.
struct Refusal {
    ErrorCode code;
    std::string_view reason;  // a fixed text: nothing of the client's is quoted
};

// True for the frame types vet_request() takes.
bool is_request_frame(const Message& frame) noexcept;

// The checked request, or why it is refused. `frame` must be a request frame
// (is_request_frame); the returned Request may point into its texts.
std::variant<Request, Refusal> vet_request(const Message& frame) noexcept;

// A Request that owns its text, for a trip to another thread.
class OwnedRequest {
public:
    explicit OwnedRequest(const Request& request);
    OwnedRequest(OwnedRequest&& other) noexcept;
    OwnedRequest& operator=(OwnedRequest&&) = delete;
    OwnedRequest(const OwnedRequest&) = delete;
    // Valid as long as this object.
    const Request& get() const noexcept { return request_; }

private:
    void rebind() noexcept;
    std::string text_;
    Request request_;
};

// For log lines and error reasons: the request's frame type name.
std::string_view request_name(const Request& request) noexcept;

}  // namespace chat
