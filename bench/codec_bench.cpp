// Codec throughput: encodes and decodes DELIVER frames and a mixed stream, and
// prints MB/s (10^6 bytes of frames, headers included) and frames/s per case.
//
//   codec_bench            readable lines
//   codec_bench --json     one JSON object
//
// Each case runs batches until it has run for a fixed time, so the whole run
// takes a few seconds whatever the machine.
#include "chat/proto/protocol.hpp"

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;

constexpr auto time_per_case = std::chrono::milliseconds(700);
// A socket read's worth: the decoder sees the stream the way a session does.
constexpr std::size_t read_size = 64 * 1024;

struct Result {
    std::string name;
    std::string operation;
    double seconds = 0;
    std::uint64_t frames = 0;
    std::uint64_t bytes = 0;

    double frames_per_second() const { return static_cast<double>(frames) / seconds; }
    double megabytes_per_second() const { return static_cast<double>(bytes) / seconds / 1e6; }
};

// Folded into the output so the optimiser must do all the work it feeds on.
std::uint64_t checksum = 0;

void consume(std::uint64_t value) {
    checksum = checksum * 31 + value;
}

// Tells the compiler that the bytes at `p` are read, so writes to them stay.
void clobber(const void* p) {
    asm volatile("" : : "r"(p) : "memory");
}

std::string text_of(std::size_t size, std::uint64_t salt) {
    // Mostly ASCII with some multi-byte characters, as chat text tends to be.
    const std::string_view words[] = {"hello ", "world ", "caf\xC3\xA9 ", "ok ", "\xE2\x9C\x93 ", "lorem "};
    std::string text;
    text.reserve(size);
    for (std::uint64_t i = salt;; ++i) {
        const std::string_view word = words[i % std::size(words)];
        if (text.size() + word.size() > size) break;
        text += word;
    }
    text.resize(size, 'x');
    return text;
}

chat::Message deliver(std::size_t text_size, std::uint64_t seq) {
    return chat::Deliver{"#general", "ada_lovelace", 1700000000000 + seq, {7, seq}, text_of(text_size, seq), false};
}

std::vector<chat::Message> deliver_batch(std::size_t text_size, std::size_t count) {
    std::vector<chat::Message> batch;
    batch.reserve(count);
    for (std::size_t i = 0; i < count; ++i) batch.push_back(deliver(text_size, i));
    return batch;
}

std::vector<chat::Message> mixed_batch(std::size_t count) {
    std::vector<chat::Message> batch;
    batch.reserve(count);
    for (std::size_t i = 0; i < count; ++i) {
        const std::uint64_t n = i;
        switch (i % 8) {
            case 0: batch.push_back(deliver(64, n)); break;
            case 1: batch.push_back(deliver(1024, n)); break;
            case 2: batch.push_back(chat::Say{"#general", text_of(200, n)}); break;
            case 3: batch.push_back(chat::Presence{"#general", "bob", chat::PresenceEvent::joined, ""}); break;
            case 4: batch.push_back(chat::Ping{n}); break;
            case 5: batch.push_back(chat::Whisper{"carol", n, text_of(40, n), false}); break;
            case 6:
                batch.push_back(chat::Joined{"#general", 7, n, 0, 0, false,
                                             {"ada", "bob", "carol", "dave", "eve", "frank", "grace", "heidi"}});
                break;
            default: batch.push_back(chat::Heartbeat{}); break;
        }
    }
    return batch;
}

std::string encode_all(const std::vector<chat::Message>& batch) {
    std::string out;
    for (const auto& m : batch) chat::encode(m, out);
    return out;
}

// Encodes the batch into one reused buffer, as a session's writer would gather it.
Result bench_encode(std::string name, const std::vector<chat::Message>& batch) {
    Result result{std::move(name), "encode"};
    std::string out;
    const auto start = Clock::now();
    auto now = start;
    do {
        out.clear();
        for (const auto& m : batch) chat::encode(m, out);
        clobber(out.data());
        consume(out.size() + static_cast<unsigned char>(out[out.size() / 2]));
        result.frames += batch.size();
        result.bytes += out.size();
        now = Clock::now();
    } while (now - start < time_per_case);
    result.seconds = std::chrono::duration<double>(now - start).count();
    return result;
}

