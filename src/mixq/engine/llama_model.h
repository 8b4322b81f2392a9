// The LLaMA-family forward pass, read top to bottom: embeddings, per layer RMSNorm -> attention
// (RoPE, grouped-query, KV cache) -> residual -> RMSNorm -> SwiGLU FFN -> residual, final norm,
// output head. Weights stay in their stored types inside the memory-mapped GGUF; the matrix
// product dequantizes one weight row at a time and applies it to every token of the batch.
//
// This is the reference path (issue 4 adds the per-type dot kernels with 8-bit activations).
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <unordered_map>

#include "mixq/engine/kernels.h"
#include "mixq/formats/outliers.h"
#include "mixq/io/gguf.h"
#include "mixq/util/thread_pool.h"

namespace mixq {

struct LlamaHParams {
  int n_embd = 0, n_layer = 0, n_head = 0, n_head_kv = 0, n_ff = 0, n_vocab = 0, n_ctx_train = 0;
  int n_rot = 0;  // rotary dimensions per head
  float rope_freq_base = 10000.0f;
  float rms_eps = 1e-5f;
  bool rope_neox = false;  // NeoX ordering (rotate halves) instead of adjacent pairs
  int head_dim() const { return n_embd / n_head; }
  int kv_dim() const { return head_dim() * n_head_kv; }
};

class LlamaModel {
 public:
  // Throws std::runtime_error naming what is missing (architecture, keys, tensors, shapes).
  explicit LlamaModel(const GgufFile& file);

  const LlamaHParams& hparams() const { return hp_; }
  const GgufFile& file() const { return file_; }

  struct Layer {
    const GgufTensor *attn_norm, *wq, *wk, *wv, *wo, *ffn_norm, *gate, *up, *down;
  };
  const GgufTensor* token_embd = nullptr;
  const GgufTensor* output_norm = nullptr;
  const GgufTensor* output = nullptr;  // token_embd when the model ties them
  std::vector<Layer> layers;

  // The outlier columns kept in F16 beside a weight (quantize --outliers), or null.
  const OutlierColumns* outliers_of(const GgufTensor& w) const {
    const auto it = outliers_.find(&w);
    return it == outliers_.end() ? nullptr : &it->second;
  }

 private:
  std::unordered_map<const GgufTensor*, OutlierColumns> outliers_;
  const GgufFile& file_;
  LlamaHParams hp_;
};

// Attention numerics. kLlamaCppF16 (the default): what llama.cpp's CPU backend computed for the
// shared reference figures (F16 KV cache; flash attention with F16 Q and F16 value accumulation,
// position by position), so perplexity figures compare digit for digit. kTiled: F16 KV cache, F32
// flash attention over tiles of 64 positions (newer llama.cpp builds). kF32: F32 KV
// cache and plain F32 softmax (the math reference that tests compare with numpy).
enum class AttentionMode { kLlamaCppF16, kTiled, kF32 };
// Parses "f16", "tiled" or "f32"; throws std::runtime_error naming the choices.
AttentionMode parse_attention_mode(const std::string& name);

// One sequence's state: the KV cache and scratch buffers.
class LlamaContext {
 public:
  LlamaContext(const LlamaModel& model, int n_ctx, int n_threads);

  // Runs tokens at positions [n_past, n_past + n) and returns their logits (n x n_vocab,
  // row-major) when all_logits, else only the last token's.
  const std::vector<float>& eval(const std::vector<int32_t>& tokens, bool all_logits);
  void reset() { n_past_ = 0; }
  void set_attention(AttentionMode mode) { attention_ = mode; }
  // The kernel set (default: kernels::best_kernels(), which MIXQ_KERNELS can override).
  void set_kernels(const kernels::KernelSet& k) { kernels_ = &k; }
  const kernels::KernelSet& kernel_set() const { return *kernels_; }
  // On: kLlamaCppF16; off: kF32.
  void set_f16_attention(bool on) { attention_ = on ? AttentionMode::kLlamaCppF16 : AttentionMode::kF32; }
  // Called before every matrix product with the weight and its input (n_tokens rows of the
  // weight's row length, F32): what an importance matrix collects. Null: no observer.
  using MatmulObserver = std::function<void(const GgufTensor& weight, const float* x, int n_tokens)>;
  void set_matmul_observer(MatmulObserver obs) { observer_ = std::move(obs); }
  // Called with the residual stream entering each layer l (n_tokens x n_embd) and, with
  // l = n_layer, entering the output norm: what `eval_from_layer` restarts from.
  using LayerObserver = std::function<void(int layer, const float* x, int n_tokens)>;
  void set_layer_observer(LayerObserver obs) { layer_observer_ = std::move(obs); }
  // Evaluates a fresh sequence (positions 0 .. n-1; the context must be empty or reset) from layer
  // `start` (0 .. n_layer) with x (n x n_embd), the residual stream entering that layer, as a
  // layer observer saw it. Layers before `start` are skipped: a model that differs from another
  // only from layer `start` on gives the same logits as a full eval, for a fraction of the work.
  const std::vector<float>& eval_from_layer(int start, const float* x, int n, bool all_logits);
  int n_past() const { return n_past_; }
  int n_ctx() const { return n_ctx_; }
  int n_vocab() const { return model_.hparams().n_vocab; }

 private:
  // y (n_tokens x rows of w) = x (n_tokens x row length) times w's rows, with the per-type kernels.
  void matmul(const GgufTensor& w, const float* x, int n_tokens, float* y);
  // Activations prepared for one format, reused by every matmul that reads the same input.
  const kernels::PreparedActs& prepared(ActFormat f, const float* x, int n_tokens, int64_t n);
  void invalidate_prepared() { for (auto& p : prepared_) p.valid = false; }
  void rope(float* v, int n_heads, int pos) const;
  // Layers start .. n_layer-1 on x_ (n tokens at n_past_), then the output norm and head.
  const std::vector<float>& run_layers(int start, int n, bool all_logits);

  const LlamaModel& model_;
  int n_ctx_;
  int n_past_ = 0;
  int kv_stride_ = 0;  // K cache row length: n_ctx rounded up to whole attention tiles
  AttentionMode attention_ = AttentionMode::kLlamaCppF16;
  MatmulObserver observer_;
  LayerObserver layer_observer_;
  ThreadPool pool_;
  std::vector<float> k_cache_, v_cache_;  // [layer][pos][kv_dim]
  std::vector<float> logits_;
  std::vector<float> rope_inv_freq_;
  const kernels::KernelSet* kernels_;
  struct PreparedSlot {
    kernels::PreparedActs acts;
    const float* source = nullptr;
    bool valid = false;
  };
  PreparedSlot prepared_[kActFormats];  // one per ActFormat
  // A weight with outlier columns: its input with those entries zeroed, prepared for it alone.
  std::vector<float> x_masked_;
  kernels::PreparedActs masked_acts_;
  // Per-batch buffers, kept between calls so decoding allocates nothing per token.
  std::vector<float> x_, xn_, q_, k_, v_, att_, tmp_, gate_, up_;
  std::vector<std::vector<float>> norms_;  // decoded norm weights: per layer attn, ffn; then output
};

}  // namespace mixq
