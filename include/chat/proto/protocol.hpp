// The pulsechat wire protocol: message types, their encoder and an incremental decoder.
//
// Pure code: no sockets, no Asio, no logging. docs/PROTOCOL.md is the normative
// description; this header is its executable form.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

namespace chat {

inline constexpr std::uint8_t protocol_version = 1;
// version(1) type(1) flags(2, BE) payload length(4, BE)
inline constexpr std::size_t header_size = 8;
// Largest payload a peer may send unless both sides agree otherwise (WELCOME says).
inline constexpr std::uint32_t default_max_frame = 64 * 1024;
// A server's frames may exceed the max_frame it announced in WELCOME by up to
// this much, because a DELIVER wraps a SAY's text in more fields; clients size
// their decoder with max_frame + max_frame_overhead.
inline constexpr std::uint32_t max_frame_overhead = 1024;
// Short strings (nick, room, reasons, names) carry a u16 length; text carries a u32.
inline constexpr std::size_t max_short_string = 0xFFFF;
inline constexpr std::size_t max_nick_length = 32;
inline constexpr std::size_t max_room_length = 64;

enum class FrameType : std::uint8_t {
    hello = 0x01,
    welcome = 0x02,
    join = 0x03,
    joined = 0x04,
    leave = 0x05,
    say = 0x06,
    deliver = 0x07,
    whisper = 0x08,
    presence = 0x09,
    nick = 0x0A,
    list = 0x0B,
    rooms = 0x0C,
    who = 0x0D,
    members = 0x0E,
    heartbeat = 0x0F,
    ping = 0x10,
    pong = 0x11,
    error = 0x12,
    bye = 0x13,
};

// Flag bit 0 has one meaning per frame type; all other bits are reserved:
// senders set them to zero, receivers ignore them.
inline constexpr std::uint16_t flag_history = 0x0001;  // DELIVER: replayed from history
inline constexpr std::uint16_t flag_fatal = 0x0001;    // ERROR: the sender closes after it
inline constexpr std::uint16_t flag_echo = 0x0001;     // WHISPER: copy of one the receiver sent
inline constexpr std::uint16_t flag_quiet = 0x0001;    // JOINED: presence is not announced in this room

// Stable numeric error codes carried by ERROR frames. Never renumber.
// JOINED's `missed` when the server knows messages after the resume point are
// gone but not how many (a cluster's history drops a room's oldest messages
// without counting them).
inline constexpr std::uint64_t missed_unknown = ~std::uint64_t{0};

enum class ErrorCode : std::uint16_t {
    malformed_frame = 1,      // a field is truncated, a length lies, trailing bytes
    unsupported_version = 2,  // header version is not one the server speaks
    unknown_type = 3,         // frame type not defined, or not valid in this direction
    frame_too_large = 4,      // payload length over the announced maximum
    invalid_utf8 = 5,         // a string is not valid UTF-8
    handshake_timeout = 6,    // no HELLO within the handshake timeout
    hello_required = 7,       // a frame other than HELLO before the handshake
    duplicate_hello = 8,      // a second HELLO on one connection
    invalid_nick = 9,         // nickname breaks the rules
    nick_taken = 10,          // nickname held by another session
    auth_failed = 11,         // missing or wrong access token
    invalid_room = 12,        // room name breaks the rules
    not_in_room = 13,         // SAY/LEAVE for a room the session has not joined
    too_many_rooms = 14,      // over --max-rooms-per-session
    no_such_nick = 15,        // WHISPER to a nick nobody holds
    invalid_text = 16,        // empty text, or control characters
    rate_limited = 17,        // over the per-session message rate
    slow_consumer = 18,       // the session's write queue or a write overran its bound
    heartbeat_timeout = 19,   // nothing received within the heartbeat timeout
    server_full = 20,         // over --max-connections
    too_many_connections_from_address = 21,  // over --max-per-ip
    replaced = 22,            // another connection resumed this session's nickname
    shutting_down = 23,       // the server is stopping
    internal = 24,            // a bug on the server; reported rather than crashing
    unavailable = 25,         // the cluster broker cannot take the message now (non-fatal)
    messages_missed = 26,     // a room's messages never reached this (clustered) server (non-fatal)
};

std::string_view to_string(ErrorCode code) noexcept;

struct Hello {
    std::string nick;
    std::string token;         // access token; empty when the server needs none
    std::string resume_token;  // from an earlier WELCOME; empty for a fresh login
    friend bool operator==(const Hello&, const Hello&) = default;
};

struct Welcome {
    std::uint64_t session_id = 0;
    std::uint32_t heartbeat_interval_ms = 0;
    std::uint32_t heartbeat_timeout_ms = 0;
    std::uint32_t max_frame = 0;
    std::string nick;
    std::string resume_token;
    std::string server_name;
    std::string server_version;
    friend bool operator==(const Welcome&, const Welcome&) = default;
};

// A position in a room's log. The epoch changes whenever the room is made anew
// (first join after it emptied, or a server restart), so a sequence number is
// only comparable to another of the same epoch. Sequence numbers increase but
// need not be dense.
struct Position {
    std::uint64_t epoch = 0;
    std::uint64_t seq = 0;
    friend bool operator==(const Position&, const Position&) = default;
};

struct Join {
    std::string room;
    bool resume = false;  // when true, `after` is the last position the client saw
    Position after;
    friend bool operator==(const Join&, const Join&) = default;
};

struct Joined {
    std::string room;
    std::uint64_t epoch = 0;
    std::uint64_t head_seq = 0;       // sequence number of the newest message, 0 if none
    std::uint64_t missed = 0;         // messages after the resume point the server no longer holds
    std::uint32_t history_count = 0;  // DELIVER(history) frames that follow
    bool epoch_changed = false;       // resume point was from another epoch of this room
    std::vector<std::string> members;
    // Header flag bit 0: the room is over the server's presence limit, so its
    // joins and leaves are not announced and `members` lists only the joiner
    // (PROTOCOL.md 6.4). Version-1 clients that predate it ignore the bit.
    bool quiet = false;
    friend bool operator==(const Joined&, const Joined&) = default;
};

struct Leave {
    std::string room;
    friend bool operator==(const Leave&, const Leave&) = default;
};

struct Say {
    std::string room;
    std::string text;
    friend bool operator==(const Say&, const Say&) = default;
};

struct Deliver {
    std::string room;
    std::string sender;
    std::uint64_t timestamp_ms = 0;  // server time, ms since the Unix epoch
    Position position;
    std::string text;
    bool history = false;
    friend bool operator==(const Deliver&, const Deliver&) = default;
};

// Client to server: `peer` is the recipient. Server to client: `peer` is the
// sender, or with `echo` the recipient of a whisper this client sent.
struct Whisper {
    std::string peer;
    std::uint64_t timestamp_ms = 0;
    std::string text;
    bool echo = false;
    friend bool operator==(const Whisper&, const Whisper&) = default;
};

enum class PresenceEvent : std::uint8_t {
    joined = 1,
    left = 2,
    timed_out = 3,
    disconnected = 4,
    renamed = 5,
};
std::string_view to_string(PresenceEvent event) noexcept;

struct Presence {
    std::string room;
    std::string nick;
    PresenceEvent event = PresenceEvent::joined;
    std::string detail;  // renamed: the new nick; disconnected: the reason
    friend bool operator==(const Presence&, const Presence&) = default;
};

// Client to server: old_nick empty, new_nick the wish. Server to client: the
// confirmed change of the receiving session's own nick.
struct Nick {
    std::string old_nick;
    std::string new_nick;
    friend bool operator==(const Nick&, const Nick&) = default;
};

struct List {
    friend bool operator==(const List&, const List&) = default;
};

struct RoomInfo {
    std::string name;
    std::uint32_t members = 0;
    friend bool operator==(const RoomInfo&, const RoomInfo&) = default;
};

struct Rooms {
    std::vector<RoomInfo> rooms;
    friend bool operator==(const Rooms&, const Rooms&) = default;
};

struct Who {
    std::string room;
    friend bool operator==(const Who&, const Who&) = default;
};

struct Members {
    std::string room;
    std::vector<std::string> nicks;
    friend bool operator==(const Members&, const Members&) = default;
};

struct Heartbeat {
    friend bool operator==(const Heartbeat&, const Heartbeat&) = default;
};

struct Ping {
    std::uint64_t nonce = 0;
    friend bool operator==(const Ping&, const Ping&) = default;
};

struct Pong {
    std::uint64_t nonce = 0;
    friend bool operator==(const Pong&, const Pong&) = default;
};

struct Error {
    ErrorCode code = ErrorCode::internal;
    std::string reason;
    bool fatal = false;
    friend bool operator==(const Error&, const Error&) = default;
};

struct Bye {
    std::string reason;
    friend bool operator==(const Bye&, const Bye&) = default;
};

using Message = std::variant<Hello, Welcome, Join, Joined, Leave, Say, Deliver, Whisper, Presence,
                             Nick, List, Rooms, Who, Members, Heartbeat, Ping, Pong, Error, Bye>;

FrameType frame_type(const Message& message) noexcept;
std::string_view to_string(FrameType type) noexcept;

// Appends the whole frame (header and payload) to `out`. Throws std::length_error
// for what the wire cannot carry (a short string over 65535 bytes, a list over
// 65535 items); checking names and texts against the limits is the caller's job.
void encode(const Message& message, std::string& out);
std::string encode(const Message& message);

// Why a byte stream could not be decoded. Every value but `none` is final for
// the stream: the decoder does not resynchronise.
enum class DecodeError : std::uint8_t {
    none = 0,
    unsupported_version,  // header version is not `protocol_version`
    frame_too_large,      // payload length over the decoder's maximum
    unknown_type,         // type byte names no frame type
    truncated_field,      // a field runs past the end of the payload
    invalid_utf8,         // a string field is not valid UTF-8
    trailing_bytes,       // payload longer than its fields
    invalid_value,        // a field holds a value outside its domain (e.g. presence event 9)
};
std::string_view to_string(DecodeError error) noexcept;
ErrorCode to_error_code(DecodeError error) noexcept;

// Decodes one payload whose header has already been read. Allocates only what
// the returned message holds; if `out` already holds the same alternative, its
// strings' capacity is reused. On error `out` holds an unspecified message.
DecodeError decode_payload(FrameType type, std::uint16_t flags, std::span<const std::uint8_t> payload,
                           Message& out);

// An incremental decoder: feed it byte chunks of any size, then take whole
// messages out. The internal buffer is reused, so decoding allocates nothing
// per frame beyond the strings of the message it returns.
class Decoder {
public:
    enum class Status { message, need_more, error };

