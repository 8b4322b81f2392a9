#include "mixq/engine/speculative.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <stdexcept>

#include <fmt/format.h>

namespace mixq {

namespace {
using Clock = std::chrono::steady_clock;
double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }
}  // namespace

SpeculativeDecoder::SpeculativeDecoder(Context& target, Context& draft, Sampler& sampler, Sampler& draft_sampler,
                                       const SpeculativeOptions& opts)
    : target_(target), draft_(draft), sampler_(sampler), draft_sampler_(draft_sampler), opts_(opts) {
  if (target.n_vocab() != draft.n_vocab()) {
    throw std::runtime_error(fmt::format("speculative decoding: the draft has {} tokens, the target {}", draft.n_vocab(),
                                         target.n_vocab()));
  }
  if (opts.draft_max < 0) throw std::runtime_error(fmt::format("--draft-max {}: give a count >= 0", opts.draft_max));
}

void SpeculativeDecoder::start(const std::vector<int32_t>& prompt) {
  if (prompt.empty()) throw std::runtime_error("speculative decoding: empty prompt");
  seq_ = prompt;
  target_.reset();
  draft_.reset();
  prompt_logits_ = target_.eval(prompt, false);
  draft_prompt_logits_ = draft_.eval(prompt, false);
}

std::vector<int32_t> SpeculativeDecoder::step(int max_new) {
  const int n = static_cast<int>(seq_.size());
  const int n_vocab = target_.n_vocab();
  // Room: the target evaluates positions up to n-1+m, the draft up to n-2+m.
  const int room = std::min(target_.n_ctx(), draft_.n_ctx()) - n;
  if (max_new < 1 || target_.n_ctx() - (n - 1) < 1) return {};
  const int m_max = std::max(0, std::min({opts_.draft_max, max_new - 1, room}));

  // Draft: catch up on the committed tokens it has not seen, then propose one token at a time.
  std::vector<int32_t> drafts;
  const auto t_draft = Clock::now();
  if (m_max > 0) {
    draft_.mark_rollback();
    const std::vector<int32_t> pending(seq_.begin() + draft_.n_past(), seq_.end());
    const std::vector<float>* logits = &draft_prompt_logits_;
    if (!pending.empty()) {
      const NumericsBatchScope lone(draft_, 1);
      logits = &draft_.eval(pending, false);
    }
    if (q_.size() < static_cast<size_t>(m_max)) q_.resize(static_cast<size_t>(m_max));
    for (int i = 0; i < m_max; ++i) {
      std::vector<float>& q = q_[static_cast<size_t>(i)];
      draft_sampler_.distribution(logits->data(), n_vocab, q);
      const int32_t d = draft_sampler_.sample_from(q);
      if (opts_.draft_min_p > 0) {
        // The draft's confidence: its sampling probability, or at temperature 0 (q one-hot) the
        // softmax of its logits.
        double conf = q[static_cast<size_t>(d)];
        if (draft_sampler_.options().temperature <= 0) {
          const float* l = logits->data();
          const float top = l[d];
          double sum = 0;
          for (int v = 0; v < n_vocab; ++v) sum += std::exp(static_cast<double>(l[v]) - top);
          conf = 1.0 / sum;
        }
        if (conf < opts_.draft_min_p) break;
      }
      drafts.push_back(d);
      if (i + 1 < m_max) logits = &draft_.eval({d}, false);
    }
  }
  const int m = static_cast<int>(drafts.size());
  stats_.draft_seconds += since(t_draft);

  // Target: the committed token it has not evaluated (none in the first round, whose first row
  // is the prompt's) and every proposal, in one pass with a lone token's numerics.
  target_.mark_rollback();
  std::vector<int32_t> batch(seq_.begin() + target_.n_past(), seq_.end());
  const int first_row = static_cast<int>(batch.size()) - 1;  // the row predicting position n (-1: the prompt's)
  batch.insert(batch.end(), drafts.begin(), drafts.end());
  const float* rows = nullptr;
  if (!batch.empty()) {
    const auto t_target = Clock::now();
    const NumericsBatchScope lone(target_, 1);
    rows = target_.eval(batch, batch.size() > 1).data();
    stats_.target_seconds += since(t_target);
  }
  // Without all_logits (a batch of one) eval returns that token's row alone: index 0 either way.
  auto row = [&](int j) {
    const int i = first_row + j;
    return i < 0 ? prompt_logits_.data() : rows + static_cast<size_t>(i) * n_vocab;
  };

  std::vector<int32_t> out;
  int k = 0;
  for (; k < m; ++k) {
    sampler_.distribution(row(k), n_vocab, p_);
    const std::vector<float>& q = q_[static_cast<size_t>(k)];
    const auto d = static_cast<size_t>(drafts[static_cast<size_t>(k)]);
    // Accept with probability min(1, p/q): u < p/q, written without the division.
    if (opts_.always_accept || sampler_.uniform() * q[d] < p_[d]) {
      out.push_back(drafts[static_cast<size_t>(k)]);
      continue;
    }
    residual_.resize(p_.size());
    double sum = 0;
    for (size_t v = 0; v < p_.size(); ++v) sum += residual_[v] = std::max(0.0f, p_[v] - q[v]);
    out.push_back(sampler_.sample_from(sum > 0 ? residual_ : p_));
    break;
  }
  if (k == m) {  // every proposal accepted: the target's own next token
    sampler_.distribution(row(m), n_vocab, p_);
    out.push_back(sampler_.sample_from(p_));
  }
  ++stats_.rounds;
  stats_.drafted += m;
  stats_.accepted += k;

  // Both keep the committed tokens but the newest: the target evaluated n + m, the draft
  // n - 1 + m (its last proposal is never evaluated).
  target_.rollback(n + k);
  if (m_max > 0) draft_.rollback(std::min(draft_.n_past(), n + k));
  seq_.insert(seq_.end(), out.begin(), out.end());
  return out;
}

