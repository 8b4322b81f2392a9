// Importance matrices for Whisper (mixq imatrix on a whisper.cpp file): the per-column mean of
// squared inputs of every matrix product, as llama-imatrix defines them, collected while the model
// transcribes a spoken calibration set (eval/whisper_eval.h's list format; the references are not
// used). Every weight that whisper.cpp's quantize may quantize is covered: the encoder's attention
// and MLP matrices (each window's n_audio_ctx rows, the silence padding of the 30 s window
// included, as inference sees it), the decoder's self- and cross-attention (the cross-attention
// keys and values see the encoder's output rows, the queries and outputs the decoder's tokens),
// MLP, and the token embedding as the output projection (the decoder's final hidden states). The
// decoder reads the prompt and the model's own greedy transcript. Sums are kept in double.
// Written as llama.cpp's GGUF imatrix (calib/imatrix_collect.h): chunk_count = utterances,
// chunk_size = n_audio_ctx.
#pragma once

#include <functional>

#include "mixq/calib/imatrix.h"
#include "mixq/engine/whisper_model.h"
#include "mixq/eval/whisper_eval.h"

namespace mixq {

struct WhisperImatrixResult {
  ImportanceMatrix matrix;
  int utterances = 0;
  int64_t decoder_tokens = 0;
  double seconds = 0;
};

// `model`'s activation observer is replaced during the call and removed after it.
WhisperImatrixResult collect_whisper_imatrix(WhisperModel& model, const std::vector<WhisperTestItem>& items,
                                             int threads = 0,
                                             const std::function<void(size_t done, size_t total)>& on_utterance = {});

}  // namespace mixq
