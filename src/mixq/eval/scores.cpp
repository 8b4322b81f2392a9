#include "mixq/eval/scores.h"

#include <algorithm>
#include <cmath>

namespace mixq {

LogSoftmax::LogSoftmax(const float* row, int n) : row_(row), n_(n) {
  max_ = row[0];
  for (int v = 1; v < n; ++v) max_ = std::max(max_, row[v]);
  double sum = 0;
  for (int v = 0; v < n; ++v) sum += std::exp(static_cast<double>(row[v] - max_));
  log_sum_ = std::log(sum);
}

void LogSoftmax::all(double* out) const {
  for (int v = 0; v < n_; ++v) out[v] = (*this)(v);
}

void LogSoftmax::all(float* out) const {
  for (int v = 0; v < n_; ++v) out[v] = static_cast<float>((*this)(v));
}

PplEstimate ppl_from_nll(double mean, double var, int64_t n) {
  PplEstimate e;
  e.ppl = std::exp(mean);
  e.error = n > 1 && var > 0 ? std::sqrt(var / static_cast<double>(n - 1)) * e.ppl : 0;
  return e;
}

int first_max(const float* x, int n) {
  int best = 0;
  for (int v = 1; v < n; ++v) {
    if (x[v] > x[best]) best = v;
  }
  return best;
}

double log_norm(const float* x, int n) {
  double s = 0;
  for (int v = 0; v < n; ++v) s += std::exp(static_cast<double>(x[v]));
  return std::log(s);
}

RowKl kl_row(const float* b, const float* q, int n) {
  double sb = 0, s = 0;
  for (int v = 0; v < n; ++v) {
    const double bv = b[v];
    const double e = std::exp(bv);
    sb += e;
    s += e * (bv - static_cast<double>(q[v]));
  }
  RowKl r;
  r.sum_base = sb;
  r.log_norm_base = std::log(sb);
  r.log_norm_model = log_norm(q, n);
  r.kld = s / sb - r.log_norm_base + r.log_norm_model;
  return r;
}

}  // namespace mixq
