// Hostile clients against a chat_server PROCESS: every well-formed frame a
// client can send, with every string at the largest size a legal frame allows
// and with control characters in every field, must get its documented answer
// and must never take the server down (a crash shows as an exit status).
// Also: what a client says cannot forge or colour a log line, and a flood of
// connections that never send HELLO costs one summary log line per second.
#include <doctest/doctest.h>

#include <poll.h>
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <limits>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "utils/live.hpp"
#include "utils/server_process.hpp"
#include "utils/subprocess.hpp"

using namespace chat;
using namespace chat::test;

namespace {

// Longest ERROR reason or PRESENCE detail we accept from the server: it must
// clip what clients said (names.hpp max_reason_length = 256) instead of
// echoing a str16's worth of it.
constexpr std::size_t max_echo = 300;

// The settings of every server here: short heartbeats, no rate limit, and a
// --max-frame that a str16 of 65,535 bytes fits in with room to spare.
constexpr std::uint32_t big_frame = 256 * 1024;


std::vector<std::string> server_args(unsigned threads, const std::string& log_level,
                                     std::vector<std::string> extra = {}) {
    std::vector<std::string> args = {"--bind",        "127.0.0.1", "--port",      "0",
                                     "--threads",     std::to_string(threads),
                                     "--rate",        "0",         "--heartbeat-interval", "200ms",
                                     "--heartbeat-timeout", "3s",  "--max-frame", "256KiB",
                                     "--queue-limit", "16MiB",     "--drain-timeout", "3s",
                                     "--log-level",   log_level};
    args.insert(args.end(), extra.begin(), extra.end());
    return args;
}

// The server must still be running; if not, say how it ended and what it logged.
void require_alive(ServerProcess& server, const std::string& after) {
    const auto status = server.wait_exit(0ms);
    if (status)
        FAIL("the server process ended after " << after << ": exit status " << *status << "\n--- stderr tail ---\n"
                                               << server.stderr_tail());
}

// --- strings at the limits ---

// `n` bytes of 3-byte characters (U+20AC), ending in a multi-byte character
// whatever `n` is (n >= 2): every clip at 3k+1 or 3k+2 bytes splits one.
std::string euros(std::size_t n) {
    std::size_t threes = n / 3;
    std::size_t twos = 0;
    if (n % 3 == 2) twos = 1;
    if (n % 3 == 1 && threes > 0) {
        threes -= 1;
        twos = 2;
    }
    std::string s;
    s.reserve(n);
    for (std::size_t i = 0; i < threes; ++i) s += "\xE2\x82\xAC";  // U+20AC
    for (std::size_t i = 0; i < twos; ++i) s += "\xC3\xA9";         // U+00E9
    if (s.size() < n) s += "a";
    return s;
}

// `n` bytes of 4-byte characters (U+1F600), the last one or two 2/3-byte ones.
std::string emoji(std::size_t n) {
    std::string s;
    s.reserve(n);
    while (n - s.size() >= 4) s += "\xF0\x9F\x98\x80";
    const std::size_t rest = n - s.size();
    if (rest == 3) s += "\xE2\x82\xAC";
    if (rest == 2) s += "\xC3\xA9";
    if (rest == 1) s += "a";
    return s;
}

// Control characters the rules refuse in names and text (and a log must never show raw).
const std::vector<std::pair<std::string, std::string>>& controls() {
    static const std::vector<std::pair<std::string, std::string>> list = {
        {"LF", "\n"}, {"CR", "\r"}, {"ESC", "\x1b[31m"}, {"NUL", std::string(1, '\0')}, {"DEL", "\x7f"},
        {"C1 U+0085", "\xC2\x85"},
    };
    return list;
}

// `s` with its last bytes replaced by `tail`: same length, the bad part at the very end.
std::string ending_in(std::string s, const std::string& tail) {
    s.replace(s.size() - tail.size(), tail.size(), tail);
    return s;
}

// Names (room, nick, peer) no rule allows, each with a label.
std::vector<std::pair<std::string, std::string>> bad_names(std::size_t longest_valid) {
    std::vector<std::pair<std::string, std::string>> names = {
        {"65535 x 'a'", std::string(max_short_string, 'a')},
        {"65535 bytes of U+1F600", emoji(max_short_string)},
        {"65535 bytes of U+20AC", euros(max_short_string)},
        {"one over the longest valid", std::string(longest_valid + 1, 'b')},
        {"empty", ""},
    };
    for (const auto& [label, c] : controls()) {
        names.emplace_back("short with " + label, "lob" + c + "by");
        names.emplace_back("65535 bytes ending in " + label, ending_in(std::string(max_short_string, 'a'), c));
    }
    return names;
}

// Texts the rules refuse, the longest ones as large as a frame around them allows.
std::vector<std::pair<std::string, std::string>> bad_texts(std::size_t largest) {
    std::vector<std::pair<std::string, std::string>> texts = {{"empty", ""}};
    for (const auto& [label, c] : controls()) {
        texts.emplace_back("short with " + label, "hi" + c + "there");
        texts.emplace_back(std::to_string(largest) + " bytes ending in " + label,
                           ending_in(std::string(largest, 'x'), c));
    }
    // A log line forged by a newline: refused as text (and so never logged).
    texts.emplace_back("forged log line", "x\n2026-01-01T00:00:00.000 error FORGED");
    return texts;
}

// The text that fills a SAY in `room` (or a WHISPER to `peer`) to exactly max_frame.
std::size_t say_text_room(std::uint32_t max_frame, const std::string& room) { return max_frame - 6 - room.size(); }
std::size_t whisper_text_room(std::uint32_t max_frame, const std::string& peer) {
    return max_frame - 14 - peer.size();
}

// --- clients ---

using Match = std::function<bool(const Message&)>;

// A client that notes every ERROR it gets, and waits for answers with deadlines.
class Client : public TestClient {
public:
    explicit Client(std::uint16_t port) : TestClient(port) { keep_alive(300ms); }

