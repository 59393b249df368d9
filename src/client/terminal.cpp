#include "chat/client/terminal.hpp"

#include <sys/ioctl.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cwchar>
#include <string>

#include <asio.hpp>

#include "pulsechat_config.h"

#if PULSECHAT_HAVE_LIBEDIT
#include <editline/readline.h>
#endif

namespace chat {
namespace {

void write_stdout(std::string_view text) {
    std::fwrite(text.data(), 1, text.size(), stdout);
    std::fflush(stdout);
}

// Reads lines from stdin as they come (a pipe, a file, or a terminal in
// cooked mode) and prints lines as they are.
class StreamConsole final : public Console {
public:
    explicit StreamConsole(const asio::any_io_executor& executor) : executor_(executor), input_(executor) {}
    ~StreamConsole() override { stop(); }

    void start(LineHandler on_line) override {
        on_line_ = std::move(on_line);
        const int fd = ::dup(STDIN_FILENO);
        if (fd < 0) {
            eof_ = true;
        } else {
            asio::error_code ec;
            input_.assign(fd, ec);
            if (ec) {
                // epoll refuses regular files and /dev/null; reading those
                // never blocks, so plain read(2) between handlers will do.
                ::close(fd);
                blocking_ = true;
            }
        }
        asio::post(executor_, [this] { pump(); });
    }

    void print(std::string_view text) override {
        std::string out(text);
        out.push_back('\n');
        write_stdout(out);
    }

    void set_prompt(std::string) override {}

    void pause() override { paused_ = true; }

    void resume() override {
        if (!paused_) return;
        paused_ = false;
        asio::post(executor_, [this] { pump(); });
    }

    void redraw() override {}

    void stop() override {
        if (stopped_) return;
        stopped_ = true;
        asio::error_code ignored;
        input_.close(ignored);
    }

    bool line_editing() const noexcept override { return false; }

private:
    // Hands out whole lines while not paused, then reads more.
    void pump() {
        while (!stopped_ && !paused_) {
            const auto newline = buffer_.find('\n', scanned_);
            if (newline != std::string::npos) {
                std::string line = buffer_.substr(0, newline);
                buffer_.erase(0, newline + 1);
                scanned_ = 0;
                on_line_(std::move(line));
                continue;
            }
            scanned_ = buffer_.size();
            if (eof_) {
                if (!buffer_.empty()) {
                    std::string line;
                    line.swap(buffer_);
                    scanned_ = 0;
                    on_line_(std::move(line));
                    continue;
                }
                if (!ended_) {
                    ended_ = true;
                    on_line_(std::nullopt);
                }
                return;
            }
            read();
            return;
        }
    }

    void read() {
        if (reading_) return;
        reading_ = true;
        if (blocking_) {
            asio::post(executor_, [this] {
                const auto n = ::read(STDIN_FILENO, chunk_.data(), chunk_.size());
                if (n < 0 && errno == EINTR) {
                    reading_ = false;
                    pump();
                    return;
                }
                received(n > 0 ? static_cast<std::size_t>(n) : 0, n <= 0);
            });
            return;
        }
        input_.async_read_some(asio::buffer(chunk_), [this](const asio::error_code& ec, std::size_t n) {
            if (ec == asio::error::operation_aborted && stopped_) return;
            received(n, static_cast<bool>(ec));
        });
    }

    void received(std::size_t n, bool end) {
        reading_ = false;
        buffer_.append(chunk_.data(), n);
        if (end) eof_ = true;
        pump();
    }

    asio::any_io_executor executor_;
    asio::posix::stream_descriptor input_;
    LineHandler on_line_;
    std::array<char, 16 * 1024> chunk_{};
    std::string buffer_;
    std::size_t scanned_ = 0;  // bytes of buffer_ known to hold no newline
    bool blocking_ = false;
    bool reading_ = false;
    bool paused_ = false;
    bool eof_ = false;
    bool ended_ = false;
    bool stopped_ = false;
};

#if PULSECHAT_HAVE_LIBEDIT

// Columns the text takes on a terminal (wcwidth per character; the locale
// must be set for multibyte text, which the client does at start).
std::size_t display_width(std::string_view text) {
    std::size_t width = 0;
    std::mbstate_t state{};
    const char* p = text.data();
    std::size_t left = text.size();
    while (left > 0) {
        wchar_t wc = 0;
        const std::size_t n = std::mbrtowc(&wc, p, left, &state);
        if (n == static_cast<std::size_t>(-1) || n == static_cast<std::size_t>(-2)) {
            state = std::mbstate_t{};
            ++width;
            ++p;
            --left;
            continue;
        }
        const std::size_t used = n == 0 ? 1 : n;
        const int w = ::wcwidth(wc);
        width += w > 0 ? static_cast<std::size_t>(w) : 0;
        p += used;
        left -= used;
    }
    return width;
}

// The prompt without what lies between \001 and \002 (colour codes).
std::string visible_part(std::string_view prompt) {
    std::string out;
    bool hidden = false;
    for (char c : prompt) {
        if (c == RL_PROMPT_START_IGNORE)
            hidden = true;
        else if (c == RL_PROMPT_END_IGNORE)
            hidden = false;
        else if (!hidden)
            out.push_back(c);
    }
    return out;
}

std::size_t terminal_columns() {
    winsize size{};
    if (::ioctl(STDOUT_FILENO, TIOCGWINSZ, &size) == 0 && size.ws_col > 0) return size.ws_col;
    return 80;
}

// The interactive console: libedit's readline-compatible callback interface,
// fed one character at a time when an asio wait says stdin is readable.
//
// What libedit 3.1 (2022) offers was checked in its readline.c, not assumed
// from GNU readline: rl_replace_line("") does nothing, rl_redisplay() pushes
// the REPRINT character (^R, bound to incremental search) into the input,
// rl_on_new_line() is a stub and rl_save_prompt() leaks. So printing does not
// touch libedit's buffer at all: it clears the rows the prompt and line
// occupy, prints, and lets rl_forced_update_display() (EL_REFRESH, which
// redraws from the cursor's row) draw prompt, line and cursor again. After a
// line is entered libedit has left unbuffered mode; the handler is installed
// again for the next one.
class EditlineConsole final : public Console {
public:
    explicit EditlineConsole(const asio::any_io_executor& executor) : input_(executor) {}
    ~EditlineConsole() override { stop(); }

