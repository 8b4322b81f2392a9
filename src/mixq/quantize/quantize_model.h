// Quantizing a whole model: plan every tensor's type with the policy, then stream the tensors
// through the quantizers into a new GGUF.
//
// Memory: the input is memory-mapped; tensors are processed one at a time, each split into row
// chunks that the thread pool quantizes in parallel, so peak memory is about one tensor's output
// plus one chunk of float rows per thread, whatever the model's size.
#pragma once

#include <atomic>
#include <filesystem>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "mixq/calib/imatrix.h"
#include "mixq/formats/calibration.h"
#include "mixq/io/gguf.h"
#include "mixq/policy/policy.h"

namespace mixq {

struct QuantizeProgress {
  size_t index = 0, total = 0;      // tensors done (after this one) / all
  const TensorPlan* plan = nullptr;
  double seconds = 0;               // since the start
};

struct QuantizeOptions {
  PolicyOptions policy;
  std::string type_label;           // what the user asked for ("Q4_K_M", "nf4"), recorded in metadata
  int threads = 0;                  // <= 0: all cores
  const ImportanceMatrix* imatrix = nullptr;
  Calibration calibration;          // --calib: range choice for the formats that offer one
  // --outliers K [--outlier-tensors REGEX]: keep the K columns of largest importance-weighted
  // magnitude of every quantized 2-D matrix (that the regex finds) in F16 beside it
  // (formats/outliers.h). 0: none.
  int outlier_columns = 0;
  std::string outlier_tensors;      // RE2 pattern, searched in the tensor name; empty: every matrix
  // A plan's outlier columns per tensor (mixq plan over a measurement with outlier candidates):
  // these tensors get exactly this many, the others none. Not combined with outlier_columns.
  std::map<std::string, int> plan_outliers;
  std::function<void(const QuantizeProgress&)> on_progress;
  const std::atomic<bool>* cancel = nullptr;  // set (e.g. by SIGINT) to stop; no output is left
};

struct QuantizeReport {
  std::vector<TensorPlan> plans;
  int64_t parameters = 0;
  uint64_t input_tensor_bytes = 0, output_tensor_bytes = 0;
  uint64_t output_file_bytes = 0;   // the whole file (planned for a dry run)
  uint64_t outlier_bytes = 0;       // of output_tensor_bytes: the outlier columns' companion tensors
  double seconds = 0;
  int threads = 1;
  std::vector<std::string> warnings;

  double output_bpw() const { return parameters ? 8.0 * output_tensor_bytes / parameters : 0; }
  double input_bpw() const { return parameters ? 8.0 * input_tensor_bytes / parameters : 0; }
  std::string to_text() const;
  nlohmann::ordered_json to_json() const;
};

class QuantizeCancelled : public std::runtime_error {
 public:
  QuantizeCancelled() : std::runtime_error("interrupted: no output was written") {}
};

// What the policy knows of a GGUF model: architecture keys, else inferred from tensor names.
ModelInfo model_info_from_gguf(const GgufFile& f, const std::vector<TensorDesc>& tensors);
std::vector<TensorDesc> tensor_descs(const GgufFile& f);

// The plan only (--dry-run): types, reasons, sizes; nothing is written.
QuantizeReport plan_model(const GgufFile& in, const QuantizeOptions& opts);
// An upper bound of the header (unpadded, without mixq.extension_types) that quantize_model writes
// for `in` with a plan (PolicyOptions::plan, labels of at most 32 characters) and this importance
// matrix: what `mixq plan` budgets for the header.
uint64_t plan_mode_header_bytes(const GgufFile& in, const ImportanceMatrix* imatrix);

// Plans, quantizes and writes `out` (temp file + rename). Throws PolicyError, GgufError,
// QuantizeCancelled; on any error no file is left at `out`.
QuantizeReport quantize_model(const GgufFile& in, const std::filesystem::path& out, const QuantizeOptions& opts);

}  // namespace mixq
