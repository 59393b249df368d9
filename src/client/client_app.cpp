#include "chat/client/client_app.hpp"

#include <pwd.h>
#include <unistd.h>

#include <cctype>
#include <clocale>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <optional>
#include <stdexcept>

#include <asio.hpp>

#include "chat/client/connection.hpp"
#include "chat/client/command.hpp"
#include "chat/client/display.hpp"
#include "chat/client/terminal.hpp"

namespace chat {

std::string default_nick() {
    std::string name;
    if (const char* login = ::getlogin(); login != nullptr && *login != '\0') {
        name = login;
    } else if (const char* user = std::getenv("USER"); user != nullptr && *user != '\0') {
        name = user;
    } else if (const passwd* pw = ::getpwuid(::getuid()); pw != nullptr && pw->pw_name != nullptr) {
        name = pw->pw_name;
    }
    std::string nick;
    for (char c : name) {
        if (nick.size() == max_nick_length) break;
        const bool ok = std::isalnum(static_cast<unsigned char>(c)) != 0 || c == '_' || c == '-' || c == '.';
        nick.push_back(ok ? c : '_');
    }
    return is_valid_nick(nick) ? nick : std::string("guest");
}

namespace {

// A script may run far ahead of the server: stop reading stdin while this
// many requests wait, and go on once few are left.
constexpr std::size_t pause_input_at = 256;
constexpr std::size_t resume_input_at = 64;

template <class... F>
struct Overloaded : F... {
    using F::operator()...;
};
template <class... F>
Overloaded(F...) -> Overloaded<F...>;

ClientSettings settings_for(const ClientOptions& options) {
    ClientSettings s;
    s.nick = options.nick;
    s.token = options.token;
    s.rooms = {options.room};
    s.connect_timeout = options.connect_timeout;
    s.reconnect_max = options.reconnect_max;
    s.reconnect_initial = std::min(s.reconnect_initial, options.reconnect_max);
    s.reconnect = options.reconnect;
    return s;
}

int exit_code_for(ClientExit why) {
    switch (why) {
        case ClientExit::quit: return exit_ok;
        case ClientExit::connect_failed: return exit_connect_failed;
        case ClientExit::nick_refused: return exit_nick_refused;
        case ClientExit::protocol_mismatch: return exit_protocol;
        case ClientExit::refused: return exit_refused;
        case ClientExit::lost: return exit_connection_lost;
        case ClientExit::internal: return exit_failure;
    }
    return exit_failure;
}

// Ties the console to the connection: a typed line becomes a request, an
// event becomes a printed line, and the end of input (script mode) waits for
// the server to deliver every own message back before saying BYE.
template <class Connector>
class ClientApp final : public ClientObserver {
public:
    ClientApp(const ClientOptions& options, Connector connector, bool interactive, bool line_editing,
              OutputStyle style)
        : options_(options),
          interactive_(interactive),
          formatter_(style),
          console_(make_console(io_.get_executor(), line_editing)),
          connection_(io_.get_executor(), std::move(connector), settings_for(options), *this),
          signals_(io_),
          drain_timer_(io_),
          listen_timer_(io_) {}

    int run() {
        for (int signo : {SIGINT, SIGTERM, SIGHUP, SIGWINCH, SIGCONT}) signals_.add(signo);
        wait_for_signal();
        update_prompt();
        console_->start([this](std::optional<std::string> line) { on_line(std::move(line)); });
        if (interactive_ && formatter_.style() != OutputStyle::json)
            console_->print(formatter_.info("connecting to " + connection_.server() + " as " + options_.nick +
                                            " ... (/help lists the commands)"));
        connection_.start();
        io_.run();
        console_->stop();
        return exit_code_;
    }

private:
    // --- input ---