    explicit Decoder(std::uint32_t max_payload = default_max_frame);

    // Copies bytes in.
    void feed(std::span<const std::uint8_t> bytes);
    void feed(std::string_view bytes);
    // Zero-copy alternative to feed(): read into prepare(n), then commit(bytes_read).
    // The span stays valid until the next feed(), prepare() or commit(); after an
    // error committed bytes are dropped.
    std::span<std::uint8_t> prepare(std::size_t n);
    void commit(std::size_t n);

    // Takes the next whole message out, if there is one.
    Status next(Message& out);

    DecodeError error() const noexcept { return error_; }
    // Bytes fed but not yet taken out as messages.
    std::size_t buffered() const noexcept { return end_ - begin_; }
    std::uint32_t max_payload() const noexcept { return max_payload_; }
    // For a client that learns the server's max_frame from WELCOME; applies from
    // the next frame whose header is read.
    void set_max_payload(std::uint32_t max_payload) noexcept { max_payload_ = max_payload; }
    // For the frame that failed: its type byte (useful in error reasons).
    std::uint8_t failed_type() const noexcept { return failed_type_; }

private:
    void compact();

    std::vector<std::uint8_t> buffer_;
    std::size_t begin_ = 0;
    std::size_t end_ = 0;
    std::uint32_t max_payload_;
    DecodeError error_ = DecodeError::none;
    std::uint8_t failed_type_ = 0;
};

bool is_valid_utf8(std::string_view text) noexcept;
// 1..32 bytes of ASCII letters, digits, '_', '-', '.', starting with a letter or digit.
bool is_valid_nick(std::string_view nick) noexcept;
// 1..64 bytes of ASCII letters, digits, '_', '-', '.', '#', starting with a letter, digit or '#'.
bool is_valid_room(std::string_view room) noexcept;
// Non-empty valid UTF-8 without control characters other than tab.
bool is_valid_text(std::string_view text) noexcept;

}  // namespace chat
