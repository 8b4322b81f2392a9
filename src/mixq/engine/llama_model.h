// The LLaMA-family graph, read top to bottom: embeddings, per layer RMSNorm -> attention (RoPE,
// grouped-query, KV cache) -> residual -> RMSNorm -> SwiGLU FFN -> residual, final norm, output
// head. Weights stay in their stored types inside the memory-mapped GGUF; the shared ops do the
// rest (engine/matmul.h, engine/attention.h).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "mixq/engine/attention.h"
#include "mixq/engine/model.h"
#include "mixq/io/gguf.h"

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

// Reads the llama.* hyperparameters of f and checks each against the others and the tensors
// (llama_hparams.cpp lists the rules). Throws std::runtime_error naming the key, the file and
// what was expected.
LlamaHParams read_llama_hparams(const GgufFile& f);

class LlamaModel : public Model {
 public:
  // Throws std::runtime_error naming what is missing (architecture, keys, tensors, shapes).
  explicit LlamaModel(const GgufFile& file);

  const LlamaHParams& hparams() const { return hp_; }

  std::string architecture() const override { return "llama"; }
  int n_vocab() const override { return hp_.n_vocab; }
  int n_layer() const override { return hp_.n_layer; }
  int layer_state_width() const override { return hp_.n_embd; }
  int max_context() const override { return hp_.n_ctx_train; }
  std::vector<WeightUse> weights() const override;
  std::string state_shape() const override;
  std::unique_ptr<Context> new_context(int n_ctx, int n_threads) const override;

  struct Layer {
    const GgufTensor *attn_norm, *wq, *wk, *wv, *wo, *ffn_norm, *gate, *up, *down;
  };
  const GgufTensor* token_embd = nullptr;
  const GgufTensor* output_norm = nullptr;
  const GgufTensor* output = nullptr;  // token_embd when the model ties them
  std::vector<Layer> layers;

 private:
  LlamaHParams hp_;
};

// One sequence's state: the KV cache and scratch buffers.
class LlamaContext : public Context {
 public:
  LlamaContext(const LlamaModel& model, int n_ctx, int n_threads);

  const std::vector<float>& eval(const std::vector<int32_t>& tokens, bool all_logits) override;
  const std::vector<float>& eval_tail(const std::vector<int32_t>& tokens, int first) override;
  const std::vector<float>& eval_from_layer(int start, const float* x, int n, bool all_logits) override;
  const std::vector<float>& eval_from_layer_tail(int start, const float* x, int n, int first) override;
  const std::vector<float>& eval_blocks(int start, int stop, const float* x, int n) override;
  void reset() override {
    n_past_ = 0;
    mark_ = -1;
  }
  // The KV cache past p is dropped by position: nothing to copy.
  void mark_rollback() override { mark_ = n_past_; }
  void rollback(int p) override {
    check_rollback(mark_, p);
    n_past_ = p;
  }
  ContextState export_state() const override;
  void import_state(const ContextState& state) override;
  void set_attention(AttentionMode mode) override { attention_ = mode; }
  // On: kLlamaCppF16; off: kF32.
  void set_f16_attention(bool on) { attention_ = on ? AttentionMode::kLlamaCppF16 : AttentionMode::kF32; }

 private:
  void rope(float* v, int n_heads, int pos) const;
  // Layers start .. n_layer-1 on x_ (n tokens at n_past_), then the output norm and head on the
  // tokens from first_logit on (every_token: the caller asked for every token's logits, which
  // head_matmul needs to emulate a batch's numerics).
  const std::vector<float>& run_layers(int start, int n, int first_logit, bool every_token);
  // With state_only: layers start .. stop-1 only, then the state entering block stop is returned
  // (blocks_out_) and the context reset (eval_blocks).
  const std::vector<float>& run_layers(int start, int stop, int n, int first_logit, bool every_token, bool state_only);
  // eval_from_layer and its tail form: the checks, then run_layers.
  const std::vector<float>& eval_from_layer_tail(int start, const float* x, int n, int first, bool every_token);

  const LlamaModel& llama_;
  AttentionMode attention_ = AttentionMode::kLlamaCppF16;
  int mark_ = -1;
  KvCache kv_;
  std::vector<float> logits_;
  std::vector<float> rope_inv_freq_;
  // Per-batch buffers, kept between calls so decoding allocates nothing per token.
  std::vector<float> x_, xn_, q_, k_, v_, att_, tmp_, gate_, up_;
  std::vector<std::vector<float>> norms_;  // decoded norm weights: per layer attn, ffn; then output
};

}  // namespace mixq
