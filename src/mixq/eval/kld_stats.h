// The statistics of a KL-divergence evaluation (kld.h) from its per-token values, as
// llama-perplexity's --kl-divergence reports them: perplexities with standard errors, the KLD mean
// and quantiles, the top-token agreement and the probability change of the next token; their text
// (llama.cpp's three sections) and JSON forms; and the quality gate on them.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace mixq {

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

// "5%" -> 0.05, "0.05" -> 0.05. A bare number must be a fraction below 1 (write "150%" for more).
// Throws std::runtime_error for anything else.
double parse_ppl_increase(const std::string& text);

// The quality gate: one message per limit crossed (empty: passed).
std::vector<std::string> check_quality_gate(const KldStats& s, std::optional<double> max_ppl_increase,
                                            std::optional<double> max_kld);

}  // namespace mixq
