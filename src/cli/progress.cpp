#include "progress.h"

#include <unistd.h>

#include <fmt/format.h>

namespace mixq::cli {

Progress::Progress(std::string label) : label_(std::move(label)), tty_(::isatty(STDERR_FILENO) == 1) {}

void Progress::update(size_t done, size_t total, const std::string& what, double elapsed) {
  const double frac = total ? static_cast<double>(done) / static_cast<double>(total) : 1.0;
  const double eta = frac > 0 ? elapsed * (1.0 - frac) / frac : 0.0;
  if (tty_) {
    constexpr int kWidth = 30;
    const int filled = static_cast<int>(frac * kWidth);
    fmt::print(stderr, "\r{} [{}{}] {:>3.0f}% {}/{} {:.1f}s left  {:<40.40}", label_, std::string(filled, '#'),
               std::string(kWidth - filled, ' '), 100 * frac, done, total, eta, what);
    drawn_ = true;
  } else if (elapsed - last_line_ >= 5.0 || done == total) {
    fmt::print(stderr, "{}: {}/{} ({:.0f}%), {:.1f}s elapsed, {:.1f}s left: {}\n", label_, done, total, 100 * frac,
               elapsed, eta, what);
    last_line_ = elapsed;
  }
}

void Progress::finish() {
  if (drawn_) fmt::print(stderr, "\n");
  drawn_ = false;
}

}  // namespace mixq::cli
