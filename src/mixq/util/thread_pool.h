// A fixed pool of worker threads that run parallel loops. Workers are reused, so a loop costs at
// most one wake-up, not a thread creation; between loops they spin briefly (kSpinMicros) before
// sleeping, because token generation issues loops back to back, microseconds apart, and a sleeping
// worker costs a futex wake-up and a reschedule on every one.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace mixq {

// More threads than this only add scheduling overhead on any machine mixq targets; the cap also
// keeps a typo (-t 100000) from exhausting the process's address space with thread stacks.
inline constexpr int kMaxThreads = 512;

class ThreadPool {
 public:
  // n_threads <= 0: all hardware threads. The calling thread takes part in every loop, so a pool
  // of n threads starts n - 1 workers. Throws std::runtime_error for more than kMaxThreads, or
  // when the system cannot start a thread (after stopping the ones it started).
  // spin_micros: how long an idle thread spins before it sleeps (kSpinMicros by default; 0 for
  // loops that come far apart, where a spinning worker only takes a core from other threads).
  explicit ThreadPool(int n_threads = 0, int spin_micros = kSpinMicros);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return static_cast<int>(workers_.size()) + 1; }

  // Calls fn(i) for every i in [0, n), spread over the threads (dynamic scheduling: each thread
  // claims the next index from an atomic counter). Rethrows the first exception a call threw,
  // after every call of the loop has returned.
  void parallel_for(int64_t n, const std::function<void(int64_t)>& fn);
  // How many loops were handed to the workers (not run inline: one item, or no workers).
  uint64_t loops_dispatched() const { return loops_dispatched_.load(std::memory_order_relaxed); }

  // How long an idle thread spins by default before it sleeps (workers between loops, the caller
  // waiting for the last items of a loop).
  static constexpr int kSpinMicros = 200;

 private:
  void worker_loop();
  void run_items(uint32_t generation);
  void run_loop(int64_t n, const std::function<void(int64_t)>& fn);

  int spin_micros_;
  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable wake_, done_;
  // The loop in progress: claim_ holds its generation (high 32 bits) and the next unclaimed index
  // (low 32 bits), so a worker that arrives after its loop ended cannot claim from the next one.
  std::atomic<uint64_t> claim_{0};
  std::atomic<uint32_t> generation_{0};
  std::atomic<int64_t> n_{0};
  std::atomic<const std::function<void(int64_t)>*> fn_{nullptr};
  std::atomic<int64_t> finished_{0};  // calls of the current loop that returned
  std::atomic<int> sleepers_{0};
  std::atomic<bool> stop_{false};
  std::atomic<bool> failed_{false};
  std::atomic<uint64_t> loops_dispatched_{0};
  std::mutex error_mu_;
  std::exception_ptr error_;
};

// Threads to use when the user says n (<= 0: every hardware thread).
int resolve_threads(int n);

}  // namespace mixq
