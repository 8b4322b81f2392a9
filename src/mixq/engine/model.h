// The model interface: what every command (perplexity, kld, imatrix, measure, generate) needs from
// an architecture, and nothing more. An architecture is one file pair (llama_model.*, rwkv_model.*,
// ...) with a Model (hyperparameters and tensor views into the memory-mapped file, validated on
// load) and a Context (one sequence's state: a KV cache for attention models, a recurrent state for
// RWKV). The registry (engine/registry.h) picks the architecture from `general.architecture`.
//
// The ops every architecture shares live in their own files: the matrix product with its
// activation preparation, threads, outlier columns and observers (engine/matmul.h), and attention
// with its KV cache (engine/attention.h). A graph file then reads as the graph alone.
//
// Layers. A model is a stack of n_layer() blocks between an input (embedding) and an output head.
// What crosses a block boundary is layer_state_width() floats per token: the residual stream for
// LLaMA, the residual stream plus what later blocks read from block 0 for RWKV-7. A layer
// observer sees that state entering each block; eval_from_layer restarts a fresh sequence from
// it. Measurement probes use this to rerun only the blocks a changed tensor can influence.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "mixq/engine/attention.h"
#include "mixq/engine/kernels.h"
#include "mixq/engine/matmul.h"
#include "mixq/io/outlier_columns.h"
#include "mixq/io/gguf.h"
#include "mixq/util/thread_pool.h"

namespace mixq {

class Context;

// Activation precision emulated on the CPU (`--activations`): every matrix product's input is
// rounded to this format before the product (the kernels then prepare it as they always do).
// kF32: no rounding (the default); kF16 / kBF16: round to nearest even; kQ8: blocks of 32
// along each row scaled by max|x| / 127 (the scale rounded to F16) and rounded to integers, as
// ggml's Q8_0 quantizes activations.
enum class ActivationPrecision { kF32, kF16, kBF16, kQ8 };
// Parses "f32", "f16", "bf16" or "q8"; throws std::runtime_error naming the choices.
ActivationPrecision parse_activation_precision(const std::string& name);
// The precision new contexts start with (a command's --activations; contexts can override it).
void set_default_activation_precision(ActivationPrecision p);
ActivationPrecision default_activation_precision();
// x (n values, rows of row_length) rounded to p into out (out may be x).
void round_activations(ActivationPrecision p, const float* x, size_t n, size_t row_length, float* out);

// A sequence's state lifted out of one context to continue in another whose model has the same
// state_shape(): a prompt prefilled with a lower-precision file of the same model, generation
// continuing with the main file (`generate --prefill-model`). The KV cache of positions
// [0, n_past) or the recurrent state, in F32.
struct ContextState {
  std::string shape;  // Model::state_shape() of the model it came from
  int n_past = 0;
  std::vector<std::vector<float>> parts;
};

// A weight matrix the graph multiplies by (or looks rows up in), and the first block whose output
// it changes: 0 .. n_layer-1, or n_layer for the output head.
struct WeightUse {
  const GgufTensor* tensor = nullptr;
  int layer = 0;
};

class Model {
 public:
  explicit Model(const GgufFile& file) : file_(file) {}
  virtual ~Model() = default;
  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;

  const GgufFile& file() const { return file_; }
  // The `general.architecture` value this model was loaded as ("llama", "rwkv7", ...).
  virtual std::string architecture() const = 0;
  virtual int n_vocab() const = 0;
  virtual int n_layer() const = 0;
  // Floats per token crossing a block boundary (see the header comment).
  virtual int layer_state_width() const = 0;
  // The longest sequence a context can hold, or 0 when unbounded (recurrent models).
  virtual int max_context() const { return 0; }
  // Every matrix of the graph with the block it enters (measure's probes, imatrix).
  virtual std::vector<WeightUse> weights() const = 0;
  // What a context's state is made of (architecture, layers, widths), as one line: two models
  // with equal state shapes can take each other's ContextState.
  virtual std::string state_shape() const = 0;
  // A fresh sequence state. n_ctx bounds the tokens it holds (KV-cache models allocate for it).
  virtual std::unique_ptr<Context> new_context(int n_ctx, int n_threads) const = 0;

  // The outlier columns kept in F16 beside a weight (quantize --outliers), or null.
  const OutlierColumns* outliers_of(const GgufTensor& w) const {
    const auto it = outliers_.find(&w);
    return it == outliers_.end() ? nullptr : &it->second;
  }

