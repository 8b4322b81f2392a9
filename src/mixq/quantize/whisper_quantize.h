// Quantizing whisper.cpp model files (io/whisper_file.h) into whisper.cpp model files, with
// whisper.cpp's quantize rule and mixq's per-tensor rules on top:
//
//  1. Tensors whisper.cpp's quantize leaves alone (anything not 2-D, the conv biases, the two
//     positional embeddings: whisper_quantizes_tensor) keep their stored bytes, except the
//     convolution kernels of an all-F32 input, which become F16: whisper.cpp loads them as F16 in
//     any file that is not all-F32 (its own quantize copies them as F32 and the file then fails to
//     load).
//  2. Every other tensor (the 2-D weights and the token embedding) gets its type in the plan
//     (mixq plan on a Whisper measurement, plan/whisper_measure.h) when it has one, else the type of the first
//     --tensor-type REGEX=TYPE rule whose RE2 regex is found in its name (as llama-quantize reads
//     them), else --token-embedding-type for decoder.token_embedding.weight, else DEFAULT_TYPE.
//  3. Fallback: a type whose blocks do not divide the row (tiny's 384-wide rows
//     with the 256-value k-quants) is replaced by llama.cpp's substitute for it, which whisper.cpp
//     also loads: q2_k, q3_k -> q4_0; q4_k -> q5_0; q5_k -> q5_1; q6_k -> q8_0; f16 where that does
//     not hold the row either (widths that are not a multiple of 32). (whisper.cpp's own quantize
//     has no fallback: it writes truncated rows.)
//
// The header's ftype is DEFAULT_TYPE's. Stock whisper.cpp (commit 233fe1fc9b48) loads every weight
// in that one type and refuses a file where a weight has another (rules or fallbacks that change
// a type): the report says so, and `compat_whisper_cpp` makes it an error instead.
#pragma once

#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "mixq/calib/imatrix.h"
#include "mixq/io/whisper_file.h"
#include "mixq/policy/policy.h"

namespace mixq {

struct WhisperQuantizeOptions {
  TypeId default_type = TypeId::Q8_0;
  std::vector<Rule> rules;                    // --tensor-type, first match wins
  std::map<std::string, TypeId> plan;         // --plan: tensor name -> type, before the rules
  std::optional<TypeId> token_embedding_type;  // decoder.token_embedding.weight
  bool allow_requantize = false;              // accept quantized weights as input
  bool compat_whisper_cpp = false;            // refuse what stock whisper.cpp cannot load
  int threads = 0;
  // Per-column importance (mixq imatrix on a whisper.cpp file) for the quantized weights, by tensor
  // name; a quantized weight it lacks is quantized without (the report warns), one of another
  // row length is an error.
  const ImportanceMatrix* imatrix = nullptr;
};

struct WhisperTensorPlan {
  std::string name;
  std::vector<int64_t> ne;
  TypeId from = TypeId::F32, to = TypeId::F32;
  bool quantized = false;   // rule 2 applied
  std::string reason;       // "default", "--tensor-type ...", "kept", "conv kernel to f16"
  std::string fallback;     // why the requested type was replaced
  uint64_t bytes = 0;
};

struct WhisperQuantizeReport {
  std::vector<WhisperTensorPlan> tensors;
  WhisperHparams hparams;   // as written (ftype set)
  uint64_t input_bytes = 0, output_bytes = 0;  // tensor data
  int64_t parameters = 0;
  bool loads_in_whisper_cpp = true;            // every weight of the header's type
  std::vector<std::string> warnings;
  double seconds = 0;
  std::string to_text() const;
  nlohmann::ordered_json to_json() const;
};

// The decisions only (a dry run). Throws PolicyError for bad requests (types whisper.cpp cannot
// load, quantized input without allow_requantize, mixing under compat_whisper_cpp).
WhisperQuantizeReport plan_whisper_quantize(const WhisperFile& in, const WhisperQuantizeOptions& opts);
// Plans, then writes `out` through an AtomicFile.
WhisperQuantizeReport quantize_whisper(const WhisperFile& in, const std::filesystem::path& out,
                                       const WhisperQuantizeOptions& opts);

}  // namespace mixq
