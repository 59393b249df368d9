// The pulsechat wire codec: one layout per frame type, walked by the sizer, the
// writer and the reader, plus the incremental decoder's buffer management.
#include "chat/proto/protocol.hpp"

#include <algorithm>
#include <array>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <type_traits>
#include <utility>

namespace chat {
namespace {

// --- frame type <-> variant alternative ------------------------------------

// The variant lists the messages in type-code order, so a frame's type code is
// its alternative's index plus one; the static_asserts keep that true.
template <class M, std::size_t I = 0>
constexpr std::size_t index_of() {
    if constexpr (std::is_same_v<std::variant_alternative_t<I, Message>, M>) {
        return I;
    } else {
        return index_of<M, I + 1>();
    }
}

template <class M>
constexpr FrameType type_of() {
    return static_cast<FrameType>(index_of<M>() + 1);
}

static_assert(type_of<Hello>() == FrameType::hello);
static_assert(type_of<Welcome>() == FrameType::welcome);
static_assert(type_of<Join>() == FrameType::join);
static_assert(type_of<Joined>() == FrameType::joined);
static_assert(type_of<Leave>() == FrameType::leave);
static_assert(type_of<Say>() == FrameType::say);
static_assert(type_of<Deliver>() == FrameType::deliver);
static_assert(type_of<Whisper>() == FrameType::whisper);
static_assert(type_of<Presence>() == FrameType::presence);
static_assert(type_of<Nick>() == FrameType::nick);
static_assert(type_of<List>() == FrameType::list);
static_assert(type_of<Rooms>() == FrameType::rooms);
static_assert(type_of<Who>() == FrameType::who);
static_assert(type_of<Members>() == FrameType::members);
static_assert(type_of<Heartbeat>() == FrameType::heartbeat);
static_assert(type_of<Ping>() == FrameType::ping);
static_assert(type_of<Pong>() == FrameType::pong);
static_assert(type_of<Error>() == FrameType::error);
static_assert(type_of<Bye>() == FrameType::bye);

constexpr std::size_t frame_type_count = std::variant_size_v<Message>;

// --- big-endian access -------------------------------------------------------

template <class U>
U load_be(const std::uint8_t* p) noexcept {
    U value = 0;
    for (std::size_t i = 0; i < sizeof(U); ++i) {
        value = static_cast<U>((value << 8) | p[i]);
    }
    return value;
}

template <class U>
void store_be(char* p, U value) noexcept {
    for (std::size_t i = sizeof(U); i-- > 0;) {
        p[i] = static_cast<char>(static_cast<std::uint8_t>(value & 0xFF));
        value = static_cast<U>(value >> 8);
    }
}

// --- the three walkers ---------------------------------------------------------
//
// A Layout<M>::fields(io, m) lists M's payload fields in wire order. Each walker
// offers the same operations; Sizer and Writer get `const M&`, Reader `M&`.

// Computes the exact payload size and the header flags, and rejects what the
// wire cannot carry, before a single byte is written.
class Sizer {
public:
    static constexpr bool reading = false;

    void u8(std::uint8_t) noexcept { size_ += 1; }
    void u16(std::uint16_t) noexcept { size_ += 2; }
    void u32(std::uint32_t) noexcept { size_ += 4; }
    void u64(std::uint64_t) noexcept { size_ += 8; }
    void boolean(bool) noexcept { size_ += 1; }
    void flag(bool set) noexcept {
        if (set) flags_ |= 0x0001;
    }
    template <class E, class U>
    void enumerated(E, U, U) noexcept {
        size_ += sizeof(U);
    }
    void short_string(const std::string& s) {
        if (s.size() > max_short_string) {
            throw std::length_error("chat::encode: short string over 65535 bytes");
        }
        size_ += 2 + s.size();
    }
    void text(const std::string& s) {
        if (s.size() > std::numeric_limits<std::uint32_t>::max()) {
            throw std::length_error("chat::encode: text over 4 GiB");
        }
        size_ += 4 + s.size();
    }
    template <class T, class ItemFn>
    void list(const std::vector<T>& items, std::size_t, ItemFn&& item) {
        if (items.size() > 0xFFFF) {
            throw std::length_error("chat::encode: list over 65535 items");
        }
        size_ += 2;
        for (const auto& i : items) item(*this, i);
    }

