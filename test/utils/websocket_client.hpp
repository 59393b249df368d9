// A blocking WebSocket test client over TCP or TLS, written from RFC 6455
// itself rather than with the server's codec, so that the two check each
// other: the opening handshake, masked client frames (whole, fragmented, or
// raw bytes a test makes up), and the server's frames read back into
// pulsechat messages (MessageReader), pings answered, the close recorded.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include <asio.hpp>
#if PULSECHAT_HAVE_OPENSSL
#include <asio/ssl.hpp>
#endif

#include "utils/live.hpp"

namespace chat::test {

// One client frame: FIN, opcode, masked (or not), payload length in its shortest form.
inline std::string ws_frame(std::uint8_t opcode, std::string_view payload, bool fin = true, bool masked = true) {
    std::string f;
    f.push_back(static_cast<char>((fin ? 0x80 : 0x00) | opcode));
    const std::uint8_t mask_bit = masked ? 0x80 : 0x00;
    if (payload.size() < 126) {
        f.push_back(static_cast<char>(mask_bit | payload.size()));
    } else if (payload.size() <= 0xFFFF) {
        f.push_back(static_cast<char>(mask_bit | 126));
        f.push_back(static_cast<char>(payload.size() >> 8));
        f.push_back(static_cast<char>(payload.size() & 0xFF));
    } else {
        f.push_back(static_cast<char>(mask_bit | 127));
        for (int shift = 56; shift >= 0; shift -= 8) f.push_back(static_cast<char>((payload.size() >> shift) & 0xFF));
    }
    if (!masked) return f.append(payload);
    static std::mt19937 random(12345);
    std::array<char, 4> key{};
    for (char& k : key) k = static_cast<char>(random());
    f.append(key.data(), key.size());
    for (std::size_t i = 0; i < payload.size(); ++i) f.push_back(static_cast<char>(payload[i] ^ key[i % 4]));
    return f;
}

template <class Stream>
class WsClient : public MessageReader<WsClient<Stream>> {
public:
    template <class... Args>
    explicit WsClient(Args&&... args) : stream_(io_, std::forward<Args>(args)...) {}

    Stream& stream() { return stream_; }
    auto& socket() { return stream_.lowest_layer(); }

    // Runs until `done` is set or `limit` passes (then the operation is cancelled).
    bool wait(const bool& done, std::chrono::milliseconds limit) { return run_until(io_, stream_, done, limit); }

    void write_raw(std::string_view bytes) {
        bool done = false;
        asio::async_write(stream_, asio::buffer(bytes.data(), bytes.size()),
                          [&](const asio::error_code&, std::size_t) { done = true; });
        wait(done, 3000ms);
    }

    // The opening handshake: sends the request (with `extra` header lines,
    // then `trailing` bytes in the same write) and reads the response's head.
    // Returns its status code (0: none came); the head is in response().
    int upgrade(std::string_view host, std::string extra = "", std::string path = "/ws", std::string trailing = "") {
        std::string request = "GET " + path + " HTTP/1.1\r\nHost: " + std::string(host) +
                              "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                              "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                              "Sec-WebSocket-Protocol: pulsechat\r\n" +
                              extra + "\r\n" + trailing;
        write_raw(request);
        return read_head();
    }
    // A plain HTTP request; returns the status and leaves the whole response in response().
    int http(const std::string& request) {
        write_raw(request);
        const int status = read_head();
        const auto length = header("content-length");
        const std::size_t body = length ? std::stoul(*length) : 0;
        const auto deadline = Clock::now() + 3000ms;
        while (raw_.size() < body && Clock::now() < deadline && read_more(100ms)) {
        }
        body_ = raw_.substr(0, std::min(body, raw_.size()));
        raw_.erase(0, body_.size());
        return status;
    }
    const std::string& response() const { return head_; }
    const std::string& body() const { return body_; }
    // A response header's value (name in lowercase), from the last head read.
    std::optional<std::string> header(std::string_view name) const {
        std::string lower;
        for (char c : head_) lower.push_back(static_cast<char>(std::tolower(static_cast<unsigned char>(c))));
        const auto at = lower.find("\r\n" + std::string(name) + ":");
        if (at == std::string::npos) return std::nullopt;
        auto begin = at + 3 + name.size();
        while (begin < head_.size() && head_[begin] == ' ') ++begin;
        return head_.substr(begin, head_.find("\r\n", begin) - begin);
    }

    // pulsechat frames, each in its own binary message, or several in one.
    void send(const Message& m) { write_raw(ws_frame(0x2, encode(m))); }
    void send_in_one(const std::vector<Message>& frames) {
        std::string payload;
        for (const auto& m : frames) payload += encode(m);
        write_raw(ws_frame(0x2, payload));
    }
    std::optional<Welcome> login(const std::string& nick) {
        send(Hello{nick, {}, {}});
        return this->template read_until<Welcome>();
    }
    std::optional<Joined> join(const std::string& room) {
        send(Join{room, false, {}});
        return this->template read_until<Joined>();
    }

