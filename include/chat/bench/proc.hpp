// Readings of a process's CPU time and resident memory from /proc, for chat_bench's --server-pid.
#pragma once

#include <cstdint>
#include <optional>

namespace chat::bench {

struct ProcSample {
    double cpu_s = 0;         // utime + stime, in seconds
    std::uint64_t rss_kib = 0;  // VmRSS
};

// Reads /proc/PID/stat and /proc/PID/status; nullopt when the process is gone
// or /proc is not there.
std::optional<ProcSample> sample_process(int pid);
// This process's own user + system CPU time, in seconds.
double self_cpu_seconds();

}  // namespace chat::bench