    std::size_t size() const noexcept { return size_; }
    std::uint16_t flags() const noexcept { return flags_; }

private:
    std::size_t size_ = 0;
    std::uint16_t flags_ = 0;
};

// Writes fields into memory the Sizer measured; does no bounds checks of its own.
class Writer {
public:
    static constexpr bool reading = false;

    explicit Writer(char* p) noexcept : p_(p) {}

    void u8(std::uint8_t v) noexcept { put(v); }
    void u16(std::uint16_t v) noexcept { put(v); }
    void u32(std::uint32_t v) noexcept { put(v); }
    void u64(std::uint64_t v) noexcept { put(v); }
    void boolean(bool v) noexcept { put(static_cast<std::uint8_t>(v ? 1 : 0)); }
    void flag(bool) noexcept {}
    template <class E, class U>
    void enumerated(E e, U, U) noexcept {
        put(static_cast<U>(e));
    }
    void short_string(const std::string& s) noexcept {
        put(static_cast<std::uint16_t>(s.size()));
        bytes(s);
    }
    void text(const std::string& s) noexcept {
        put(static_cast<std::uint32_t>(s.size()));
        bytes(s);
    }
    template <class T, class ItemFn>
    void list(const std::vector<T>& items, std::size_t, ItemFn&& item) {
        put(static_cast<std::uint16_t>(items.size()));
        for (const auto& i : items) item(*this, i);
    }

    char* position() const noexcept { return p_; }

private:
    template <class U>
    void put(U v) noexcept {
        store_be(p_, v);
        p_ += sizeof(U);
    }
    void bytes(const std::string& s) noexcept {
        if (!s.empty()) std::memcpy(p_, s.data(), s.size());
        p_ += s.size();
    }

    char* p_;
};

// Reads fields out of one payload. The first failure sticks: later reads do
// nothing, so a layout needs no error checks between its fields.
class Reader {
public:
    static constexpr bool reading = true;

    Reader(std::span<const std::uint8_t> payload, std::uint16_t flags) noexcept
        : p_(payload.data()), end_(payload.data() + payload.size()), flags_(flags) {}

    void u8(std::uint8_t& v) noexcept { get(v); }
    void u16(std::uint16_t& v) noexcept { get(v); }
    void u32(std::uint32_t& v) noexcept { get(v); }
    void u64(std::uint64_t& v) noexcept { get(v); }
    void boolean(bool& v) noexcept {
        std::uint8_t raw = 0;
        if (!get(raw)) return;
        if (raw > 1) {
            fail(DecodeError::invalid_value);
            return;
        }
        v = raw == 1;
    }
    void flag(bool& v) noexcept { v = (flags_ & 0x0001) != 0; }
    template <class E, class U>
    void enumerated(E& e, U lowest, U highest) noexcept {
        U raw = 0;
        if (!get(raw)) return;
        if (raw < lowest || raw > highest) {
            fail(DecodeError::invalid_value);
            return;
        }
        e = static_cast<E>(raw);
    }
    void short_string(std::string& s) {
        std::uint16_t length = 0;
        if (get(length)) string_body(s, length);
    }
    void text(std::string& s) {
        std::uint32_t length = 0;
        if (get(length)) string_body(s, length);
    }
    template <class T, class ItemFn>
    void list(std::vector<T>& items, std::size_t min_item_size, ItemFn&& item) {
        std::uint16_t count = 0;
        if (!get(count)) return;
        // A lying count must not make us allocate 65535 items for a 10-byte payload.
        if (static_cast<std::size_t>(count) * min_item_size > remaining()) {
            fail(DecodeError::truncated_field);
            return;
        }
        // resize() keeps the leading elements, so their strings' capacity is reused.
        items.resize(count);
        for (auto& i : items) {
            item(*this, i);
            if (error_ != DecodeError::none) return;
        }
    }

    // The payload must end exactly where the last field does.
    DecodeError finish() noexcept {
        if (error_ == DecodeError::none && p_ != end_) error_ = DecodeError::trailing_bytes;
        return error_;
    }

private:
    std::size_t remaining() const noexcept { return static_cast<std::size_t>(end_ - p_); }

