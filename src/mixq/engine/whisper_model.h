// A Whisper speech-to-text forward pass over whisper.cpp model files (any types they hold, mixed
// included: each weight is dequantized to F32 at load), greedy decoding without timestamps.
//
// Encoder: conv1 (k 3, pad 1) + GELU, conv2 (k 3, stride 2, pad 1) + GELU, + positional embedding,
// pre-LN blocks (self-attention, GELU MLP), ln_post. Decoder: token + positional embedding, pre-LN
// blocks (causal self-attention with a KV cache, cross-attention to the encoder output, MLP), ln,
// logits against the token embedding. Prompt: <|startoftranscript|> [<|en|> <|transcribe|> for
// multilingual models] <|notimestamps|>; every special token but <|endoftext|> is suppressed, and
// <|endoftext|> and a lone space at the first step. One 30 s window (longer audio is cut).
//
// Numerics: whisper.cpp's CPU path without flash attention, where it rounds to F16: ggml's GELU
// (tanh form, an F16 table), F16 im2col convolutions, F16 queries, keys, values and attention
// probabilities (keys and decoder queries scaled by dh^-1/4 first), F16 inputs to F16 weights. The
// decoder logits agree with whisper.cpp's to 1e-3 of their scale (tests/python/test_whisper_eval.py).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "mixq/io/whisper_file.h"

namespace mixq {

struct WhisperTranscript {
  std::string text;         // the tokens' bytes, concatenated
  std::vector<int> tokens;  // generated ids, <|endoftext|> excluded
};

// One 30 s window through the encoder: each decoder layer's cross-attention keys and values
// ([n_audio_ctx][n_text_state] each), all the decoder needs of the audio.
struct WhisperAudioState {
  std::vector<std::vector<float>> cross_k, cross_v;
};

// Sees the input rows of every matrix product (rows x cols, F32, before any F16 rounding) under
// the weight's tensor name, e.g. to collect an importance matrix (calib/whisper_imatrix.h). Called
// from the calling thread, in model order.
using WhisperActivationObserver =
    std::function<void(const std::string& weight, const float* x, int64_t rows, int64_t cols)>;

class WhisperModel {
 public:
  // Dequantizes every tensor; throws for header-only files.
  explicit WhisperModel(const WhisperFile& f);
  // samples: 16 kHz mono in [-1, 1) (engine/whisper_audio.h). threads <= 0: all cores.
  WhisperTranscript transcribe(const std::vector<float>& samples, int threads = 0, int max_tokens = 224) const;

  // The steps of transcribe, for evaluations that need the logits. With block_inputs, the encoder's
  // residual stream entering each block, and ln_post last (n_audio_layer + 1 entries of
  // n_audio_ctx x n_audio_state), is kept: encode_from(l, (*block_inputs)[l]) resumes there with
  // the same result.
  WhisperAudioState encode(const std::vector<float>& samples, int threads = 0,
                           std::vector<std::vector<float>>* block_inputs = nullptr) const;
  // The convolutions and positional embedding: the input of encoder block 0.
  std::vector<float> encoder_input(const std::vector<float>& samples, int threads = 0) const;
  // The encoder from block `first_block` (0..n_audio_layer) on its input `x`; throws
  // std::invalid_argument for another block or size.
  WhisperAudioState encode_from(int first_block, std::vector<float> x, int threads = 0,
                                std::vector<std::vector<float>>* block_inputs = nullptr) const;
  // Greedy decoding after prompt(); with step_logits, the raw logits (n_vocab, before any token is
  // suppressed) of every step are appended: tokens.size() + 1 rows when <|endoftext|> ends it.
  WhisperTranscript decode_greedy(const WhisperAudioState& audio, int threads = 0, int max_tokens = 224,
                                  std::vector<float>* step_logits = nullptr) const;
  // Teacher forcing: the decoder reads `tokens` (prompt included) one by one; row i of the result
  // (n_vocab logits each) is its prediction after tokens[0..i], so it scores tokens[i + 1].
  std::vector<float> forced_logits(const WhisperAudioState& audio, const std::vector<int>& tokens,
                                   int threads = 0) const;

  // <|startoftranscript|> [<|en|> <|transcribe|> when multilingual] <|notimestamps|>.
  std::vector<int> prompt() const;
  int eot() const;  // <|endoftext|>
  int n_vocab() const;
  int n_audio_ctx() const;
  const std::vector<std::string>& vocab() const;

  // Measurement probes (plan/whisper_measure.h): the matrix weight `name` (a 2-D weight or the token
  // embedding) reads `values` instead of its stored values until the overrides are cleared:
  // the tensor stored in another type, dequantized (rows x row length, as in the file). Its
  // product then takes F32 inputs, as for a quantized weight in a file. Throws
  // std::invalid_argument for an unknown name or another size.
  void set_weight_override(const std::string& name, std::vector<float> values);
  void clear_weight_overrides();

  // Installs (or, with an empty function, removes) the observer of every matrix product's input.
  void set_activation_observer(WhisperActivationObserver observer) { observer_ = std::move(observer); }

 private:
  struct Impl;
  struct Decoder;
  struct Overrides;
  std::shared_ptr<const Impl> impl_;
  std::shared_ptr<const Overrides> overrides_;
  WhisperActivationObserver observer_;
};

}  // namespace mixq
