// A fixed pool of worker threads that run parallel loops. Workers sleep between loops and are
// reused, so a loop costs one wake-up, not a thread creation.
#pragma once

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
  explicit ThreadPool(int n_threads = 0);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return static_cast<int>(workers_.size()) + 1; }

  // Calls fn(i) for every i in [0, n), spread over the threads (dynamic scheduling). Rethrows
  // the first exception a call threw, after every thread has stopped working on the loop.
  void parallel_for(int64_t n, const std::function<void(int64_t)>& fn);

 private:
  void worker_loop();
  void run_items();

  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable wake_, done_;
  const std::function<void(int64_t)>* fn_ = nullptr;
  int64_t n_ = 0;
  int64_t next_ = 0;
  int active_ = 0;
  uint64_t generation_ = 0;
  bool stop_ = false;
  std::exception_ptr error_;
};

// Threads to use when the user says n (<= 0: every hardware thread).
int resolve_threads(int n);

}  // namespace mixq
