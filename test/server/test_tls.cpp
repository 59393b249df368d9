// The encrypted and local transports, live: TLS (server and client checks, client certificates),
// Unix-domain sockets (peer credentials), access tokens and their lockout, and a SIGHUP reload.
#include <doctest/doctest.h>

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <mutex>
#include <thread>

#include <spdlog/sinks/base_sink.h>

#include "chat/common/logging.hpp"
#include "chat/common/tls_client_context.hpp"
#include "chat/server/tls_server_context.hpp"
#include "utils/live.hpp"
#include "utils/pki.hpp"
#include "utils/subprocess.hpp"

#if PULSECHAT_HAVE_OPENSSL
#include <openssl/pem.h>
#include <openssl/x509v3.h>
#endif

using namespace chat;
using namespace chat::test;
namespace fs = std::filesystem;

namespace {

// Heartbeats slow enough that a test's clients need not send any.
ServerConfig transport_config() {
    ServerConfig cfg = fast_config();
    cfg.heartbeat_interval = 2000ms;
    cfg.heartbeat_timeout = 6000ms;
    return cfg;
}

void write_file(const std::string& path, const std::string& text) {
    std::ofstream out(path, std::ios::trunc);
    out << text;
    REQUIRE(out.good());
}

// Records the server's log lines while it lives, so a test can look for one.
class LogCapture {
public:
    LogCapture() : sink_(std::make_shared<Sink>()) { server_log()->sinks().push_back(sink_); }
    // Only once the servers that log here have stopped: the sink list is not thread-safe.
    ~LogCapture() {
        auto& sinks = server_log()->sinks();
        sinks.erase(std::remove(sinks.begin(), sinks.end(), sink_), sinks.end());
    }
    LogCapture(const LogCapture&) = delete;
    LogCapture& operator=(const LogCapture&) = delete;

    bool contains(const std::string& text) const { return sink_->contains(text); }
    // Waits (bounded) for a line containing every one of `parts`.
    bool saw(std::initializer_list<std::string> parts, std::chrono::milliseconds limit = 3000ms) const {
        return TestServer::eventually([&] { return sink_->has_line_with(parts); }, limit);
    }

private:
    class Sink final : public spdlog::sinks::base_sink<std::mutex> {
    public:
        bool contains(const std::string& text) {
            std::lock_guard lock(mutex_);
            for (const auto& l : lines_)
                if (l.find(text) != std::string::npos) return true;
            return false;
        }
        bool has_line_with(std::initializer_list<std::string> parts) {
            std::lock_guard lock(mutex_);
            for (const auto& l : lines_) {
                bool all = true;
                for (const auto& p : parts) all = all && l.find(p) != std::string::npos;
                if (all) return true;
            }
            return false;
        }

    protected:
        void sink_it_(const spdlog::details::log_msg& msg) override {
            lines_.emplace_back(msg.payload.data(), msg.payload.size());
        }
        void flush_() override {}

    private:
        std::vector<std::string> lines_;
    };
    std::shared_ptr<Sink> sink_;
};

// A blocking test client over any stream (TCP, TLS, Unix): every operation
// runs the client's own io_context for a bounded time, so no read waits
// longer than asked and a TLS stream's buffered bytes are never missed.
template <class Stream>
class StreamClient : public MessageReader<StreamClient<Stream>> {
public:
    template <class... Args>
    explicit StreamClient(Args&&... args) : stream_(io_, std::forward<Args>(args)...) {}

    Stream& stream() { return stream_; }

    // Runs until `done` is set or `limit` passes; on timeout the operation is
    // cancelled (and its handler run) before this returns false.
    bool wait(const bool& done, std::chrono::milliseconds limit) { return run_until(io_, stream_, done, limit); }

#if PULSECHAT_HAVE_OPENSSL
    // TLS only: the client's half of the handshake.
    asio::error_code handshake(std::chrono::milliseconds limit = 3000ms) {
        bool done = false;
        asio::error_code result;
        stream_.async_handshake(asio::ssl::stream_base::client, [&](const asio::error_code& ec) {
            result = ec;
            done = true;
        });
        if (!wait(done, limit)) return asio::error::timed_out;
        return result;
    }
#endif