    // The next message that `match` accepts, or the next ERROR (which always
    // ends the wait), or nullopt at the deadline or on close.
    std::optional<Message> answer(const Match& match, std::chrono::milliseconds limit = 5000ms) {
        const auto deadline = Clock::now() + limit;
        for (;;) {
            const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
            if (left.count() <= 0) return std::nullopt;
            auto m = read(left);
            if (!m) return std::nullopt;
            if (const auto* e = std::get_if<Error>(&*m)) {
                errors.push_back(*e);
                return m;
            }
            if (match(*m)) return m;
        }
    }

    // Everything until the server closes; the ERRORs are noted. The last ERROR, if any.
    std::optional<Error> error_then_close(std::chrono::milliseconds limit = 5000ms) {
        std::optional<Error> last;
        for (auto& m : read_until_closed(limit))
            if (auto* e = std::get_if<Error>(&m)) {
                errors.push_back(*e);
                last = *e;
            }
        return last;
    }

    std::vector<Error> errors;
};

template <class T>
Match is_a(std::function<bool(const T&)> pred = {}) {
    return [pred](const Message& m) {
        const auto* t = std::get_if<T>(&m);
        return t != nullptr && (!pred || pred(*t));
    };
}

std::string describe(const std::optional<Message>& m) {
    if (!m) return "nothing (timeout or close)";
    if (const auto* e = std::get_if<Error>(&*m))
        return "ERROR " + std::string(to_string(e->code)) + (e->fatal ? " (fatal): " : ": ") + e->reason;
    return std::string(to_string(frame_type(*m)));
}

void check_reasons(const std::vector<Error>& errors, const std::string& who) {
    for (const auto& e : errors) {
        INFO(who << " got ERROR " << to_string(e.code) << " with a reason of " << e.reason.size() << " bytes");
        CHECK(e.reason.size() <= max_echo);
        CHECK(is_valid_utf8(e.reason));
    }
}

// Alice and Bob in "lobby", chatting on their own thread for as long as the
// attack lasts: each round, Alice says something and Bob must see it, then the
// other way round. What else they get is noted for the main thread.
class Bystanders {
public:
    struct Seen {
        std::vector<Presence> presences[2];  // [0] alice, [1] bob
        std::vector<Whisper> whispers;       // to alice
        std::vector<std::size_t> other_sizes[2];  // text sizes of DELIVERs from neither of them
        std::vector<Error> errors;
        std::uint64_t rounds = 0;
        std::string failure;
    };

    explicit Bystanders(std::uint16_t port) {
        alice_ = std::make_unique<Client>(port);
        bob_ = std::make_unique<Client>(port);
        REQUIRE(alice_->login("alice"));
        REQUIRE(alice_->join("lobby"));
        REQUIRE(bob_->login("bob"));
        REQUIRE(bob_->join("lobby"));
        thread_ = std::thread([this] { run(); });
    }
    ~Bystanders() { finish(); }
    Bystanders(const Bystanders&) = delete;
    Bystanders& operator=(const Bystanders&) = delete;

    // Stops the chatting thread; the main thread may use alice() and bob() after.
    void finish() {
        stop_ = true;
        if (thread_.joinable()) thread_.join();
    }
    Client& alice() { return *alice_; }
    Client& bob() { return *bob_; }

    template <class F>
    auto with(F f) {
        std::lock_guard lock(mutex_);
        return f(seen_);
    }
    // Polls what they saw until `f` holds, or `limit` passes.
    bool eventually(const std::function<bool(Seen&)>& f, std::chrono::milliseconds limit = 5000ms) {
        return TestServer::eventually([&] { return with(f); }, limit);
    }

private:
    void run() {
        for (std::uint64_t i = 0; !stop_; ++i) {
            const std::string a = "alice says " + std::to_string(i);
            alice_->send(Say{"lobby", a});
            if (!wait_for(*bob_, 1, "alice", a)) return;
            const std::string b = "bob says " + std::to_string(i) + " \xE2\x82\xAC";
            bob_->send(Say{"lobby", b});
            if (!wait_for(*alice_, 0, "bob", b)) return;
            with([](Seen& s) { ++s.rounds; });
            // Pacing, not synchronisation: a few ms of reading what else came.
            pace(*alice_, 0);
            pace(*bob_, 1);
        }
    }

    bool wait_for(Client& c, int who, const std::string& sender, const std::string& text) {
        const auto deadline = Clock::now() + 5000ms;
        while (Clock::now() < deadline) {
            auto m = c.read(std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()));
            if (!m) break;
            note(*m, who);
            if (const auto* d = std::get_if<Deliver>(&*m); d && d->sender == sender && d->text == text) return true;
        }
        with([&](Seen& s) {
            s.failure = (who == 0 ? "alice" : "bob") + std::string(" did not get '") + text + "' from " + sender +
                        (c.closed() ? " (connection closed: " + c.close_reason().message() + ")" : " (timeout)");
        });
        return false;
    }