  // engine/repack.h's four-row interleaved decode layouts, in place: every matrix of weights()
  // whose type has an interleaved kernel in k is rewritten in the file's private mapping
  // (kernels::interleave_in_place: no second copy, the resident size stays the file's), once per
  // mapping however many models load it. Every reader of those bytes asks kernels::interleaved():
  // MatMul's decode path reads the groups, its prefill, get_rows and dequantize_tensor unpack
  // rows. Returns the bytes of this model's matrices in the layout (0 for a parse()d file, whose
  // buffer is not the model's to rewrite). load_model calls it unless MIXQ_REPACK=0.
  size_t repack_for_decode(const kernels::KernelSet& k);

 protected:
  // Reads the outlier companions of every matrix in weights(); derived constructors call it last.
  void load_outliers();

 private:
  const GgufFile& file_;
  std::unordered_map<const GgufTensor*, OutlierColumns> outliers_;
};

// One sequence's state and scratch, bound to one model.
class Context {
 public:
  Context(const Model& model, int n_ctx, int n_threads);
  virtual ~Context() = default;
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;

  // Runs tokens at positions [n_past, n_past + n) and returns their logits (n x n_vocab,
  // row-major) when all_logits, else only the last token's.
  virtual const std::vector<float>& eval(const std::vector<int32_t>& tokens, bool all_logits) = 0;
  // As eval with all_logits, returning the logits of rows [first, n) only ((n - first) x n_vocab),
  // equal to those rows of the full result (perplexity scores a chunk's second half). The default
  // computes every row and copies the tail; architectures skip the head's other rows.
  virtual const std::vector<float>& eval_tail(const std::vector<int32_t>& tokens, int first);
  // Evaluates a fresh sequence (the context must be empty or reset) from block `start`
  // (0 .. n_layer) with x (n x layer_state_width), the state entering that block as a layer
  // observer saw it. A model that differs from another only from block `start` on gives the same
  // logits as a full eval.
  virtual const std::vector<float>& eval_from_layer(int start, const float* x, int n, bool all_logits) = 0;
  // As eval_from_layer, returning the logits of rows [first, n) only ((n - first) x n_vocab, row i
  // being token first + i), equal to those rows of the full result: a measurement probe scores
  // only the second half of each chunk, and the head is a small model's largest matrix. The
  // default computes every row and copies the tail; architectures skip the head's other rows.
  virtual const std::vector<float>& eval_from_layer_tail(int start, const float* x, int n, int first);
  // Evaluates blocks start .. stop-1 only (0 <= start < stop <= n_layer) of a fresh sequence (the
  // context must be empty or reset) from x (n x layer_state_width, the state entering block
  // `start`) and returns the state entering block `stop` (n x layer_state_width), equal to what a
  // layer observer sees there in eval_from_layer: a measurement proxy reads one block's output
  // without the blocks after it and the head. The context is left reset. The default runs the whole
  // model and keeps that state; architectures stop at `stop`.
  virtual const std::vector<float>& eval_blocks(int start, int stop, const float* x, int n);
  // Forgets the sequence (KV cache / recurrent state back to empty).
  virtual void reset() = 0;
  // Rollback (speculative decoding): mark_rollback() remembers the state at n_past(); later
  // rollback(p) with mark <= p <= n_past() returns the context to exactly the state it had after
  // p tokens, as if the tokens past p had never been evaluated (KV-cache models drop cache
  // positions; recurrent models keep a state copy per token evaluated since the mark). The mark
  // stays until the next mark_rollback() or reset(). Throws std::runtime_error for a p outside
  // the marked range.
  virtual void mark_rollback() = 0;
  virtual void rollback(int n_past) = 0;
  // The sequence state, to continue in a context of a model with the same state_shape();
  // import_state throws std::runtime_error naming both shapes when they differ, or when the state
  // does not fit this context.
  virtual ContextState export_state() const = 0;
  virtual void import_state(const ContextState& state) = 0;
  // Activation precision of every matrix product's input (default: the process default).
  void set_activation_precision(ActivationPrecision p) { activations_ = p; }
  ActivationPrecision activation_precision() const { return activations_; }
  // Attention numerics; models without attention ignore it.
  virtual void set_attention(AttentionMode mode) {}

