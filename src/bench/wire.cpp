#include "chat/bench/wire.hpp"

#include <algorithm>
#include <array>
#include <bit>
#include <charconv>
#include <cstring>

namespace chat::bench {
namespace {

constexpr char hex_digits[] = "0123456789abcdef";

template <class T>
void put_hex(char* out, T value, int digits) noexcept {
    for (int i = digits - 1; i >= 0; --i) {
        out[i] = hex_digits[value & 0xF];
        value >>= 4;
    }
}

// Eight lowercase hex digits at `in`, most significant first, eight at a time
// in one 64-bit word (SWAR): every received message's stamp is parsed here,
// and a table lookup per digit was a tenth of chat_bench's time at 5 M
// deliveries/s. False when any byte is not 0-9 or a-f.
bool get_hex8(const char* in, std::uint32_t& value) noexcept {
    constexpr std::uint64_t ones = 0x0101010101010101ULL;
    constexpr std::uint64_t high = 0x8080808080808080ULL;
    std::uint64_t x = 0;
    std::memcpy(&x, in, 8);
    if constexpr (std::endian::native == std::endian::big) x = __builtin_bswap64(x);  // the first digit lowest
    // With every byte below 0x80, adding (0x80 - c) to all of them sets a
    // byte's top bit exactly when that byte is >= c, and never carries into
    // the next byte: a byte is in [lo, hi] when it is >= lo and not >= hi + 1.
    const auto at_least = [&](unsigned c) { return x + ones * (0x80 - c); };
    const std::uint64_t digit = at_least('0') & ~at_least('9' + 1);
    const std::uint64_t letter = at_least('a') & ~at_least('f' + 1);
    if ((x & high) != 0 || ((digit | letter) & high) != high) return false;
    // '0'..'9' is 0x30..0x39 and 'a'..'f' 0x61..0x66: the low nibble, plus 9
    // where bit 6 says letter. Then the eight nibbles (first digit in the
    // lowest byte) are folded pairwise into the 32-bit value, first digit on top.
    std::uint64_t v = (x & (ones * 0x0F)) + ((x >> 6) & ones) * 9;
    v = ((v & 0x000F000F000F000FULL) << 4) | ((v >> 8) & 0x000F000F000F000FULL);  // bytes 0,2,4,6: pairs
    v = ((v & 0x000000FF000000FFULL) << 8) | ((v >> 16) & 0x000000FF000000FFULL);  // 16-bit quads
    value = static_cast<std::uint32_t>(((v & 0xFFFF) << 16) | ((v >> 32) & 0xFFFF));
    return true;
}

// Finds the CRLF that ends the line starting at `from`; npos when not there yet.
std::size_t line_end(std::string_view in, std::size_t from) noexcept {
    const auto cr = in.find("\r\n", from);
    return cr;
}

bool starts_with_nocase(std::string_view s, std::string_view prefix) noexcept {
    if (s.size() < prefix.size()) return false;
    for (std::size_t i = 0; i < prefix.size(); ++i) {
        char c = s[i];
        if (c >= 'a' && c <= 'z') c = static_cast<char>(c - 'a' + 'A');
        if (c != prefix[i]) return false;
    }
    return true;
}

template <class T>
bool to_number(std::string_view s, T& value) noexcept {
    auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), value);
    return ec == std::errc{} && ptr == s.data() + s.size();
}

// A control line longer than this is junk, not a line still arriving.
constexpr std::size_t max_line = 64 * 1024;

}  // namespace

void write_stamp(const Stamp& stamp, std::span<char> text) noexcept {
    put_hex(text.data(), stamp.send_ns, 16);
    put_hex(text.data() + 16, stamp.room, 8);
    put_hex(text.data() + 24, stamp.slot, 8);
    put_hex(text.data() + 32, stamp.seq, 8);
}

void make_text(const Stamp& stamp, std::string& text, std::size_t size) {
    text.resize(std::max(size, stamp_size));
    for (std::size_t i = stamp_size; i < text.size(); ++i) text[i] = static_cast<char>('a' + i % 26);
    write_stamp(stamp, text);
}

std::optional<Stamp> read_stamp(std::string_view text) noexcept {
    if (text.size() < stamp_size) return std::nullopt;
    Stamp s;
    std::uint32_t send_high = 0;
    std::uint32_t send_low = 0;
    if (!get_hex8(text.data(), send_high) || !get_hex8(text.data() + 8, send_low) ||
        !get_hex8(text.data() + 16, s.room) || !get_hex8(text.data() + 24, s.slot) ||
        !get_hex8(text.data() + 32, s.seq))
        return std::nullopt;
    s.send_ns = (std::uint64_t{send_high} << 32) | send_low;
    return s;
}