    void pace(Client& c, int who) {
        const auto until = Clock::now() + 10ms;
        while (Clock::now() < until) {
            auto m = c.read(std::chrono::duration_cast<std::chrono::milliseconds>(until - Clock::now()));
            if (!m) break;
            note(*m, who);
        }
    }

    void note(const Message& m, int who) {
        std::lock_guard lock(mutex_);
        if (const auto* p = std::get_if<Presence>(&m)) seen_.presences[who].push_back(*p);
        if (const auto* w = std::get_if<Whisper>(&m); w && who == 0) seen_.whispers.push_back(*w);
        if (const auto* e = std::get_if<Error>(&m)) seen_.errors.push_back(*e);
        if (const auto* d = std::get_if<Deliver>(&m); d && d->sender != "alice" && d->sender != "bob")
            seen_.other_sizes[who].push_back(d->text.size());
    }

    std::unique_ptr<Client> alice_;
    std::unique_ptr<Client> bob_;
    std::thread thread_;
    std::atomic<bool> stop_{false};
    std::mutex mutex_;
    Seen seen_;
};

// Whether both bystanders saw `nick` leave "lobby" by disconnecting, and the
// details they saw (which must be clipped, UTF-8, and start with "quit").
bool both_saw_quit(Bystanders::Seen& s, const std::string& nick, std::vector<std::string>* details = nullptr) {
    bool seen[2] = {false, false};
    for (int who = 0; who < 2; ++who)
        for (const auto& p : s.presences[who])
            if (p.nick == nick && p.room == "lobby" && p.event == PresenceEvent::disconnected) {
                seen[who] = true;
                if (details) details->push_back(p.detail);
            }
    return seen[0] && seen[1];
}

void check_quit_detail(const std::string& detail, const std::string& reason) {
    INFO("PRESENCE detail of " << detail.size() << " bytes for a BYE reason of " << reason.size() << " bytes");
    CHECK(detail.size() <= max_echo);
    CHECK(is_valid_utf8(detail));
    CHECK(detail.starts_with("quit"));
    // What it quotes is a prefix of the reason, cut on a character boundary.
    if (detail.starts_with("quit: ")) {
        std::string quoted = detail.substr(6);
        if (quoted.size() >= 3 && quoted.ends_with("...") && quoted.size() - 3 < reason.size())
            quoted.resize(quoted.size() - 3);
        CHECK(reason.starts_with(quoted));
    }
}

// A fresh connection sends `hello` and must be answered without the server
// going down: the answer is returned (an ERROR, or WELCOME as `welcome`).
struct HelloAnswer {
    std::optional<Error> error;
    bool welcome = false;
    bool closed = false;
};
HelloAnswer try_hello(std::uint16_t port, const std::string& frame, std::vector<Error>& errors) {
    Client c(port);
    c.send_raw(frame);
    HelloAnswer a;
    auto m = c.answer(is_a<Welcome>());
    if (m && std::holds_alternative<Welcome>(*m)) {
        a.welcome = true;
        c.send(Bye{"done"});
        c.read_until_closed(2000ms);
    } else if (m) {
        a.error = std::get<Error>(*m);
        c.read_until_closed(2000ms);
    }
    a.closed = c.closed();
    errors.insert(errors.end(), c.errors.begin(), c.errors.end());
    return a;
}

void check_fatal(const HelloAnswer& a, ErrorCode code) {
    REQUIRE_MESSAGE(a.error, "no ERROR came");
    CHECK(to_string(a.error->code) == to_string(code));
    CHECK(a.error->fatal);
    CHECK(a.closed);
}

// --- the attack ---

// HELLOs at and over the 4096-byte pre-HELLO cap, and with control characters.
void attack_hello(ServerProcess& server, std::uint16_t port, std::vector<Error>& errors) {
    constexpr std::size_t cap = 4096;  // session.hpp max_frame_before_hello
    // Payload = 2 + nick + 2 + token + 2 + resume_token.
    {
        INFO("HELLO with a nick filling a payload of exactly 4096 bytes");
        const auto a = try_hello(port, encode(Hello{std::string(cap - 6, 'n'), {}, {}}), errors);
        check_fatal(a, ErrorCode::invalid_nick);
    }
    {
        INFO("HELLO with a 4096-byte payload of a multi-byte nick");
        const auto a = try_hello(port, encode(Hello{emoji(cap - 6), {}, {}}), errors);
        check_fatal(a, ErrorCode::invalid_nick);
    }
    {
        INFO("HELLO one byte over the cap");
        const auto a = try_hello(port, encode(Hello{std::string(cap - 5, 'n'), {}, {}}), errors);
        check_fatal(a, ErrorCode::frame_too_large);
    }
    {
        INFO("HELLO with a str16 nick of 65535 bytes");
        const auto a = try_hello(port, encode(Hello{std::string(max_short_string, 'n'), {}, {}}), errors);
        check_fatal(a, ErrorCode::frame_too_large);
    }
    {
        INFO("HELLO with all three fields at 65535 bytes");
        const std::string big(max_short_string, 't');
        const auto a = try_hello(port, encode(Hello{big, big, big}), errors);
        check_fatal(a, ErrorCode::frame_too_large);
    }
    {
        INFO("HELLO with an invalid nick and tokens filling 4096 bytes together");
        const std::string nick = std::string(1000, 'n') + "\x1b";
        const auto a = try_hello(port, encode(Hello{nick, euros(1500), emoji(cap - 6 - nick.size() - 1500)}), errors);
        check_fatal(a, ErrorCode::invalid_nick);
    }
    {
        // No token file: the token is not looked at, the login succeeds.
        INFO("HELLO with a valid nick and a token filling 4096 bytes");
        const std::string nick = "tokenbig";
        const auto a = try_hello(port, encode(Hello{nick, emoji(cap - 6 - nick.size()), {}}), errors);
        CHECK(a.welcome);
    }
    {
        INFO("HELLO with a fresh nick and a resume_token filling 4096 bytes");
        const std::string nick = "resumebig";
        const auto a = try_hello(port, encode(Hello{nick, {}, euros(cap - 6 - nick.size())}), errors);
        CHECK(a.welcome);
    }
    {
        // A wrong (huge) resume token for a nick that is held: nick_taken, the holder stays.
        INFO("HELLO as 'alice' with a resume_token filling 4096 bytes");
        const auto a = try_hello(port, encode(Hello{"alice", {}, std::string(cap - 6 - 5, 'r')}), errors);
        check_fatal(a, ErrorCode::nick_taken);
    }
    for (const auto& [label, c] : controls()) {
        INFO("HELLO with a nick containing " << label);
        const auto a = try_hello(port, encode(Hello{"mal" + c + "lory", {}, {}}), errors);
        check_fatal(a, ErrorCode::invalid_nick);
    }
    {
        INFO("HELLO with a nick that forges a log line");
        const auto a = try_hello(port, encode(Hello{"x\n2026-01-01T00:00:00.000 error FORGED", {}, {}}), errors);
        check_fatal(a, ErrorCode::invalid_nick);
    }
    require_alive(server, "the HELLO probes");
}

