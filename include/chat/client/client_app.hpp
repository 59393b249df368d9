// The chat_client program: its options, its exit codes, and the loop that ties console and connection.
#pragma once

#include <cstdint>
#include <string>

#include "chat/common/units.hpp"

namespace chat {

struct ClientOptions {
    std::string host = "127.0.0.1";
    std::uint16_t port = 7000;
    std::string nick;
    std::string room = "lobby";
    std::string token;
    // Set: connect to this Unix-domain socket instead of host:port.
    std::string unix_path;
    // TLS to host:port. The server's certificate is checked against `ca` (the
    // system's trust store when empty) and must name `host`, unless insecure.
    bool tls = false;
    std::string ca;
    std::string cert;  // client certificate and key, for servers that ask for one
    std::string key;
    bool insecure = false;
    Duration connect_timeout{10'000};
    Duration reconnect_max{30'000};
    bool reconnect = true;
    // Script mode: how long to keep listening once every own message came back.
    Duration listen_for{0};
    // Script mode: how long to wait, after stdin ended, for own messages to come back.
    Duration timeout{10'000};
    bool json = false;
};

// Stable exit codes; README.md lists them.
enum ExitCode : int {
    exit_ok = 0,
    exit_failure = 1,          // a bug, or the terminal went away
    exit_usage = 2,            // bad command line
    exit_connect_failed = 3,   // refused, unreachable, or no WELCOME at start
    exit_nick_refused = 4,     // nickname taken or invalid
    exit_protocol = 5,         // the server speaks another protocol (version)
    exit_connection_lost = 6,  // lost, and --no-reconnect
    exit_refused = 7,          // server full, access refused, or replaced by another client
    exit_script_timeout = 8,   // script mode: own messages did not come back within --timeout
};

// A nickname for a user who gave none: the login name, made valid.
std::string default_nick();

// Runs the client until it quits. Interactive when stdin is a terminal (end
// of input quits at once), script mode otherwise (end of input waits for own
// messages to come back); lines are edited with libedit when stdout is a
// terminal too and the output is text; colour when stdout is a terminal and
// NO_COLOR is unset (never with --json).
int run_client(const ClientOptions& options);

}  // namespace chat