    void fail(DecodeError e) noexcept {
        if (error_ == DecodeError::none) error_ = e;
    }

    const std::uint8_t* take(std::size_t n) noexcept {
        if (error_ != DecodeError::none) return nullptr;
        if (remaining() < n) {
            fail(DecodeError::truncated_field);
            return nullptr;
        }
        const std::uint8_t* at = p_;
        p_ += n;
        return at;
    }

    template <class U>
    bool get(U& v) noexcept {
        const std::uint8_t* at = take(sizeof(U));
        if (at == nullptr) return false;
        v = load_be<U>(at);
        return true;
    }

    void string_body(std::string& s, std::size_t length) {
        const std::uint8_t* at = take(length);
        if (at == nullptr) return;
        const std::string_view view(reinterpret_cast<const char*>(at), length);
        if (!is_valid_utf8(view)) {
            fail(DecodeError::invalid_utf8);
            return;
        }
        s.assign(view);
    }

    const std::uint8_t* p_;
    const std::uint8_t* end_;
    std::uint16_t flags_;
    DecodeError error_ = DecodeError::none;
};

// --- layouts: docs/PROTOCOL.md tables, in code ----------------------------------
//
// `m` is `const M&` for Sizer and Writer and `M&` for Reader; a field missing
// from the wire must still be reset when reading, because `out` is reused.

template <class M>
struct Layout;

template <>
struct Layout<Hello> {
    template <class Io, class M>
    static void fields(Io& io, M& m) {
        io.short_string(m.nick);
        io.short_string(m.token);
        io.short_string(m.resume_token);
    }
};

template <>
struct Layout<Welcome> {
    template <class Io, class M>
    static void fields(Io& io, M& m) {
        io.u64(m.session_id);
        io.u32(m.heartbeat_interval_ms);
        io.u32(m.heartbeat_timeout_ms);
        io.u32(m.max_frame);
        io.short_string(m.nick);
        io.short_string(m.resume_token);
        io.short_string(m.server_name);
        io.short_string(m.server_version);
    }
};

template <>
struct Layout<Join> {
    template <class Io, class M>
    static void fields(Io& io, M& m) {
        io.short_string(m.room);
        io.boolean(m.resume);
        // The position is on the wire only for a resume, so a fresh JOIN cannot
        // carry a stale one by accident.
        if (m.resume) {
            io.u64(m.after.epoch);
            io.u64(m.after.seq);
        } else if constexpr (Io::reading) {
            m.after = Position{};
        }
    }
};

template <>
struct Layout<Joined> {
    template <class Io, class M>
    static void fields(Io& io, M& m) {
        io.short_string(m.room);
        io.u64(m.epoch);
        io.u64(m.head_seq);
        io.u64(m.missed);
        io.u32(m.history_count);
        io.boolean(m.epoch_changed);
        io.list(m.members, 2, [](auto& inner, auto& nick) { inner.short_string(nick); });
        io.flag(m.quiet);
    }
};

template <>
struct Layout<Leave> {
    template <class Io, class M>
    static void fields(Io& io, M& m) {
        io.short_string(m.room);
    }
};

template <>
struct Layout<Say> {
    template <class Io, class M>
    static void fields(Io& io, M& m) {
        io.short_string(m.room);
        io.text(m.text);
    }
};

template <>
struct Layout<Deliver> {
    template <class Io, class M>
    static void fields(Io& io, M& m) {
        io.short_string(m.room);
        io.short_string(m.sender);
        io.u64(m.timestamp_ms);
        io.u64(m.position.epoch);
        io.u64(m.position.seq);
        io.text(m.text);
        io.flag(m.history);
    }
};

template <>
struct Layout<Whisper> {
    template <class Io, class M>
    static void fields(Io& io, M& m) {
        io.short_string(m.peer);
        io.u64(m.timestamp_ms);
        io.text(m.text);
        io.flag(m.echo);
    }
};

template <>
struct Layout<Presence> {
    template <class Io, class M>
    static void fields(Io& io, M& m) {
        io.short_string(m.room);
        io.short_string(m.nick);
        io.enumerated(m.event, static_cast<std::uint8_t>(PresenceEvent::joined),
                      static_cast<std::uint8_t>(PresenceEvent::renamed));
        io.short_string(m.detail);
    }
};

template <>
struct Layout<Nick> {
    template <class Io, class M>
    static void fields(Io& io, M& m) {
        io.short_string(m.old_nick);
        io.short_string(m.new_nick);
    }
};

template <>
struct Layout<List> {
    template <class Io, class M>
    static void fields(Io&, M&) {}
};

template <>
struct Layout<Rooms> {
    template <class Io, class M>
    static void fields(Io& io, M& m) {
        io.list(m.rooms, 6, [](auto& inner, auto& room) {
            inner.short_string(room.name);
            inner.u32(room.members);
        });
    }
};

template <>
struct Layout<Who> {
    template <class Io, class M>
    static void fields(Io& io, M& m) {
        io.short_string(m.room);
    }
};

template <>
struct Layout<Members> {
    template <class Io, class M>
    static void fields(Io& io, M& m) {
        io.short_string(m.room);
        io.list(m.nicks, 2, [](auto& inner, auto& nick) { inner.short_string(nick); });
    }
};

template <>
struct Layout<Heartbeat> {
    template <class Io, class M>
    static void fields(Io&, M&) {}
};

template <>
struct Layout<Ping> {
    template <class Io, class M>
    static void fields(Io& io, M& m) {
        io.u64(m.nonce);
    }
};

template <>
struct Layout<Pong> {
    template <class Io, class M>
    static void fields(Io& io, M& m) {
        io.u64(m.nonce);
    }
};

template <>
struct Layout<Error> {
    template <class Io, class M>
    static void fields(Io& io, M& m) {
        // Any non-zero code is accepted so that a newer server's codes still reach
        // the user; to_string() names the unknown ones "unknown".
        io.enumerated(m.code, std::uint16_t{1}, std::uint16_t{0xFFFF});
        io.short_string(m.reason);
        io.flag(m.fatal);
    }
};

template <>
struct Layout<Bye> {
    template <class Io, class M>
    static void fields(Io& io, M& m) {
        io.short_string(m.reason);
    }
};

// --- decoding dispatch --------------------------------------------------------------

using DecodeFn = DecodeError (*)(std::uint16_t, std::span<const std::uint8_t>, Message&);

template <class M>
DecodeError decode_as(std::uint16_t flags, std::span<const std::uint8_t> payload, Message& out) {
    // Decoding into the alternative `out` already holds reuses its strings' capacity.
    M* message = std::get_if<M>(&out);
    if (message == nullptr) message = &out.template emplace<M>();
    Reader reader(payload, flags);
    Layout<M>::fields(reader, *message);
    return reader.finish();
}

template <std::size_t... I>
constexpr std::array<DecodeFn, sizeof...(I)> make_decoders(std::index_sequence<I...>) {
    return {&decode_as<std::variant_alternative_t<I, Message>>...};
}

constexpr auto decoders = make_decoders(std::make_index_sequence<frame_type_count>{});

bool is_known_type(std::uint8_t type) noexcept {
    return type >= 1 && type <= frame_type_count;
}

// --- text classification -----------------------------------------------------------

constexpr bool is_ascii_alnum(char c) noexcept {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

// Length of the valid UTF-8 sequence at s[i], or 0 if there is none
// (Unicode 15, table 3-7: no overlongs, no surrogates, nothing over U+10FFFF).
std::size_t utf8_sequence_length(std::string_view s, std::size_t i) noexcept {
    const auto byte = [&](std::size_t k) { return static_cast<std::uint8_t>(s[k]); };
    const auto continuation = [&](std::size_t k, std::uint8_t lo = 0x80, std::uint8_t hi = 0xBF) {
        return k < s.size() && byte(k) >= lo && byte(k) <= hi;
    };
    const std::uint8_t lead = byte(i);
    if (lead < 0x80) return 1;
    if (lead < 0xC2) return 0;  // stray continuation byte, or overlong 2-byte lead
    if (lead < 0xE0) return continuation(i + 1) ? 2 : 0;
    if (lead < 0xF0) {
        const std::uint8_t lo = lead == 0xE0 ? 0xA0 : 0x80;  // E0 80..9F would be overlong
        const std::uint8_t hi = lead == 0xED ? 0x9F : 0xBF;  // ED A0..BF would be a surrogate
        return continuation(i + 1, lo, hi) && continuation(i + 2) ? 3 : 0;
    }
    if (lead < 0xF5) {
        const std::uint8_t lo = lead == 0xF0 ? 0x90 : 0x80;  // F0 80..8F would be overlong
        const std::uint8_t hi = lead == 0xF4 ? 0x8F : 0xBF;  // F4 90.. would pass U+10FFFF
        return continuation(i + 1, lo, hi) && continuation(i + 2) && continuation(i + 3) ? 4 : 0;
    }
    return 0;
}

// Chat text is mostly ASCII: skip it eight bytes at a time.
std::size_t ascii_prefix(std::string_view s, std::size_t i) noexcept {
    while (i + 8 <= s.size()) {
        std::uint64_t word = 0;
        std::memcpy(&word, s.data() + i, 8);
        if ((word & 0x8080808080808080ULL) != 0) break;
        i += 8;
    }
    while (i < s.size() && static_cast<std::uint8_t>(s[i]) < 0x80) ++i;
    return i;
}

}  // namespace

// --- names -----------------------------------------------------------------------

std::string_view to_string(ErrorCode code) noexcept {
    switch (code) {
        case ErrorCode::malformed_frame: return "malformed_frame";
        case ErrorCode::unsupported_version: return "unsupported_version";
        case ErrorCode::unknown_type: return "unknown_type";
        case ErrorCode::frame_too_large: return "frame_too_large";
        case ErrorCode::invalid_utf8: return "invalid_utf8";
        case ErrorCode::handshake_timeout: return "handshake_timeout";
        case ErrorCode::hello_required: return "hello_required";
        case ErrorCode::duplicate_hello: return "duplicate_hello";
        case ErrorCode::invalid_nick: return "invalid_nick";
        case ErrorCode::nick_taken: return "nick_taken";
        case ErrorCode::auth_failed: return "auth_failed";
        case ErrorCode::invalid_room: return "invalid_room";
        case ErrorCode::not_in_room: return "not_in_room";
        case ErrorCode::too_many_rooms: return "too_many_rooms";
        case ErrorCode::no_such_nick: return "no_such_nick";
        case ErrorCode::invalid_text: return "invalid_text";
        case ErrorCode::rate_limited: return "rate_limited";
        case ErrorCode::slow_consumer: return "slow_consumer";
        case ErrorCode::heartbeat_timeout: return "heartbeat_timeout";
        case ErrorCode::server_full: return "server_full";
        case ErrorCode::too_many_connections_from_address: return "too_many_connections_from_address";
        case ErrorCode::replaced: return "replaced";
        case ErrorCode::shutting_down: return "shutting_down";
        case ErrorCode::internal: return "internal";
        case ErrorCode::unavailable: return "unavailable";
        case ErrorCode::messages_missed: return "messages_missed";
    }
    return "unknown";
}

std::string_view to_string(PresenceEvent event) noexcept {
    switch (event) {
        case PresenceEvent::joined: return "joined";
        case PresenceEvent::left: return "left";
        case PresenceEvent::timed_out: return "timed_out";
        case PresenceEvent::disconnected: return "disconnected";
        case PresenceEvent::renamed: return "renamed";
    }
    return "unknown";
}

std::string_view to_string(FrameType type) noexcept {
    switch (type) {
        case FrameType::hello: return "HELLO";
        case FrameType::welcome: return "WELCOME";
        case FrameType::join: return "JOIN";
        case FrameType::joined: return "JOINED";
        case FrameType::leave: return "LEAVE";
        case FrameType::say: return "SAY";
        case FrameType::deliver: return "DELIVER";
        case FrameType::whisper: return "WHISPER";
        case FrameType::presence: return "PRESENCE";
        case FrameType::nick: return "NICK";
        case FrameType::list: return "LIST";
        case FrameType::rooms: return "ROOMS";
        case FrameType::who: return "WHO";
        case FrameType::members: return "MEMBERS";
        case FrameType::heartbeat: return "HEARTBEAT";
        case FrameType::ping: return "PING";
        case FrameType::pong: return "PONG";
        case FrameType::error: return "ERROR";
        case FrameType::bye: return "BYE";
    }
    return "UNKNOWN";
}

std::string_view to_string(DecodeError error) noexcept {
    switch (error) {
        case DecodeError::none: return "none";
        case DecodeError::unsupported_version: return "unsupported_version";
        case DecodeError::frame_too_large: return "frame_too_large";
        case DecodeError::unknown_type: return "unknown_type";
        case DecodeError::truncated_field: return "truncated_field";
        case DecodeError::invalid_utf8: return "invalid_utf8";
        case DecodeError::trailing_bytes: return "trailing_bytes";
        case DecodeError::invalid_value: return "invalid_value";
    }
    return "unknown";
}

ErrorCode to_error_code(DecodeError error) noexcept {
    switch (error) {
        case DecodeError::unsupported_version: return ErrorCode::unsupported_version;
        case DecodeError::frame_too_large: return ErrorCode::frame_too_large;
        case DecodeError::unknown_type: return ErrorCode::unknown_type;
        case DecodeError::invalid_utf8: return ErrorCode::invalid_utf8;
        case DecodeError::truncated_field:
        case DecodeError::trailing_bytes:
        case DecodeError::invalid_value: return ErrorCode::malformed_frame;
        case DecodeError::none: break;
    }
    // Asking for the wire code of "no error" is a caller bug.
    return ErrorCode::internal;
}

FrameType frame_type(const Message& message) noexcept {
    return static_cast<FrameType>(message.index() + 1);
}

// --- encoding -------------------------------------------------------------------------

void encode(const Message& message, std::string& out) {
    std::visit(
        [&out](const auto& m) {
            using M = std::remove_cvref_t<decltype(m)>;
            Sizer sizer;
            Layout<M>::fields(sizer, m);
            if (sizer.size() > std::numeric_limits<std::uint32_t>::max()) {
                throw std::length_error("chat::encode: payload over 4 GiB");
            }
            const std::size_t start = out.size();
            out.resize(start + header_size + sizer.size());
            char* p = out.data() + start;
            p[0] = static_cast<char>(protocol_version);
            p[1] = static_cast<char>(type_of<M>());
            store_be(p + 2, sizer.flags());
            store_be(p + 4, static_cast<std::uint32_t>(sizer.size()));
            Writer writer(p + header_size);
            Layout<M>::fields(writer, m);
        },
        message);
}

std::string encode(const Message& message) {
    std::string out;
    encode(message, out);
    return out;
}

// --- decoding -------------------------------------------------------------------------

DecodeError decode_payload(FrameType type, std::uint16_t flags, std::span<const std::uint8_t> payload,
                           Message& out) {
    const auto code = static_cast<std::uint8_t>(type);
    if (!is_known_type(code)) return DecodeError::unknown_type;
    return decoders[code - 1](flags, payload, out);
}

Decoder::Decoder(std::uint32_t max_payload) : max_payload_(max_payload) {}

void Decoder::feed(std::span<const std::uint8_t> bytes) {
    if (bytes.empty() || error_ != DecodeError::none) return;
    const auto space = prepare(bytes.size());
    std::memcpy(space.data(), bytes.data(), bytes.size());
    end_ += bytes.size();
}

void Decoder::feed(std::string_view bytes) {
    feed(std::span<const std::uint8_t>(reinterpret_cast<const std::uint8_t*>(bytes.data()), bytes.size()));
}

std::span<std::uint8_t> Decoder::prepare(std::size_t n) {
    if (buffer_.size() - end_ < n) {
        const std::size_t live = end_ - begin_;
        // Sliding the unread tail down costs `live` bytes of copying; do it only
        // when that frees at least as much room as it costs, otherwise grow. That
        // keeps the copying linear in the bytes fed, however the frames are cut.
        if (live + n <= buffer_.size() && live <= buffer_.size() / 2) {
            compact();
        } else {
            constexpr std::size_t min_capacity = 4096;
            std::vector<std::uint8_t> bigger(std::max({live + n, 2 * buffer_.size(), min_capacity}));
            if (live != 0) std::memcpy(bigger.data(), buffer_.data() + begin_, live);
            buffer_ = std::move(bigger);
            begin_ = 0;
            end_ = live;
        }
    }
    return {buffer_.data() + end_, n};
}

void Decoder::commit(std::size_t n) {
    if (n > buffer_.size() - end_) throw std::out_of_range("chat::Decoder::commit: more than prepared");
    // After an error the stream is dead: drop what arrives instead of growing.
    if (error_ != DecodeError::none) return;
    end_ += n;
}

void Decoder::compact() {
    const std::size_t live = end_ - begin_;
    if (begin_ != 0 && live != 0) std::memmove(buffer_.data(), buffer_.data() + begin_, live);
    begin_ = 0;
    end_ = live;
}

Decoder::Status Decoder::next(Message& out) {
    if (error_ != DecodeError::none) return Status::error;
    const std::size_t available = end_ - begin_;
    if (available == 0) {
        begin_ = end_ = 0;  // free rewind, no copy
        return Status::need_more;
    }
    const std::uint8_t* header = buffer_.data() + begin_;
    // The version byte decides how to read everything after it, so it is judged
    // alone, as soon as it arrives (a stray HTTP request fails on its first byte).
    if (header[0] != protocol_version) {
        failed_type_ = available > 1 ? header[1] : 0;
        error_ = DecodeError::unsupported_version;
        return Status::error;
    }
    if (available < header_size) return Status::need_more;

    const std::uint8_t type = header[1];
    const auto flags = load_be<std::uint16_t>(header + 2);
    const auto length = load_be<std::uint32_t>(header + 4);
    // Both are judged from the header alone, so an oversized or unknown frame is
    // refused before the peer has made us buffer its payload.
    if (length > max_payload_) {
        failed_type_ = type;
        error_ = DecodeError::frame_too_large;
        return Status::error;
    }
    if (!is_known_type(type)) {
        failed_type_ = type;
        error_ = DecodeError::unknown_type;
        return Status::error;
    }
    if (available - header_size < length) return Status::need_more;

    const DecodeError result =
        decoders[type - 1](flags, std::span<const std::uint8_t>(header + header_size, length), out);
    if (result != DecodeError::none) {
        failed_type_ = type;
        error_ = result;
        return Status::error;
    }
    begin_ += header_size + length;
    if (begin_ == end_) begin_ = end_ = 0;
    return Status::message;
}

// --- validators -----------------------------------------------------------------------

bool is_valid_utf8(std::string_view text) noexcept {
    std::size_t i = 0;
    while (true) {
        i = ascii_prefix(text, i);
        if (i == text.size()) return true;
        const std::size_t length = utf8_sequence_length(text, i);
        if (length == 0) return false;
        i += length;
    }
}

bool is_valid_nick(std::string_view nick) noexcept {
    if (nick.empty() || nick.size() > max_nick_length || !is_ascii_alnum(nick.front())) return false;
    return std::all_of(nick.begin(), nick.end(),
                       [](char c) { return is_ascii_alnum(c) || c == '_' || c == '-' || c == '.'; });
}

bool is_valid_room(std::string_view room) noexcept {
    if (room.empty() || room.size() > max_room_length) return false;
    if (!is_ascii_alnum(room.front()) && room.front() != '#') return false;
    return std::all_of(room.begin(), room.end(), [](char c) {
        return is_ascii_alnum(c) || c == '_' || c == '-' || c == '.' || c == '#';
    });
}

bool is_valid_text(std::string_view text) noexcept {
    if (text.empty() || !is_valid_utf8(text)) return false;
    // C0 controls but tab, DEL, and the C1 controls U+0080..U+009F (C2 80..C2 9F).
    for (std::size_t i = 0; i < text.size(); ++i) {
        const auto c = static_cast<std::uint8_t>(text[i]);
        if ((c < 0x20 && c != '\t') || c == 0x7F) return false;
        if (c == 0xC2 && static_cast<std::uint8_t>(text[i + 1]) < 0xA0) return false;
    }
    return true;
}

}  // namespace chat
