// A Whisper speech-to-text forward pass over whisper.cpp model files (any types they hold, mixed
// included: each weight is dequantized to F32 at load), greedy decoding without timestamps.
//
// Encoder: conv1 (k 3, pad 1) + GELU, conv2 (k 3, stride 2, pad 1) + GELU, + positional embedding,
// pre-LN blocks (self-attention, GELU MLP), ln_post. Decoder: token + positional embedding, pre-LN
// blocks (causal self-attention with a KV cache, cross-attention to the encoder output, MLP), ln,
// logits against the token embedding. Prompt: <|startoftranscript|> [<|en|> <|transcribe|> for
// multilingual models] <|notimestamps|>; every special token but <|endoftext|> is suppressed, and
// <|endoftext|> and a lone space at the first step. One 30 s window (longer audio is cut).
#pragma once

#include <string>
#include <vector>

#include "mixq/io/whisper_file.h"

namespace mixq {

struct WhisperTranscript {
  std::string text;         // the tokens' bytes, concatenated
  std::vector<int> tokens;  // generated ids, <|endoftext|> excluded
};

class WhisperModel {
 public:
  // Dequantizes every tensor; throws for header-only files.
  explicit WhisperModel(const WhisperFile& f);
  // samples: 16 kHz mono in [-1, 1) (engine/whisper_audio.h). threads <= 0: all cores.
  WhisperTranscript transcribe(const std::vector<float>& samples, int threads = 0, int max_tokens = 224) const;

 private:
  struct Impl;
  std::shared_ptr<const Impl> impl_;
};

}  // namespace mixq
