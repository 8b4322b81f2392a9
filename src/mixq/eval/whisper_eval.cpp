#include "mixq/eval/whisper_eval.h"

#include <chrono>
#include <cmath>
#include <cstring>
#include <fstream>
#include <stdexcept>

#include <fmt/format.h>

#include "mixq/engine/whisper_audio.h"
#include "mixq/eval/scores.h"
#include "mixq/io/atomic_file.h"

namespace mixq {

namespace fs = std::filesystem;

std::vector<WhisperTestItem> read_whisper_test_set(const fs::path& list) {
  std::ifstream in(list, std::ios::binary);
  if (!in) throw std::runtime_error(fmt::format("{}: cannot open the test-set list", list.string()));
  std::vector<WhisperTestItem> items;
  std::string line;
  for (int n = 1; std::getline(in, line); ++n) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty() || line[0] == '#') continue;
    const size_t tab = line.find('\t');
    if (tab == std::string::npos || tab == 0) {
      throw std::runtime_error(fmt::format("{}:{}: expected AUDIO.wav<TAB>reference text", list.string(), n));
    }
    WhisperTestItem it;
    it.audio = line.substr(0, tab);
    it.reference = line.substr(tab + 1);
    if (wer_words(it.reference).empty()) {
      throw std::runtime_error(fmt::format("{}:{}: the reference text has no words", list.string(), n));
    }
    if (it.audio.is_relative()) it.audio = list.parent_path() / it.audio;
    if (!fs::is_regular_file(it.audio)) {
      throw std::runtime_error(fmt::format("{}:{}: no audio file '{}'", list.string(), n, it.audio.string()));
    }
    items.push_back(std::move(it));
  }
  if (items.empty()) throw std::runtime_error(fmt::format("{}: the test-set list holds no utterances", list.string()));
  return items;
}

void compare_logit_rows(const float* base_logits, const float* model_logits, const std::vector<int>& next, int n_vocab,
                        KldTokens& out) {
  std::vector<float> lb(static_cast<size_t>(n_vocab)), lm(lb.size());
  for (size_t r = 0; r < next.size(); ++r) {
    const float* b = base_logits + r * static_cast<size_t>(n_vocab);
    const float* m = model_logits + r * static_cast<size_t>(n_vocab);
    const LogSoftmax sb(b, n_vocab), sm(m, n_vocab);
    sb.all(lb.data());
    sm.all(lm.data());
    const RowKl kl = kl_row(lb.data(), lm.data(), n_vocab);
    const int t = next[r];
    out.kld.push_back(kl.kld);
    out.nll_base.push_back(-sb(t));
    out.nll_model.push_back(-sm(t));
    out.delta_p.push_back(std::exp(sm(t)) - std::exp(sb(t)));
    out.same_top.push_back(first_max(b, n_vocab) == first_max(m, n_vocab) ? 1 : 0);
  }
}

std::vector<WhisperEvalResult> evaluate_whisper(const WhisperModel& base, const std::vector<const WhisperModel*>& models,
                                                const std::vector<WhisperTestItem>& items,
                                                const WhisperEvalOptions& opts) {
  for (const WhisperModel* m : models) {
    if (m->n_vocab() != base.n_vocab() || m->prompt() != base.prompt()) {
      throw std::runtime_error("whisper kld: the model and the base have different vocabularies");
    }
  }
  const auto start = std::chrono::steady_clock::now();
  std::vector<WhisperEvalResult> results(models.size());
  const int n_vocab = base.n_vocab();
  const std::vector<int> prompt = base.prompt();
  for (size_t i = 0; i < items.size(); ++i) {
    const WhisperTestItem& it = items[i];
    const std::vector<float> samples = read_wav_16k_mono(it.audio);
    // The base's greedy steps are its teacher-forced rows on its own tokens: one decoder pass.
    std::vector<float> bl;
    const WhisperTranscript bt =
        base.decode_greedy(base.encode(samples, opts.threads), opts.threads, opts.max_tokens, &bl);
    std::vector<int> seq = prompt;
    seq.insert(seq.end(), bt.tokens.begin(), bt.tokens.end());
    // Scored positions: from the last prompt token on; each predicts the base's next token, the
    // last <|endoftext|> (unless the base stopped at max_tokens: then it has no next token).
    std::vector<int> next(bt.tokens.begin(), bt.tokens.end());
    const bool ended = bl.size() / static_cast<size_t>(n_vocab) > bt.tokens.size();
    if (ended) next.push_back(base.eot());
    const size_t first = prompt.size() - 1;
    if (bl.size() != next.size() * static_cast<size_t>(n_vocab)) {
      throw std::logic_error("whisper kld: the base's greedy steps and its tokens disagree");
    }
    for (size_t k = 0; k < models.size(); ++k) {
      const WhisperModel& model = *models[k];
      const WhisperAudioState audio = model.encode(samples, opts.threads);
      const WhisperTranscript mt = model.decode_greedy(audio, opts.threads, opts.max_tokens);
      const std::vector<float> ml = model.forced_logits(audio, seq, opts.threads);
      WhisperEvalResult& r = results[k];
      WhisperUtteranceResult u;
      u.reference = it.reference;
      u.base_text = bt.text;
      u.model_text = mt.text;
      u.base_errors = word_errors(it.reference, bt.text);
      u.model_errors = word_errors(it.reference, mt.text);
      const size_t before = r.tokens.size();
      compare_logit_rows(bl.data(), ml.data() + first * n_vocab, next, n_vocab, r.tokens);
      u.scored_tokens = static_cast<int>(r.tokens.size() - before);
      for (size_t t = before; t < r.tokens.size(); ++t) u.kld_sum += r.tokens.kld[t];
      r.base_errors += u.base_errors;
      r.model_errors += u.model_errors;
      r.utterances.push_back(std::move(u));
    }
    if (opts.on_utterance && !results.empty()) opts.on_utterance(i + 1, items.size(), results[0]);
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  for (auto& r : results) {
    r.stats = summarize(r.tokens, static_cast<int>(items.size()), 0);
    r.seconds = seconds;
  }
  return results;
}

void write_whisper_logits(const fs::path& path, const std::vector<int>& tokens, const std::vector<float>& logits,
                          int n_vocab) {
  if (logits.size() != tokens.size() * static_cast<size_t>(n_vocab)) {
    throw std::invalid_argument("write_whisper_logits: logits are not tokens x n_vocab");
  }
  std::string bytes = "MXWL";
  auto put = [&](const void* p, size_t n) { bytes.append(static_cast<const char*>(p), n); };
  const int32_t rows = static_cast<int32_t>(tokens.size()), nv = n_vocab;
  put(&rows, 4);
  put(&nv, 4);
  for (const int t : tokens) {
    const int32_t v = t;
    put(&v, 4);
  }
  put(logits.data(), 4 * logits.size());
  write_file_atomically(path, bytes);
}

}  // namespace mixq
