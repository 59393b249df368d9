// The browser client (web/) as the WebSocket port serves it: the files are
// embedded at build time (scripts/embed_files.py writes web_assets.cpp), so
// the server needs nothing installed next to it and serves exactly the
// files it was built with.
#pragma once

#include <span>
#include <string>
#include <string_view>

#include "chat/server/http_request.hpp"

namespace chat {

struct WebFile {
    std::string_view path;          // "/app.js"
    std::string_view content_type;  // "text/javascript; charset=utf-8"
    std::string_view body;
};

// Every embedded file (generated).
std::span<const WebFile> web_files() noexcept;
// The file served at `path` ("/" is /index.html), or null.
const WebFile* find_web_file(std::string_view path) noexcept;

// The headers every page response carries: the Content-Security-Policy lets
// the page load only its own scripts and styles and connect only back to
// this server, so text from other users can never run as script.
inline constexpr std::string_view web_security_headers =
    "Content-Security-Policy: default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'\r\n"
    "X-Content-Type-Options: nosniff\r\n"
    "Referrer-Policy: no-referrer\r\n";

struct WebAnswer {
    int status = 200;
    bool keep_alive = false;
    std::string response;  // the whole HTTP response
};

// The answer to a plain (non-upgrade) request on the WebSocket port: a file
// for GET and HEAD (200, or 404), 405 for any other method.
WebAnswer web_response(const HttpRequest& request);

}  // namespace chat
