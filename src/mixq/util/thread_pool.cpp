#include "mixq/util/thread_pool.h"

#include <algorithm>
#include <chrono>
#include <stdexcept>
#include <system_error>
#include <utility>

#include <fmt/format.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace mixq {

namespace {

void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#else
  std::this_thread::yield();
#endif
}

// Spins until done() or `micros` have passed; returns done().
template <class Pred>
bool spin_until(int micros, Pred done) {
  if (micros <= 0) return done();
  const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(micros);
  for (int i = 0;; ++i) {
    if (done()) return true;
    cpu_relax();
    if ((i & 63) == 63 && std::chrono::steady_clock::now() >= until) return done();
  }
}

}  // namespace

int resolve_threads(int n) {
  if (n > 0) return n;
  const unsigned hw = std::thread::hardware_concurrency();
  return hw > 0 ? static_cast<int>(hw) : 1;
}

ThreadPool::ThreadPool(int n_threads, int spin_micros) : spin_micros_(spin_micros) {
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

void ThreadPool::run_items(uint32_t generation) {
  // Sequentially consistent claim and count: a worker that read the next loop's n_ must fail its
  // claim on this loop's word, because run_loop closes the word before it writes n_ (see there).
  uint64_t c = claim_.load();
  for (;;) {
    // A claim succeeds only while its loop is current and has items left; then n_ and fn_ are
    // that loop's (the loop cannot end before the claimed item finishes).
    if (static_cast<uint32_t>(c >> 32) != generation) return;
    const int64_t i = static_cast<int64_t>(c & 0xffffffffu);
    if (i >= n_.load()) return;
    if (!claim_.compare_exchange_weak(c, c + 1)) continue;
    if (!failed_.load(std::memory_order_relaxed)) {
      try {
        (*fn_.load(std::memory_order_relaxed))(i);
      } catch (...) {
        std::lock_guard lock(error_mu_);
        if (!error_) error_ = std::current_exception();
        failed_ = true;
      }
    }
    if (finished_.fetch_add(1, std::memory_order_acq_rel) + 1 == n_.load(std::memory_order_relaxed)) {
      { std::lock_guard lock(mu_); }
      done_.notify_all();
    }
    c = claim_.load();
  }
}

void ThreadPool::worker_loop() {
  uint32_t seen = 0;
  for (;;) {
    const auto ready = [&] { return stop_.load() || generation_.load() != seen; };
    if (!spin_until(spin_micros_, ready)) {
      std::unique_lock lock(mu_);
      ++sleepers_;
      wake_.wait(lock, ready);
      --sleepers_;
    }
    if (stop_) return;
    seen = generation_.load();
    run_items(seen);
  }
}

void ThreadPool::run_loop(int64_t n, const std::function<void(int64_t)>& fn) {
  const uint32_t g = generation_.load() + 1;
  // Close the previous loop's claim word first (the new generation with no index left). A worker
  // still in the previous loop holds that word's old value: without this, it could read the new
  // n_ below, claim "index n_old" on the old word, run it and count it into this loop (finished_
  // then passes n, and the wait below never ends).
  claim_.store(static_cast<uint64_t>(g) << 32 | 0xffffffffu);
  n_.store(n);
  fn_.store(&fn, std::memory_order_relaxed);
  finished_.store(0, std::memory_order_relaxed);
  failed_.store(false, std::memory_order_relaxed);
  claim_.store(static_cast<uint64_t>(g) << 32);
  generation_.store(g);
  if (sleepers_.load() > 0) {
    { std::lock_guard lock(mu_); }
    wake_.notify_all();
  }
  run_items(g);
  const auto all_done = [&] { return finished_.load(std::memory_order_acquire) == n; };
  if (!spin_until(spin_micros_, all_done)) {
    std::unique_lock lock(mu_);
    done_.wait(lock, all_done);
  }
}

void ThreadPool::parallel_for(int64_t n, const std::function<void(int64_t)>& fn) {
  if (n <= 0) return;
  if (workers_.empty() || n == 1) {
    for (int64_t i = 0; i < n; ++i) fn(i);
    return;
  }
  error_ = nullptr;
  loops_dispatched_.fetch_add(1, std::memory_order_relaxed);
  // Item indices live in 32 bits of the claim word: longer loops run as consecutive pieces.
  constexpr int64_t kPiece = int64_t{1} << 31;
  for (int64_t base = 0; base < n && !failed_; base += kPiece) {
    const int64_t len = std::min(kPiece, n - base);
    if (base == 0) {
      run_loop(len, fn);
    } else {
      const std::function<void(int64_t)> shifted = [&](int64_t i) { fn(base + i); };
      run_loop(len, shifted);
    }
  }
  failed_ = false;
  if (error_) std::rethrow_exception(std::exchange(error_, nullptr));
}

}  // namespace mixq
