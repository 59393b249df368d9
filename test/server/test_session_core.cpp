// SessionCore without sockets: every deadline, every close path, the queue
// bound and the control-first order, with the time given by the test.
#include <doctest/doctest.h>

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include <spdlog/sinks/null_sink.h>
#include <spdlog/spdlog.h>

#include "chat/proto/protocol.hpp"
#include "chat/server/session_core.hpp"

using namespace chat;
using namespace std::chrono_literals;

namespace {

using Clock = SessionCore::Clock;
const Clock::time_point t0 = Clock::time_point{} + 1000s;

// What the core asked of the world.
struct FakeHost final : SessionHost {
    void login(const NickName& nick, std::string_view token) override {
        logins.emplace_back(nick.view());
        tokens.emplace_back(token);
    }
    void submit(const Request& request) override { submitted.emplace_back(request_name(request)); }
    void leave_hub(PresenceEvent event, const std::string& reason) override { left.emplace_back(event, reason); }
    std::optional<AuthRefusal> check_access(std::string_view token) override {
        if (required_token.empty() || token == required_token) return std::nullopt;
        return AuthRefusal{"wrong access token", "wrong token from test"};
    }
    std::size_t unread_bytes() override { return unread; }
    Clock::time_point now() override { return clock; }

    std::vector<std::string> logins, tokens, submitted;
    std::vector<std::pair<PresenceEvent, std::string>> left;
    std::string required_token;
    std::size_t unread = 0;
    Clock::time_point clock = t0;
};

ServerConfig test_config() {
    ServerConfig cfg;
    cfg.handshake_timeout = 1000ms;
    cfg.heartbeat_interval = 1000ms;
    cfg.heartbeat_timeout = 3000ms;
    cfg.write_timeout = 2000ms;
    cfg.queue_limit = 4096;
    cfg.max_frame = 2048;
    cfg.rate = 0;  // unlimited unless a test says otherwise
    return cfg;
}

struct Fixture {
    explicit Fixture(ServerConfig c = test_config()) : cfg(std::move(c)) {
        core = std::make_unique<SessionCore>(cfg, host, counters, metrics, *log, 7, peer, version);
    }

    // Starts a session that is ready to read (TCP).
    void connect(Clock::time_point now = t0) {
        core->start(now, std::nullopt);
        core->transport_ready();
        core->take_actions();
    }

    // Connects, sends HELLO and lets the hub answer.
    void login(const std::string& nick = "alice", Clock::time_point now = t0) {
        connect(now);
        frame(Hello{nick, {}, {}}, now);
        REQUIRE(host.logins.size() == 1);
        core->on_login(nick, "token", now);
        const auto welcome = written(now);
        REQUIRE(welcome.size() == 1);
        REQUIRE(std::holds_alternative<Welcome>(welcome[0]));
        core->take_actions();
    }

    void frame(Message m, Clock::time_point now) { core->on_frame(m, now); }

    // Takes the batch the transport would write, as messages, and says it was written.
    std::vector<Message> written(Clock::time_point now) {
        std::vector<Message> out;
        if (!core->take_batch(now)) return out;
        Decoder decoder(1 << 20);
        for (const auto& f : core->batch()) decoder.feed(std::string_view(*f));
        Message m;
        while (decoder.next(m) == Decoder::Status::message) out.push_back(m);
        core->batch_written(now);
        return out;
    }

    ServerConfig cfg;
    FakeHost host;
    SessionCounters counters;
    ShardMetrics metrics;
    std::shared_ptr<spdlog::logger> log =
        std::make_shared<spdlog::logger>("session-core-test", std::make_shared<spdlog::sinks::null_sink_mt>());
    std::string peer = "127.0.0.1:5555";
    std::string version = "test";
    std::unique_ptr<SessionCore> core;
};

std::optional<Error> error_in(const std::vector<Message>& frames) {
    for (const auto& m : frames)
        if (const auto* e = std::get_if<Error>(&m)) return *e;
    return std::nullopt;
}

SharedFrame room_frame(std::size_t text_size, std::uint64_t seq = 1) {
    Deliver d;
    d.room = "room";
    d.sender = "bob";
    d.position = Position{1, seq};
    d.text = std::string(text_size, 'x');
    return make_frame(d);
}

}  // namespace

