// The client's console: lines in from stdin, lines out to stdout, without one garbling the other.
//
// Interactive (stdin is a terminal, libedit present): the line is edited with
// libedit's readline-compatible callback interface, driven by an
// asio::posix::stream_descriptor on stdin; a line printed while the user types
// is put above the prompt, and the half-typed line is drawn again, intact.
// Otherwise (a pipe, a file, or no libedit) lines are read as they come and
// printed as they are; without libedit an interactive user's half-typed line
// can be split by an incoming message, as in any cooked-mode terminal.
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include <asio/any_io_executor.hpp>

namespace chat {

class Console {
public:
    // Gets each line without its newline; nullopt once input ended (EOF, Ctrl-D).
    using LineHandler = std::function<void(std::optional<std::string> line)>;

    virtual ~Console() = default;

    virtual void start(LineHandler on_line) = 0;
    // Prints text (one or more lines, no trailing newline) on lines of its own.
    virtual void print(std::string_view text) = 0;
    // Changes the prompt; readline's \001 and \002 may enclose invisible parts.
    virtual void set_prompt(std::string prompt) = 0;
    // Stops and restarts reading, for a script that runs ahead of the server.
    virtual void pause() = 0;
    virtual void resume() = 0;
    // The terminal changed size (SIGWINCH) or came back from a stop (SIGCONT).
    virtual void redraw() = 0;
    // Restores the terminal and stops reading. Idempotent; the destructor calls it.
    virtual void stop() = 0;
    // True when lines are edited with libedit.
    virtual bool line_editing() const noexcept = 0;
};

// `line_editing`: stdin and stdout are a terminal that a person types into and
// reads, and the output is text (a prompt has no place in JSON). Ignored
// without libedit.
std::unique_ptr<Console> make_console(const asio::any_io_executor& executor, bool line_editing);

}  // namespace chat