// Frames only a server may send, from a logged-in client, with fields at the
// limits: each is a fatal unknown_type on its own connection.
void attack_wrong_direction(ServerProcess& server, std::uint16_t port, std::vector<Error>& errors) {
    const std::string big(max_short_string, 'w');
    const std::string u = emoji(max_short_string);
    const std::vector<std::pair<std::string, Message>> frames = {
        {"WELCOME", Welcome{~0ull, ~0u, ~0u, ~0u, big, u, big, "v"}},
        {"JOINED", Joined{big, ~0ull, ~0ull, ~0ull, ~0u, true, {u, big}, true}},
        {"DELIVER",
         Deliver{big, u, ~0ull, {~0ull, ~0ull}, std::string(big_frame - 70000 - 2 * max_short_string, 'd'), true}},
        {"PRESENCE", Presence{big, u, PresenceEvent::renamed, big}},
        {"ROOMS", Rooms{{{big, ~0u}, {u, 1}}}},
        {"MEMBERS", Members{big, {u, big}}},
        {"ERROR", Error{ErrorCode::internal, big, true}},
    };
    int n = 0;
    for (const auto& [label, frame] : frames) {
        INFO("a client sends " << label << " with fields at the limits");
        Client c(port);
        REQUIRE(c.login("wrongway" + std::to_string(n++)));
        c.send(frame);
        const auto e = c.error_then_close();
        errors.insert(errors.end(), c.errors.begin(), c.errors.end());
        REQUIRE(e);
        CHECK(to_string(e->code) == to_string(ErrorCode::unknown_type));
        CHECK(e->fatal);
        CHECK(c.closed());
    }
    {
        INFO("a payload of max_frame + 1 after HELLO");
        Client c(port);
        REQUIRE(c.login("toolarge"));
        c.send(Say{"lobby", std::string(say_text_room(big_frame, "lobby") + 1, 'z')});
        const auto e = c.error_then_close();
        errors.insert(errors.end(), c.errors.begin(), c.errors.end());
        REQUIRE(e);
        CHECK(to_string(e->code) == to_string(ErrorCode::frame_too_large));
        CHECK(e->fatal);
    }
    require_alive(server, "the wrong-direction and oversized frames");
}

