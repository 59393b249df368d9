// The pooled buffers a TLS session's batch is copied into before encryption.
#pragma once

#include <cstddef>
#include <memory>
#include <vector>

namespace chat {

// Where a TLS session's batch is copied before it is encrypted, so that
// OpenSSL makes full-size records of it: SSL_write takes one buffer, and a
// call per small frame would make a record (and a socket write) each. The
// buffers are pooled per thread and held only while a write is under way (or
// waits for the socket): an idle session holds none.
class TlsStaging {
public:
    // Four full TLS records (16 KiB of plaintext each). A larger batch is
    // staged and written in several, one after the other.
    static constexpr std::size_t capacity = 4 * 16 * 1024;

    struct Buffer {
        std::unique_ptr<char[]> data{new char[capacity]};  // not zeroed: only what is staged is touched
        std::size_t size = 0;
    };
    using Handle = std::unique_ptr<Buffer>;

    static Handle take() {
        auto& free = pool();
        if (free.empty()) return std::make_unique<Buffer>();
        Handle b = std::move(free.back());
        free.pop_back();
        b->size = 0;
        return b;
    }

    // Kept for the next write, up to a bound (what a burst of many sessions
    // with writes in flight at once needed beyond it goes back to malloc).
    static void give_back(Handle b) noexcept {
        auto& free = pool();
        if (free.size() < max_pooled) {
            try {
                free.push_back(std::move(b));
            } catch (...) {
            }
        }
    }

private:
    static constexpr std::size_t max_pooled = 64;

    static std::vector<Handle>& pool() {
        static thread_local std::vector<Handle> free;
        return free;
    }
};

}  // namespace chat