    void on_line(std::optional<std::string> line) {
        if (finished_) return;
        if (!line) {
            if (interactive_) {
                connection_.quit("quit");
            } else {
                begin_drain();
            }
            return;
        }
        ClientState& state = connection_.state();
        auto parsed = command::parse(*line);
        std::visit(Overloaded{
                       [&](command::Say& c) { refused(state.say(std::move(c.text))); },
                       [&](command::Join& c) {
                           if (state.has_room(c.room)) {
                               state.switch_to(c.room);
                               console_->print(formatter_.info("now talking in " + room_label(c.room)));
                           } else {
                               refused(state.join(std::move(c.room)));
                           }
                       },
                       [&](command::Leave& c) {
                           const std::string room = c.room.value_or(state.current_room());
                           if (room.empty())
                               refused("you are in no room");
                           else
                               refused(state.leave(room));
                       },
                       [&](command::Switch& c) {
                           if (!refused(state.switch_to(c.room)))
                               console_->print(formatter_.info("now talking in " + room_label(c.room)));
                       },
                       [&](command::Rooms&) { refused(state.list()); },
                       [&](command::Who& c) {
                           const std::string room = c.room.value_or(state.current_room());
                           if (room.empty())
                               refused("you are in no room: /who ROOM");
                           else
                               refused(state.who(room));
                       },
                       [&](command::Nick& c) { refused(state.rename(std::move(c.nick))); },
                       [&](command::Msg& c) { refused(state.whisper(std::move(c.nick), std::move(c.text))); },
                       [&](command::Help&) { console_->print(formatter_.info(command::help_text())); },
                       [&](command::Quit&) { connection_.quit("quit"); },
                       [&](command::Empty&) {},
                       [&](command::Error& c) { console_->print(formatter_.error("command", c.message)); },
                   },
                   parsed);
        if (finished_) return;
        if (interactive_ && !connection_.connected() && !connection_.state().idle() &&
            (std::holds_alternative<command::Say>(parsed) || std::holds_alternative<command::Msg>(parsed)))
            console_->print(formatter_.info("not connected: this goes out once the client has reconnected"));
        connection_.kick();
        update_prompt();
        if (!interactive_ && state.pending() >= pause_input_at) {
            console_->pause();
            input_paused_ = true;
        }
    }

    // Prints why the client refused a command; true if it did.
    bool refused(const std::optional<std::string>& why) {
        if (!why) return false;
        console_->print(formatter_.error("command", *why));
        return true;
    }

    void update_prompt() { console_->set_prompt(formatter_.prompt(connection_.state().current_room())); }

    // --- script mode: after stdin ended ---

    void begin_drain() {
        if (draining_) return;
        draining_ = true;
        drain_timer_.expires_after(options_.timeout);
        drain_timer_.async_wait([this](const asio::error_code& ec) {
            if (ec || drained_ || finished_) return;
            const auto left = connection_.state().pending();
            exit_override_ = exit_script_timeout;
            console_->print(formatter_.error(
                "timeout", "input ended " + format_duration(options_.timeout) + " ago and " + std::to_string(left) +
                               " request(s) are still unanswered (own messages not delivered back)"));
            timeout_reason_ = "timed out after " + format_duration(options_.timeout) + " waiting for " +
                              std::to_string(left) + " own message(s) to come back from the server";
            connection_.quit("timeout");
        });
        check_drained();
    }

    void check_drained() {
        if (!draining_ || drained_ || finished_) return;
        if (!ever_connected_ || !connection_.state().idle()) return;
        drained_ = true;
        drain_timer_.cancel();
        if (options_.listen_for.count() <= 0) {
            connection_.quit("end of input");
            return;
        }
        listen_timer_.expires_after(options_.listen_for);
        listen_timer_.async_wait([this](const asio::error_code& ec) {
            if (!ec) connection_.quit("end of input");
        });
    }

    void resume_input_if_room() {
        if (input_paused_ && connection_.state().pending() <= resume_input_at) {
            input_paused_ = false;
            console_->resume();
        }
    }

    // --- ClientObserver ---

    void on_status(const ClientStatus& status) override {
        if (status.event == StatusEvent::connected) ever_connected_ = true;
        console_->print(formatter_.status(status));
        update_prompt();
        check_drained();
    }

