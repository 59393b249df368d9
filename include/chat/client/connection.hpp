// The chat client's connection: ClientState (client_state.hpp) run over a
// stream with heartbeats and reconnects.
//
// ClientConnection is written once over a Connector (connector.hpp), which
// opens the stream: TCP, TLS or a Unix-domain socket.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <optional>
#include <random>
#include <string>
#include <tuple>
#include <variant>
#include <vector>

#include <asio.hpp>
#include <asio/experimental/as_tuple.hpp>
#include <asio/experimental/awaitable_operators.hpp>

#include "chat/client/backoff.hpp"
#include "chat/client/client_state.hpp"
#include "chat/client/connector.hpp"
#include "chat/common/units.hpp"
#include "chat/proto/protocol.hpp"
#include "chat/common/tls_client_context.hpp"

namespace chat {

// Why the client gave up; the program maps each to an exit code.
enum class ClientExit {
    quit,               // the user asked (or the script ended)
    connect_failed,     // no connection, or no WELCOME, on the first attempt
    nick_refused,       // nickname taken or invalid at login
    protocol_mismatch,  // the server speaks another protocol version, or broke it
    refused,            // refused otherwise: server full, access token, replaced by another client
    lost,               // connection lost and reconnecting is off
    internal,           // a bug
};

enum class StatusEvent { connected, server_timeout, reconnecting, disconnected };
std::string_view to_string(StatusEvent event) noexcept;

struct ClientStatus {
    StatusEvent event = StatusEvent::connected;
    std::string server;        // the connector's description, e.g. 127.0.0.1:7000
    std::string detail;        // disconnected: why; reconnecting: why the last attempt failed
    // connected
    bool reconnect = false;    // after a lost connection
    std::string nick;
    std::string server_name;
    std::string server_version;
    Duration heartbeat_interval{0};
    Duration heartbeat_timeout{0};
    // server_timeout
    Duration silent{0};        // how long nothing had arrived
    Duration timeout{0};
    // reconnecting
    unsigned attempt = 0;      // 1 for the first attempt after a loss
    Duration delay{0};
};

// What the connection tells its owner. Called on the connection's executor;
// the owner may call back into the connection from any of these.
class ClientObserver {
public:
    virtual ~ClientObserver() = default;
    virtual void on_status(const ClientStatus& status) = 0;
    // A frame from the server worth showing (not PING, PONG or WELCOME).
    virtual void on_frame(const Message& message, const FrameNote& note) = 0;
    // Something the client itself wants to say.
    virtual void on_notice(const std::string& text) = 0;
    // Every request has been answered (see ClientState::idle()).
    virtual void on_idle() {}
    // Called once; the connection does nothing after it.
    virtual void on_finished(ClientExit why, const std::string& reason) = 0;
};

struct ClientSettings {
    std::string nick;
    std::string token;
    std::vector<std::string> rooms;
    // For the TCP connection and again for the WELCOME that answers HELLO.
    Duration connect_timeout{10'000};
    Duration reconnect_initial{200};
    Duration reconnect_max{30'000};
    bool reconnect = true;
    // How long a BYE may take to go out when quitting.
    Duration quit_grace{300};
};

// One client's connection to the server across reconnects: a loop that
// connects, runs a session (reader, writer and watchdog coroutines sharing one
// idempotent end), and waits a backoff before the next attempt.
template <class Connector>
class ClientConnection {
public:
    using Stream = typename Connector::Stream;
    using Clock = std::chrono::steady_clock;

    ClientConnection(asio::any_io_executor executor, Connector connector, ClientSettings settings,
                     ClientObserver& observer)
        : executor_(executor),
          connector_(std::move(connector)),
          settings_(std::move(settings)),
          observer_(observer),
          state_(settings_.nick, settings_.rooms, settings_.token),
          backoff_(settings_.reconnect_initial, settings_.reconnect_max),
          watchdog_(executor),
          writer_wake_(executor),
          quit_signal_(executor) {}

    ClientConnection(const ClientConnection&) = delete;
    ClientConnection& operator=(const ClientConnection&) = delete;

    void start() {
        asio::co_spawn(executor_, run(), [this](std::exception_ptr e) {
            if (!e) return;
            try {
                std::rethrow_exception(e);
            } catch (const std::exception& ex) {
                finish(ClientExit::internal, std::string("bug: ") + ex.what());
            }
        });
    }

    // Intents go to the state; then kick() so that the writer looks for them.
    ClientState& state() noexcept { return state_; }
    const ClientState& state() const noexcept { return state_; }
    void kick() { wake_writer(); }

    bool connected() const noexcept { return welcomed_ && !end_; }
    std::string server() const { return connector_.describe(); }

    // Sends BYE when connected (waiting at most quit_grace for it to go out),
    // closes, and finishes with ClientExit::quit. Never waits for the server
    // to answer: a dead server cannot hold the client up.
    void quit(std::string reason) {
        if (quitting_ || finished_) return;
        quitting_ = true;
        quit_reason_ = std::move(reason);
        quit_signal_.cancel();
        if (stream_ != nullptr && !end_) {
            if (welcomed_) {
                queue_control(Bye{quit_reason_});
                quit_deadline_ = Clock::now() + settings_.quit_grace;
                watchdog_.cancel();
            } else {
                end_session(SessionEnd{SessionEnd::quit, ClientExit::quit, quit_reason_});
            }
        }
    }

private:
    struct SessionEnd {
        enum Kind { lost, timeout, fatal, quit } kind = lost;
        ClientExit exit = ClientExit::lost;
        std::string reason;
    };

    asio::awaitable<void> run() {
        using asio::experimental::as_tuple;
        using namespace asio::experimental::awaitable_operators;
        for (;;) {
            if (quitting_) break;
            std::string failure;
            auto connected = co_await connect();
            if (quitting_) break;
            if (!connected.stream) {
                if (!ever_welcomed_) {
                    finish(ClientExit::connect_failed,
                           "cannot connect to " + connector_.describe() + ": " + connected.what);
                    co_return;
                }
                failure = connected.what;
            } else {
                const auto started = Clock::now();
                SessionEnd end = co_await session(*connected.stream);
                for (const auto& notice : state_.on_disconnected()) observer_.on_notice(notice);
                if (end.kind == SessionEnd::quit) break;
                if (end.kind == SessionEnd::fatal) {
                    finish(end.exit, end.reason);
                    co_return;
                }
                if (!ever_welcomed_) {
                    finish(ClientExit::connect_failed, end.reason);
                    co_return;
                }
                // A session that lasted was a success: the next loss starts the backoff anew.
                if (Clock::now() - started >= std::chrono::seconds(2) && !nick_retry_until_) backoff_.reset();
                if (end.kind != SessionEnd::timeout) {
                    ClientStatus status;
                    status.event = StatusEvent::disconnected;
                    status.server = connector_.describe();
                    status.detail = end.reason;
                    observer_.on_status(status);
                }
                failure = end.reason;
            }
            if (!settings_.reconnect) {
                finish(ClientExit::lost, failure + " (not reconnecting: --no-reconnect)");
                co_return;
            }
            ClientStatus status;
            status.event = StatusEvent::reconnecting;
            status.server = connector_.describe();
            status.delay = backoff_.next();
            status.attempt = backoff_.attempts();
            status.detail = failure;
            observer_.on_status(status);
            asio::steady_timer pause(executor_, status.delay);
            co_await (pause.async_wait(as_tuple(asio::use_awaitable)) || wait_for_quit());
        }
        finish(ClientExit::quit, quit_reason_);
    }

    asio::awaitable<void> wait_for_quit() {
        using asio::experimental::as_tuple;
        if (quitting_) co_return;
        quit_signal_.expires_at(Clock::time_point::max());
        co_await quit_signal_.async_wait(as_tuple(asio::use_awaitable));
    }

    asio::awaitable<ConnectResult<Stream>> connect() {
        using asio::experimental::as_tuple;
        using namespace asio::experimental::awaitable_operators;
        asio::steady_timer deadline(executor_, settings_.connect_timeout);
        auto result = co_await (connector_.connect(executor_) || deadline.async_wait(as_tuple(asio::use_awaitable)) ||
                                wait_for_quit());
        if (result.index() == 0) co_return std::move(std::get<0>(result));
        ConnectResult<Stream> failed;
        if (result.index() == 1) {
            failed.error = asio::error::timed_out;
            failed.what = "no connection within " + format_duration(settings_.connect_timeout);
        } else {
            failed.error = asio::error::operation_aborted;
            failed.what = "quit";
        }
        co_return failed;
    }

    asio::awaitable<SessionEnd> session(Stream& stream) {
        using namespace asio::experimental::awaitable_operators;
        stream_ = &stream;
        end_.reset();
        welcomed_ = false;
        bye_queued_ = false;
        control_.clear();
        decoder_ = Decoder(default_max_frame + max_frame_overhead);
        const auto now = Clock::now();
        // The login has the connect timeout to be answered, too.
        rx_deadline_ = now + settings_.connect_timeout;
        last_rx_ = now;
        last_tx_ = now;
        queue_control(state_.hello());
        if (quitting_) end_session(SessionEnd{SessionEnd::quit, ClientExit::quit, quit_reason_});
        co_await (reader(stream) && writer(stream) && watchdog());
        stream_ = nullptr;
        welcomed_ = false;
        co_return end_.value_or(SessionEnd{SessionEnd::lost, ClientExit::lost, "connection closed"});
    }

    // --- the three coroutines of a session ---

    asio::awaitable<void> reader(Stream& stream) {
        using asio::experimental::as_tuple;
        Message message;
        while (!end_) {
            auto space = decoder_.prepare(16 * 1024);
            auto [ec, n] =
                co_await stream.async_read_some(asio::buffer(space.data(), space.size()), as_tuple(asio::use_awaitable));
            if (ec) {
                if (ec == asio::error::eof)
                    end_session(lost("the server closed the connection"));
                else if (ec != asio::error::operation_aborted)
                    end_session(lost("read failed: " + ec.message()));
                break;
            }
            decoder_.commit(n);
            last_rx_ = Clock::now();
            if (welcomed_) rx_deadline_ = last_rx_ + heartbeat_timeout_;
            for (;;) {
                const auto status = decoder_.next(message);
                if (status == Decoder::Status::need_more) break;
                if (status == Decoder::Status::error) {
                    end_session(decode_failure(decoder_.error()));
                    break;
                }
                handle(message);
                if (end_) break;
            }
        }
    }

    asio::awaitable<void> writer(Stream& stream) {
        using asio::experimental::as_tuple;
        std::string out;
        while (!end_) {
            out.clear();
            for (const auto& frame : control_) encode(frame, out);
            control_.clear();
            if (welcomed_ && !quitting_) {
                while (auto request = state_.next_request(Clock::now())) encode(*request, out);
            }
            if (out.empty()) {
                if (quitting_ && bye_queued_) {
                    // The BYE is out: nothing more to say.
                    end_session(SessionEnd{SessionEnd::quit, ClientExit::quit, quit_reason_});
                    break;
                }
                writer_waiting_ = true;
                writer_wake_.expires_at(Clock::time_point::max());
                co_await writer_wake_.async_wait(as_tuple(asio::use_awaitable));
                writer_waiting_ = false;
                continue;
            }
            last_tx_ = Clock::now();
            auto [ec, n] = co_await asio::async_write(stream, asio::buffer(out), as_tuple(asio::use_awaitable));
            if (ec) {
                if (!end_) end_session(lost("write failed: " + ec.message()));
                break;
            }
        }
    }

    asio::awaitable<void> watchdog() {
        using asio::experimental::as_tuple;
        while (!end_) {
            const auto now = Clock::now();
            if (now >= rx_deadline_) {
                if (!welcomed_) {
                    end_session(lost("no answer to HELLO from " + connector_.describe() + " within " +
                                     format_duration(settings_.connect_timeout)));
                } else {
                    const auto silent = std::chrono::duration_cast<Duration>(now - last_rx_);
                    ClientStatus status;
                    status.event = StatusEvent::server_timeout;
                    status.server = connector_.describe();
                    status.silent = silent;
                    status.timeout = heartbeat_timeout_;
                    status.detail = "server not responding: nothing received for " + format_duration(silent);
                    observer_.on_status(status);
                    end_session(SessionEnd{SessionEnd::timeout, ClientExit::lost, status.detail});
                }
                break;
            }
            if (quitting_ && bye_queued_ && now >= quit_deadline_) {
                end_session(SessionEnd{SessionEnd::quit, ClientExit::quit, quit_reason_});
                break;
            }
            if (welcomed_ && now - last_tx_ >= heartbeat_interval_) queue_control(Heartbeat{});
            auto next = rx_deadline_;
            if (welcomed_) next = std::min(next, last_tx_ + heartbeat_interval_);
            if (quitting_ && bye_queued_) next = std::min(next, quit_deadline_);
            if (auto until = state_.paused_until(now)) {
                next = std::min(next, *until);
            } else if (was_paused_) {
                wake_writer();  // the rate-limit pause is over
            }
            was_paused_ = state_.paused_until(now).has_value();
            watchdog_.expires_at(next);
            co_await watchdog_.async_wait(as_tuple(asio::use_awaitable));
        }
    }

    // --- frames from the server ---

    void handle(const Message& message) {
        if (const auto* welcome = std::get_if<Welcome>(&message)) {
            on_welcome(*welcome);
            return;
        }
        if (!welcomed_) {
            if (const auto* error = std::get_if<Error>(&message); error != nullptr && error->fatal) {
                observer_.on_frame(message, FrameNote{});
                end_session(classify(*error));
                return;
            }
            if (!std::holds_alternative<Ping>(message)) {
                end_session(SessionEnd{SessionEnd::fatal, ClientExit::protocol_mismatch,
                                       std::string("the server sent ") + std::string(to_string(frame_type(message))) +
                                           " before WELCOME: is this a pulsechat server?"});
                return;
            }
        }
        std::visit([this, &message](const auto& m) { on(m, message); }, message);
    }

    void on_welcome(const Welcome& welcome) {
        if (welcomed_) return;
        welcomed_ = true;
        const bool reconnect = ever_welcomed_;
        ever_welcomed_ = true;
        nick_retry_until_.reset();
        heartbeat_interval_ = Duration(welcome.heartbeat_interval_ms > 0 ? welcome.heartbeat_interval_ms : 5'000);
        heartbeat_timeout_ = Duration(welcome.heartbeat_timeout_ms > 0 ? welcome.heartbeat_timeout_ms : 15'000);
        if (welcome.max_frame > 0) decoder_.set_max_payload(welcome.max_frame + max_frame_overhead);
        rx_deadline_ = Clock::now() + heartbeat_timeout_;
        state_.on_welcome(welcome);
        ClientStatus status;
        status.event = StatusEvent::connected;
        status.server = connector_.describe();
        status.reconnect = reconnect;
        status.nick = welcome.nick;
        status.server_name = welcome.server_name;
        status.server_version = welcome.server_version;
        status.heartbeat_interval = heartbeat_interval_;
        status.heartbeat_timeout = heartbeat_timeout_;
        observer_.on_status(status);
        watchdog_.cancel();  // it slept towards the login deadline; heartbeats come sooner
        wake_writer();
    }

    void on(const Ping& ping, const Message&) { queue_control(Pong{ping.nonce}); }
    void on(const Pong&, const Message&) {}
    void on(const Heartbeat&, const Message&) {}
    void on(const Welcome&, const Message&) {}

    void on(const Bye& bye, const Message&) {
        end_session(lost(bye.reason.empty() ? std::string("the server said goodbye")
                                            : "the server said goodbye: " + bye.reason));
    }

    void on(const Error& error, const Message& message) {
        if (error.fatal) {
            observer_.on_frame(message, FrameNote{});
            end_session(classify(error));
            return;
        }
        deliver(message);
    }

    template <class M>
    void on(const M&, const Message& message) {
        deliver(message);
    }

    void deliver(const Message& message) {
        const bool was_idle = state_.idle();
        FrameNote note = state_.on_frame(message, Clock::now());
        if (note.retry) watchdog_.cancel();  // re-plan around the pause
        observer_.on_frame(message, note);
        if (!note.notice.empty()) observer_.on_notice(note.notice);
        wake_writer();
        if (!was_idle && state_.idle()) observer_.on_idle();
    }

    // What a fatal ERROR means for the client: try again later, or give up.
    SessionEnd classify(const Error& error) {
        const std::string why = std::string(to_string(error.code)) + ": " + error.reason;
        const auto fatal = [&](ClientExit exit, std::string reason) {
            return SessionEnd{SessionEnd::fatal, exit, std::move(reason)};
        };
        switch (error.code) {
            case ErrorCode::nick_taken:
                // On a reconnect the nick may still be held by this client's
                // own old session (resumed sessions take it over, but a
                // half-dead attempt of ours may have had it meanwhile): keep
                // trying until the server has surely expired that session.
                if (ever_welcomed_) {
                    const auto now = Clock::now();
                    if (!nick_retry_until_)
                        nick_retry_until_ = now + std::max<Duration>(3 * heartbeat_timeout_, Duration{5'000});
                    if (now < *nick_retry_until_)
                        return lost("nickname '" + state_.nick() + "' is still held on the server; retrying");
                }
                return fatal(ClientExit::nick_refused, error.reason);
            case ErrorCode::invalid_nick:
                return fatal(ClientExit::nick_refused, error.reason);
            case ErrorCode::auth_failed:
            case ErrorCode::replaced:
                return fatal(ClientExit::refused, why);
            case ErrorCode::unsupported_version:
            case ErrorCode::malformed_frame:
            case ErrorCode::unknown_type:
            case ErrorCode::frame_too_large:
            case ErrorCode::invalid_utf8:
            case ErrorCode::hello_required:
            case ErrorCode::duplicate_hello:
                return fatal(ClientExit::protocol_mismatch, "the server refused this client's frames: " + why);
            default:
                if (!ever_welcomed_) return fatal(ClientExit::refused, why);
                return lost(why);
        }
    }

    SessionEnd decode_failure(DecodeError error) {
        if (error == DecodeError::unsupported_version)
            return SessionEnd{SessionEnd::fatal, ClientExit::protocol_mismatch,
                              connector_.describe() + " does not speak pulsechat protocol version " +
                                  std::to_string(protocol_version)};
        return SessionEnd{SessionEnd::fatal, ClientExit::protocol_mismatch,
                          "the server sent a frame this client cannot read (" + std::string(to_string(error)) + ")"};
    }

    static SessionEnd lost(std::string reason) { return SessionEnd{SessionEnd::lost, ClientExit::lost, std::move(reason)}; }

    // --- plumbing ---

    void queue_control(Message frame) {
        if (std::holds_alternative<Bye>(frame)) bye_queued_ = true;
        if (std::holds_alternative<Heartbeat>(frame)) last_tx_ = Clock::now();
        control_.push_back(std::move(frame));
        wake_writer();
    }

    void wake_writer() {
        if (writer_waiting_) {
            writer_waiting_ = false;
            writer_wake_.cancel();
        }
    }

    // Idempotent: records why, closes the stream, stops the timers.
    void end_session(SessionEnd end) {
        if (end_) return;
        end_ = std::move(end);
        if (stream_ != nullptr) {
            asio::error_code ignored;
            stream_->lowest_layer().close(ignored);
        }
        watchdog_.cancel();
        writer_wake_.cancel();
    }

    void finish(ClientExit why, const std::string& reason) {
        if (finished_) return;
        finished_ = true;
        quit_signal_.cancel();
        observer_.on_finished(why, reason);
    }

    asio::any_io_executor executor_;
    Connector connector_;
    ClientSettings settings_;
    ClientObserver& observer_;
    ClientState state_;
    Backoff backoff_;

    asio::steady_timer watchdog_;
    asio::steady_timer writer_wake_;
    asio::steady_timer quit_signal_;
    bool writer_waiting_ = false;

    Stream* stream_ = nullptr;
    Decoder decoder_;
    std::vector<Message> control_;  // HELLO, HEARTBEAT, PONG, BYE: ahead of requests
    std::optional<SessionEnd> end_;
    bool welcomed_ = false;
    bool ever_welcomed_ = false;
    bool bye_queued_ = false;
    bool quitting_ = false;
    bool finished_ = false;
    bool was_paused_ = false;
    std::string quit_reason_;
    std::optional<Clock::time_point> nick_retry_until_;

    Duration heartbeat_interval_{5'000};
    Duration heartbeat_timeout_{15'000};
    Clock::time_point rx_deadline_{};
    Clock::time_point last_rx_{};
    Clock::time_point last_tx_{};
    Clock::time_point quit_deadline_{};
};

}  // namespace chat