// Feeds the encoded batch through prepare/commit in socket-read-sized pieces and
// takes every message out into one reused Message.
Result bench_decode(std::string name, const std::vector<chat::Message>& batch) {
    Result result{std::move(name), "decode"};
    const std::string stream = encode_all(batch);
    chat::Message message;
    const auto start = Clock::now();
    auto now = start;
    do {
        chat::Decoder decoder;
        std::uint64_t frames = 0;
        for (std::size_t at = 0; at < stream.size();) {
            const std::size_t n = std::min(read_size, stream.size() - at);
            std::memcpy(decoder.prepare(n).data(), stream.data() + at, n);
            decoder.commit(n);
            at += n;
            while (decoder.next(message) == chat::Decoder::Status::message) {
                ++frames;
                if (const auto* d = std::get_if<chat::Deliver>(&message)) {
                    consume(d->position.seq + d->text.size());
                } else {
                    consume(message.index());
                }
            }
        }
        if (decoder.error() != chat::DecodeError::none || frames != batch.size()) {
            std::fprintf(stderr, "codec_bench: decoding failed: %s\n",
                         std::string(chat::to_string(decoder.error())).c_str());
            std::exit(1);
        }
        result.frames += frames;
        result.bytes += stream.size();
        now = Clock::now();
    } while (now - start < time_per_case);
    result.seconds = std::chrono::duration<double>(now - start).count();
    return result;
}

void print_text(const std::vector<Result>& results) {
    std::printf("%-14s %-7s %12s %14s\n", "case", "op", "MB/s", "frames/s");
    for (const auto& r : results) {
        std::printf("%-14s %-7s %12.1f %14.0f\n", r.name.c_str(), r.operation.c_str(), r.megabytes_per_second(),
                    r.frames_per_second());
    }
    std::printf("(MB = 10^6 bytes of whole frames; checksum %016llx)\n", static_cast<unsigned long long>(checksum));
}

void print_json(const std::vector<Result>& results) {
    std::printf("{\"benchmark\": \"codec\", \"results\": [");
    for (std::size_t i = 0; i < results.size(); ++i) {
        const auto& r = results[i];
        std::printf("%s\n  {\"case\": \"%s\", \"op\": \"%s\", \"frames\": %llu, \"bytes\": %llu, \"seconds\": %.6f, "
                    "\"mb_per_s\": %.2f, \"frames_per_s\": %.0f}",
                    i == 0 ? "" : ",", r.name.c_str(), r.operation.c_str(), static_cast<unsigned long long>(r.frames),
                    static_cast<unsigned long long>(r.bytes), r.seconds, r.megabytes_per_second(),
                    r.frames_per_second());
    }
    std::printf("\n], \"checksum\": \"%016llx\"}\n", static_cast<unsigned long long>(checksum));
}

}  // namespace

int main(int argc, char** argv) {
    bool json = false;
    for (int i = 1; i < argc; ++i) {
        const std::string_view arg = argv[i];
        if (arg == "--json") {
            json = true;
        } else {
            std::fprintf(stderr, "usage: %s [--json]\n", argv[0]);
            return 2;
        }
    }

    const auto small = deliver_batch(64, 4096);
    const auto large = deliver_batch(1024, 1024);
    const auto mixed = mixed_batch(4096);

    std::vector<Result> results;
    results.push_back(bench_encode("deliver_64", small));
    results.push_back(bench_decode("deliver_64", small));
    results.push_back(bench_encode("deliver_1k", large));
    results.push_back(bench_decode("deliver_1k", large));
    results.push_back(bench_encode("mixed", mixed));
    results.push_back(bench_decode("mixed", mixed));

    if (json) {
        print_json(results);
    } else {
        print_text(results);
    }
    return 0;
}
