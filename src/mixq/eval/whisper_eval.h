// Quality of a Whisper model against a base (usually the F16 or F32 original) on a spoken test
// set: the word error rate of both greedy transcripts against the reference texts (eval/wer.h), and
// the teacher-forced KL divergence of the decoder's next-token distributions.
//
// Teacher forcing: for every utterance the base transcribes greedily (engine/whisper_model.h); both
// models then read the prompt and the base's tokens, and every position from the last prompt token
// on is scored (the last predicts <|endoftext|>): KL(base || model) over the whole vocabulary (raw
// logits, nothing suppressed), the NLL of the base's token under each model, whether their argmax
// tokens agree and the change in that token's probability (eval/kld_stats.h's statistics). The
// model's distributions thus always see the same context as the base's.
//
// Test-set list (`mixq kld MODEL.bin --base F16.bin -f LIST.tsv`): one utterance a line, the audio
// path (relative paths from the list's folder), a TAB, the reference text; blank lines and lines
// starting with '#' are skipped.
#pragma once

#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "mixq/engine/whisper_model.h"
#include "mixq/eval/kld_stats.h"
#include "mixq/eval/wer.h"

namespace mixq {

struct WhisperTestItem {
  std::filesystem::path audio;
  std::string reference;
};

// Throws std::runtime_error naming the file and line for a line without a TAB, an empty reference
// or a missing audio file, and for a list without utterances.
std::vector<WhisperTestItem> read_whisper_test_set(const std::filesystem::path& list);

struct WhisperUtteranceResult {
  std::string reference, base_text, model_text;
  WordErrors base_errors, model_errors;
  int scored_tokens = 0;
  double kld_sum = 0;
};

struct WhisperEvalResult {
  std::vector<WhisperUtteranceResult> utterances;
  WordErrors base_errors, model_errors;  // summed over the test set: rate() is the corpus WER
  KldTokens tokens;                      // every scored position, in test-set order
  KldStats stats;                        // of `tokens` (chunks = utterances, n_ctx = 0)
  double seconds = 0;
};

struct WhisperEvalOptions {
  int threads = 0;
  int max_tokens = 224;
  std::function<void(size_t done, size_t total, const WhisperEvalResult& so_far)> on_utterance;
};

// Several models against one base in one pass over the test set (the base's encoder and decoder run
// once per utterance): one result per model, in order.
std::vector<WhisperEvalResult> evaluate_whisper(const WhisperModel& base, const std::vector<const WhisperModel*>& models,
                                                const std::vector<WhisperTestItem>& items,
                                                const WhisperEvalOptions& opts = {});

// The per-position comparison, exposed for tests: rows of n_vocab logits of both models for the
// same tokens; row r scores `next[r]`. Appends one entry per row to `out`.
void compare_logit_rows(const float* base_logits, const float* model_logits, const std::vector<int>& next, int n_vocab,
                        KldTokens& out);

// The logits file of `mixq transcribe --dump-logits` and tests/oracle/whisper_cpp_logits.cpp:
// "MXWL", int32 rows, int32 n_vocab, int32 token[rows], float32 logits[rows][n_vocab]; row i holds
// the logits after the decoder read token[0..i]. Written atomically.
void write_whisper_logits(const std::filesystem::path& path, const std::vector<int>& tokens,
                          const std::vector<float>& logits, int n_vocab);

}  // namespace mixq
