#include "chat/server/web_files.hpp"

#include <fmt/format.h>

namespace chat {

const WebFile* find_web_file(std::string_view path) noexcept {
    if (path == "/") path = "/index.html";
    for (const auto& file : web_files())
        if (file.path == path) return &file;
    return nullptr;
}

namespace {

std::string response(int status, std::string_view reason, std::string_view content_type, std::string_view body,
                     bool keep_alive, bool head, std::string_view extra = {}) {
    return fmt::format("HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: {}\r\n"
                       "Cache-Control: no-cache\r\n{}{}\r\n{}",
                       status, reason, content_type, body.size(), keep_alive ? "keep-alive" : "close",
                       web_security_headers, extra, head ? std::string_view{} : body);
}

}  // namespace

WebAnswer web_response(const HttpRequest& request) {
    WebAnswer answer;
    const bool head = request.method == "HEAD";
    if (request.method != "GET" && !head) {
        answer.status = 405;
        answer.response = response(405, "Method Not Allowed", "text/plain; charset=utf-8",
                                   "only GET and HEAD here; the chat is on /ws (WebSocket)\n", false, false,
                                   "Allow: GET, HEAD\r\n");
        return answer;
    }
    answer.keep_alive = request.keep_alive;
    if (const WebFile* file = find_web_file(request.path())) {
        answer.response = response(200, "OK", file->content_type, file->body, answer.keep_alive, head);
        return answer;
    }
    answer.status = 404;
    answer.response = response(404, "Not Found", "text/plain; charset=utf-8",
                               "not found; the web client is at /, the chat on /ws (WebSocket)\n", answer.keep_alive,
                               head);
    return answer;
}

}  // namespace chat
