// Collecting an importance matrix the way llama-imatrix does, and writing it in llama.cpp's two
// formats.
//
// Collection: the text is tokenized once (BOS first when the vocabulary adds one) and cut into
// chunks of n_ctx tokens, exactly as for perplexity (eval/chunks.h: split_text; the first token
// of every chunk becomes BOS when the vocabulary adds BOS). Each chunk is evaluated as a fresh
// sequence and every matrix product of the forward pass is observed: for the weight it multiplies,
// every input row (token) adds x[j]^2 to column j's sum (a float running sum, as llama-imatrix
// keeps it, so the files agree to ~1e-5; or exact double sums) and 1 to the token count. Like
// llama-imatrix, only the "blk.*" matrices are collected (output.weight too with process_output;
// a head tied to token_embd.weight is never collected), and products of fewer than 16 tokens are
// ignored. Perplexity is computed on the side, as llama-imatrix prints it (second half of each
// chunk, as llama-perplexity).
//
// GGUF file (llama.cpp's imatrix format, what llama-imatrix writes by default): keys, in this
// order, general.type = "imatrix", imatrix.datasets (array of strings: the text files),
// imatrix.chunk_count (u32), imatrix.chunk_size (u32); then for each tensor, sorted by name,
// "<name>.in_sum2" (F32, one sum of squares per column, not divided; a 1-D tensor [n_per_row]
// for one matrix, [n_per_row, n_matrices] for merged experts) and "<name>.counts" (F32, the token
// count of each matrix: [1] or [1, n_matrices]).
//
// Legacy .dat file (--output-format dat): i32 entry count; per entry (sorted by name) i32 name
// length, name, i32 ncall = ceil(max count / chunk_size), i32 nval, f32 values[nval] =
// sum / count * ncall; then i32 chunk count, i32 length and the last dataset's name.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "mixq/calib/imatrix.h"
#include "mixq/engine/model.h"
#include "mixq/engine/tokenizer.h"

namespace mixq {

// Accumulates the squared inputs of matrix products (install observer() on a Context).
class ImatrixCollector {
 public:
  // f32_sums: keep the running sums in float, rounding after every token, as llama-imatrix does
  // (its figures then compare digit for digit; over 300k tokens that float rounding moves the sums
  // by up to ~1e-3 relative). Off: double sums, exact to float precision.
  explicit ImatrixCollector(bool process_output = false, bool f32_sums = true)
      : process_output_(process_output), f32_sums_(f32_sums) {}

  // Whether llama-imatrix collects a product of `weight` over n_tokens rows.
  bool collects(const std::string& weight, int n_tokens) const;
  // Adds one product's input rows (n_tokens x n_per_row, F32); ignored when !collects().
  void add(const GgufTensor& weight, const float* x, int n_tokens);
  MatmulObserver observer() {
    return [this](const GgufTensor& w, const float* x, int n) { add(w, x, n); };
  }

  struct Entry {
    std::vector<double> sum2;  // per column (float values when f32_sums)
    int64_t count = 0;         // rows (tokens) added
  };
  const std::map<std::string, Entry>& entries() const { return entries_; }

  // The collected sums as an importance matrix (sums and means filled).
  ImportanceMatrix matrix(int64_t chunk_count, int64_t chunk_size, std::vector<std::string> datasets) const;

 private:
  bool process_output_;
  bool f32_sums_;
  std::map<std::string, Entry> entries_;
};

struct ImatrixOptions {
  int n_ctx = 512;
  int max_chunks = 0;  // 0: all
  int threads = 0;     // 0: all cores
  bool process_output = false;  // also collect output.weight (llama-imatrix --process-output)
  bool compute_ppl = true;      // llama-imatrix --no-ppl turns it off
  bool f32_sums = true;         // float running sums as llama-imatrix (see ImatrixCollector)
  std::vector<std::string> datasets;  // recorded in imatrix.datasets (the text files' names)
  // Called after every chunk with the running perplexity (0 when !compute_ppl).
  std::function<void(int done, int total, double ppl)> on_chunk;
};

struct ImatrixResult {
  ImportanceMatrix matrix;
  int chunks = 0;
  int64_t tokens = 0;              // tokens evaluated (chunks x n_ctx)
  int64_t scored_tokens = 0;       // perplexity: tokens scored
  double ppl = 0, ppl_error = 0;   // "Final estimate: PPL = X +/- Y"
  double seconds = 0;
};

// Throws std::runtime_error when the text is shorter than two contexts, n_ctx is below 16, or a
// token is outside the model's vocabulary.
ImatrixResult collect_imatrix(const Model& model, const Tokenizer& tok, const std::string& text,
                              const ImatrixOptions& opts);

// Write llama.cpp's formats (see the top of this file). Both need m.sums (a matrix collected or
// read from a GGUF imatrix; a legacy .dat file keeps only means) and throw std::runtime_error
// otherwise. The GGUF writer writes a temporary file and renames it into place.
void write_imatrix_gguf(const ImportanceMatrix& m, const std::filesystem::path& path);
void write_imatrix_dat(const ImportanceMatrix& m, const std::filesystem::path& path);

}  // namespace mixq
