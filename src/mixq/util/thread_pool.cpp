#include "mixq/util/thread_pool.h"

#include <stdexcept>
#include <system_error>

#include <fmt/format.h>

namespace mixq {

int resolve_threads(int n) {
  if (n > 0) return n;
  const unsigned hw = std::thread::hardware_concurrency();
  return hw > 0 ? static_cast<int>(hw) : 1;
}

ThreadPool::ThreadPool(int n_threads) {
  const int n = resolve_threads(n_threads);
  if (n > kMaxThreads) {
    throw std::runtime_error(fmt::format("{} threads requested: at most {} (use -t N with a smaller N)", n, kMaxThreads));
  }
  workers_.reserve(static_cast<size_t>(n));
  try {
    for (int i = 1; i < n; ++i) workers_.emplace_back([this] { worker_loop(); });
  } catch (const std::system_error& e) {
    // The started workers wait for work that will never come: stop them, or they outlive us.
    const size_t started = workers_.size() + 1;
    {
      std::lock_guard lock(mu_);
      stop_ = true;
    }
    wake_.notify_all();
    for (auto& w : workers_) w.join();
    workers_.clear();
    throw std::runtime_error(fmt::format("cannot start thread {} of {}: {} (the system's thread or memory limit; use "
                                         "-t N with a smaller N)",
                                         started, n, e.what()));
  }
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard lock(mu_);
    stop_ = true;
  }
  wake_.notify_all();
  for (auto& w : workers_) w.join();
}

void ThreadPool::run_items() {
  for (;;) {
    int64_t i;
    {
      std::lock_guard lock(mu_);
      if (next_ >= n_ || error_) return;
      i = next_++;
    }
    try {
      (*fn_)(i);
    } catch (...) {
      std::lock_guard lock(mu_);
      if (!error_) error_ = std::current_exception();
    }
  }
}

void ThreadPool::worker_loop() {
  uint64_t seen = 0;
  for (;;) {
    {
      std::unique_lock lock(mu_);
      wake_.wait(lock, [&] { return stop_ || generation_ != seen; });
      if (stop_) return;
      seen = generation_;
      ++active_;
    }
    run_items();
    {
      std::lock_guard lock(mu_);
      --active_;
    }
    done_.notify_all();
  }
}

void ThreadPool::parallel_for(int64_t n, const std::function<void(int64_t)>& fn) {
  if (n <= 0) return;
  if (workers_.empty() || n == 1) {
    for (int64_t i = 0; i < n; ++i) fn(i);
    return;
  }
  {
    std::lock_guard lock(mu_);
    fn_ = &fn;
    n_ = n;
    next_ = 0;
    error_ = nullptr;
    ++generation_;
  }
  wake_.notify_all();
  run_items();
  std::exception_ptr err;
  {
    std::unique_lock lock(mu_);
    done_.wait(lock, [&] { return active_ == 0 && (next_ >= n_ || error_); });
    // A worker that wakes late finds no items left; make sure none is still inside fn.
    fn_ = nullptr;
    n_ = 0;
    err = error_;
  }
  if (err) std::rethrow_exception(err);
}

}  // namespace mixq