// One logged-in attacker in "lobby": every client frame type with every
// string at the limits, then control characters in every field.
void attack_fields(ServerProcess& server, Client& m, Bystanders& bys) {
    const std::uint32_t max_frame = big_frame;
    const auto refused = [&](const Message& frame, ErrorCode code, const std::string& what) {
        INFO(what);
        m.send(frame);
        const auto got = m.answer([](const Message&) { return false; });
        const auto* e = got ? std::get_if<Error>(&*got) : nullptr;
        REQUIRE_MESSAGE(e != nullptr, what << ": expected ERROR " << to_string(code) << ", got " << describe(got)
                                           << "; server " << server.state());
        CHECK(to_string(e->code) == to_string(code));
        CHECK_FALSE(e->fatal);
        CHECK(e->reason.size() <= max_echo);
    };

    // Names no rule allows, in every frame that carries one.
    for (const auto& [label, room] : bad_names(max_room_length)) {
        refused(Join{room, false, {}}, ErrorCode::invalid_room, "JOIN room " + label);
        refused(Join{room, true, {~0ull, ~0ull}}, ErrorCode::invalid_room, "JOIN(resume) room " + label);
        refused(Leave{room}, ErrorCode::invalid_room, "LEAVE room " + label);
        refused(Who{room}, ErrorCode::invalid_room, "WHO room " + label);
        refused(Say{room, std::string(say_text_room(max_frame, room), 's')}, ErrorCode::invalid_room,
                "SAY (a whole max_frame) to room " + label);
    }
    require_alive(server, "bad room names");
    for (const auto& [label, nick] : bad_names(max_nick_length)) {
        refused(Whisper{nick, 0, std::string(whisper_text_room(max_frame, nick), 'w'), false},
                ErrorCode::no_such_nick, "WHISPER (a whole max_frame) to peer " + label);
        refused(Nick{std::string(max_short_string, 'o'), nick},
                ErrorCode::invalid_nick, "NICK to " + label);
    }
    require_alive(server, "bad nicks");
    // Texts the rules refuse, in SAY and WHISPER.
    for (const auto& [label, text] : bad_texts(say_text_room(max_frame, "lobby"))) {
        refused(Say{"lobby", text}, ErrorCode::invalid_text, "SAY text " + label);
        const std::string t = text.size() > whisper_text_room(max_frame, "alice")
                                  ? text.substr(text.size() - whisper_text_room(max_frame, "alice"))
                                  : text;
        refused(Whisper{"alice", 0, t, false}, ErrorCode::invalid_text, "WHISPER text " + label);
    }
    refused(Say{"nowhere", "hello"}, ErrorCode::not_in_room, "SAY to a room not joined");
    refused(Leave{"nowhere"}, ErrorCode::not_in_room, "LEAVE a room not joined");
    refused(Who{"nowhere"}, ErrorCode::invalid_room, "WHO a room that does not exist");
    refused(Whisper{"nobody", 0, "hello", false}, ErrorCode::no_such_nick, "WHISPER to a free nick");
    refused(Join{"lobby", false, {}}, ErrorCode::invalid_room, "JOIN a room already joined");
    require_alive(server, "bad texts");
    {
        const auto w = bys.with([](Bystanders::Seen& s) { return s.whispers.size(); });
        CHECK_MESSAGE(w == 0, "a refused WHISPER reached alice");
    }

    // The largest frames the rules allow: each gets its normal answer.
    const std::string room64(max_room_length, 'r');
    const std::string nick32 = "m" + std::string(max_nick_length - 1, '9');
    {
        INFO("JOIN/WHO/SAY/LEAVE a 64-byte room");
        m.send(Join{room64, true, {~0ull, ~0ull}});
        auto j = m.answer(is_a<Joined>());
        REQUIRE_MESSAGE(j, describe(j));
        REQUIRE(std::holds_alternative<Joined>(*j));
        CHECK(std::get<Joined>(*j).epoch_changed);
        m.send(Who{room64});
        auto w = m.answer(is_a<Members>());
        REQUIRE_MESSAGE((w && std::holds_alternative<Members>(*w)), describe(w));
        const std::string text(say_text_room(max_frame, room64), 'R');
        m.send(Say{room64, text});
        auto d = m.answer(is_a<Deliver>([&](const Deliver& d) { return d.room == room64; }));
        REQUIRE_MESSAGE((d && std::holds_alternative<Deliver>(*d)), describe(d));
        CHECK(std::get<Deliver>(*d).text == text);
        m.send(Leave{room64});
        auto p = m.answer(is_a<Presence>([&](const Presence& p) { return p.room == room64; }));
        REQUIRE_MESSAGE((p && std::holds_alternative<Presence>(*p)), describe(p));
        CHECK(std::get<Presence>(*p).event == PresenceEvent::left);
    }
    std::vector<std::size_t> said;  // sizes of the big texts mallory said in lobby
    for (const auto& text : {std::string(say_text_room(max_frame, "lobby"), 'L'),
                             "\t" + euros(say_text_room(max_frame, "lobby") - 1),
                             emoji(say_text_room(max_frame, "lobby"))}) {
        INFO("SAY a whole max_frame to lobby (" << text.size() << " bytes of text)");
        m.send(Say{"lobby", text});
        auto d = m.answer(is_a<Deliver>([](const Deliver& d) { return d.sender == "mallory"; }));
        REQUIRE_MESSAGE((d && std::holds_alternative<Deliver>(*d)), describe(d));
        CHECK(std::get<Deliver>(*d).text == text);
        said.push_back(text.size());
    }
    {
        INFO("WHISPER a whole max_frame to alice");
        const std::string text = euros(whisper_text_room(max_frame, "alice"));
        m.send(Whisper{"alice", 0, text, false});
        auto w = m.answer(is_a<Whisper>());
        REQUIRE_MESSAGE((w && std::holds_alternative<Whisper>(*w)), describe(w));
        CHECK(std::get<Whisper>(*w).echo);
        CHECK(std::get<Whisper>(*w).text == text);
        CHECK(bys.eventually([&](Bystanders::Seen& s) {
            return s.whispers.size() == 1 && s.whispers[0].peer == "mallory" && s.whispers[0].text == text;
        }));
    }
    CHECK_MESSAGE(bys.eventually([&](Bystanders::Seen& s) {
        return s.other_sizes[0] == said && s.other_sizes[1] == said;
    }),
                  "alice and bob each got mallory's three big DELIVERs");
    {
        INFO("NICK to a 32-byte nick and back; WHO, LIST");
        m.send(Nick{std::string(max_short_string, 'o'), nick32});
        auto n = m.answer(is_a<Nick>());
        REQUIRE_MESSAGE((n && std::holds_alternative<Nick>(*n)), describe(n));
        CHECK(std::get<Nick>(*n).new_nick == nick32);
        m.send(Who{"lobby"});
        auto w = m.answer(is_a<Members>());
        REQUIRE_MESSAGE((w && std::holds_alternative<Members>(*w)), describe(w));
        const auto& nicks = std::get<Members>(*w).nicks;
        CHECK(std::find(nicks.begin(), nicks.end(), nick32) != nicks.end());
        CHECK(std::find(nicks.begin(), nicks.end(), "alice") != nicks.end());
        m.send(Nick{{}, "mallory"});
        n = m.answer(is_a<Nick>());
        REQUIRE_MESSAGE((n && std::holds_alternative<Nick>(*n)), describe(n));
        CHECK(std::get<Nick>(*n).new_nick == "mallory");
        m.send(List{});
        auto r = m.answer(is_a<Rooms>());
        REQUIRE_MESSAGE((r && std::holds_alternative<Rooms>(*r)), describe(r));
    }
    {
        INFO("LEAVE lobby and JOIN it again resuming from extreme positions");
        for (const Position after : {Position{~0ull, ~0ull}, Position{0, 0}, Position{0, ~0ull}}) {
            m.send(Leave{"lobby"});
            auto p = m.answer(is_a<Presence>([](const Presence& p) { return p.room == "lobby"; }));
            REQUIRE_MESSAGE((p && std::holds_alternative<Presence>(*p)), describe(p));
            m.send(Join{"lobby", true, after});
            auto j = m.answer(is_a<Joined>());
            REQUIRE_MESSAGE((j && std::holds_alternative<Joined>(*j)), describe(j));
        }
        // The same epoch, a sequence number past the head, then from the very start.
        m.send(Leave{"lobby"});
        REQUIRE(m.answer(is_a<Presence>([](const Presence& p) { return p.room == "lobby"; })));
        m.send(Join{"lobby", false, {}});
        auto j = m.answer(is_a<Joined>());
        REQUIRE_MESSAGE((j && std::holds_alternative<Joined>(*j)), describe(j));
        const auto epoch = std::get<Joined>(*j).epoch;
        for (const std::uint64_t seq : std::vector<std::uint64_t>{~std::uint64_t{0}, 0}) {
            m.send(Leave{"lobby"});
            REQUIRE(m.answer(is_a<Presence>([](const Presence& p) { return p.room == "lobby"; })));
            m.send(Join{"lobby", true, {epoch, seq}});
            j = m.answer(is_a<Joined>());
            REQUIRE_MESSAGE((j && std::holds_alternative<Joined>(*j)), describe(j));
            CHECK_FALSE(std::get<Joined>(*j).epoch_changed);
            if (seq != 0) CHECK(std::get<Joined>(*j).missed == 0);
        }
    }
    refused(Nick{{}, "alice"}, ErrorCode::nick_taken, "NICK to a nick another session holds");
    {
        INFO("WHISPER a whole max_frame to oneself");
        const std::string text = emoji(whisper_text_room(max_frame, "mallory"));
        m.send(Whisper{"mallory", 0, text, false});
        for (const bool echo : {false, true}) {
            auto w = m.answer(is_a<Whisper>([&](const Whisper& w) { return w.echo == echo; }));
            REQUIRE_MESSAGE((w && std::holds_alternative<Whisper>(*w)), describe(w));
            CHECK(std::get<Whisper>(*w).text == text);
        }
    }
    {
        // Up to --max-rooms-per-session (64) rooms of 64-byte names, then one more.
        INFO("JOIN rooms up to the per-session limit and one over it");
        for (int i = 1; i < 64; ++i) {
            std::string room(max_room_length, 'q');
            room.replace(0, std::to_string(i).size(), std::to_string(i));
            m.send(Join{room, false, {}});
            auto j = m.answer(is_a<Joined>());
            REQUIRE_MESSAGE((j && std::holds_alternative<Joined>(*j)), "room " << i << ": " << describe(j));
        }
        refused(Join{std::string(max_room_length, 'z'), false, {}}, ErrorCode::too_many_rooms,
                "JOIN a 65th room");
        m.send(List{});
        auto r = m.answer(is_a<Rooms>());
        REQUIRE_MESSAGE((r && std::holds_alternative<Rooms>(*r)), describe(r));
        CHECK(std::get<Rooms>(*r).rooms.size() >= 64);
    }
    {
        INFO("PING, PONG, HEARTBEAT");
        m.send(Pong{~0ull});
        m.send(Heartbeat{});
        m.send(Ping{~0ull});
        auto p = m.answer(is_a<Pong>());
        REQUIRE_MESSAGE((p && std::holds_alternative<Pong>(*p)), describe(p));
        CHECK(std::get<Pong>(*p).nonce == ~0ull);
        m.send(Ping{0});
        p = m.answer(is_a<Pong>([](const Pong& p) { return p.nonce == 0; }));
        REQUIRE_MESSAGE((p && std::holds_alternative<Pong>(*p)), describe(p));
    }
    require_alive(server, "the largest legal frames");
}

