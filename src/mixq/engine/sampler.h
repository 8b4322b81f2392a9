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

 private:
  SamplerOptions opts_;
  std::mt19937_64 rng_;
};

}  // namespace mixq