    // What the server sent besides data.
    std::optional<std::uint16_t> close_code() const { return close_code_; }
    const std::string& close_reason() const { return close_reason_text_; }
    const std::vector<std::string>& pongs() const { return pongs_; }
    std::size_t binary_messages() const { return binary_messages_; }
    // A protocol fault in the server's frames (masked, bad opcode, ...): empty if none.
    const std::string& fault() const { return fault_; }
    // Whether the server closed the TCP connection (after its close frame, if any).
    bool tcp_closed() const { return tcp_closed_; }
    bool wait_tcp_close(std::chrono::milliseconds limit) {
        const auto deadline = Clock::now() + limit;
        while (!tcp_closed_ && Clock::now() < deadline) read_more(deadline - Clock::now());
        return tcp_closed_;
    }

private:
    friend class MessageReader<WsClient>;

    // Reads what is there (at most `limit`); false on timeout or close.
    bool read_more(Clock::duration limit) {
        if (tcp_closed_) return false;
        std::array<char, 64 * 1024> buffer;
        bool done = false;
        asio::error_code ec;
        std::size_t n = 0;
        stream_.async_read_some(asio::buffer(buffer), [&](const asio::error_code& e, std::size_t k) {
            ec = e;
            n = k;
            done = true;
        });
        if (!wait(done, std::max(std::chrono::milliseconds{1},
                                 std::chrono::duration_cast<std::chrono::milliseconds>(limit))))
            return false;
        if (ec) {
            tcp_closed_ = true;
            return false;
        }
        raw_.append(buffer.data(), n);
        return true;
    }

    int read_head() {
        const auto deadline = Clock::now() + 3000ms;
        std::size_t end;
        while ((end = raw_.find("\r\n\r\n")) == std::string::npos) {
            if (Clock::now() >= deadline || !read_more(deadline - Clock::now())) return 0;
        }
        head_ = raw_.substr(0, end + 4);
        raw_.erase(0, end + 4);
        return head_.size() > 12 ? std::atoi(head_.c_str() + 9) : 0;
    }

    // Takes whole server frames out of raw_: data into payload_.
    void parse_frames() {
        for (;;) {
            if (raw_.size() < 2) return;
            const auto b0 = static_cast<std::uint8_t>(raw_[0]);
            const auto b1 = static_cast<std::uint8_t>(raw_[1]);
            if (b1 & 0x80) fault_ = "the server masked a frame";
            if (b0 & 0x70) fault_ = "RSV bits set";
            std::uint64_t length = b1 & 0x7F;
            std::size_t at = 2;
            if (length == 126) {
                if (raw_.size() < 4) return;
                length = (std::uint64_t(std::uint8_t(raw_[2])) << 8) | std::uint8_t(raw_[3]);
                if (length < 126) fault_ = "length not in its shortest form";
                at = 4;
            } else if (length == 127) {
                if (raw_.size() < 10) return;
                length = 0;
                for (int i = 0; i < 8; ++i) length = (length << 8) | std::uint8_t(raw_[2 + i]);
                if (length <= 0xFFFF) fault_ = "length not in its shortest form";
                at = 10;
            }
            if (raw_.size() < at + length) return;
            const std::string payload = raw_.substr(at, length);
            raw_.erase(0, at + length);
            const std::uint8_t opcode = b0 & 0x0F;
            const bool fin = (b0 & 0x80) != 0;
            if (close_code_) fault_ = "a frame after the server's close frame";  // RFC 6455 5.5.1
            switch (opcode) {
            case 0x0:
            case 0x2:
                payload_ += payload;
                if (fin) ++binary_messages_;
                break;
            case 0x9: write_raw(ws_frame(0xA, payload)); break;
            case 0xA: pongs_.push_back(payload); break;
            case 0x8:
                if (payload.size() >= 2)
                    close_code_ = static_cast<std::uint16_t>((std::uint8_t(payload[0]) << 8) | std::uint8_t(payload[1]));
                else
                    close_code_ = 1005;
                close_reason_text_ = payload.size() > 2 ? payload.substr(2) : "";
                if (!close_replied_) {
                    close_replied_ = true;
                    write_raw(ws_frame(0x8, payload.substr(0, 2)));
                }
                break;
            default: fault_ = "opcode " + std::to_string(opcode); break;
            }
        }
    }

    std::size_t receive(asio::mutable_buffer space, std::chrono::milliseconds limit, asio::error_code& ec) {
        const auto deadline = Clock::now() + limit;
        for (;;) {
            parse_frames();
            if (!payload_.empty()) {
                const std::size_t n = std::min(space.size(), payload_.size());
                std::memcpy(space.data(), payload_.data(), n);
                payload_.erase(0, n);
                return n;
            }
            if (close_code_ || tcp_closed_) {
                ec = asio::error::eof;
                return 0;
            }
            if (Clock::now() >= deadline) return 0;
            read_more(deadline - Clock::now());
        }
    }

    asio::io_context io_;
    Stream stream_;
    std::string raw_;      // bytes read, not yet parsed
    std::string payload_;  // data not yet handed to the decoder
    std::string head_;
    std::string body_;
    std::optional<std::uint16_t> close_code_;
    std::string close_reason_text_;
    bool close_replied_ = false;
    bool tcp_closed_ = false;
    std::vector<std::string> pongs_;
    std::size_t binary_messages_ = 0;
    std::string fault_;
};

using WsTcpClient = WsClient<asio::ip::tcp::socket>;

inline std::unique_ptr<WsTcpClient> ws_connect(std::uint16_t port) {
    auto c = std::make_unique<WsTcpClient>();
    c->socket().connect(asio::ip::tcp::endpoint(asio::ip::make_address("127.0.0.1"), port));
    c->socket().set_option(asio::ip::tcp::no_delay(true));
    return c;
}

}  // namespace chat::test