std::span<char> ByteBuffer::prepare(std::size_t n) {
    if (buffer_.size() - end_ < n) {
        const std::size_t live = end_ - begin_;
        if (live + n <= buffer_.size() && live <= buffer_.size() / 2) {
            if (live != 0) std::memmove(buffer_.data(), buffer_.data() + begin_, live);
        } else {
            std::vector<char> bigger(std::max({live + n, 2 * buffer_.size(), std::size_t{4096}}));
            if (live != 0) std::memcpy(bigger.data(), buffer_.data() + begin_, live);
            buffer_ = std::move(bigger);
        }
        begin_ = 0;
        end_ = live;
    }
    return {buffer_.data() + end_, n};
}

void ByteBuffer::consume(std::size_t n) noexcept {
    begin_ += n;
    if (begin_ == end_) begin_ = end_ = 0;
}

// --- NATS ---

ParseStatus parse_nats(std::string_view in, NatsEvent& event, std::size_t& consumed) noexcept {
    const auto eol = line_end(in, 0);
    if (eol == std::string_view::npos) {
        if (in.size() > max_line) {
            event.text = in.substr(0, 64);
            return ParseStatus::error;
        }
        return ParseStatus::need_more;
    }
    const std::string_view line = in.substr(0, eol);
    if (starts_with_nocase(line, "MSG ")) {
        // MSG <subject> <sid> [reply-to] <#bytes>
        std::string_view args[5];
        std::size_t count = 0;
        std::string_view rest = line.substr(4);
        while (!rest.empty()) {
            const auto start = rest.find_first_not_of(" \t");
            if (start == std::string_view::npos) break;
            rest.remove_prefix(start);
            const auto end = std::min(rest.find_first_of(" \t"), rest.size());
            if (count == 5) {
                event.text = line;
                return ParseStatus::error;
            }
            args[count++] = rest.substr(0, end);
            rest.remove_prefix(end);
        }
        std::size_t size = 0;
        if ((count != 3 && count != 4) || !to_number(args[count - 1], size)) {
            event.text = line;
            return ParseStatus::error;
        }
        const std::size_t total = eol + 2 + size + 2;
        if (in.size() < total) return ParseStatus::need_more;
        if (in[total - 2] != '\r' || in[total - 1] != '\n') {
            event.text = line;
            return ParseStatus::error;
        }
        event.kind = NatsEvent::Kind::msg;
        event.subject = args[0];
        event.payload = in.substr(eol + 2, size);
        consumed = total;
        return ParseStatus::event;
    }
    consumed = eol + 2;
    if (starts_with_nocase(line, "PING")) {
        event.kind = NatsEvent::Kind::ping;
    } else if (starts_with_nocase(line, "PONG")) {
        event.kind = NatsEvent::Kind::pong;
    } else if (starts_with_nocase(line, "+OK")) {
        event.kind = NatsEvent::Kind::ok;
    } else if (starts_with_nocase(line, "-ERR")) {
        event.kind = NatsEvent::Kind::err;
        event.text = line.size() > 5 ? line.substr(5) : std::string_view{};
    } else if (starts_with_nocase(line, "INFO")) {
        event.kind = NatsEvent::Kind::info;
        event.text = line.size() > 5 ? line.substr(5) : std::string_view{};
    } else {
        event.text = line.substr(0, 64);
        return ParseStatus::error;
    }
    return ParseStatus::event;
}

void nats_connect(std::string& out, std::string_view auth_token) {
    out += R"(CONNECT {"verbose":false,"pedantic":false,"echo":true,"headers":false,"name":"chat_bench",)"
           R"("lang":"cpp","version":"1","protocol":1)";
    if (!auth_token.empty()) {
        out += R"(,"auth_token":")";
        out += auth_token;
        out += '"';
    }
    out += "}\r\n";
}

void nats_sub(std::string& out, std::string_view subject, std::uint32_t sid) {
    out += "SUB ";
    out += subject;
    out += ' ';
    char digits[16];
    auto [end, ec] = std::to_chars(digits, digits + sizeof digits, sid);
    out.append(digits, end);
    out += "\r\n";
}

void nats_pub(std::string& out, std::string_view subject, std::string_view payload) {
    out += "PUB ";
    out += subject;
    out += ' ';
    char digits[24];
    auto [end, ec] = std::to_chars(digits, digits + sizeof digits, payload.size());
    out.append(digits, end);
    out += "\r\n";
    out += payload;
    out += "\r\n";
}