// BYE reasons that once killed the server ("quit: " + reason built into a
// str16 threw std::length_error), and a forged log line.
std::string forged_bye_reason() {
    const std::string head = "bye\n2026-01-01T00:00:00.000 error FORGED \x1b[31mred\x1b[0m\r\n\x7f\xC2\x85 " +
                             std::string(1, '\0') + " end";
    return head + euros(max_short_string - 1 - head.size());
}

void check_log_safety(const std::string& err) {
    // No raw ESC, CR, NUL, DEL or C1 control: a terminal showing the log obeys none of a client's.
    CHECK_MESSAGE(err.find('\x1b') == std::string::npos, "raw ESC in the server's stderr");
    CHECK_MESSAGE(err.find('\r') == std::string::npos, "raw CR in the server's stderr");
    CHECK_MESSAGE(err.find('\0') == std::string::npos, "raw NUL in the server's stderr");
    CHECK_MESSAGE(err.find('\x7f') == std::string::npos, "raw DEL in the server's stderr");
    CHECK_MESSAGE(err.find("\xC2\x85") == std::string::npos, "raw U+0085 in the server's stderr");
    // Every line is the server's own: it starts with a timestamp, and none with the forged one.
    std::istringstream lines(err);
    int n = 0;
    for (std::string line; std::getline(lines, line); ++n) {
        INFO("stderr line " << n << ": " << line.substr(0, 200));
        CHECK_FALSE(line.starts_with("2026-01-01T00:00:00.000"));
        CHECK_FALSE(line.find("FORGED") < 10);
        const bool stamped = line.size() > 24 && line[4] == '-' && line[7] == '-' && line[10] == 'T' &&
                             line[13] == ':' && line[16] == ':' && line[19] == '.' && line[23] == ' ';
        CHECK(stamped);
    }
    // The BYE reason was logged (escaped), so the checks above saw it.
    CHECK_MESSAGE(err.find("bye\\n2026-01-01T00:00:00.000 error FORGED") != std::string::npos,
                  "the BYE reason was not logged escaped");
}

