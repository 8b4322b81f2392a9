#include "mixq/engine/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace mixq {

int32_t Sampler::sample(const float* logits, int n_vocab) {
  if (opts_.temperature <= 0) {
    return static_cast<int32_t>(std::max_element(logits, logits + n_vocab) - logits);
  }
  std::vector<int32_t> ids(static_cast<size_t>(n_vocab));
  std::iota(ids.begin(), ids.end(), 0);
  const size_t k = opts_.top_k > 0 ? std::min<size_t>(static_cast<size_t>(opts_.top_k), ids.size()) : ids.size();
  std::partial_sort(ids.begin(), ids.begin() + static_cast<long>(k), ids.end(),
                    [&](int32_t a, int32_t b) { return logits[a] > logits[b]; });
  ids.resize(k);
  std::vector<double> p(k);
  const double top = logits[ids[0]] / opts_.temperature;
  double sum = 0;
  for (size_t i = 0; i < k; ++i) sum += p[i] = std::exp(logits[ids[i]] / opts_.temperature - top);
  size_t keep = k;
  if (opts_.top_p < 1.0f) {
    double cum = 0;
    for (size_t i = 0; i < k; ++i) {
      cum += p[i] / sum;
      if (cum >= opts_.top_p) {
        keep = i + 1;
        break;
      }
    }
  }
  std::discrete_distribution<size_t> pick(p.begin(), p.begin() + static_cast<long>(keep));
  return ids[pick(rng_)];
}

void Sampler::distribution(const float* logits, int n_vocab, std::vector<float>& p) const {
  p.assign(static_cast<size_t>(n_vocab), 0.0f);
  if (opts_.temperature <= 0) {
    p[static_cast<size_t>(std::max_element(logits, logits + n_vocab) - logits)] = 1.0f;
    return;
  }
  // The same cut as sample(): top-k by logit, the exponentials relative to the top, the nucleus
  // from the top down.
  std::vector<int32_t> ids(static_cast<size_t>(n_vocab));
  std::iota(ids.begin(), ids.end(), 0);
  const size_t k = opts_.top_k > 0 ? std::min<size_t>(static_cast<size_t>(opts_.top_k), ids.size()) : ids.size();
  std::partial_sort(ids.begin(), ids.begin() + static_cast<long>(k), ids.end(),
                    [&](int32_t a, int32_t b) { return logits[a] > logits[b]; });
  std::vector<double> e(k);
  const double top = logits[ids[0]] / opts_.temperature;
  double sum = 0;
  for (size_t i = 0; i < k; ++i) sum += e[i] = std::exp(logits[ids[i]] / opts_.temperature - top);
  size_t keep = k;
  if (opts_.top_p < 1.0f) {
    double cum = 0;
    for (size_t i = 0; i < k; ++i) {
      cum += e[i] / sum;
      if (cum >= opts_.top_p) {
        keep = i + 1;
        break;
      }
    }
  }
  double kept = 0;
  for (size_t i = 0; i < keep; ++i) kept += e[i];
  for (size_t i = 0; i < keep; ++i) p[static_cast<size_t>(ids[i])] = static_cast<float>(e[i] / kept);
}

int32_t Sampler::sample_from(const std::vector<float>& w) {
  std::discrete_distribution<int32_t> pick(w.begin(), w.end());
  return pick(rng_);
}

double Sampler::uniform() { return std::uniform_real_distribution<double>(0.0, 1.0)(rng_); }

}  // namespace mixq
