// Perplexity exactly as llama-perplexity computes it, over the chunk plan of chunks.h, with the
// log-softmax and standard error of scores.h.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include "mixq/eval/chunks.h"
#include "mixq/eval/scores.h"

namespace mixq {

struct PerplexityOptions {
  int n_ctx = 512;
  int max_chunks = 0;  // 0: all
  int threads = 0;
  std::function<void(int done, int total, double ppl)> on_chunk;
  AttentionMode attention = AttentionMode::kLlamaCppF16;
};

struct PerplexityResult {
  int chunks = 0;
  int64_t scored_tokens = 0;
  double ppl = 0, ppl_error = 0;  // llama.cpp's "PPL = X +/- Y"
  double seconds = 0;
};

// Throws std::runtime_error when the text is shorter than two contexts.
PerplexityResult perplexity(const Model& model, const Tokenizer& tok, const std::string& text,
                            const PerplexityOptions& opts);

}  // namespace mixq