void hostile_run(unsigned threads) {
    ServerProcess server(server_args(threads, "debug", {"--handshake-timeout", "2s"}));
    const auto port = server.port();
    REQUIRE_MESSAGE(port, "no 'listening on' line; stderr: " << server.stderr_tail());
    auto bys = std::make_unique<Bystanders>(*port);
    std::vector<Error> errors;

    attack_hello(server, *port, errors);
    attack_wrong_direction(server, *port, errors);

    {
        Client mallory(*port);
        auto w = mallory.login("mallory");
        REQUIRE(w);
        CHECK(w->max_frame == big_frame);
        REQUIRE(mallory.join("lobby"));
        attack_fields(server, mallory, *bys);
        const std::string reason = forged_bye_reason();
        REQUIRE(reason.size() == max_short_string - 1);
        mallory.send(Bye{reason});
        mallory.read_until_closed(3000ms);
        CHECK(mallory.closed());
        errors.insert(errors.end(), mallory.errors.begin(), mallory.errors.end());
        std::vector<std::string> details;
        REQUIRE_MESSAGE(bys->eventually([&](Bystanders::Seen& s) { return both_saw_quit(s, "mallory"); }),
                        "no PRESENCE disconnected for mallory after her BYE; server " << server.state());
        bys->with([&](Bystanders::Seen& s) { return both_saw_quit(s, "mallory", &details); });
        for (const auto& d : details) check_quit_detail(d, reason);
    }
    require_alive(server, "mallory's BYE of 65534 bytes");

    // More BYEs, one attacker each: reasons of every size and kind near the limit.
    const std::vector<std::pair<std::string, std::string>> byes = {
        {"65534 x 'q'", std::string(max_short_string - 1, 'q')},
        {"65535 x 'q'", std::string(max_short_string, 'q')},
        {"65534 bytes of U+1F600", emoji(max_short_string - 1)},
        {"65535 bytes of U+20AC", euros(max_short_string)},
        {"257 bytes of U+20AC", euros(257)},
        {"empty", ""},
    };
    int n = 0;
    for (const auto& [label, reason] : byes) {
        INFO("BYE with a reason of " << label);
        const std::string nick = "quitter" + std::to_string(n++);
        Client q(*port);
        REQUIRE(q.login(nick));
        REQUIRE(q.join("lobby"));
        q.send(Bye{reason});
        q.read_until_closed(3000ms);
        CHECK(q.closed());
        errors.insert(errors.end(), q.errors.begin(), q.errors.end());
        std::vector<std::string> details;
        REQUIRE_MESSAGE(bys->eventually([&](Bystanders::Seen& s) { return both_saw_quit(s, nick); }),
                        "no PRESENCE disconnected for " << nick << "; server " << server.state());
        bys->with([&](Bystanders::Seen& s) { return both_saw_quit(s, nick, &details); });
        for (const auto& d : details) check_quit_detail(d, reason);
        if (reason.empty())
            for (const auto& d : details) CHECK(d == "quit");
    }
    require_alive(server, "the BYEs");

    // After all that: the bystanders chatted throughout and a newcomer gets in.
    bys->finish();
    const auto seen = bys->with([](Bystanders::Seen& s) { return s; });
    CHECK_MESSAGE(seen.failure.empty(), seen.failure);
    CHECK(seen.rounds >= 3);
    CHECK(seen.errors.empty());
    for (int who = 0; who < 2; ++who)
        for (const auto& p : seen.presences[who]) {
            CHECK(p.detail.size() <= max_echo);
            CHECK(is_valid_utf8(p.detail));
        }
    check_reasons(errors, "an attacker");
    check_reasons(seen.errors, "a bystander");
    MESSAGE("threads " << threads << ": the bystanders chatted " << seen.rounds << " rounds during the attack");

    Client carol(*port);
    REQUIRE_MESSAGE(carol.login("carol"), "a new client cannot log in; server " << server.state());
    REQUIRE(carol.join("lobby"));
    carol.send(Say{"lobby", "hello from carol"});
    const auto from = [](const std::string& sender, const std::string& text) {
        return is_a<Deliver>([=](const Deliver& d) { return !d.history && d.sender == sender && d.text == text; });
    };
    auto& alice = bys->alice();
    auto& bob = bys->bob();
    CHECK(alice.answer(from("carol", "hello from carol")));
    CHECK(bob.answer(from("carol", "hello from carol")));
    alice.send(Say{"lobby", "alice after the attack"});
    CHECK(bob.answer(from("alice", "alice after the attack")));
    CHECK(carol.answer(from("alice", "alice after the attack")));
    bob.send(Say{"lobby", "bob after the attack"});
    CHECK(alice.answer(from("bob", "bob after the attack")));
    alice.send(Whisper{"bob", 0, "psst", false});
    CHECK(bob.answer(is_a<Whisper>([](const Whisper& w) { return w.peer == "alice" && w.text == "psst"; })));
    require_alive(server, "the newcomer and the bystanders' last messages");

    const std::string before_stop = server.all_stderr();
    CHECK_MESSAGE(before_stop.find("bug:") == std::string::npos,
                  "the server reported a bug (a handler threw):\n" << server.stderr_tail());

    server.signal(SIGTERM);
    for (Client* c : {&alice, &bob, &carol}) {
        auto bye = c->read_until<Bye>(3000ms);
        CHECK(bye);
        if (bye) CHECK(bye->reason.size() <= max_echo);
        asio::error_code ignored;
        c->socket().close(ignored);
    }
    bys.reset();  // closes alice and bob
    auto status = server.wait_exit(5000ms);
    REQUIRE_MESSAGE(status, "the server did not exit within 5s of SIGTERM");
    CHECK(*status == 0);
    check_log_safety(server.all_stderr());
}

