// Memory bandwidth, the bound on token generation: a decoded token reads every weight matrix once
// (about the file's size), so tokens/s <= bandwidth / bytes read per token.
//   read: T threads each sum their slice of a buffer far larger than the caches (64-bit adds the
//         compiler vectorizes), best of R passes;  copy: memcpy of the slices (bytes read + written).
// Prints GB/s (1e9 bytes) for 1 and 2 threads (or the counts given):
// Run: build/bench/mixq_bench_membw [MIB=256] [THREADS...]
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

namespace {

using clock_type = std::chrono::steady_clock;

// Runs f(slice begin, slice end) on t threads over [0, n); returns the seconds of the slowest.
template <class F>
double timed(int t, size_t n, F f) {
  std::vector<std::thread> th;
  const auto t0 = clock_type::now();
  for (int i = 0; i < t; ++i) th.emplace_back([&, i] { f(n * i / t, n * (i + 1) / t); });
  for (auto& x : th) x.join();
  return std::chrono::duration<double>(clock_type::now() - t0).count();
}

}  // namespace

int main(int argc, char** argv) {
  const size_t mib = argc > 1 ? static_cast<size_t>(std::atoi(argv[1])) : 256;
  std::vector<int> threads;
  for (int i = 2; i < argc; ++i) threads.push_back(std::atoi(argv[i]));
  if (threads.empty()) threads = {1, 2};
  const size_t words = mib * (size_t{1} << 20) / 8;
  std::vector<uint64_t> src(words, 1), dst(words, 0);
  volatile uint64_t sink = 0;
  constexpr int kPasses = 5;
  for (int t : threads) {
    double best_read = 1e30, best_copy = 1e30;
    for (int pass = 0; pass < kPasses; ++pass) {
      std::vector<uint64_t> partial(static_cast<size_t>(t) * 8, 0);
      best_read = std::min(best_read, timed(t, words, [&](size_t b, size_t e) {
        uint64_t s = 0;
        for (size_t i = b; i < e; ++i) s += src[i];
        partial[8 * (b * static_cast<size_t>(t) / words)] = s;
      }));
      for (uint64_t p : partial) sink = sink + p;
      best_copy = std::min(best_copy, timed(t, words, [&](size_t b, size_t e) {
        std::memcpy(dst.data() + b, src.data() + b, (e - b) * 8);
      }));
    }
    const double bytes = static_cast<double>(words) * 8;
    std::printf("membw t=%d: read %.1f GB/s, copy %.1f GB/s (read + write, %zu MiB, best of %d)\n", t,
                bytes / best_read / 1e9, 2 * bytes / best_copy / 1e9, mib, kPasses);
  }
  return sink == 0 ? 1 : 0;
}
