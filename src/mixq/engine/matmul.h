// The matrix product every architecture uses: y (n_tokens x rows of w) = x (n_tokens x row
// length) times w's rows, for any weight type, through the per-type kernels (engine/kernels.h).
//
// - Activations are prepared once per input (F16/BF16 rounding, Q8_0 / Q8_1 / Q8_K blocks as ggml
//   quantizes them) and reused by every product that reads the same input until invalidate().
// - Each thread task decodes (or unpacks) a tile of weight rows once and applies it to every
//   token: for an integer type with a panel kernel (kernels.h, PackedPanel) 32 rows repacked into
//   2 panels of 16, 4 tokens per kernel call; otherwise 8 rows, 4 rows x 2 tokens per call.
// - Decode (at most kRowDotMaxTokens tokens) of a type with an in-place kernel (kernels.h, RowDotFn)
//   reads each row as stored instead: no unpacking, one pass over the weight's bytes.
// - Products under kInlineMacs multiply-accumulates run on the calling thread alone (a wake-up of
//   the pool costs more than they do). With set_inline_small_batches (RWKV's contexts), so do
//   batches (more than kRowDotMaxTokens tokens) of a matrix under kInlineBatchWeights entries:
//   between the batched products of a recurrent model (RWKV's WKV steps through the tokens on one
//   thread) the workers have gone to sleep, so each product pays a full wake-up, and a matrix this
//   small gives each thread a few dozen rows: on the tiny RWKV-7 (64 x 64 to 64 x 256 matrices)
//   prompts ran no faster with 2 threads than with one on a quiet machine, and with 40% more CPU
//   time (docs/BENCHMARKS.md, RWKV speed). LLaMA contexts keep the pool for them: between their
//   products the attention keeps the workers busy, and stories260K's whole-file perplexity (64 x
//   64 to 64 x 172 matrices) took 1.1-1.4x the wall time with the rule on. Which thread computes a
//   row never changes its value, so these thresholds change no result.
// - Outlier columns (formats/outliers.h): the quantized rows see the input without the outlier
//   entries; those go through the F16 columns in F32 after the main product.
// - An observer sees every (weight, input) pair first (importance matrices); overrides replace a
//   weight by another tensor of the same shape (measurement probes).
#pragma once

#include <cstdint>
#include <functional>
#include <initializer_list>
#include <unordered_map>
#include <vector>

#include "mixq/engine/kernels.h"
#include "mixq/io/outlier_columns.h"
#include "mixq/io/gguf.h"
#include "mixq/util/thread_pool.h"

namespace mixq {

class Model;

// Called before every matrix product with the weight (as the model names it, before overrides)
// and its input (n_tokens rows of the weight's row length, F32).
using MatmulObserver = std::function<void(const GgufTensor& weight, const float* x, int n_tokens)>;

inline constexpr int kRowDotMaxTokens = 3;
inline constexpr int64_t kInlineMacs = int64_t{1} << 18;
inline constexpr int64_t kInlineBatchWeights = int64_t{1} << 16;

class MatMul {
 public:
  MatMul(const Model& model, ThreadPool& pool);

  void operator()(const GgufTensor& w, const float* x, int n_tokens, float* y);
  // Several products of one input (a layer's Q, K and V; gate and up): y_i = x times w_i's rows.
  // Decode runs all their row blocks in one parallel loop (one wake-up, and the threads even out
  // over the sum of the rows instead of each small product alone); the results are bit-identical to
  // calling operator() on each in turn, which is what other batches and outlier columns do.
  struct Product {
    const GgufTensor* w;
    float* y;
  };
  void operator()(std::initializer_list<Product> products, const float* x, int n_tokens);
  // Rows `ids` of an embedding matrix, decoded to F32 (n x row length), outlier columns restored.
  void get_rows(const GgufTensor& w, const int32_t* ids, int n, float* out);
  // The input buffers may have changed: prepare activations again on the next product.
  void invalidate() {
    for (auto& p : prepared_) p.valid = false;
  }

  void set_kernels(const kernels::KernelSet& k) { kernels_ = &k; }
  const kernels::KernelSet& kernel_set() const { return *kernels_; }
  void set_observer(MatmulObserver obs) { observer_ = std::move(obs); }
  bool has_observer() const { return static_cast<bool>(observer_); }
  // Which path a product takes depends on its batch size (above), and the paths round
  // differently. With b > 0 every product takes the path a batch of b tokens would, so each
  // token's result is the one it gets in a batch of b (b = 1: exactly a lone token's); 0 (the
  // default) follows the actual batch. Speculative verification and prefill hand-over use it to
  // keep their logits bit-identical to evaluating the sequence as the target alone does.
  void set_numerics_batch(int b) { numerics_batch_ = b; }
  int numerics_batch() const { return numerics_batch_; }
  // Batched products of matrices under kInlineBatchWeights entries on the calling thread (above).
  void set_inline_small_batches(bool on) { inline_small_batches_ = on; }
  void override_weight(const GgufTensor& original, const GgufTensor* replacement);
  // The tensor read in place of w (w itself unless overridden).
  const GgufTensor& resolve(const GgufTensor& w) const {
    if (overrides_.empty()) return w;
    const auto it = overrides_.find(&w);
    return it == overrides_.end() ? w : *it->second;
  }

 private:
  const kernels::PreparedActs& prepared(ActFormat f, const float* x, int n_tokens, int64_t n);
  // The in-place kernel w's product of n_tokens takes, or null (another path).
  kernels::RowDotFn decode_kernel(const GgufTensor& w, int n_tokens) const;
  int64_t decode_rows_per_block(int64_t rows, bool inline_run) const;
  // Rows [r0, r1) of w's decode product (r0 a multiple of 4): interleaved (packed: w's bytes are
  // in engine/repack.h's layout) by the set's four-row kernel, else row by row in the file's
  // layout (unpacked first where w is interleaved but the set has no four-row kernel for it).
  void decode_rows(kernels::RowDotFn row_dot, const GgufTensor& w, bool packed, const kernels::PreparedActs& acts,
                   int n_tokens, int64_t r0, int64_t r1, float* y) const;

  const Model& model_;
  ThreadPool& pool_;
  const kernels::KernelSet* kernels_;
  MatmulObserver observer_;
  int numerics_batch_ = 0;
  bool inline_small_batches_ = false;
  std::unordered_map<const GgufTensor*, const GgufTensor*> overrides_;
  struct PreparedSlot {
    kernels::PreparedActs acts;
    const float* source = nullptr;
    bool valid = false;
  };
  PreparedSlot prepared_[kActFormats];  // one per ActFormat
  // A weight with outlier columns: its input with those entries zeroed, prepared for it alone.
  std::vector<float> x_masked_;
  kernels::PreparedActs masked_acts_;
  struct RowBlock {
    int product;
    int64_t r0, r1;
  };
  std::vector<RowBlock> row_blocks_;  // the grouped decode's tasks
};

}  // namespace mixq
