// Next-token choice from logits: greedy at temperature 0, otherwise temperature, top-k, top-p
// (nucleus) sampling with a seeded generator, applied in that order as llama.cpp's defaults do.
#pragma once

#include <cstdint>
#include <random>
#include <vector>

namespace mixq {

struct SamplerOptions {
  float temperature = 0.8f;  // 0: greedy
  int top_k = 40;            // 0: all tokens
  float top_p = 0.95f;       // 1: no nucleus cut
  uint64_t seed = 0;
};

class Sampler {
 public:
  explicit Sampler(const SamplerOptions& opts) : opts_(opts), rng_(opts.seed) {}
  int32_t sample(const float* logits, int n_vocab);
  // The probabilities sample() draws from, over the whole vocabulary: softmax(logits / T) cut to
  // top-k and top-p and renormalized (zero outside the cut); greedy: 1 at the argmax.
  // Speculative decoding compares these for the target and the draft.
  void distribution(const float* logits, int n_vocab, std::vector<float>& p) const;
  // A token drawn from nonnegative weights w (not all zero) with this sampler's generator.
  int32_t sample_from(const std::vector<float>& w);
  // A uniform draw in [0, 1) from this sampler's generator.
  double uniform();
  const SamplerOptions& options() const { return opts_; }

 private:
  // The tokens sample() draws from: ids in descending logit order (top-k of them), their
  // unnormalized weights exp(logit / T - top), and how many of them the nucleus keeps.
  struct Cut {
    std::vector<int32_t> ids;
    std::vector<double> weights;
    size_t keep = 0;
  };
  Cut cut(const float* logits, int n_vocab) const;

  SamplerOptions opts_;
  std::mt19937_64 rng_;
};

}  // namespace mixq