// Sum of N over "in the last second: N connection(s) ended before HELLO" lines.
std::uint64_t ended_before_hello(const std::string& log, int* summary_lines) {
    static constexpr std::string_view key = "in the last second: ";
    std::uint64_t sum = 0;
    *summary_lines = 0;
    for (auto at = log.find(key); at != std::string::npos; at = log.find(key, at + 1)) {
        sum += std::strtoull(log.c_str() + at + key.size(), nullptr, 10);
        ++*summary_lines;
    }
    return sum;
}

std::size_t count_lines(std::string_view text) {
    return static_cast<std::size_t>(std::count(text.begin(), text.end(), '\n'));
}

void flood_run(unsigned threads) {
    ServerProcess server(server_args(threads, "info", {"--handshake-timeout", "300ms", "--write-timeout", "1s"}));
    const auto port = server.port();
    REQUIRE(port);
    {
        // One ordinary session first, so that the log is past its start.
        Client c(*port);
        REQUIRE(c.login("regular"));
        c.send(Bye{"bye"});
        c.read_until_closed(2000ms);
    }
    REQUIRE(TestServer::eventually(
        [&] { return server.all_stderr().find("disconnected") != std::string::npos; }, 3000ms));
    const std::string before = server.all_stderr();

    constexpr int connections = 200;
    asio::io_context io;
    const asio::ip::tcp::endpoint to(asio::ip::make_address("127.0.0.1"), *port);
    std::vector<std::unique_ptr<asio::ip::tcp::socket>> kept;
    const auto flood_start = Clock::now();
    for (int i = 0; i < connections; ++i) {
        auto s = std::make_unique<asio::ip::tcp::socket>(io);
        asio::error_code ec;
        s->connect(to, ec);
        REQUIRE_MESSAGE(!ec, "connect " << i << ": " << ec.message());
        if (i % 2 == 0) continue;  // closed at once, without a byte
        kept.push_back(std::move(s));
    }
    // The others are left to hit the handshake timeout: each gets its ERROR, then we close.
    const auto deadline = Clock::now() + 5000ms;
    for (auto& s : kept) {
        pollfd p{s->native_handle(), POLLIN, 0};
        const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
        CHECK(::poll(&p, 1, static_cast<int>(std::max<long long>(0, left.count()))) == 1);
        asio::error_code ignored;
        s->close(ignored);
    }
    kept.clear();

    int summaries = 0;
    const bool counted = TestServer::eventually(
        [&] { return ended_before_hello(server.all_stderr().substr(before.size()), &summaries) >= connections; },
        6000ms);
    const auto took = Clock::now() - flood_start;
    const std::string during = server.all_stderr().substr(before.size());
    INFO("stderr during the flood:\n" << during.substr(0, 3000));
    CHECK_MESSAGE(counted, "the summary lines do not account for all " << connections << " connections");
    CHECK(ended_before_hello(during, &summaries) == connections);
    CHECK(summaries >= 1);
    // One summary line a second, nothing per connection.
    const auto seconds = std::chrono::duration_cast<std::chrono::seconds>(took).count();
    CHECK(count_lines(during) <= static_cast<std::size_t>(seconds + 2));
    CHECK(count_lines(during) == static_cast<std::size_t>(summaries));
    require_alive(server, "the flood");
    {
        Client c(*port);
        CHECK(c.login("after-flood"));
    }
    server.signal(SIGTERM);
    auto status = server.wait_exit(5000ms);
    REQUIRE(status);
    CHECK(*status == 0);
}

}  // namespace

TEST_SUITE("hostile (live)") {
    TEST_CASE("frames at every limit and with control characters in every field cannot take down --threads 1") {
        hostile_run(1);
    }
    TEST_CASE("frames at every limit and with control characters in every field cannot take down --threads 2") {
        hostile_run(2);
    }
    TEST_CASE("a flood of connections without HELLO logs one summary line a second (--threads 1)") { flood_run(1); }
    TEST_CASE("a flood of connections without HELLO logs one summary line a second (--threads 2)") { flood_run(2); }
}
