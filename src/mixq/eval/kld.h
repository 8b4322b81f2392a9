// KL divergence of a model from a base (reference) model on a text, with the chunks and scored
// positions of llama-perplexity (see perplexity.h), as llama-perplexity's --kl-divergence reports it.
//
// Per scored token (position j predicting token t = the text's next token):
//   KL(base || model) = sum_v p_base(v) (log p_base(v) - log p_model(v))   (double precision)
//   NLL under each model, -log p(t); whether the argmax tokens agree; dp = p_model(t) - p_base(t).
// Both sides' log-probabilities are the log-softmax of the logits rounded to float32 (the form the
// base is stored in, so a comparison against a stored base gives exactly the numbers of a live one),
// then renormalized in double. A model compared with itself gives KLD exactly 0.
//
// The base run can be stored (save_base) and compared against later (kl_divergence_from_file); the
// file format is in kld_base_file.h, the statistics in kld_stats.h.
#pragma once

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "mixq/eval/chunks.h"
#include "mixq/eval/kld_base_file.h"
#include "mixq/eval/kld_stats.h"
#include "mixq/eval/perplexity.h"

namespace mixq {

struct KldProgress {
  int done = 0, total = 0;
  double mean_kld = 0;             // so far (0 when only saving a base)
  double ppl_base = 0, ppl_model = 0;  // so far (ppl_model 0 when only saving a base)
};

struct KldOptions {
  int n_ctx = 512;
  int max_chunks = 0;  // 0: all (against a stored base: all the file's chunks)
  int threads = 0;
  std::filesystem::path save_base;  // also store the base run here (empty: no)
  std::function<void(const KldProgress&)> on_chunk;
  const std::atomic<bool>* cancel = nullptr;  // checked after every chunk; throws KldCancelled
  AttentionMode attention = AttentionMode::kLlamaCppF16;  // both models
};

class KldCancelled : public std::runtime_error {
 public:
  KldCancelled() : std::runtime_error("interrupted: no output was written") {}
};

struct KldResult {
  KldTokens tokens;
  KldStats stats;
  double seconds = 0;
};

// Compares two vocabularies and the models' output sizes. Throws std::runtime_error naming the
// first difference.
void check_same_vocabulary(const Tokenizer& base, int base_n_vocab, const Tokenizer& model, int model_n_vocab);

// Runs the base and the model over the same chunks (one chunk of each at a time). Throws
// std::runtime_error for mismatched vocabularies or a text shorter than two contexts.
KldResult kl_divergence(const Model& base, const Tokenizer& base_tok, const Model& model,
                        const Tokenizer& tok, const std::string& text, const KldOptions& opts);

// Compares the model with a base run stored by save_base_logits / opts.save_base. Throws
// std::runtime_error when the file is missing, truncated or corrupt, or was made for other tokens,
// another n_ctx (opts.n_ctx is ignored: the file's is used) or another vocabulary size.
KldResult kl_divergence_from_file(const std::filesystem::path& base_logits, const Model& model,
                                  const Tokenizer& tok, const std::string& text, const KldOptions& opts);

// Runs the base alone and stores its log-probabilities at `out`; returns its perplexity.
PerplexityResult save_base_logits(const Model& base, const Tokenizer& tok, const std::string& text,
                                  const std::filesystem::path& out, const KldOptions& opts);

}  // namespace mixq
