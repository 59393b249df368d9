#include <doctest/doctest.h>

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include <asio/io_context.hpp>
#include <asio/post.hpp>

#include "chat/server/flush_list.hpp"

using namespace chat;

namespace {

// Records, in one shared log, when it was flushed; can queue more of itself.
class Recorder final : public Flushable, public std::enable_shared_from_this<Recorder> {
public:
    Recorder(int id, std::vector<std::string>& log, FlushList& list) : id_(id), log_(log), list_(list) {}
    void flush() override {
        ++flushes;
        log_.push_back("flush " + std::to_string(id_));
        if (readd_once) {
            readd_once = false;
            list_.add(shared_from_this());
        }
    }
    int flushes = 0;
    bool readd_once = false;

private:
    int id_;
    std::vector<std::string>& log_;
    FlushList& list_;
};

}  // namespace

TEST_CASE("flush list: every added session is flushed once, in the order added") {
    asio::io_context io(1);
    FlushList list(io.get_executor());
    std::vector<std::string> log;
    std::vector<std::shared_ptr<Recorder>> sessions;
    for (int i = 0; i < 5; ++i) sessions.push_back(std::make_shared<Recorder>(i, log, list));
    for (auto& s : sessions) list.add(s);
    CHECK(log.empty());  // not during the handler that queued
    io.run();
    REQUIRE(log.size() == 5);
    for (int i = 0; i < 5; ++i) CHECK(log[static_cast<std::size_t>(i)] == "flush " + std::to_string(i));
    for (auto& s : sessions) CHECK(s->flushes == 1);
}

TEST_CASE("flush list: a long pass yields to the event loop every chunk") {
    asio::io_context io(1);
    FlushList list(io.get_executor());
    std::vector<std::string> log;
    const int n = static_cast<int>(FlushList::chunk) * 2 + 3;
    std::vector<std::shared_ptr<Recorder>> sessions;
    for (int i = 0; i < n; ++i) sessions.push_back(std::make_shared<Recorder>(i, log, list));
    for (auto& s : sessions) list.add(s);
    // Posted after the pass was: it must run after the first chunk, not after the pass.
    asio::post(io, [&] { log.push_back("reader"); });
    io.run();
    REQUIRE(log.size() == static_cast<std::size_t>(n) + 1);
    CHECK(log[FlushList::chunk] == "reader");
    CHECK(log[FlushList::chunk - 1] == "flush " + std::to_string(FlushList::chunk - 1));
    CHECK(log.back() == "flush " + std::to_string(n - 1));
    for (auto& s : sessions) CHECK(s->flushes == 1);
}

TEST_CASE("flush list: a session added again during the pass gets a later pass") {
    asio::io_context io(1);
    FlushList list(io.get_executor());
    std::vector<std::string> log;
    auto a = std::make_shared<Recorder>(1, log, list);
    auto b = std::make_shared<Recorder>(2, log, list);
    a->readd_once = true;
    list.add(a);
    list.add(b);
    io.run();
    CHECK(log == std::vector<std::string>{"flush 1", "flush 2", "flush 1"});
    CHECK(a->flushes == 2);
    CHECK(b->flushes == 1);
}

TEST_CASE("flush list: adds after the list ran start a new pass") {
    asio::io_context io(1);
    FlushList list(io.get_executor());
    std::vector<std::string> log;
    auto a = std::make_shared<Recorder>(1, log, list);
    list.add(a);
    io.run();
    io.restart();
    list.add(a);
    io.run();
    CHECK(a->flushes == 2);
}

TEST_CASE("flush list: holds the session until it is flushed") {
    asio::io_context io(1);
    FlushList list(io.get_executor());
    std::vector<std::string> log;
    std::weak_ptr<Recorder> watch;
    {
        auto a = std::make_shared<Recorder>(7, log, list);
        watch = a;
        list.add(a);
    }
    CHECK_FALSE(watch.expired());
    io.run();
    CHECK(log == std::vector<std::string>{"flush 7"});
    CHECK(watch.expired());
}

TEST_CASE("flush list: add_at flushes at the time given, in order, also with nothing else to do") {
    using namespace std::chrono_literals;
    asio::io_context io(1);
    FlushList list(io.get_executor());
    std::vector<std::string> log;
    auto a = std::make_shared<Recorder>(1, log, list);
    auto b = std::make_shared<Recorder>(2, log, list);
    auto c = std::make_shared<Recorder>(3, log, list);
    const auto start = std::chrono::steady_clock::now();
    list.add_at(a, start + 30ms);
    list.add_at(b, start + 60ms);
    list.add(c);  // not deferred: the next pass
    io.run();     // returns once the timer has nothing left to wait for
    CHECK(log == std::vector<std::string>{"flush 3", "flush 1", "flush 2"});
    CHECK(std::chrono::steady_clock::now() - start >= 60ms);
    CHECK(a->flushes == 1);
    CHECK(b->flushes == 1);
}

TEST_CASE("flush list: with early set, a deferred session due soon after the one the timer fired for goes with it") {
    using namespace std::chrono_literals;
    asio::io_context io(1);
    FlushList list(io.get_executor(), nullptr, 50ms);
    std::vector<std::string> log;
    std::vector<std::chrono::steady_clock::time_point> at;
    // Records when each was flushed, in the order flushed.
    struct Timed final : Flushable {
        Timed(int id, std::vector<std::string>& log, std::vector<std::chrono::steady_clock::time_point>& at)
            : id(id), log(log), at(at) {}
        void flush() override {
            log.push_back("flush " + std::to_string(id));
            at.push_back(std::chrono::steady_clock::now());
        }
        int id;
        std::vector<std::string>& log;
        std::vector<std::chrono::steady_clock::time_point>& at;
    };
    const auto start = std::chrono::steady_clock::now();
    list.add_at(std::make_shared<Timed>(1, log, at), start + 30ms);
    list.add_at(std::make_shared<Timed>(2, log, at), start + 60ms);   // within 50 ms of the first: with it
    list.add_at(std::make_shared<Timed>(3, log, at), start + 400ms);  // far later: its own expiry
    io.run();
    REQUIRE(log == std::vector<std::string>{"flush 1", "flush 2", "flush 3"});
    CHECK(at[0] - start >= 30ms);
    // One timer expiry took both: no second wait of about 30 ms in between.
    CHECK(at[1] - at[0] < 15ms);
    CHECK(at[2] - start >= 400ms);
}
