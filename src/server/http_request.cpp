#include "chat/server/http_request.hpp"

#include "pulsechat_config.h"

#if PULSECHAT_HAVE_HTTP_PARSER

#include <algorithm>
#include <cctype>

#include <fmt/format.h>
#include <http_parser.h>

namespace chat {

namespace {

http_parser_settings make_settings();

const http_parser_settings& settings() {
    static const http_parser_settings s = make_settings();
    return s;
}

}  // namespace

namespace {

}  // namespace

HttpRequestReader::HttpRequestReader() : parser_(std::make_unique<http_parser>()) { reset(); }
HttpRequestReader::~HttpRequestReader() = default;

void HttpRequestReader::reset() {
    http_parser_init(parser_.get(), HTTP_REQUEST);
    parser_->data = this;
    current_ = HttpRequest{};
    in_value_ = false;
    seen_ = 0;
    complete_ = false;
}

int HttpRequestReader::on_url(http_parser* p, const char* at, std::size_t length) {
    auto& self = *static_cast<HttpRequestReader*>(p->data);
    if (self.current_.target.size() + length > max_request) return 1;
    self.current_.target.append(at, length);
    return 0;
}

int HttpRequestReader::on_header_field(http_parser* p, const char* at, std::size_t length) {
    auto& self = *static_cast<HttpRequestReader*>(p->data);
    auto& headers = self.current_.headers;
    // A field name may come in pieces; a new one starts after a value.
    if (headers.empty() || self.in_value_) {
        if (headers.size() >= max_headers) return 1;
        headers.emplace_back();
        self.in_value_ = false;
    }
    for (std::size_t i = 0; i < length; ++i)
        headers.back().first.push_back(static_cast<char>(std::tolower(static_cast<unsigned char>(at[i]))));
    return 0;
}

int HttpRequestReader::on_header_value(http_parser* p, const char* at, std::size_t length) {
    auto& self = *static_cast<HttpRequestReader*>(p->data);
    if (self.current_.headers.empty()) return 1;
    self.in_value_ = true;
    self.current_.headers.back().second.append(at, length);
    return 0;
}

int HttpRequestReader::on_headers_complete(http_parser* p) {
    auto& self = *static_cast<HttpRequestReader*>(p->data);
    self.current_.method = http_method_str(static_cast<http_method>(p->method));
    self.current_.keep_alive = http_should_keep_alive(p) != 0;
    self.current_.upgrade = p->upgrade != 0;
    return 0;
}

int HttpRequestReader::on_message_complete(http_parser* p) {
    auto& self = *static_cast<HttpRequestReader*>(p->data);
    self.complete_ = true;
    http_parser_pause(p, 1);  // one request at a time: the rest waits for the next feed()
    return 0;
}

HttpRequestReader::Status HttpRequestReader::feed(std::string_view bytes, std::size_t& consumed) {
    consumed = 0;
    if (!error_.empty()) return Status::error;
    if (bytes.empty()) return Status::need_more;  // a length of 0 would tell the parser the stream ended
    // The bound counts the whole request, so a head that never ends cannot
    // grow without limit however it is split into reads.
    const std::size_t room = max_request - std::min(seen_, max_request);
    const std::size_t n = std::min(bytes.size(), room + 1);
    const std::size_t parsed = http_parser_execute(parser_.get(), &settings(), bytes.data(), n);
    const auto err = HTTP_PARSER_ERRNO(parser_.get());
    if (complete_) {
        // A paused parser stops at the end of the request; an Upgrade ends the
        // HTTP part there too (what follows is the new protocol's).
        consumed = parsed;
        return Status::request;
    }
    if (err != HPE_OK) {
        error_ = err == HPE_CB_url            ? std::string("request target too long")
                 : err == HPE_CB_header_field ? fmt::format("more than {} headers", max_headers)
                                              : fmt::format("malformed request: {}", http_errno_description(err));
        return Status::error;
    }
    consumed = parsed;
    seen_ += parsed;
    if (seen_ > max_request) {
        error_ = fmt::format("request head over {} bytes", max_request);
        return Status::error;
    }
    return Status::need_more;
}

HttpRequest HttpRequestReader::take() {
    HttpRequest request = std::move(current_);
    const bool upgrade = request.upgrade;
    reset();
    // After an Upgrade the connection is no longer HTTP: the next feed() is
    // an error rather than a request.
    if (upgrade) error_ = "the connection was upgraded";
    return request;
}

namespace {

http_parser_settings make_settings() {
    http_parser_settings s{};
    s.on_url = &HttpRequestReader::on_url;
    s.on_header_field = &HttpRequestReader::on_header_field;
    s.on_header_value = &HttpRequestReader::on_header_value;
    s.on_headers_complete = &HttpRequestReader::on_headers_complete;
    s.on_message_complete = &HttpRequestReader::on_message_complete;
    return s;
}

}  // namespace

std::optional<std::string> HttpRequest::header(std::string_view name) const {
    std::optional<std::string> value;
    for (const auto& [n, v] : headers) {
        if (n != name) continue;
        // Repeated headers are one comma-separated list (RFC 9110 5.3).
        if (value) *value += ", ";
        else value.emplace();
        *value += v;
    }
    return value;
}

bool HttpRequest::header_has_token(std::string_view name, std::string_view token) const {
    const auto value = header(name);
    if (!value) return false;
    std::string_view rest(*value);
    while (!rest.empty()) {
        const auto comma = rest.find(',');
        std::string_view item = rest.substr(0, comma);
        rest = comma == std::string_view::npos ? std::string_view{} : rest.substr(comma + 1);
        while (!item.empty() && (item.front() == ' ' || item.front() == '\t')) item.remove_prefix(1);
        while (!item.empty() && (item.back() == ' ' || item.back() == '\t')) item.remove_suffix(1);
        if (item.size() == token.size() &&
            std::equal(item.begin(), item.end(), token.begin(), [](char a, char b) {
                return std::tolower(static_cast<unsigned char>(a)) == std::tolower(static_cast<unsigned char>(b));
            }))
            return true;
    }
    return false;
}

std::string http_response(int status, std::string_view reason, std::string_view content_type, std::string_view body,
                          bool keep_alive) {
    return fmt::format("HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: {}\r\n"
                       "Cache-Control: no-store\r\n\r\n{}",
                       status, reason, content_type, body.size(), keep_alive ? "keep-alive" : "close", body);
}

}  // namespace chat

#endif  // PULSECHAT_HAVE_HTTP_PARSER