TEST_SUITE("session_core") {
    TEST_CASE("the states have names and a session starts connecting") {
        Fixture f;
        CHECK(f.core->state() == SessionState::connecting);
        CHECK(to_string(SessionState::lingering) == "lingering");
        f.core->start(t0, std::nullopt);
        CHECK(f.core->next_wakeup() == t0 + 1000ms);
        CHECK(f.core->handshake_deadline() == t0 + 1000ms);  // what bounds a TLS handshake
        f.core->transport_ready();
        CHECK(f.core->state() == SessionState::greeting);
        CHECK((f.core->take_actions() & SessionCore::act_replan) != 0);
    }

    // --- the handshake ---

    TEST_CASE("no HELLO within the handshake timeout: a fatal ERROR handshake_timeout, then the close") {
        Fixture f;
        f.connect();
        f.core->on_timer(t0 + 999ms);
        CHECK(f.core->state() == SessionState::greeting);
        f.core->on_timer(t0 + 1000ms);
        CHECK(f.core->state() == SessionState::draining);
        const auto out = f.written(t0 + 1000ms);
        const auto e = error_in(out);
        REQUIRE(e);
        CHECK(e->code == ErrorCode::handshake_timeout);
        CHECK(e->fatal);
        CHECK(f.host.logins.empty());
        CHECK(f.counters.ended_before_hello == 0);  // counted when it ends
        f.core->abort("test over");
        CHECK(f.counters.ended_before_hello == 1);
    }

    TEST_CASE("a connection that only fetched pages closes without counting as a session") {
        Fixture f;
        f.connect();
        f.core->end_without_session("HTTP connection done");
        CHECK(f.core->closed());
        CHECK((f.core->take_actions() & SessionCore::act_close) != 0);
        CHECK(f.counters.ended_before_hello == 0);
        for (const auto n : f.metrics.closed) CHECK(n == 0);
        f.core->abort("again");  // a closed session stays closed, and uncounted
        for (const auto n : f.metrics.closed) CHECK(n == 0);
    }

    TEST_CASE("HELLO goes to the hub; until it answers, the heartbeat timeout bounds the wait") {
        Fixture f;
        f.connect();
        CHECK(f.core->max_frame() == max_frame_before_hello);
        f.frame(Hello{"alice", {}, "resume-me"}, t0 + 500ms);
        CHECK(f.core->state() == SessionState::logging_in);
        CHECK(f.host.logins == std::vector<std::string>{"alice"});
        CHECK(f.host.tokens == std::vector<std::string>{"resume-me"});
        CHECK(f.core->max_frame() == f.cfg.max_frame);
        // The handshake deadline no longer counts: the client did its part.
        f.core->on_timer(t0 + 1000ms);
        CHECK(f.core->state() == SessionState::logging_in);
        CHECK(f.core->next_wakeup() == t0 + 3500ms);
        f.core->on_timer(t0 + 3500ms);
        CHECK(f.core->state() == SessionState::draining);
        const auto e = error_in(f.written(t0 + 3500ms));
        REQUIRE(e);
        CHECK(e->code == ErrorCode::internal);
        CHECK(e->reason.find("did not answer HELLO") != std::string::npos);
    }

    TEST_CASE("WELCOME is the first frame after login and carries the settings") {
        Fixture f;
        f.connect();
        f.frame(Hello{"alice", {}, {}}, t0);
        f.core->deliver(room_frame(10));  // room traffic the hub sent meanwhile
        f.core->on_login("alice", "tok", t0);
        CHECK(f.core->state() == SessionState::active);
        CHECK((f.core->take_actions() & SessionCore::act_replan) != 0);
        const auto out = f.written(t0);
        REQUIRE(out.size() == 2);
        const auto* w = std::get_if<Welcome>(&out[0]);
        REQUIRE(w);
        CHECK(w->session_id == 7);
        CHECK(w->heartbeat_interval_ms == 1000);
        CHECK(w->heartbeat_timeout_ms == 3000);
        CHECK(w->max_frame == 2048);
        CHECK(w->resume_token == "tok");
        CHECK(std::holds_alternative<Deliver>(out[1]));
    }

    TEST_CASE("a wrong access token is a fatal auth_failed and never reaches the hub") {
        Fixture f;
        f.host.required_token = "secret";
        f.connect();
        f.frame(Hello{"alice", "guess", {}}, t0);
        const auto e = error_in(f.written(t0));
        REQUIRE(e);
        CHECK(e->code == ErrorCode::auth_failed);
        CHECK(f.host.logins.empty());
        CHECK(f.core->closing());
    }

    TEST_CASE("frames out of place are fatal protocol errors with their own codes") {
        SUBCASE("before HELLO") {
            Fixture f;
            f.connect();
            f.frame(Say{"room", "hi"}, t0);
            const auto e = error_in(f.written(t0));
            REQUIRE(e);
            CHECK(e->code == ErrorCode::hello_required);
        }
        SUBCASE("an invalid nick") {
            Fixture f;
            f.connect();
            f.frame(Hello{"-bad nick", {}, {}}, t0);
            const auto e = error_in(f.written(t0));
            REQUIRE(e);
            CHECK(e->code == ErrorCode::invalid_nick);
            CHECK(f.host.logins.empty());
        }
        SUBCASE("a second HELLO") {
            Fixture f;
            f.login();
            f.frame(Hello{"alice", {}, {}}, t0);
            const auto e = error_in(f.written(t0));
            REQUIRE(e);
            CHECK(e->code == ErrorCode::duplicate_hello);
        }
        SUBCASE("a frame only the server sends") {
            Fixture f;
            f.login();
            f.frame(Deliver{}, t0);
            const auto e = error_in(f.written(t0));
            REQUIRE(e);
            CHECK(e->code == ErrorCode::unknown_type);
            CHECK(e->reason.find("DELIVER") != std::string::npos);
        }
    }

    TEST_CASE("a decoder error names the frame type and, before HELLO, the small bound") {
        Fixture f;
        f.connect();
        f.core->on_decode_error(DecodeError::frame_too_large, static_cast<std::uint8_t>(FrameType::hello), t0);
        const auto e = error_in(f.written(t0));
        REQUIRE(e);
        CHECK(e->code == ErrorCode::frame_too_large);
        CHECK(e->reason.find("4096 bytes before HELLO") != std::string::npos);
    }

    // --- heartbeats ---

    TEST_CASE("the server PINGs after one interval of sending nothing, then every interval") {
        Fixture f;
        f.login();
        CHECK(f.core->next_wakeup() == t0 + 1000ms);
        f.core->on_timer(t0 + 1000ms);
        auto out = f.written(t0 + 1000ms);
        REQUIRE(out.size() == 1);
        CHECK(std::get<Ping>(out[0]).nonce == 1);
        // Written frames count as sending too: the next PING waits an interval after them.
        CHECK(f.core->next_wakeup() == t0 + 2000ms);
        f.core->deliver(room_frame(10));
        CHECK(f.written(t0 + 1500ms).size() == 1);
        CHECK(f.core->next_wakeup() == t0 + 2500ms);
        f.core->on_timer(t0 + 2500ms);
        out = f.written(t0 + 2500ms);
        REQUIRE(out.size() == 1);
        CHECK(std::get<Ping>(out[0]).nonce == 2);
    }

    TEST_CASE("every whole frame pushes the expiry; silence for the timeout expires the session") {
        Fixture f;
        f.login();
        f.frame(Heartbeat{}, t0 + 2000ms);
        f.core->on_timer(t0 + 3000ms);  // the old deadline has passed: not expired
        CHECK(f.core->state() == SessionState::active);
        f.written(t0 + 3000ms);  // the PING
        f.frame(Pong{1}, t0 + 4000ms);
        f.core->on_timer(t0 + 6999ms);
        CHECK(f.core->state() == SessionState::active);
        f.written(t0 + 6999ms);
        f.core->deliver(room_frame(10));  // queued room traffic is dropped on expiry
        f.core->on_timer(t0 + 7000ms);
        CHECK(f.core->state() == SessionState::draining);
        // The rooms hear of it at once, as timed_out.
        REQUIRE(f.host.left.size() == 1);
        CHECK(f.host.left[0].first == PresenceEvent::timed_out);
        CHECK(f.core->close_event() == PresenceEvent::timed_out);
        const auto out = f.written(t0 + 7000ms);
        REQUIRE(out.size() == 1);
        CHECK(std::get<Error>(out[0]).code == ErrorCode::heartbeat_timeout);
        // A dead peer gets a short grace for the ERROR: min(write timeout, 1s).
        CHECK(f.core->next_wakeup() == t0 + 8000ms);
    }

    TEST_CASE("bytes waiting unread in the socket put off an expiry by one interval, counted") {
        Fixture f;
        f.login();
        f.host.unread = 100;
        f.core->on_timer(t0 + 3000ms);
        CHECK(f.core->state() == SessionState::active);
        CHECK(f.counters.expiries_averted == 1);
        f.written(t0 + 3000ms);
        CHECK(f.core->next_wakeup() <= t0 + 4000ms);
        f.host.unread = 0;
        f.core->on_timer(t0 + 4000ms);
        CHECK(f.core->state() == SessionState::draining);
        CHECK(f.counters.expiries_averted == 1);
    }

    // --- the queue ---

    TEST_CASE("control frames go ahead of room traffic queued before them") {
        Fixture f;
        f.login();
        for (std::uint64_t i = 1; i <= 3; ++i) f.core->deliver(room_frame(10, i));
        f.frame(Ping{42}, t0);
        const auto out = f.written(t0);
        REQUIRE(out.size() == 4);
        CHECK(std::get<Pong>(out[0]).nonce == 42);
        for (std::uint64_t i = 1; i <= 3; ++i) CHECK(std::get<Deliver>(out[i]).position.seq == i);
    }

    TEST_CASE("room traffic past --queue-limit makes a slow consumer; what is held never passes the limit") {
        Fixture f;
        f.login();
        f.host.clock = t0 + 100ms;
        std::size_t accepted = 0;
        for (int i = 0; i < 100 && f.core->deliver(room_frame(500)); ++i) {
            ++accepted;
            CHECK(f.core->queued_bytes() <= f.cfg.queue_limit);
        }
        CHECK(accepted == f.cfg.queue_limit / room_frame(500)->size());
        CHECK(f.core->state() == SessionState::draining);
        CHECK(f.counters.peak_queued_bytes <= f.cfg.queue_limit);
        REQUIRE(f.host.left.size() == 1);
        CHECK(f.host.left[0].second == "slow consumer");
        // The room traffic is dropped; the ERROR goes out within a short grace.
        const auto out = f.written(t0 + 100ms);
        REQUIRE(out.size() == 1);
        CHECK(std::get<Error>(out[0]).code == ErrorCode::slow_consumer);
        CHECK(f.core->next_wakeup() == t0 + 1100ms);
        CHECK_FALSE(f.core->deliver(room_frame(10)));  // closing: nothing more is taken
    }

    TEST_CASE("the batch in flight counts against the limit until it is written") {
        Fixture f;
        f.login();
        REQUIRE(f.core->deliver(room_frame(3000)));
        REQUIRE(f.core->take_batch(t0));
        CHECK(f.core->queued_bytes() > 3000);
        CHECK_FALSE(f.core->deliver(room_frame(1500)));  // 3000 in flight + 1500 > 4096
        CHECK(f.core->state() == SessionState::draining);
    }

    TEST_CASE("PONGs to a peer that PINGs without reading stay within the limit") {
        Fixture f;
        f.login();
        for (std::uint64_t i = 0; i < 1000 && !f.core->closing(); ++i) f.frame(Ping{i}, t0);
        CHECK(f.core->closing());
        CHECK(f.counters.peak_queued_bytes <= f.cfg.queue_limit);
    }

    TEST_CASE("a write that does not finish within the write timeout makes a slow consumer") {
        Fixture f;
        f.login();
        f.core->deliver(room_frame(10));
        REQUIRE(f.core->take_batch(t0 + 100ms));
        f.core->write_waiting();
        CHECK((f.core->take_actions() & SessionCore::act_replan) != 0);
        CHECK(f.core->next_wakeup() == std::min(t0 + 1000ms, t0 + 2100ms));
        f.core->on_timer(t0 + 1000ms);  // a PING is due but the write still waits
        CHECK(f.core->state() == SessionState::active);
        f.frame(Heartbeat{}, t0 + 2000ms);
        f.core->on_timer(t0 + 2100ms);
        CHECK(f.core->state() == SessionState::draining);
        REQUIRE(!f.host.left.empty());
        CHECK(f.core->close_reason().find("a write did not finish within 2s") != std::string::npos);
    }

    // --- the close ---

    TEST_CASE("a shutdown sends what was queued, then BYE, then half-closes and waits for the peer's EOF") {
        Fixture f;
        f.login();
        f.core->deliver(room_frame(10, 1));
        f.core->shutdown("maintenance", t0);
        CHECK(f.core->state() == SessionState::draining);
        CHECK(f.core->next_wakeup() == t0 + 2000ms);  // the write timeout bounds the drain
        CHECK_FALSE(f.core->wants_half_close());
        const auto out = f.written(t0);
        REQUIRE(out.size() == 2);
        CHECK(std::holds_alternative<Deliver>(out[0]));
        CHECK(std::get<Bye>(out[1]).reason == "maintenance");
        CHECK(f.core->wants_half_close());
        f.core->half_closed(t0 + 10ms);
        CHECK(f.core->state() == SessionState::lingering);
        CHECK(f.core->next_wakeup() == t0 + 1010ms);  // a short linger
        f.frame(Say{"room", "late"}, t0 + 20ms);  // read and dropped
        CHECK(f.host.submitted.empty());
        f.core->on_peer_eof(false, t0 + 30ms);
        CHECK(f.core->closed());
        CHECK((f.core->take_actions() & SessionCore::act_close) != 0);
        CHECK(f.core->close_reason() == "maintenance");
    }

    TEST_CASE("a peer that never sends its EOF is closed at the end of the linger, reason unchanged") {
        Fixture f;
        f.login();
        f.core->shutdown("maintenance", t0);
        f.written(t0);
        f.core->half_closed(t0);
        f.core->on_timer(t0 + 1000ms);
        CHECK(f.core->closed());
        CHECK(f.host.left.back().second == "maintenance");
    }

    TEST_CASE("a peer that does not take the last frames is closed at the drain deadline, and the log says so") {
        Fixture f;
        f.login();
        f.core->deliver(room_frame(10));
        f.core->shutdown("maintenance", t0);
        REQUIRE(f.core->take_batch(t0));  // never written
        f.core->on_timer(t0 + 1999ms);
        CHECK(f.core->state() == SessionState::draining);
        f.core->on_timer(t0 + 2000ms);
        CHECK(f.core->closed());
    }

    TEST_CASE("an EOF that came first ends the session at the half-close") {
        Fixture f;
        f.login();
        f.frame(Bye{"off"}, t0);
        f.core->on_peer_eof(false, t0);  // the client closed right after its BYE
        CHECK(f.core->state() == SessionState::draining);
        CHECK(f.core->wants_half_close());
        f.core->half_closed(t0);
        CHECK(f.core->closed());
        CHECK(f.core->close_reason() == "quit: off");
    }

    TEST_CASE("BYE drops what was queued: the receiver of a BYE sends nothing more") {
        Fixture f;
        f.login();
        for (int i = 0; i < 5; ++i) f.core->deliver(room_frame(100));
        f.frame(Bye{"enough"}, t0);
        CHECK(f.written(t0).empty());
        CHECK(f.core->wants_half_close());
        REQUIRE(f.host.left.size() == 1);
        CHECK(f.host.left[0] == std::pair{PresenceEvent::disconnected, std::string("quit: enough")});
    }

    TEST_CASE("an EOF in the middle of a frame is malformed_frame; between frames it is a plain close") {
        SUBCASE("mid-frame") {
            Fixture f;
            f.login();
            f.core->on_peer_eof(true, t0);
            const auto e = error_in(f.written(t0));
            REQUIRE(e);
            CHECK(e->code == ErrorCode::malformed_frame);
        }
        SUBCASE("between frames") {
            Fixture f;
            f.login();
            f.core->on_peer_eof(false, t0);
            CHECK(f.core->closed());
            CHECK(f.host.left.at(0).second == "connection closed by peer");
        }
    }

    TEST_CASE("a read error while closing over TLS keeps the close's reason") {
        Fixture f;
        f.login();
        f.core->close_with_error(ErrorCode::replaced, "replaced by a new login", t0);
        f.core->on_read_failed("read failed: Connection reset by peer", true);
        CHECK(f.core->closed());
        CHECK(f.host.left.at(0).second == "replaced by a new login");
    }

    TEST_CASE("a shutdown during the TLS handshake ends the session at once") {
        Fixture f;
        f.core->start(t0, std::nullopt);
        f.core->shutdown("maintenance", t0);
        CHECK(f.core->closed());
    }

    TEST_CASE("a rejected connection queues its ERROR before the transport is ready, and keeps it") {
        Fixture f;
        f.core->start(t0, std::pair{ErrorCode::server_full, std::string("server full")});
        CHECK(f.core->state() == SessionState::draining);
        CHECK(f.core->handshake_deadline() == t0 + 1000ms);  // a TLS handshake is still bounded by it
        f.core->transport_ready();
        CHECK(f.core->state() == SessionState::draining);
        const auto e = error_in(f.written(t0));
        REQUIRE(e);
        CHECK(e->code == ErrorCode::server_full);
    }

    TEST_CASE("the hub hears of the end exactly once, whatever closes the session") {
        Fixture f;
        f.login();
        f.core->close_with_error(ErrorCode::replaced, "replaced", t0);
        f.core->on_timer(t0 + 5000ms);
        f.core->abort("again");
        CHECK(f.host.left.size() == 1);
    }

    // --- requests ---

    TEST_CASE("requests are checked at the edge: bad names are refused without reaching the hub") {
        Fixture f;
        f.login();
        f.frame(Join{"lobby", false, {}}, t0);
        f.frame(Say{"lobby", "hello"}, t0);
        f.frame(Join{"bad room!", false, {}}, t0);
        CHECK(f.host.submitted == std::vector<std::string>{"JOIN", "SAY"});
        const auto e = error_in(f.written(t0));
        REQUIRE(e);
        CHECK(e->code == ErrorCode::invalid_room);
        CHECK_FALSE(e->fatal);
        CHECK(f.core->state() == SessionState::active);
    }

    TEST_CASE("flooding gets non-fatal rate_limited errors, then a fatal one after --rate-strikes in a row") {
        ServerConfig cfg = test_config();
        cfg.rate = 1;
        cfg.burst = 1;
        cfg.rate_strikes = 3;
        Fixture f(cfg);
        f.login();
        f.frame(Say{"lobby", "1"}, t0);
        f.frame(Say{"lobby", "2"}, t0);
        f.frame(Say{"lobby", "3"}, t0);
        CHECK(f.host.submitted.size() == 1);
        CHECK(f.core->state() == SessionState::active);
        f.frame(Say{"lobby", "4"}, t0);
        CHECK(f.core->closing());
        bool fatal = false;
        for (const auto& m : f.written(t0))
            if (const auto* e = std::get_if<Error>(&m)) fatal = fatal || (e->code == ErrorCode::rate_limited && e->fatal);
        CHECK(fatal);
    }
}
