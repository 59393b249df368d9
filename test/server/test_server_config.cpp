#include <doctest/doctest.h>

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "chat/server/server_config.hpp"

using namespace chat;
using namespace std::chrono_literals;

TEST_SUITE("server_config") {
    TEST_CASE("TCP keepalive settings are three positive numbers") {
        auto k = parse_tcp_keepalive("10,5,3");
        REQUIRE(k);
        CHECK(k->idle_s == 10);
        CHECK(k->interval_s == 5);
        CHECK(k->count == 3);
        CHECK(parse_tcp_keepalive(" 60 , 10 , 6 "));
        for (const char* bad : {"", "10", "10,5", "10,5,3,1", "0,5,3", "10,-5,3", "a,b,c", "10,,3", "10,5,3x"}) {
            CAPTURE(bad);
            CHECK_FALSE(parse_tcp_keepalive(bad));
        }
    }

    TEST_CASE("the default settings are valid and each inconsistency is named") {
        CHECK(validate(ServerConfig{}).empty());
        struct Case {
            std::function<void(ServerConfig&)> change;
            const char* names;
        };
        const std::vector<Case> cases = {
            {[](ServerConfig& c) { c.heartbeat_interval = Duration{10}; }, "--heartbeat-interval"},
            {[](ServerConfig& c) { c.heartbeat_timeout = Duration{40}; }, "--heartbeat-timeout"},
            {[](ServerConfig& c) { c.heartbeat_timeout = c.heartbeat_interval; }, "--heartbeat-timeout"},
            {[](ServerConfig& c) { c.handshake_timeout = Duration{0}; }, "--handshake-timeout"},
            {[](ServerConfig& c) { c.write_timeout = Duration{1}; }, "--write-timeout"},
            {[](ServerConfig& c) { c.max_frame = 100; }, "--max-frame"},
            {[](ServerConfig& c) { c.max_frame = 32u * 1024 * 1024; }, "--max-frame"},
            {[](ServerConfig& c) { c.queue_limit = c.max_frame - 1; }, "--queue-limit"},
            {[](ServerConfig& c) { c.threads = 0; }, "--threads"},
            {[](ServerConfig& c) { c.threads = 65; }, "--threads"},
            {[](ServerConfig& c) { c.rate = -1; }, "--rate"},
            {[](ServerConfig& c) { c.burst = 0.5; }, "--burst"},
            {[](ServerConfig& c) { c.max_connections = 0; }, "--max-connections"},
            {[](ServerConfig& c) { c.max_rooms_per_session = 0; }, "--max-rooms-per-session"},
            {[](ServerConfig& c) { c.tcp_user_timeout = Duration{0}; }, "--tcp-user-timeout"},
            {[](ServerConfig& c) { c.tls_coalesce = Duration{-1}; }, "--tls-coalesce"},
            {[](ServerConfig& c) { c.tls_coalesce = Duration{101}; }, "--tls-coalesce"},
            {[](ServerConfig& c) { c.wss_port = 0; }, "--wss-port needs --tls-cert"},
            {[](ServerConfig& c) { c.tls_cert = "c.pem"; }, "--tls-port or --wss-port"},
            {[](ServerConfig& c) { c.ws_allow_origins = {"https://a.example"}; }, "--ws-allow-origin needs"},
            {[](ServerConfig& c) {
                 c.ws_port = 0;
                 c.ws_allow_origins = {"chat.example.org"};
             },
             "--ws-allow-origin: 'chat.example.org'"},
            {[](ServerConfig& c) {
                 c.ws_port = 0;
                 c.ws_allow_origins = {"https://chat.example.org/"};
             },
             "--ws-allow-origin"},
        };
        for (const auto& test : cases) {
            ServerConfig cfg;
            test.change(cfg);
            const auto problem = validate(cfg);
            CAPTURE(test.names);
            CAPTURE(problem);
            CHECK(problem.find(test.names) != std::string::npos);
        }
        ServerConfig unlimited;
        unlimited.rate = 0;
        unlimited.burst = 0;
        CHECK(validate(unlimited).empty());
        ServerConfig shortest;
        shortest.heartbeat_interval = Duration{50};
        shortest.heartbeat_timeout = Duration{51};
        CHECK(validate(shortest).empty());
        ServerConfig websocket;
        websocket.ws_port = 0;
        websocket.ws_allow_origins = {"https://chat.example.org", "http://localhost:8080"};
        CHECK(validate(websocket).empty());
        ServerConfig secure_websocket;
        secure_websocket.wss_port = 0;
        secure_websocket.tls_cert = "cert.pem";
        secure_websocket.tls_key = "key.pem";
        CHECK(validate(secure_websocket).empty());
        ServerConfig uncoalesced;
        uncoalesced.tls_coalesce = Duration{0};
        CHECK(validate(uncoalesced).empty());
    }

    TEST_CASE("the worst-case detection time is the heartbeat timeout") {
        ServerConfig cfg;
        cfg.heartbeat_timeout = Duration{1234};
        CHECK(cfg.worst_case_detection() == Duration{1234});
    }
}