// --- RESP ---

namespace {

enum class Item { bulk, integer, simple, error, null };

// Reads one non-array item at `pos`; advances `pos` past it.
ParseStatus read_item(std::string_view in, std::size_t& pos, Item& kind, std::string_view& text,
                      std::int64_t& integer) noexcept {
    if (pos >= in.size()) return ParseStatus::need_more;
    const auto eol = line_end(in, pos);
    if (eol == std::string_view::npos) return in.size() - pos > max_line ? ParseStatus::error : ParseStatus::need_more;
    const char type = in[pos];
    const std::string_view line = in.substr(pos + 1, eol - pos - 1);
    switch (type) {
        case '+':
            kind = Item::simple;
            text = line;
            pos = eol + 2;
            return ParseStatus::event;
        case '-':
            kind = Item::error;
            text = line;
            pos = eol + 2;
            return ParseStatus::event;
        case ':':
            kind = Item::integer;
            if (!to_number(line, integer)) return ParseStatus::error;
            pos = eol + 2;
            return ParseStatus::event;
        case '$': {
            std::int64_t length = 0;
            if (!to_number(line, length) || length < -1) return ParseStatus::error;
            if (length == -1) {
                kind = Item::null;
                pos = eol + 2;
                return ParseStatus::event;
            }
            const std::size_t begin = eol + 2;
            const std::size_t total = begin + static_cast<std::size_t>(length) + 2;
            if (in.size() < total) return ParseStatus::need_more;
            if (in[total - 2] != '\r' || in[total - 1] != '\n') return ParseStatus::error;
            kind = Item::bulk;
            text = in.substr(begin, static_cast<std::size_t>(length));
            pos = total;
            return ParseStatus::event;
        }
        default:
            return ParseStatus::error;
    }
}

}  // namespace

ParseStatus parse_resp(std::string_view in, RespEvent& event, std::size_t& consumed) noexcept {
    if (in.empty()) return ParseStatus::need_more;
    std::size_t pos = 0;
    Item kind{};
    std::string_view text;
    std::int64_t integer = 0;
    if (in[0] != '*') {
        const auto status = read_item(in, pos, kind, text, integer);
        if (status != ParseStatus::event) return status;
        event = RespEvent{};
        switch (kind) {
            case Item::simple: event.kind = RespEvent::Kind::simple; event.text = text; break;
            case Item::error: event.kind = RespEvent::Kind::error; event.text = text; break;
            case Item::integer: event.kind = RespEvent::Kind::integer; event.integer = integer; break;
            default: event.kind = RespEvent::Kind::other; break;
        }
        consumed = pos;
        return ParseStatus::event;
    }
    const auto eol = line_end(in, 0);
    if (eol == std::string_view::npos) return in.size() > max_line ? ParseStatus::error : ParseStatus::need_more;
    std::int64_t count = 0;
    if (!to_number(in.substr(1, eol - 1), count) || count < -1 || count > 1024) return ParseStatus::error;
    pos = eol + 2;
    std::string_view items[3];
    std::int64_t integers[3] = {};
    for (std::int64_t i = 0; i < count; ++i) {
        if (pos < in.size() && in[pos] == '*') return ParseStatus::error;  // pub/sub never nests
        const auto status = read_item(in, pos, kind, text, integer);
        if (status != ParseStatus::event) return status;
        if (i < 3) {
            items[i] = text;
            integers[i] = integer;
        }
    }
    event = RespEvent{};
    event.kind = RespEvent::Kind::other;
    if (count == 3 && items[0] == "message") {
        event.kind = RespEvent::Kind::message;
        event.channel = items[1];
        event.payload = items[2];
    } else if (count == 3 && items[0] == "subscribe") {
        event.kind = RespEvent::Kind::subscribe;
        event.channel = items[1];
        event.integer = integers[2];
    }
    consumed = pos;
    return ParseStatus::event;
}

void resp_command(std::string& out, std::initializer_list<std::string_view> args) {
    char digits[24];
    out += '*';
    auto [end, ec] = std::to_chars(digits, digits + sizeof digits, args.size());
    out.append(digits, end);
    out += "\r\n";
    for (const auto arg : args) {
        out += '$';
        auto [e, c] = std::to_chars(digits, digits + sizeof digits, arg.size());
        out.append(digits, e);
        out += "\r\n";
        out += arg;
        out += "\r\n";
    }
}

}  // namespace chat::bench