void check_companion_model(const std::string& option, const Model& main, const Tokenizer& main_tok, const Model& other,
                           const Tokenizer& other_tok, bool same_state) {
  const std::string mf = main.file().label(), of = other.file().label();
  const std::string advice = "give a quantization of the same model (mixq quantize of the main file or its source)";
  if (other.architecture() != main.architecture()) {
    throw std::runtime_error(fmt::format("{} {}: architecture '{}', but {} is '{}': {}", option, of,
                                         other.architecture(), mf, main.architecture(), advice));
  }
  if (same_state && other.state_shape() != main.state_shape()) {
    throw std::runtime_error(fmt::format("{} {}: its state is '{}', but {}'s is '{}': {}", option, of,
                                         other.state_shape(), mf, main.state_shape(), advice));
  }
  if (other.n_vocab() != main.n_vocab() || other_tok.size() != main_tok.size()) {
    throw std::runtime_error(fmt::format("{} {}: a vocabulary of {} tokens, but {} has {}: {}", option, of,
                                         other.n_vocab(), mf, main.n_vocab(), advice));
  }
  for (int32_t id = 0; id < static_cast<int32_t>(main_tok.size()); ++id) {
    if (main_tok.decode_token(id) != other_tok.decode_token(id)) {
      throw std::runtime_error(fmt::format("{} {}: token {} is '{}', but in {} it is '{}' (another vocabulary): {}",
                                           option, of, id, other_tok.decode_token(id), mf, main_tok.decode_token(id),
                                           advice));
    }
  }
  if (main_tok.eos() != other_tok.eos() || main_tok.bos() != other_tok.bos()) {
    throw std::runtime_error(fmt::format("{} {}: BOS/EOS {}/{}, but {} has {}/{}: {}", option, of, other_tok.bos(),
                                         other_tok.eos(), mf, main_tok.bos(), main_tok.eos(), advice));
  }
}

}  // namespace mixq
