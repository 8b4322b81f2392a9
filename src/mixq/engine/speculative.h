// Speculative decoding (Leviathan, Kalman, Matias 2023, arXiv 2211.17192) with a draft model of
// the same vocabulary, typically a low-bit quantization of the target.
//
// Each round the draft proposes up to draft_max tokens one by one; the target evaluates the last
// committed token and every proposal in one batched pass; proposal i is accepted with probability
// min(1, p_i(d) / q_i(d)) (p: the target's sampling distribution, q: the draft's, both after
// temperature, top-k and top-p, Sampler::distribution); the first rejection is replaced by a draw
// from normalize(max(0, p_i - q_i)), and when every proposal is accepted a bonus token is drawn
// from the target's next distribution. The tokens then follow the target's distribution exactly;
// at temperature 0 (p and q one-hot) the output is the target's greedy output. Both contexts roll
// back (Context::rollback) past the first rejected token.
//
// Greedy output is the target's own, bit for bit: the prompt is evaluated as one batch (as
// generation without a draft does), and every later batch with a lone token's numerics
// (Context::set_numerics_batch(1)), as plain generation evaluates each new token. Both models
// follow that rule, so a draft identical to the target is accepted every time at temperature 0.
//
// Invariant between rounds: both contexts have evaluated every committed token but the last,
// except right after start(), when they have evaluated the whole prompt and hold its last logits.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "mixq/engine/model.h"
#include "mixq/engine/sampler.h"
#include "mixq/engine/tokenizer.h"

namespace mixq {

struct SpeculativeOptions {
  int draft_max = 8;         // proposals per round
  float draft_min_p = 0.0f;  // stop proposing once the draft's probability of its token is below this
  // Test only: accept every proposal (a broken rule whose output follows the draft, not the
  // target; the statistical test must catch it).
  bool always_accept = false;
};

struct SpeculativeStats {
  int64_t rounds = 0, drafted = 0, accepted = 0;
  double draft_seconds = 0, target_seconds = 0;  // wall time in each model's evaluations
  double acceptance_rate() const { return drafted > 0 ? static_cast<double>(accepted) / static_cast<double>(drafted) : 0; }
  // Proposals accepted per round (each round also yields one token of the target's own).
  double mean_accepted() const { return rounds > 0 ? static_cast<double>(accepted) / static_cast<double>(rounds) : 0; }
};

class SpeculativeDecoder {
 public:
  // The draft proposes with draft_sampling (usually the target's options; the acceptance rule
  // holds for any). Contexts and samplers are borrowed.
  SpeculativeDecoder(Context& target, Context& draft, Sampler& sampler, Sampler& draft_sampler,
                     const SpeculativeOptions& opts);

  // Starts a sequence: resets both contexts and evaluates the prompt (at least one token) on both.
  void start(const std::vector<int32_t>& prompt);
  // One round: 1 .. min(draft_max + 1, max_new) new tokens (max_new >= 1), fewer when the
  // contexts are full (none when they cannot take another token).
  std::vector<int32_t> step(int max_new);

  const std::vector<int32_t>& tokens() const { return seq_; }
  const SpeculativeStats& stats() const { return stats_; }

 private:
  Context &target_, &draft_;
  Sampler &sampler_, &draft_sampler_;
  SpeculativeOptions opts_;
  std::vector<int32_t> seq_;
  SpeculativeStats stats_;
  std::vector<std::vector<float>> q_;  // the draft's distributions of this round
  std::vector<float> p_, residual_;
  std::vector<float> prompt_logits_, draft_prompt_logits_;  // after the whole prompt (first round)
};

// Throws std::runtime_error unless `other` (a --draft or --prefill-model file) can stand beside
// `main`: the same architecture (and, when same_state, the same state shape) and the same
// vocabulary token for token. The message names the option, both files, the difference and what
// to give instead.
void check_companion_model(const std::string& option, const Model& main, const Tokenizer& main_tok, const Model& other,
                           const Tokenizer& other_tok, bool same_state);

}  // namespace mixq
