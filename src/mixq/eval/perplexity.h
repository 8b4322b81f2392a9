// Perplexity exactly as llama-perplexity computes it: the text is tokenized once (with BOS), cut
// into chunks of n_ctx tokens whose first token is replaced by BOS, and each chunk is scored on
// its second half (positions n_ctx/2 .. n_ctx-2 predicting the next token), so every scored
// token has at least n_ctx/2 tokens of context.
#pragma once

#include <functional>
#include <string>

#include "mixq/engine/llama_model.h"
#include "mixq/engine/tokenizer.h"

namespace mixq {

struct PerplexityOptions {
  int n_ctx = 512;
  int max_chunks = 0;  // 0: all
  int threads = 0;
  std::function<void(int done, int total, double ppl)> on_chunk;
};

struct PerplexityResult {
  int chunks = 0;
  int64_t scored_tokens = 0;
  double ppl = 0, ppl_error = 0;  // llama.cpp's "PPL = X +/- Y"
  double seconds = 0;
};

// Throws std::runtime_error when the text is shorter than two contexts.
PerplexityResult perplexity(const LlamaModel& model, const Tokenizer& tok, const std::string& text,
                            const PerplexityOptions& opts);

}  // namespace mixq