    void send(const Message& m) {
        const std::string bytes = encode(m);
        asio::error_code ignored;
        asio::write(stream_, asio::buffer(bytes), ignored);
    }

    // Reads until the server closes; returns the last ERROR it sent, if any.
    std::optional<Error> error_then_close(std::chrono::milliseconds timeout = 3000ms) {
        std::optional<Error> last;
        for (const auto& m : this->read_until_closed(timeout))
            if (auto* e = std::get_if<Error>(&m)) last = *e;
        return last;
    }

    std::optional<Welcome> login(const std::string& nick, const std::string& token = {}) {
        send(Hello{nick, token, {}});
        return this->template read_until<Welcome>();
    }
    std::optional<Joined> join(const std::string& room) {
        send(Join{room, false, {}});
        return this->template read_until<Joined>();
    }
    // SAYs `text` and waits for its DELIVER to come back.
    bool say(const std::string& room, const std::string& text) {
        send(Say{room, text});
        return heard(text);
    }
    // Waits for a DELIVER of `text`.
    bool heard(const std::string& text, std::chrono::milliseconds timeout = 3000ms) {
        const auto deadline = Clock::now() + timeout;
        while (Clock::now() < deadline) {
            auto d = this->template read_until<Deliver>(
                std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()));
            if (!d) return false;
            if (d->text == text) return true;
        }
        return false;
    }

private:
    friend class MessageReader<StreamClient>;

    std::size_t receive(asio::mutable_buffer space, std::chrono::milliseconds limit, asio::error_code& ec) {
        bool done = false;
        std::size_t n = 0;
        stream_.async_read_some(space, [&](const asio::error_code& e, std::size_t k) {
            ec = e;
            n = k;
            done = true;
        });
        if (wait(done, limit)) return n;
        // The cancelled read's operation_aborted is our own doing, not the server closing.
        ec = {};
        return 0;
    }

    asio::io_context io_;
    Stream stream_;
};

using UnixClient = StreamClient<asio::local::stream_protocol::socket>;

std::unique_ptr<UnixClient> unix_client(const std::string& path) {
    auto c = std::make_unique<UnixClient>();
    c->stream().connect(asio::local::stream_protocol::endpoint(path));
    return c;
}

#if PULSECHAT_HAVE_OPENSSL

using TlsClient = StreamClient<TlsStream>;

ServerConfig tls_config(const Pki& pki) {
    ServerConfig cfg = transport_config();
    cfg.tls_port = 0;
    cfg.tls_cert = pki.server.cert_file;
    cfg.tls_key = pki.server.key_file;
    return cfg;
}

// Connects over TCP and runs the client handshake (checking the certificate
// against `options.ca` and the name "127.0.0.1" unless insecure).
std::unique_ptr<TlsClient> tls_client(std::uint16_t port, const TlsClientOptions& options,
                                      asio::error_code& handshake_error, const std::string& host = "127.0.0.1") {
    auto context = make_client_context(options);
    auto c = std::make_unique<TlsClient>(*context);
    c->stream().lowest_layer().connect(asio::ip::tcp::endpoint(asio::ip::make_address("127.0.0.1"), port));
    prepare_client_stream(c->stream(), host, !options.insecure);
    handshake_error = c->handshake();
    return c;  // the SSL object holds its own reference to the context
}

// A TLS client that verified the server, logged in as `nick` and joined "lobby".
std::unique_ptr<TlsClient> tls_member(TestServer& server, const Pki& pki, const std::string& nick) {
    asio::error_code ec;
    auto c = tls_client(server.server().tls_endpoint()->port(), TlsClientOptions{pki.ca.cert_file, {}, {}, false}, ec);
    REQUIRE_MESSAGE(!ec, ec.message());
    REQUIRE(c->login(nick));
    REQUIRE(c->join("lobby"));
    return c;
}

// The common name of the certificate the server showed.
std::string peer_common_name(TlsStream& stream) {
    X509* cert = SSL_get1_peer_certificate(stream.native_handle());
    if (cert == nullptr) return {};
    char cn[256] = {};
    X509_NAME_get_text_by_NID(X509_get_subject_name(cert), NID_commonName, cn, sizeof cn);
    X509_free(cert);
    return cn;
}

