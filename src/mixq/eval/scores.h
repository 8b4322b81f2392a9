// What the evaluations compute from rows of logits, one definition each: the log-softmax
// (llama-perplexity's), perplexity with its standard error, and the KL divergence of one row.
#pragma once

#include <cstdint>

namespace mixq {

// The log-softmax of one row of logits, as llama-perplexity computes it: the maximum in float,
// log p(v) = double(logit[v] - max) - log(sum_v exp(double(logit[v] - max))).
struct LogSoftmax {
  LogSoftmax(const float* row, int n);
  double operator()(int v) const { return static_cast<double>(row_[v] - max_) - log_sum_; }
  // All n log-probabilities (rounded to float when out is float).
  void all(double* out) const;
  void all(float* out) const;

 private:
  const float* row_;
  int n_;
  float max_;
  double log_sum_;
};

// Perplexity from the mean and the population variance of n per-token NLLs, with llama.cpp's
// standard error: PPL = exp(mean), error = PPL * sqrt(var / (n - 1)) (0 for n < 2 or var <= 0).
struct PplEstimate {
  double ppl = 0, error = 0;
};
PplEstimate ppl_from_nll(double mean, double var, int64_t n);

// The first index of the largest value (the argmax token).
int first_max(const float* x, int n);

// log sum_v exp(x[v]) of float log-probabilities (about 0: they are already normalized), in double.
double log_norm(const float* x, int n);

// KL(base || model) of one row: both sides float32 log-probabilities (the form a stored base has),
// each renormalized in double: with pb = exp(b) / sb, lb = b - log sb, lq = q - log sq,
//   KL = sum_v pb(v) (lb(v) - lq(v)) = sum_v exp(b)(b - q) / sb - log sb + log sq.
// A row compared with itself gives exactly 0. The normalizers are returned for the NLLs.
struct RowKl {
  double kld = 0;
  double sum_base = 0;        // sb (about 1; far from it: not a distribution)
  double log_norm_base = 0;   // log sb
  double log_norm_model = 0;  // log sq
};
RowKl kl_row(const float* base_lp, const float* model_lp, int n);

}  // namespace mixq