    void on_frame(const Message& message, const FrameNote& note) override {
        const auto text = formatter_.frame(message, note, connection_.state().nick());
        if (!text.empty()) console_->print(text);
        if (std::holds_alternative<Joined>(message) || std::holds_alternative<Presence>(message) ||
            std::holds_alternative<Error>(message))
            update_prompt();
        resume_input_if_room();
    }

    void on_notice(const std::string& text) override { console_->print(formatter_.info(text)); }

    void on_idle() override {
        resume_input_if_room();
        check_drained();
    }

    void on_finished(ClientExit why, const std::string& reason) override {
        finished_ = true;
        int code = exit_code_for(why);
        std::string text = reason;
        if (exit_override_) {
            code = *exit_override_;
            text = timeout_reason_;
        }
        if (formatter_.style() == OutputStyle::json) console_->print(formatter_.finished(text, code));
        console_->stop();
        if (code != exit_ok) std::fprintf(stderr, "chat_client: %s\n", text.c_str());
        exit_code_ = code;
        asio::error_code ignored;
        signals_.cancel(ignored);
        drain_timer_.cancel();
        listen_timer_.cancel();
        // Nothing is left to do: do not wait for any handler still queued.
        io_.stop();
    }

    void wait_for_signal() {
        signals_.async_wait([this](const asio::error_code& ec, int signo) {
            if (ec) return;
            if (signo == SIGWINCH || signo == SIGCONT) {
                console_->redraw();
            } else if (quit_signals_++ == 0) {
                connection_.quit("interrupted");
            } else {
                // A second Ctrl-C while the BYE is still going out: leave now.
                console_->stop();
                std::_Exit(exit_failure);
            }
            wait_for_signal();
        });
    }

    asio::io_context io_{1};
    const ClientOptions& options_;
    const bool interactive_;
    EventFormatter formatter_;
    std::unique_ptr<Console> console_;
    ClientConnection<Connector> connection_;
    asio::signal_set signals_;
    asio::steady_timer drain_timer_;
    asio::steady_timer listen_timer_;

    bool ever_connected_ = false;
    bool input_paused_ = false;
    bool draining_ = false;
    bool drained_ = false;
    bool finished_ = false;
    int quit_signals_ = 0;
    std::optional<int> exit_override_;
    std::string timeout_reason_;
    int exit_code_ = exit_failure;
};

}  // namespace

int run_client(const ClientOptions& options) {
    // Writes to a server that has gone must come back as errors, never end the process.
    std::signal(SIGPIPE, SIG_IGN);
    const bool interactive = ::isatty(STDIN_FILENO) == 1;
    const bool terminal_out = ::isatty(STDOUT_FILENO) == 1;
    const char* no_color = std::getenv("NO_COLOR");
    const bool colour = terminal_out && (no_color == nullptr || *no_color == '\0');
    const bool line_editing = interactive && terminal_out && !options.json;
    if (line_editing) std::setlocale(LC_CTYPE, "");  // libedit and the width of typed text need it
    const OutputStyle style = options.json ? OutputStyle::json : colour ? OutputStyle::colour : OutputStyle::plain;
    // One program, one transport: the connection is written once over the
    // connector's stream type, so the app is instantiated per transport.
    if (!options.unix_path.empty())
        return ClientApp<UnixConnector>(options, UnixConnector{options.unix_path}, interactive, line_editing, style)
            .run();
    if (options.tls) {
#if PULSECHAT_HAVE_OPENSSL
        std::shared_ptr<TlsContext> context;
        try {
            context = make_client_context(TlsClientOptions{options.ca, options.cert, options.key, options.insecure});
        } catch (const TlsError& e) {
            std::fprintf(stderr, "chat_client: %s\n", e.what());
            return exit_usage;
        }
        return ClientApp<TlsConnector>(options, TlsConnector{options.host, options.port, context, !options.insecure},
                                       interactive, line_editing, style)
            .run();
#else
        throw std::runtime_error("--tls: this chat_client was built without TLS (meson option tls)");
#endif
    }
    return ClientApp<TcpConnector>(options, TcpConnector{options.host, options.port}, interactive, line_editing, style)
        .run();
}

}  // namespace chat
