// chat_client: the pulsechat terminal client (interactive, script and --json modes).
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <iterator>

#include "chat/common/token_file.hpp"
#include "chat/common/cli.hpp"
#include "chat/client/client_app.hpp"
#include "chat/proto/protocol.hpp"
#include "pulsechat_config.h"

int main(int argc, char** argv) {
    chat::ClientOptions options;
    options.nick = chat::default_nick();
    CLI::App app{"pulsechat client. Interactive when stdin is a terminal: type to talk in the current room, "
                 "/help for commands. Script mode otherwise: each stdin line is said in the current room ('/' "
                 "lines are commands); after stdin ends the client waits until the server delivered all its own "
                 "messages back, listens for --listen-for, says BYE and exits 0.\n\n"
                 "Exit codes: 0 done, 1 internal error, 2 bad command line, 3 cannot connect, 4 nickname taken "
                 "or invalid, 5 other protocol version, 6 connection lost with --no-reconnect, 7 refused by the "
                 "server (full, access, replaced), 8 script mode: own messages not delivered back within --timeout.",
                 "chat_client"};
    app.set_version_flag("--version", PULSECHAT_VERSION);
    app.get_formatter()->column_width(34);

    app.add_option("--host", options.host, "Server host name or address")->capture_default_str();
    app.add_option("-p,--port", options.port, "Server TCP port")->capture_default_str()->check(CLI::Range(1, 65535));
    app.add_option("-n,--nick", options.nick, "Nickname (default: the login name)")->capture_default_str();
    app.add_option("-r,--room", options.room, "Room to join at start; it becomes the current room")
        ->capture_default_str();
    app.add_option("--token", options.token, "Access token, for a server that wants one");
    std::string token_file;
    app.add_option("--token-file", token_file,
                   "Read the access token from this file (its first line that is not blank or a '#' comment), "
                   "so that it does not show in ps")
        ->type_name("FILE");
    app.add_option("--unix", options.unix_path, "Connect to the server's Unix-domain socket instead of --host/--port")
        ->type_name("PATH");
    app.add_flag("--tls", options.tls,
                 "Connect with TLS; the server's certificate is checked, and that it names --host");
    app.add_option("--ca", options.ca, "Trust the CAs in this PEM file instead of the system's trust store")
        ->type_name("FILE");
    app.add_flag("--insecure", options.insecure,
                 "With --tls: check neither the certificate nor the host name (prints a warning)");
    app.add_option("--cert", options.cert, "With --tls: client certificate (PEM), for servers that ask for one")
        ->type_name("FILE");
    app.add_option("--key", options.key, "With --tls: the private key of --cert (PEM)")->type_name("FILE");
    chat::add_duration_option(app, "--connect-timeout", options.connect_timeout,
                              "Give up on a connection attempt, and on the server's answer to HELLO, after this");
    chat::add_duration_option(app, "--reconnect-max", options.reconnect_max,
                              "Longest wait between reconnect attempts (the wait doubles from 200ms, with jitter)");
    bool no_reconnect = false;
    app.add_flag("--no-reconnect", no_reconnect, "Exit (code 6) when the connection is lost instead of reconnecting");
    chat::add_duration_option(app, "--listen-for", options.listen_for,
                              "Script mode: keep listening this long after own messages came back, then exit");
    chat::add_duration_option(app, "--timeout", options.timeout,
                              "Script mode: after stdin ends, wait at most this long for own messages to come back "
                              "(exit 8 when they do not)");
    app.add_flag("--json", options.json,
                 "Print one JSON object per line for every event instead of text (schema in README.md)");

    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        const int code = chat::exit_status(app, e);
        return code == 0 ? 0 : chat::exit_usage;
    }
    options.reconnect = !no_reconnect;
    if (!token_file.empty()) {
        if (!options.token.empty()) {
            std::cerr << "chat_client: give --token or --token-file, not both\n";
            return chat::exit_usage;
        }
        std::ifstream in(token_file);
        const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
        const auto tokens = chat::parse_token_file(text);
        if (!in.is_open() || tokens.empty()) {
            std::cerr << "chat_client: --token-file '" << token_file << "': "
                      << (in.is_open() ? "no token in it" : std::strerror(errno)) << "\n";
            return chat::exit_usage;
        }
        options.token = tokens.front();
    }
    if (!options.tls && (!options.ca.empty() || !options.cert.empty() || !options.key.empty() || options.insecure)) {
        std::cerr << "chat_client: --ca, --cert, --key and --insecure go with --tls\n";
        return chat::exit_usage;
    }
    if (options.tls && !options.unix_path.empty()) {
        std::cerr << "chat_client: --tls is for TCP; a --unix socket is local and needs none\n";
        return chat::exit_usage;
    }
    if (options.insecure)
        std::cerr << "chat_client: warning: --insecure: the server's certificate and name are not checked; anyone "
                     "between here and the server can read and change this chat\n";
    if (!chat::is_valid_nick(options.nick)) {
        std::cerr << "chat_client: '" << options.nick
                  << "' is not a nickname: 1-32 letters, digits, '_', '-', '.', starting with a letter or digit\n";
        return chat::exit_usage;
    }
    if (!chat::is_valid_room(options.room)) {
        std::cerr << "chat_client: '" << options.room
                  << "' is not a room name: 1-64 letters, digits, '_', '-', '.', '#', starting with a letter, "
                     "digit or '#'\n";
        return chat::exit_usage;
    }
    try {
        return chat::run_client(options);
    } catch (const std::exception& e) {
        std::cerr << "chat_client: " << e.what() << "\n";
        return chat::exit_failure;
    }
}
