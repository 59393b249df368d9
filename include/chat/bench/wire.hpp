// What chat_bench puts on and takes off the wire besides pulsechat frames: the
// timestamped message text and the NATS and Redis (RESP) pub/sub dialects.
//
// Pure code, like the codec: no sockets, no allocation per message. The parsers
// return views into the caller's buffer, valid until it is consumed.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace chat::bench {

// Every message text starts with a stamp of 40 hex digits: send time (ns on
// the steady clock, which every process on the machine shares), room, the
// publisher's slot in its room and its sequence number. Filler pads it to the
// requested size; the text stays printable ASCII, valid for every protocol.
inline constexpr std::size_t stamp_size = 40;

struct Stamp {
    std::uint64_t send_ns = 0;
    std::uint32_t room = 0;
    std::uint32_t slot = 0;
    std::uint32_t seq = 0;
    friend bool operator==(const Stamp&, const Stamp&) = default;
};

// Overwrites text[0, stamp_size) with the stamp; text.size() >= stamp_size.
void write_stamp(const Stamp& stamp, std::span<char> text) noexcept;
// Fills text with the stamp and then filler.
void make_text(const Stamp& stamp, std::string& text, std::size_t size);
std::optional<Stamp> read_stamp(std::string_view text) noexcept;

// A growable byte buffer with the Decoder's prepare/commit/consume shape, for
// the text protocols.
class ByteBuffer {
public:
    std::span<char> prepare(std::size_t n);
    void commit(std::size_t n) noexcept { end_ += n; }
    std::string_view data() const noexcept { return {buffer_.data() + begin_, end_ - begin_}; }
    void consume(std::size_t n) noexcept;

private:
    std::vector<char> buffer_;
    std::size_t begin_ = 0;
    std::size_t end_ = 0;
};

enum class ParseStatus { event, need_more, error };

// --- NATS client protocol (https://docs.nats.io/reference/reference-protocols/nats-protocol) ---

struct NatsEvent {
    enum class Kind { msg, ping, pong, info, ok, err };
    Kind kind = Kind::ok;
    std::string_view subject;  // msg
    std::string_view payload;  // msg
    std::string_view text;     // err: the message; info: the JSON
};

// Parses the event at the front of `in`; on `event`, `consumed` says how many
// bytes it took. On `error`, `event.text` holds the offending line's start.
ParseStatus parse_nats(std::string_view in, NatsEvent& event, std::size_t& consumed) noexcept;

void nats_connect(std::string& out, std::string_view auth_token);
void nats_sub(std::string& out, std::string_view subject, std::uint32_t sid);
void nats_pub(std::string& out, std::string_view subject, std::string_view payload);
inline void nats_ping(std::string& out) { out += "PING\r\n"; }
inline void nats_pong(std::string& out) { out += "PONG\r\n"; }

// --- Redis RESP2, as far as pub/sub needs it ---

struct RespEvent {
    enum class Kind { message, subscribe, integer, simple, error, other };
    Kind kind = Kind::other;
    std::string_view channel;  // message, subscribe
    std::string_view payload;  // message
    std::string_view text;     // simple, error
    std::int64_t integer = 0;  // integer; subscribe: the subscription count
};

ParseStatus parse_resp(std::string_view in, RespEvent& event, std::size_t& consumed) noexcept;

// Appends a command as a RESP array of bulk strings.
void resp_command(std::string& out, std::initializer_list<std::string_view> args);

}  // namespace chat::bench
