// The thread pool's loops: every index runs exactly once per loop, across many back-to-back loops
// (the claim counter carries the loop's generation, so a late worker cannot take an index of the
// next loop) and after the workers have gone to sleep; the first exception is rethrown once every
// call has returned, and the pool keeps working after it.
#include <atomic>
#include <chrono>
#include <stdexcept>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "mixq/util/thread_pool.h"

namespace mixq {
namespace {

// Spinning workers and (spin 0, as the quantizer's pool) workers that sleep between every loop.
TEST(ThreadPool, EveryIndexRunsOnceInEveryLoop) {
  for (int spin : {ThreadPool::kSpinMicros, 0}) {
    for (int threads : {1, 2, 4}) {
      ThreadPool pool(threads, spin);
      for (int loop = 0; loop < 2000; ++loop) {
        const int64_t n = loop % 37;  // 0 and 1 included
        std::vector<std::atomic<int>> hits(static_cast<size_t>(n));
        pool.parallel_for(n, [&](int64_t i) { hits[static_cast<size_t>(i)].fetch_add(1); });
        for (int64_t i = 0; i < n; ++i) {
          ASSERT_EQ(hits[static_cast<size_t>(i)].load(), 1) << spin << " " << threads << " " << loop << " " << i;
        }
      }
    }
  }
}

// Loops of 2 and 64 items back to back: a worker finishing the last item of a short loop looks
// at the claim word again just as the next, longer loop is published. Were it to read the new
// loop's length against the old word, it would run index 2 twice (or an index of a loop that is
// over) and count it into the new loop, whose wait would then never end (found as a hang in
// mixq kld under load).
TEST(ThreadPool, ALateWorkerNeverClaimsFromTheOldLoopWord) {
  ThreadPool pool(4);  // more threads than this machine's cores: preemption widens the window
  std::vector<std::atomic<int>> hits(64);
  std::atomic<int> out_of_range{0};
  for (int loop = 0; loop < 60000; ++loop) {
    const int64_t n = loop % 2 == 0 ? 2 : 64;
    for (int64_t i = 0; i < n; ++i) hits[static_cast<size_t>(i)].store(0, std::memory_order_relaxed);
    pool.parallel_for(n, [&](int64_t i) {
      if (i < 0 || i >= n) {
        out_of_range.fetch_add(1);
        return;
      }
      hits[static_cast<size_t>(i)].fetch_add(1);
    });
    for (int64_t i = 0; i < n; ++i) ASSERT_EQ(hits[static_cast<size_t>(i)].load(), 1) << "loop " << loop << " index " << i;
    ASSERT_EQ(out_of_range.load(), 0) << "loop " << loop;
  }
}

TEST(ThreadPool, WorkersWakeAfterSleepingAndShareTheWork) {
  ThreadPool pool(3);
  for (int round = 0; round < 3; ++round) {
    // Longer than the spin: the workers are asleep when the next loop starts.
    std::this_thread::sleep_for(std::chrono::microseconds(4 * ThreadPool::kSpinMicros));
    std::atomic<int64_t> sum{0};
    pool.parallel_for(1000, [&](int64_t i) { sum += i; });
    EXPECT_EQ(sum.load(), 999 * 1000 / 2);
  }
  // A loop whose items wait for each other completes only if several threads take part.
  std::atomic<int> arrived{0};
  pool.parallel_for(3, [&](int64_t) {
    arrived.fetch_add(1);
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    while (arrived.load() < 3 && std::chrono::steady_clock::now() < until) std::this_thread::yield();
  });
  EXPECT_EQ(arrived.load(), 3);
}

TEST(ThreadPool, FirstExceptionIsRethrownAndThePoolStillWorks) {
  ThreadPool pool(2);
  std::atomic<int> running{0}, max_after{0};
  EXPECT_THROW(pool.parallel_for(200,
                                 [&](int64_t i) {
                                   running.fetch_add(1);
                                   if (i == 5) throw std::runtime_error("item 5");
                                   running.fetch_sub(1);
                                 }),
               std::runtime_error);
  max_after = running.load();
  EXPECT_EQ(max_after.load(), 1);  // only the throwing call is unaccounted; nothing still runs
  std::atomic<int> count{0};
  pool.parallel_for(100, [&](int64_t) { count.fetch_add(1); });
  EXPECT_EQ(count.load(), 100);
}

}  // namespace
}  // namespace mixq
