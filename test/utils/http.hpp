// HTTP for the admin tests: one GET on a fresh connection, a sample out of
// a Prometheus text exposition, and `promtool check metrics` on one.
#pragma once

#include <unistd.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <string>

#include <asio.hpp>
#include <doctest/doctest.h>

namespace chat::test {

struct HttpReply {
    int status = 0;
    std::string headers;
    std::string body;
};

// One request on a fresh connection ("Connection: close"), read to EOF.
inline HttpReply http_get(std::uint16_t port, const std::string& path, const std::string& raw = {}) {
    asio::io_context io;
    asio::ip::tcp::socket socket(io);
    socket.connect({asio::ip::make_address("127.0.0.1"), port});
    const std::string request =
        raw.empty() ? "GET " + path + " HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n" : raw;
    asio::write(socket, asio::buffer(request));
    std::string all;
    asio::error_code ec;
    std::array<char, 4096> chunk{};
    for (;;) {
        const std::size_t n = socket.read_some(asio::buffer(chunk), ec);
        if (ec) break;
        all.append(chunk.data(), n);
    }
    HttpReply reply;
    const auto head_end = all.find("\r\n\r\n");
    if (all.rfind("HTTP/1.1 ", 0) != 0 || head_end == std::string::npos) return reply;
    reply.status = std::stoi(all.substr(9, 3));
    reply.headers = all.substr(0, head_end);
    reply.body = all.substr(head_end + 4);
    return reply;
}

// The value of one sample line ("name{labels} value"), or -1.
inline double sample(const std::string& text, const std::string& series) {
    const auto at = text.find("\n" + series + " ");
    if (at == std::string::npos) return -1;
    const auto start = at + 1 + series.size() + 1;
    return std::stod(text.substr(start, text.find('\n', start) - start));
}

// Whether promtool (Debian: prometheus) is on PATH.
inline bool have_promtool() { return std::system("command -v promtool >/dev/null 2>&1") == 0; }

// What `promtool check metrics` says of `text`: empty when it passes with no
// lint warning; its exit status is part of the answer otherwise.
inline std::string promtool_complaints(const std::string& text) {
    char path[] = "/tmp/pulsechat_metrics_XXXXXX";
    const int fd = ::mkstemp(path);
    REQUIRE(fd >= 0);
    ::close(fd);
    std::ofstream(path) << text;
    const std::string command = std::string("promtool check metrics < ") + path + " > " + path + ".out 2>&1";
    const int rc = std::system(command.c_str());
    std::ifstream out(std::string(path) + ".out");
    std::string complaints((std::istreambuf_iterator<char>(out)), std::istreambuf_iterator<char>());
    std::remove(path);
    std::remove((std::string(path) + ".out").c_str());
    if (rc != 0) complaints += "(promtool exited with " + std::to_string(rc) + ")";
    return complaints;
}

}  // namespace chat::test