// How often `text` occurs in `all`.
std::size_t occurrences(const std::string& all, const std::string& text) {
    std::size_t found = 0;
    for (auto at = all.find(text); at != std::string::npos; at = all.find(text, at + 1)) ++found;
    return found;
}

#endif  // PULSECHAT_HAVE_OPENSSL

}  // namespace

TEST_SUITE("transports (live)") {
#if PULSECHAT_HAVE_OPENSSL
    TEST_CASE("a client that verifies the server's certificate chats over TLS, next to a plain TCP client") {
        Pki pki;
        TestServer server(tls_config(pki));
        const auto tls_port = server.server().tls_endpoint()->port();
        CHECK(tls_port != server.port());

        asio::error_code ec;
        auto alice = tls_client(tls_port, TlsClientOptions{pki.ca.cert_file, {}, {}, false}, ec);
        REQUIRE_MESSAGE(!ec, ec.message());
        CHECK(peer_common_name(alice->stream()) == "localhost");
        // TLS 1.3 is what OpenSSL 3 negotiates with itself.
        CHECK(std::string(SSL_get_version(alice->stream().native_handle())) == "TLSv1.3");
        // By host name too: the certificate names localhost, and SNI carries it.
        auto bob = tls_client(tls_port, TlsClientOptions{pki.ca.cert_file, {}, {}, false}, ec, "localhost");
        REQUIRE_MESSAGE(!ec, ec.message());
        TestClient carol(server.port());

        REQUIRE(alice->login("alice"));
        REQUIRE(bob->login("bob"));
        REQUIRE(carol.login("carol"));
        REQUIRE(alice->join("lobby"));
        REQUIRE(bob->join("lobby"));
        REQUIRE(carol.join("lobby"));

        CHECK(alice->say("lobby", "hello over TLS"));
        CHECK(bob->heard("hello over TLS"));
        auto d = carol.read_until<Deliver>();
        REQUIRE(d);
        CHECK(d->text == "hello over TLS");
        // A frame bigger than one TLS record goes through whole.
        const std::string big(40'000, 'x');
        carol.send(Say{"lobby", big});
        CHECK(alice->heard(big));

        // BYE: the server answers with a close_notify, seen here as an orderly end.
        alice->send(Bye{"done"});
        alice->error_then_close(2000ms);
        CHECK(alice->closed());
        CHECK(alice->close_reason() == asio::error::eof);
    }

    TEST_CASE("a client that trusts another CA, or expects another name, refuses the server") {
        Pki pki;
        LogCapture log;
        TestServer server(tls_config(pki));
        const auto tls_port = server.server().tls_endpoint()->port();

        asio::error_code ec;
        auto wrong_ca = tls_client(tls_port, TlsClientOptions{pki.other_ca.cert_file, {}, {}, false}, ec);
        CHECK(ec);
        CHECK(describe_tls_failure(ec, wrong_ca->stream().native_handle()).find("unable to get local issuer") !=
              std::string::npos);

        auto wrong_name = tls_client(tls_port, TlsClientOptions{pki.ca.cert_file, {}, {}, false}, ec, "chat.example");
        CHECK(ec);
        CHECK(describe_tls_failure(ec, wrong_name->stream().native_handle()).find("mismatch") != std::string::npos);

        // --insecure skips both checks.
        auto insecure = tls_client(tls_port, TlsClientOptions{{}, {}, {}, true}, ec, "chat.example");
        CHECK(!ec);
        CHECK(insecure->login("reckless"));
        // The server logged the refused handshakes with the peer and the reason.
        CHECK(log.saw({"TLS handshake failed", "127.0.0.1:"}));
    }

    TEST_CASE("plain bytes to the TLS port and a handshake that never comes are closed and logged") {
        Pki pki;
        LogCapture log;
        TestServer server(tls_config(pki));
        const auto tls_port = server.server().tls_endpoint()->port();
        {
            TestClient plain(tls_port);
            plain.send(Hello{"plain", {}, {}});
            plain.read_until_closed(3000ms);
            CHECK(plain.closed());
            CHECK(log.saw({"TLS handshake failed", "127.0.0.1:"}));
        }
        {
            // The handshake counts against --handshake-timeout (1s here).
            TestClient silent(tls_port);
            const auto started = Clock::now();
            silent.read_until_closed(4000ms);
            CHECK(silent.closed());
            CHECK(Clock::now() - started < 3000ms);
            CHECK(log.saw({"TLS handshake not done within 1s"}));
        }
        // The server is unharmed.
        asio::error_code ec;
        auto ok = tls_client(tls_port, TlsClientOptions{pki.ca.cert_file, {}, {}, false}, ec);
        REQUIRE(!ec);
        CHECK(ok->login("survivor"));
    }

    TEST_CASE("a TLS handshake in progress does not hold up a shutdown") {
        Pki pki;
        LogCapture log;
        ServerConfig cfg = tls_config(pki);
        cfg.drain_timeout = 10s;
        cfg.handshake_timeout = 10s;
        TestServer server(cfg);
        const auto tls_port = server.server().tls_endpoint()->port();
        // A connection to the TLS port that never sends its ClientHello...
        TestClient half_open(tls_port);
        // ...and, accepted after it by the same acceptor (so the half-open one
        // has its session by then), a logged-in TLS client.
        asio::error_code ec;
        auto alice = tls_client(tls_port, TlsClientOptions{pki.ca.cert_file, {}, {}, false}, ec);
        REQUIRE_MESSAGE(!ec, ec.message());
        REQUIRE(alice->login("alice"));

        const auto start = Clock::now();
        server.server().request_shutdown("server shutting down");
        auto bye = alice->read_until<Bye>(3000ms);
        REQUIRE(bye);
        CHECK(bye->reason == "server shutting down");
        alice->read_until_closed(2000ms);
        CHECK(alice->closed());
        alice.reset();
        half_open.read_until_closed(3000ms);
        CHECK(half_open.closed());
        // Done well before either 10s timeout could have ended it.
        CHECK(log.saw({"shutdown complete"}, 3000ms));
        CHECK(Clock::now() - start < 3000ms);
        CHECK_FALSE(log.contains("drain timeout"));
        CHECK_FALSE(log.contains("TLS handshake not done"));
    }

    TEST_CASE("many frames queued for a TLS member in one pass arrive complete and in order") {
        Pki pki;
        ServerConfig cfg = tls_config(pki);
        cfg.max_frame = 256 * 1024;
        cfg.queue_limit = 64 * 1024 * 1024;
        TestServer server(cfg);
        auto alice = tls_member(server, pki, "alice");
        TestClient bob(server.port());
        REQUIRE(bob.login("bob"));
        REQUIRE(bob.join("lobby"));

        // One write of 3,000 SAYs: the server reads them in a few reads, so
        // each of alice's batches holds hundreds of DELIVERs, far more than one
        // staging chunk (64 KiB). The sizes vary so that frames straddle TLS
        // records and chunks, and every 1,000th is bigger than a whole chunk.
        std::vector<std::string> texts;
        std::string burst;
        for (int i = 0; i < 3000; ++i) {
            std::string text = fmt::format("m{:05}-", i);
            text.append(i % 1000 == 999 ? 100'000 : static_cast<std::size_t>(i % 300), static_cast<char>('a' + i % 26));
            burst += encode(Say{"lobby", text});
            texts.push_back(std::move(text));
        }
        asio::write(bob.socket(), asio::buffer(burst));

        std::size_t next = 0;
        const auto deadline = Clock::now() + 4000ms;  // within alice's 6s heartbeat timeout
        while (next < texts.size() && Clock::now() < deadline) {
            auto d = alice->read_until<Deliver>(
                std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()));
            if (!d) break;
            REQUIRE_MESSAGE(d->text == texts[next], "DELIVER ", next, " is not the SAY ", next);
            ++next;
        }
        CHECK(next == texts.size());
    }

    TEST_CASE("--tls-coalesce: a quiet TLS member gets a frame at once; a busy one gets every frame, late by the delay at most") {
        Pki pki;
        ServerConfig cfg = tls_config(pki);
        cfg.tls_coalesce = 400ms;  // long, so that a deferred write cannot pass for an immediate one
        TestServer server(cfg);
        auto alice = tls_member(server, pki, "alice");
        TestClient bob(server.port());
        REQUIRE(bob.login("bob"));
        REQUIRE(bob.join("lobby"));
        // alice's last write (JOINED, bob's PRESENCE) is long enough ago: she is quiet.
        REQUIRE(alice->read_until<Presence>(2000ms));
        std::this_thread::sleep_for(450ms);  // not a synchronisation: lets the coalescing window pass

        // Quiet: written at once, well within the delay.
        auto sent = Clock::now();
        bob.send(Say{"lobby", "first"});
        auto d = alice->read_until<Deliver>(2000ms);
        REQUIRE(d);
        CHECK(d->text == "first");
        CHECK(Clock::now() - sent < 300ms);

        // Busy: written 0.4 s ago at most, so the next small writes wait, but
        // nothing comes after them to flush them: the timer must.
        for (int i = 0; i < 5; ++i) bob.send(Say{"lobby", "next " + std::to_string(i)});
        sent = Clock::now();
        for (int i = 0; i < 5; ++i) {
            d = alice->read_until<Deliver>(2000ms);
            REQUIRE(d);
            CHECK(d->text == "next " + std::to_string(i));
        }
        CHECK(Clock::now() - sent < 1500ms);
    }

    TEST_CASE("a TLS member that stops reading is disconnected by the write timeout") {
        Pki pki;
        ServerConfig cfg = tls_config(pki);
        cfg.write_timeout = 300ms;
        cfg.max_frame = 64 * 1024;
        cfg.queue_limit = 64 * 1024 * 1024;  // the queue bound is not what fires
        TestServer server(cfg);
        const auto tls_port = server.server().tls_endpoint()->port();

        // The sleeper: a small receive buffer; logs in, joins, and reads no more.
        auto context = make_client_context(TlsClientOptions{pki.ca.cert_file, {}, {}, false});
        TlsClient sleeper(*context);
        auto& socket = sleeper.stream().lowest_layer();
        socket.open(asio::ip::tcp::v4());
        socket.set_option(asio::socket_base::receive_buffer_size(4096));
        socket.connect(asio::ip::tcp::endpoint(asio::ip::make_address("127.0.0.1"), tls_port));
        prepare_client_stream(sleeper.stream(), "127.0.0.1", true);
        REQUIRE(!sleeper.handshake());
        REQUIRE(sleeper.login("sleeper"));
        REQUIRE(sleeper.join("room"));
        TestClient alice(server.port());
        REQUIRE(alice.login("alice"));
        REQUIRE(alice.join("room"));

        // Alice floods the room and reads her own copies; the sleeper's TLS
        // writes fill the kernel's buffers, then one waits past 300ms. The
        // flood is bounded (a few times the kernel's buffers), and the
        // disconnect must come well within the sleeper's 6s heartbeat timeout.
        const std::string big(32 * 1024, 'w');
        std::optional<Presence> gone;
        const auto start = Clock::now();
        while (!gone && Clock::now() - start < 4000ms) {
            alice.send(Say{"room", big});
            for (;;) {
                auto m = alice.read(2000ms);
                REQUIRE(m);
                if (auto* p = std::get_if<Presence>(&*m); p && p->nick == "sleeper") {
                    if (p->event == PresenceEvent::disconnected) gone = *p;
                }
                if (std::holds_alternative<Deliver>(*m) || gone) break;
            }
        }
        if (!gone) {
            for (auto m = alice.read(2000ms); m && !gone; m = alice.read(2000ms))
                if (auto* p = std::get_if<Presence>(&*m); p && p->nick == "sleeper") gone = *p;
        }
        REQUIRE(gone);
        CHECK(gone->event == PresenceEvent::disconnected);
        CHECK(gone->detail.find("slow consumer") != std::string::npos);
        CHECK(Clock::now() - start < 4000ms);
        // The sleeper's connection is closed (it gets what the kernel held).
        sleeper.read_until_closed(5000ms);
        CHECK(sleeper.closed());
    }

    TEST_CASE("with --tls-client-ca a certificate from that CA gets in; one from another CA, or none, does not") {
        Pki pki;
        LogCapture log;
        ServerConfig cfg = tls_config(pki);
        cfg.tls_client_ca = pki.ca.cert_file;
        TestServer server(cfg);
        const auto tls_port = server.server().tls_endpoint()->port();

        asio::error_code ec;
        auto alice = tls_client(tls_port, TlsClientOptions{pki.ca.cert_file, pki.client.cert_file,
                                                           pki.client.key_file, false},
                                ec);
        REQUIRE_MESSAGE(!ec, ec.message());
        CHECK(alice->login("alice"));

        // In TLS 1.3 the client may finish its half before the server checks
        // its certificate: the refusal then shows as a close instead of WELCOME.
        const auto refused = [&](const TlsClientOptions& options) {
            asio::error_code handshake_ec;
            auto c = tls_client(tls_port, options, handshake_ec);
            if (handshake_ec) return true;
            c->send(Hello{"intruder", {}, {}});
            return !c->read_until<Welcome>(3000ms) && c->closed();
        };
        CHECK(refused(TlsClientOptions{pki.ca.cert_file, pki.other_client.cert_file, pki.other_client.key_file, false}));
        CHECK(log.saw({"TLS handshake failed", "certificate verify failed"}));
        CHECK(refused(TlsClientOptions{pki.ca.cert_file, {}, {}, false}));
        CHECK(log.saw({"TLS handshake failed", "certificate"}));
        // The accepted session is still up.
        CHECK(alice->join("lobby"));
    }

    TEST_CASE("bad certificate files stop the start with a message naming the file") {
        Pki pki;
        ServerConfig cfg = tls_config(pki);
        cfg.tls_key = pki.client.key_file;  // another certificate's key
        Server wrong_key(cfg);
        CHECK_THROWS_WITH_AS(wrong_key.listen(), doctest::Contains("does not belong to certificate"), TlsError);
        cfg = tls_config(pki);
        cfg.tls_cert = pki.dir.file("missing.pem");
        Server missing(cfg);
        CHECK_THROWS_WITH_AS(missing.listen(), doctest::Contains("missing.pem"), TlsError);
    }
#endif  // PULSECHAT_HAVE_OPENSSL

    TEST_CASE("clients chat over a Unix-domain socket, and the server logs their uid and pid") {
        TempDir dir;
        LogCapture log;
        ServerConfig cfg = transport_config();
        cfg.unix_path = dir.file("chat.sock");
        cfg.unix_mode = 0600;
        {
            TestServer server(cfg);
            struct stat st {};
            REQUIRE(::stat(cfg.unix_path.c_str(), &st) == 0);
            CHECK(S_ISSOCK(st.st_mode));
            CHECK((st.st_mode & 07777) == 0600);

            auto alice = unix_client(cfg.unix_path);
            auto bob = unix_client(cfg.unix_path);
            TestClient carol(server.port());
            REQUIRE(alice->login("alice"));
            REQUIRE(bob->login("bob"));
            REQUIRE(carol.login("carol"));
            REQUIRE(alice->join("lobby"));
            REQUIRE(bob->join("lobby"));
            REQUIRE(carol.join("lobby"));
            CHECK(alice->say("lobby", "hello over a Unix socket"));
            CHECK(bob->heard("hello over a Unix socket"));
            carol.send(Say{"lobby", "and back over TCP"});
            CHECK(alice->heard("and back over TCP"));
            CHECK(log.saw({"logged in as 'alice'", fmt::format("unix:pid={},uid={}", ::getpid(), ::getuid())}));
        }
        // Removed on exit.
        CHECK(!fs::exists(cfg.unix_path));
    }

    TEST_CASE("--unix-allow-uid refuses any other uid with auth_failed") {
        TempDir dir;
        LogCapture log;
        ServerConfig cfg = transport_config();
        cfg.unix_path = dir.file("chat.sock");
        cfg.unix_allow_uids = {::getuid() == 12345 ? 12346u : 12345u};
        TestServer server(cfg);
        auto c = unix_client(cfg.unix_path);
        auto e = c->error_then_close();
        REQUIRE(e);
        CHECK(e->code == ErrorCode::auth_failed);
        CHECK(e->fatal);
        CHECK(c->closed());
        // Refusals are counted in the once-a-second summary (one by one only at debug level).
        CHECK(log.saw({"in the last second:", "1 refused"}));
    }

    TEST_CASE("a stale socket file is replaced; a live socket or a file that is not a socket is left alone") {
        TempDir dir;
        ServerConfig cfg = transport_config();
        cfg.unix_path = dir.file("chat.sock");
        {
            // A socket file nobody listens on: what a crashed server leaves.
            asio::io_context io;
            asio::local::stream_protocol::acceptor left_over(io, asio::local::stream_protocol::endpoint(cfg.unix_path));
        }
        REQUIRE(fs::exists(cfg.unix_path));
        TestServer server(cfg);
        auto c = unix_client(cfg.unix_path);
        CHECK(c->login("alice"));

        Server second(cfg);
        CHECK_THROWS_WITH(second.listen(), doctest::Contains("another server is listening"));

        ServerConfig regular = cfg;
        regular.unix_path = dir.file("notes.txt");
        write_file(regular.unix_path, "keep me\n");
        Server third(regular);
        CHECK_THROWS_WITH(third.listen(), doctest::Contains("not a socket"));
        std::ifstream in(regular.unix_path);
        std::string kept;
        std::getline(in, kept);
        CHECK(kept == "keep me");
    }

    TEST_CASE("with --token-file a listed token logs in; a wrong or missing one gets auth_failed and a close") {
        TempDir dir;
        LogCapture log;
        ServerConfig cfg = transport_config();
        cfg.token_file = dir.file("tokens");
        write_file(cfg.token_file, "# the team\n\n  s3cret-one  \nsecond-secret\n");
        TestServer server(cfg);

        TestClient alice(server.port());
        alice.send(Hello{"alice", "s3cret-one", {}});
        CHECK(alice.read_until<Welcome>());
        TestClient bob(server.port());
        bob.send(Hello{"bob", "second-secret", {}});
        CHECK(bob.read_until<Welcome>());

        const auto refusal = [&](const std::string& token) {
            TestClient c(server.port());
            c.send(Hello{"mallory", token, {}});
            std::optional<Error> last;
            for (auto& m : c.read_until_closed())
                if (auto* e = std::get_if<Error>(&m)) last = *e;
            CHECK(c.closed());
            return last;
        };
        auto wrong = refusal("s3cret-on");
        REQUIRE(wrong);
        CHECK(wrong->code == ErrorCode::auth_failed);
        CHECK(wrong->fatal);
        CHECK(wrong->reason == "wrong access token");
        auto missing = refusal("");
        REQUIRE(missing);
        CHECK(missing->code == ErrorCode::auth_failed);
        CHECK(log.saw({"login refused", "wrong access token", "127.0.0.1"}));
        CHECK(log.saw({"login refused", "no access token"}));
    }

    TEST_CASE("repeated failures lock an address out for a while, even with the right token") {
        TempDir dir;
        ServerConfig cfg = transport_config();
        cfg.token_file = dir.file("tokens");
        cfg.auth_max_failures = 3;
        cfg.auth_lockout = 500ms;
        write_file(cfg.token_file, "right\n");
        TestServer server(cfg);

        const auto attempt = [&](const std::string& token) -> std::string {
            TestClient c(server.port());
            c.send(Hello{"guesser", token, {}});
            while (auto m = c.read()) {
                if (std::holds_alternative<Welcome>(*m)) return "welcome";
                if (auto* e = std::get_if<Error>(&*m)) return e->reason;
            }
            return "closed";
        };
        for (int i = 0; i < 3; ++i) CHECK(attempt("guess") == "wrong access token");
        const auto locked_at = Clock::now();
        CHECK(attempt("right") == "too many failed attempts; try again later");
        // The lockout ends; then the right token works again.
        std::string outcome;
        CHECK(TestServer::eventually([&] { return (outcome = attempt("right")) == "welcome"; }, 3000ms));
        CHECK(Clock::now() - locked_at >= 400ms);
    }

#if PULSECHAT_HAVE_OPENSSL
    TEST_CASE("SIGHUP reloads certificate and tokens: the next client sees them, an open session stays up") {
        Pki pki;
        const Issued second = issue(pki.dir, "second", "localhost", CertRole::server, &pki.ca);
        const std::string cert = pki.dir.file("live.pem");
        const std::string key = pki.dir.file("live.key");
        const std::string tokens = pki.dir.file("tokens");
        fs::copy_file(pki.server.cert_file, cert);
        fs::copy_file(pki.server.key_file, key);
        write_file(tokens, "first-token\n");
        const auto serial_of = [](TlsStream& s) {
            X509* c = SSL_get1_peer_certificate(s.native_handle());
            const long serial = c != nullptr ? ASN1_INTEGER_get(X509_get_serialNumber(c)) : -1;
            X509_free(c);
            return serial;
        };
        const long first_serial = ASN1_INTEGER_get(X509_get_serialNumber(pki.server.cert.get()));
        const long second_serial = ASN1_INTEGER_get(X509_get_serialNumber(second.cert.get()));

        Subprocess server({program_path("CHAT_SERVER", "chat_server"), "--bind", "127.0.0.1", "--port", "0",
                           "--tls-port", "0", "--tls-cert", cert, "--tls-key", key, "--token-file", tokens});
        const auto listening = server.wait_for(" (tls)", 5000ms);
        REQUIRE(listening);
        const auto port = static_cast<std::uint16_t>(std::stoi(listening->substr(listening->rfind(':') + 1)));
        // Waits (bounded) until the server's log holds `text` `times` times.
        const auto logged = [&](const std::string& text, std::size_t times) {
            return TestServer::eventually([&] { return occurrences(server.all_stderr(), text) >= times; }, 5000ms);
        };
        const TlsClientOptions trust{pki.ca.cert_file, {}, {}, false};

        asio::error_code ec;
        auto old_client = tls_client(port, trust, ec);
        REQUIRE_MESSAGE(!ec, ec.message());
        CHECK(serial_of(old_client->stream()) == first_serial);
        REQUIRE(old_client->login("old", "first-token"));
        REQUIRE(old_client->join("lobby"));

        fs::copy_file(second.cert_file, cert, fs::copy_options::overwrite_existing);
        fs::copy_file(second.key_file, key, fs::copy_options::overwrite_existing);
        write_file(tokens, "second-token\n");
        server.signal(SIGHUP);
        REQUIRE(logged("reload: 1 access token(s) loaded", 1));

        auto new_client = tls_client(port, trust, ec);
        REQUIRE_MESSAGE(!ec, ec.message());
        CHECK(serial_of(new_client->stream()) == second_serial);
        REQUIRE(new_client->login("new", "second-token"));
        REQUIRE(new_client->join("lobby"));
        // The session opened before the reload is still up, on the old certificate.
        CHECK(old_client->say("lobby", "still here"));
        CHECK(new_client->heard("still here"));
        auto stale = tls_client(port, trust, ec);
        REQUIRE(!ec);
        stale->send(Hello{"stale", "first-token", {}});
        auto refusal = stale->error_then_close();
        REQUIRE(refusal);
        CHECK(refusal->code == ErrorCode::auth_failed);

        // A file that fails to load is logged, and the one in use stays.
        write_file(cert, "not a certificate\n");
        server.signal(SIGHUP);
        REQUIRE(logged("reload: keeping the TLS certificate in use", 1));
        auto after_bad = tls_client(port, trust, ec);
        REQUIRE_MESSAGE(!ec, ec.message());
        CHECK(serial_of(after_bad->stream()) == second_serial);
        CHECK(new_client->say("lobby", "and still"));
        CHECK(old_client->heard("and still"));

        server.signal(SIGTERM);
        CHECK(server.wait_exit(5000ms) == 0);
    }
#endif  // PULSECHAT_HAVE_OPENSSL
}
