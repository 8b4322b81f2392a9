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
// The base run can be stored (save_base) and compared against later (kl_divergence_from_file).
// The file keeps the float32 log-probabilities of every scored row WITHOUT any clamping (llama.cpp
// stores 16 bits over [max - 16, max] and clamps lower values, so its KLD-mode PPL(base) is not the
// true one). Layout (little-endian):
//   header (40 bytes): magic "MIXQKLDB", u32 version (1), u32 n_vocab, u32 n_ctx, u32 n_chunks,
//     u32 first scored position (n_ctx / 2), u32 flags (bit 0: chunk[0] replaced by BOS), i32 BOS id,
//     u32 reserved (0)
//   i32 tokens[n_chunks * n_ctx]: the text's tokens of the scored chunks (before the BOS replacement)
//   u64 checksum of the header and the tokens
//   per chunk: f32 log_probs[(n_ctx - 1 - first) * n_vocab], u64 checksum of those bytes
// It is written through AtomicFile (io/atomic_file.h): a temporary file beside the destination,
// renamed when complete.
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

#include <nlohmann/json.hpp>

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

// Per scored token, in text order.
struct KldTokens {
  std::vector<double> kld;                  // KL(base || model), nats
  std::vector<double> nll_base, nll_model;  // -log p(next token)
  std::vector<double> delta_p;              // p_model(next) - p_base(next)
  std::vector<uint8_t> same_top;            // 1: the argmax tokens agree
  size_t size() const { return kld.size(); }
};

struct Estimate {
  double value = 0, error = 0;  // error: one standard error
};

struct Quantiles {
  double min = 0, p01 = 0, p05 = 0, p10 = 0, p25 = 0, median = 0, p75 = 0, p90 = 0, p95 = 0, p99 = 0,
         p999 = 0, max = 0;
};

// Linear interpolation between order statistics (position q * (n - 1) in the sorted values).
Quantiles quantiles(std::vector<double> values);

struct KldStats {
  int chunks = 0, n_ctx = 0;
  int64_t tokens = 0;
  Estimate ppl_base, ppl_model;
  Estimate ln_ppl_ratio;  // mean of nll_model - nll_base
  Estimate ppl_ratio;     // PPL(model) / PPL(base) = exp(ln_ppl_ratio)
  Estimate ppl_diff;      // PPL(model) - PPL(base)
  double ppl_correlation = 0;  // of the per-token NLLs
  Estimate kld;           // mean
  Quantiles kld_q;
  Estimate same_top;      // fraction of tokens, 0..1
  Estimate delta_p;       // mean, probability units (0..1)
  Estimate rms_delta_p;
  Quantiles delta_p_q;

  double ppl_increase() const { return ppl_ratio.value - 1; }  // relative
  nlohmann::ordered_json to_json() const;
  std::string to_text() const;  // llama-perplexity's three sections
};

// Statistics of the per-token values (at least two tokens).
KldStats summarize(const KldTokens& t, int chunks, int n_ctx);

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

// The header of a stored base run (validated against the file size when read).
struct BaseLogitsInfo {
  int n_vocab = 0, n_ctx = 0, n_chunks = 0;
  bool bos_first = false;
  int32_t bos = -1;
  std::vector<int32_t> tokens;  // n_chunks * n_ctx
};
BaseLogitsInfo read_base_logits_info(const std::filesystem::path& path);

// "5%" -> 0.05, "0.05" -> 0.05. A bare number must be a fraction below 1 (write "150%" for more).
// Throws std::runtime_error for anything else.
double parse_ppl_increase(const std::string& text);

// The quality gate: one message per limit crossed (empty: passed).
std::vector<std::string> check_quality_gate(const KldStats& s, std::optional<double> max_ppl_increase,
                                            std::optional<double> max_kld);

}  // namespace mixq