    void start(LineHandler on_line) override {
        on_line_ = std::move(on_line);
        instance_ = this;
        // Signals belong to the client's asio::signal_set, not to libedit.
        rl_catch_signals = 0;
        // Tab is text here, not a request to complete file names.
        rl_inhibit_completion = 1;
        rl_instream = stdin;
        rl_outstream = stdout;
        input_.assign(::dup(STDIN_FILENO));
        install();
        wait();
    }

    void print(std::string_view text) override {
        std::string out;
        if (installed_) out = clear_edit_area();
        out.append(text);
        out.push_back('\n');
        write_stdout(out);
        if (installed_) rl_forced_update_display();
    }

    void set_prompt(std::string prompt) override {
        if (prompt == prompt_) return;
        std::string clear = installed_ ? clear_edit_area() : std::string();
        prompt_ = std::move(prompt);
        prompt_width_ = display_width(visible_part(prompt_));
        if (!installed_) return;
        rl_set_prompt(prompt_.c_str());
        write_stdout(clear);
        rl_forced_update_display();
    }

    void pause() override {}
    void resume() override {}

    void redraw() override {
        if (!installed_) return;
        rl_resize_terminal();
        rl_prep_terminal(0);  // after SIGCONT the shell may have reset the terminal
        write_stdout(clear_edit_area());
        rl_forced_update_display();
    }

    void stop() override {
        if (stopped_) return;
        stopped_ = true;
        if (installed_) {
            write_stdout(clear_edit_area());
            rl_callback_handler_remove();  // back to the terminal's cooked mode
            installed_ = false;
        }
        asio::error_code ignored;
        input_.close(ignored);
        if (instance_ == this) instance_ = nullptr;
    }

    bool line_editing() const noexcept override { return true; }

private:
    void install() {
        rl_callback_handler_install(prompt_.c_str(), &EditlineConsole::line_entered);
        installed_ = true;
    }

    void wait() {
        input_.async_wait(asio::posix::stream_descriptor::wait_read, [this](const asio::error_code& ec) {
            if (ec || stopped_) return;
            rl_callback_read_char();
            if (!stopped_) wait();
        });
    }

    // Moves to the start of the prompt's first row and clears to the end of
    // the screen: the prompt and the line, however many rows they wrap over.
    std::string clear_edit_area() const {
        const std::size_t columns = terminal_columns();
        const std::size_t before_cursor =
            prompt_width_ + display_width(std::string_view(rl_line_buffer != nullptr ? rl_line_buffer : "",
                                                           static_cast<std::size_t>(std::max(0, rl_point))));
        const std::size_t row = before_cursor / columns;
        std::string out = "\r";
        if (row > 0) out += "\033[" + std::to_string(row) + "A";
        out += "\033[J";
        return out;
    }

    static void line_entered(char* raw) {
        if (instance_ != nullptr) instance_->entered(raw);
        std::free(raw);
    }

    void entered(const char* raw) {
        if (raw == nullptr) {
            on_line_(std::nullopt);  // Ctrl-D on an empty line
            return;
        }
        std::string line(raw);
        // The entered line stays on screen above the new prompt; take it away,
        // since the server's echo shows the message in its place, in order.
        const std::size_t columns = terminal_columns();
        const std::size_t width = prompt_width_ + display_width(line);
        const std::size_t rows = std::max<std::size_t>(1, (width + columns - 1) / columns);
        write_stdout("\033[" + std::to_string(rows) + "A\r\033[J");
        if (!line.empty()) add_history(line.c_str());
        install();
        on_line_(std::move(line));
    }

    static inline EditlineConsole* instance_ = nullptr;

    asio::posix::stream_descriptor input_;
    LineHandler on_line_;
    std::string prompt_ = "> ";
    std::size_t prompt_width_ = 2;
    bool installed_ = false;
    bool stopped_ = false;
};

#endif  // PULSECHAT_HAVE_LIBEDIT

}  // namespace

std::unique_ptr<Console> make_console(const asio::any_io_executor& executor, bool line_editing) {
#if PULSECHAT_HAVE_LIBEDIT
    if (line_editing) return std::make_unique<EditlineConsole>(executor);
#else
    (void)line_editing;
#endif
    return std::make_unique<StreamConsole>(executor);
}

}  // namespace chat
