// `mixq measure` on a whisper.cpp model: the measurement of measure.h (the same JSON, so `mixq
// plan` and `mixq quantize --plan` read it unchanged) for every tensor whisper.cpp's quantize may
// quantize: the encoder's attention and MLP matrices, the decoder's self- and cross-attention and
// MLP matrices, and the token embedding (which is also the output projection).
//
// Errors: as measure.h, the importance-weighted relative squared error of each candidate type
// (the importance matrix of calib/whisper_imatrix.h). Probes: the real loss is the teacher-forced
// decoder KL divergence of eval/whisper_eval.h against the unquantized model on a spoken
// calibration set: the reference model transcribes each utterance greedily once, and a probe
// reads the prompt and those tokens with the one tensor replaced by its probe type, every position
// from the last prompt token on scored. A probe starts where the tensor first acts: an encoder
// block's tensor at that block (the residual stream entering it is cached from the reference
// run), a cross-attention key or value after the encoder (ln_post), every other decoder tensor at
// the decoder, on the reference run's encoder output. The fit through the probes is measure.h's
// (each tensor probed alone).
//
// Sizes: whisper.cpp files have no alignment and a per-tensor header that does not depend on the
// type, so the measurement's alignment is 1, header_bytes is everything in the file but tensor
// data, and fixed_bytes is the data of the tensors quantize keeps (convolution kernels as F16,
// biases, norms, positional embeddings): a plan's file_bytes is the exact size quantize --plan
// writes.
#pragma once

#include <atomic>
#include <functional>
#include <string>
#include <vector>

#include "mixq/calib/imatrix.h"
#include "mixq/eval/whisper_eval.h"
#include "mixq/io/whisper_file.h"
#include "mixq/plan/measure.h"
#include "mixq/plan/measurement.h"

namespace mixq {

struct WhisperMeasureOptions {
  int utterances = 8;  // calibration utterances the probes are scored on (the list's first; 0: all)
  int probes = 2;      // 1 or 2
  int threads = 0;
  int shard = 0, n_shards = 1;  // tensors whose quantizable index modulo n_shards is shard
  int max_tokens = 224;         // of the reference's greedy transcripts
  std::vector<TypeId> types;    // empty: whisper_candidate_types()
  int error_rows = 0;           // as MeasureOptions::error_rows
  const ImportanceMatrix* imatrix = nullptr;  // null: unit weights
  std::string calibration_name, model_name;
  std::function<void(const MeasureProgress&)> on_tensor;
  const std::atomic<bool>* cancel = nullptr;
};

// Every type whisper.cpp loads (io/whisper_file.h's whisper_loads_type), f32 and f16 included.
std::vector<TypeId> whisper_candidate_types();

// The tensors a Whisper measurement covers, in file order: those whisper.cpp's quantize quantizes.
std::vector<std::string> whisper_quantizable_tensors(const WhisperFile& file);

// Throws std::runtime_error for a header-only file, a type whisper.cpp cannot load, an empty
// calibration set or a bad shard; the engine's errors for unreadable audio.
Measurement measure_whisper(const WhisperFile& file, const std::vector<WhisperTestItem>& calibration,
                            const WhisperMeasureOptions& opts);

}  // namespace mixq