  // The context's threads, idle between evaluations: callers may run their own parallel loops
  // on them there (scoring a chunk's rows) instead of starting more threads.
  ThreadPool& thread_pool() { return pool_; }

  int n_past() const { return n_past_; }
  int n_ctx() const { return n_ctx_; }
  int n_vocab() const { return model_.n_vocab(); }
  const Model& model() const { return model_; }

  // Evaluate as a batch of b tokens would (MatMul::set_numerics_batch): each token's logits are
  // bit-identical to those it gets in a batch of b; 0 (default) follows each eval's own size.
  void set_numerics_batch(int b) { mm_.set_numerics_batch(b); }
  void set_inline_small_batches(bool on) { mm_.set_inline_small_batches(on); }
  int numerics_batch() const { return mm_.numerics_batch(); }
  // The kernel set (default: kernels::best_kernels(), which MIXQ_KERNELS can override).
  void set_kernels(const kernels::KernelSet& k) { mm_.set_kernels(k); }
  const kernels::KernelSet& kernel_set() const { return mm_.kernel_set(); }
  // Called before every matrix product with the weight and its input: what an importance matrix
  // collects. Null: no observer.
  void set_matmul_observer(MatmulObserver obs) { mm_.set_observer(std::move(obs)); }
  // Called with the state entering each block l and, with l = n_layer, entering the head.
  using LayerObserver = std::function<void(int layer, const float* x, int n_tokens)>;
  void set_layer_observer(LayerObserver obs) { layer_observer_ = std::move(obs); }
  // The graph reads `replacement` wherever it reads `original` (same shape, any type): a
  // measurement probe of one tensor in another type, without touching the model. Null restores.
  void override_weight(const GgufTensor& original, const GgufTensor* replacement) {
    mm_.override_weight(original, replacement);
  }

 protected:
  void observe_layer(int layer, const float* x, int n) {
    if (layer_observer_) layer_observer_(layer, x, n);
  }
  // A graph's matrix product: mm_ on x rounded to the activation precision (a rounded copy per
  // input buffer, so the product's per-input preparation cache stays keyed by distinct inputs).
  void matmul(const GgufTensor& w, const float* x, int n, float* y);
  // Several products of one input (MatMul's grouped operator: bit-identical to one by one).
  void matmuls(std::initializer_list<MatMul::Product> products, const float* x, int n);
  // x (n rows of row_length) as the graph's products see it: itself in F32, else its copy rounded
  // to the activation precision.
  const float* graph_input(const float* x, int64_t row_length, int n);
  // The output head's product over `count` rows: every token's (every_token) or fewer (the last
  // token's, or the scored tail's), which a batch of numerics_batch() tokens also computes as a
  // product of `count` rows.
  void head_matmul(const GgufTensor& w, const float* x, int count, bool every_token, float* y);
  // Throws unless n tokens fit after n_past (when the model bounds the context) and n > 0.
  void check_batch(int n) const;
  // Throws unless mark <= p <= n_past (mark < 0: no mark).
  void check_rollback(int mark, int p) const;
  // Throws unless state came from a model of this one's state shape and has parts.size() == parts.
  void check_import(const ContextState& state, size_t parts) const;

  const Model& model_;
  int n_ctx_;
  int n_past_ = 0;
  ThreadPool pool_;
  MatMul mm_;
  LayerObserver layer_observer_;
  ActivationPrecision activations_;
  std::unordered_map<const float*, std::vector<float>> rounded_;  // matmul's rounded copies
  std::vector<float> tail_;  // the default eval_from_layer_tail's and eval_tail's result
  std::vector<float> blocks_out_;  // eval_blocks' result
  // Throws unless 0 <= start < stop <= n_layer, 0 < n <= n_ctx and the context is empty.
  void check_blocks(int start, int stop, int n) const;
};

// Context::set_numerics_batch(b) for as long as this lives; the previous setting comes back after.
class NumericsBatchScope {
 public:
  NumericsBatchScope(Context& c, int b) : c_(c), before_(c.numerics_batch()) { c_.set_numerics_batch(b); }
  ~NumericsBatchScope() { c_.set_numerics_batch(before_); }
  NumericsBatchScope(const NumericsBatchScope&) = delete;
  NumericsBatchScope& operator=(const NumericsBatchScope&) = delete;

 private:
  Context& c_;
  int before_;
};

}  // namespace mixq
