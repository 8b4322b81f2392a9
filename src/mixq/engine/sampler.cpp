#include "mixq/engine/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace mixq {

Sampler::Cut Sampler::cut(const float* logits, int n_vocab) const {
  // Top-k by logit, the exponentials of logit / T relative to the top, then the nucleus from the
  // top down: the first tokens whose probabilities reach top_p.
  Cut c;
  c.ids.resize(static_cast<size_t>(n_vocab));
  std::iota(c.ids.begin(), c.ids.end(), 0);
  const size_t k = opts_.top_k > 0 ? std::min<size_t>(static_cast<size_t>(opts_.top_k), c.ids.size()) : c.ids.size();
  std::partial_sort(c.ids.begin(), c.ids.begin() + static_cast<long>(k), c.ids.end(),
                    [&](int32_t a, int32_t b) { return logits[a] > logits[b]; });
  c.ids.resize(k);
  c.weights.resize(k);
  const double top = logits[c.ids[0]] / opts_.temperature;
  double sum = 0;
  for (size_t i = 0; i < k; ++i) sum += c.weights[i] = std::exp(logits[c.ids[i]] / opts_.temperature - top);
  c.keep = k;
  if (opts_.top_p < 1.0f) {
    double cum = 0;
    for (size_t i = 0; i < k; ++i) {
      cum += c.weights[i] / sum;
      if (cum >= opts_.top_p) {
        c.keep = i + 1;
        break;
      }
    }
  }
  return c;
}

int32_t Sampler::sample(const float* logits, int n_vocab) {
  if (opts_.temperature <= 0) {
    return static_cast<int32_t>(std::max_element(logits, logits + n_vocab) - logits);
  }
  const Cut c = cut(logits, n_vocab);
  std::discrete_distribution<size_t> pick(c.weights.begin(), c.weights.begin() + static_cast<long>(c.keep));
  return c.ids[pick(rng_)];
}

void Sampler::distribution(const float* logits, int n_vocab, std::vector<float>& p) const {
  p.assign(static_cast<size_t>(n_vocab), 0.0f);
  if (opts_.temperature <= 0) {
    p[static_cast<size_t>(std::max_element(logits, logits + n_vocab) - logits)] = 1.0f;
    return;
  }
  const Cut c = cut(logits, n_vocab);  // the same cut as sample()
  double kept = 0;
  for (size_t i = 0; i < c.keep; ++i) kept += c.weights[i];
  for (size_t i = 0; i < c.keep; ++i) p[static_cast<size_t>(c.ids[i])] = static_cast<float>(c.weights[i] / kept);
}

int32_t Sampler::sample_from(const std::vector<float>& w) {
  std::discrete_distribution<int32_t> pick(w.begin(), w.end());
  return pick(rng_);
}

double Sampler::uniform() { return std::uniform_real_distribution<double>(0.0, 1.0)(rng_); }

}  // namespace mixq
