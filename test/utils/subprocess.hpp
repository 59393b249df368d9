// A child process for process-level tests: stdin and stdout through pipes,
// stderr into an unlinked file, every read and wait bounded by a deadline.
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

extern char** environ;

namespace chat::test {

// The program `name` as built: $`variable` when set (meson sets it), else
// next to the test's own directory.
inline std::string program_path(const char* variable, const char* name) {
    if (const char* path = std::getenv(variable); path != nullptr && *path != '\0') return path;
    return (std::filesystem::read_symlink("/proc/self/exe").parent_path().parent_path() / name).string();
}

class Subprocess {
public:
    using Clock = std::chrono::steady_clock;

    // `env` entries ("NAME=value") are added to the test's own environment.
    explicit Subprocess(std::vector<std::string> argv, const std::vector<std::string>& env = {}) {
        // A child that exits while the test writes to its stdin must not end the test.
        ::signal(SIGPIPE, SIG_IGN);
        int in[2];
        int out[2];
        if (::pipe2(in, O_CLOEXEC) != 0 || ::pipe2(out, O_CLOEXEC) != 0) throw std::runtime_error("pipe2 failed");
        char name[] = "/tmp/chat_test_stderr_XXXXXX";
        err_ = ::mkstemp(name);
        if (err_ < 0) throw std::runtime_error("mkstemp failed");
        ::unlink(name);

        std::vector<std::string> environment;
        for (char** e = environ; *e != nullptr; ++e) environment.emplace_back(*e);
        for (const auto& e : env) environment.push_back(e);
        std::vector<char*> envp;
        for (auto& e : environment) envp.push_back(e.data());
        envp.push_back(nullptr);
        std::vector<char*> args;
        for (auto& a : argv) args.push_back(a.data());
        args.push_back(nullptr);

        posix_spawn_file_actions_t actions;
        posix_spawn_file_actions_init(&actions);
        posix_spawn_file_actions_adddup2(&actions, in[0], STDIN_FILENO);
        posix_spawn_file_actions_adddup2(&actions, out[1], STDOUT_FILENO);
        posix_spawn_file_actions_adddup2(&actions, err_, STDERR_FILENO);
        const int rc = ::posix_spawn(&pid_, args[0], &actions, nullptr, args.data(), envp.data());
        posix_spawn_file_actions_destroy(&actions);
        ::close(in[0]);
        ::close(out[1]);
        in_ = in[1];
        out_ = out[0];
        if (rc != 0) {
            pid_ = -1;
            throw std::runtime_error("cannot start " + argv[0]);
        }
    }
    ~Subprocess() {
        if (pid_ > 0 && !status_) {
            ::kill(pid_, SIGKILL);
            ::waitpid(pid_, nullptr, 0);
        }
        if (in_ >= 0) ::close(in_);
        ::close(out_);
        ::close(err_);
    }
    Subprocess(const Subprocess&) = delete;
    Subprocess& operator=(const Subprocess&) = delete;

    pid_t pid() const noexcept { return pid_; }

    void write(std::string_view text) {
        while (!text.empty() && in_ >= 0) {
            const auto n = ::write(in_, text.data(), text.size());
            if (n <= 0) return;
            text.remove_prefix(static_cast<std::size_t>(n));
        }
    }
    void close_stdin() {
        if (in_ >= 0) ::close(in_);
        in_ = -1;
    }

    void signal(int signo) const { ::kill(pid_, signo); }

    // The next line of stdout, or nullopt at EOF or when `limit` passed.
    std::optional<std::string> read_line(std::chrono::milliseconds limit) {
        const auto deadline = Clock::now() + limit;
        for (;;) {
            if (const auto nl = buffer_.find('\n'); nl != std::string::npos) {
                std::string line = buffer_.substr(0, nl);
                buffer_.erase(0, nl + 1);
                lines_.push_back(line);
                return line;
            }
            if (eof_ || !fill(deadline)) return std::nullopt;
        }
    }

    // Reads lines until one satisfies `match`; returns it, or nullopt.
    std::optional<std::string> wait_for(const std::function<bool(const std::string&)>& match,
                                        std::chrono::milliseconds limit) {
        const auto deadline = Clock::now() + limit;
        for (;;) {
            const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
            if (left.count() <= 0) return std::nullopt;
            auto line = read_line(left);
            if (!line) return std::nullopt;
            if (match(*line)) return line;
        }
    }
    std::optional<std::string> wait_for(std::string_view needle, std::chrono::milliseconds limit) {
        return wait_for([needle](const std::string& l) { return l.find(needle) != std::string::npos; }, limit);
    }

    // Every stdout line read so far.
    const std::vector<std::string>& lines() const noexcept { return lines_; }

    // The exit status (128 + signal when killed by one), or nullopt if the
    // process still runs when `limit` passes.
    std::optional<int> wait_exit(std::chrono::milliseconds limit) {
        if (status_) return status_;
        const auto deadline = Clock::now() + limit;
        for (;;) {
            int status = 0;
            if (::waitpid(pid_, &status, WNOHANG) == pid_) {
                status_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
                return status_;
            }
            if (Clock::now() >= deadline) return std::nullopt;
            ::poll(nullptr, 0, 2);  // waitpid has no timeout: a bounded poll loop
        }
    }

    // What stdout still holds, up to EOF or `limit`, after the lines already read.
    std::string rest_of_stdout(std::chrono::milliseconds limit = std::chrono::milliseconds(1000)) {
        const auto deadline = Clock::now() + limit;
        while (!eof_ && fill(deadline)) {
        }
        std::string rest;
        rest.swap(buffer_);
        return rest;
    }

    std::string all_stderr() const {
        std::string text;
        char buf[4096];
        for (off_t at = 0;;) {
            const ssize_t n = ::pread(err_, buf, sizeof buf, at);
            if (n <= 0) break;
            text.append(buf, static_cast<std::size_t>(n));
            at += n;
        }
        return text;
    }

private:
    // Reads what stdout has; false at the deadline or EOF.
    bool fill(Clock::time_point deadline) {
        const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
        if (left <= 0) return false;
        pollfd p{out_, POLLIN, 0};
        if (::poll(&p, 1, static_cast<int>(left)) <= 0) return false;
        char buf[4096];
        const ssize_t n = ::read(out_, buf, sizeof buf);
        if (n <= 0) {
            eof_ = true;
            return false;
        }
        buffer_.append(buf, static_cast<std::size_t>(n));
        return true;
    }

    pid_t pid_ = -1;
    int in_ = -1;
    int out_ = -1;
    int err_ = -1;
    std::string buffer_;
    std::vector<std::string> lines_;
    bool eof_ = false;
    std::optional<int> status_;
};

}  // namespace chat::test
