// RWKV-4, RWKV-5.2 and RWKV-7 behind the model interface (engine/model.h), from GGUF files that
// keep rwkv.cpp's tensor names and layouts (convert/rwkv_cpp.h): "emb.weight",
// "blocks.N.att.key.weight", "head.weight", ... with general.architecture rwkv4 / rwkv5 / rwkv7;
// RWKV-7 also in llama.cpp's layout ("token_embd.weight", "blk.N.time_mix_key.weight", ...;
// convert/rwkv_layout.h). RWKV-6 (general.architecture rwkv6) in llama.cpp's layout only, as its
// rwkv6 architecture defines it (hyperparameters and tensors as llama_model_rwkv6 loads them; see
// rwkv6.cpp); `mixq convert --layout llama.cpp` writes RWKV-5.2 files that way. Error messages
// name the tensors as the file does.
//
// Shared by the four generations (this file and rwkv_model.cpp): embedding -> LayerNorm ln0 ->
// per block [LayerNorm ln1 -> time mixing -> residual, LayerNorm ln2 -> channel mixing ->
// residual] -> LayerNorm ln_out -> head. Each block mixes every token with the one before it
// ("token shift"): the LayerNorm output of the last token of a batch is carried to the next
// batch. The time-mixing graphs, one per generation, live in rwkv4.cpp, rwkv5.cpp, rwkv7.cpp.
//
// Numerics follow rwkv.cpp's (the reference logits come from it): LayerNorm eps 1e-5, per-head
// GroupNorm eps 1e-5 (RWKV-5.2) or 64e-5 (RWKV-7), the recurrent state in F32. RWKV-6 follows
// llama.cpp's graph: LayerNorm eps from rwkv6.attention.layer_norm_epsilon (1e-5 when absent),
// GroupNorm eps 64e-5, and the residual stream halved after every rescale_every_n_layers blocks. rwkv.cpp files
// store RWKV-4's decay as -exp(w) and RWKV-5's as exp(-exp(w)) already: the graphs use the stored
// values as they are.
//
// Batches: the inputs of every token's products are known before the recurrence runs (token
// shift only looks back one LayerNorm output), so every matrix product covers the whole batch
// and only the WKV recurrence steps through the tokens one by one.
//
// Layer state (what crosses a block boundary, per token): the residual stream (n_embd floats);
// for RWKV-7 followed by v_first (n_embd floats), the value of block 0 that later blocks mix in
// (zeros entering block 0).
#pragma once

#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "mixq/engine/model.h"
#include "mixq/io/gguf.h"

namespace mixq {

struct RwkvHParams {
  int version = 0;  // 4, 5 (5.2), 6 or 7
  int n_embd = 0, n_layer = 0, n_vocab = 0, n_ff = 0;
  int head_size = 0, n_head = 0;  // RWKV-5/6/7: the channels split into n_head heads of head_size
  // RWKV-7's low-rank widths (decay w, in-context learning rate a, value residual v, gate g).
  int d_w = 0, d_a = 0, d_v = 0, d_g = 0;
  // RWKV-6's low-rank widths: the token-shift LoRA (time_mix_extra_dim, per mix) and the decay
  // LoRA (time_decay_extra_dim); the residual stream is halved after every rescale_every blocks
  // (0: never).
  int d_mix = 0, d_decay = 0, rescale_every = 0;
  float norm_eps = 1e-5f;  // the LayerNorms' eps
};

class RwkvModel : public Model {
 public:
  // Throws std::runtime_error naming the file and the tensor or key that is missing or misshapen.
  explicit RwkvModel(const GgufFile& file);

  const RwkvHParams& hparams() const { return hp_; }

  std::string architecture() const override { return "rwkv" + std::to_string(hp_.version); }
  int n_vocab() const override { return hp_.n_vocab; }
  int n_layer() const override { return hp_.n_layer; }
  int layer_state_width() const override { return hp_.version == 7 ? 2 * hp_.n_embd : hp_.n_embd; }
  int max_context() const override { return 0; }
  std::vector<WeightUse> weights() const override;
  std::string state_shape() const override;
  std::unique_ptr<Context> new_context(int n_ctx, int n_threads) const override;

  // Tensors a generation does not have stay null.
  struct Layer {
    const GgufTensor *ln1_w, *ln1_b, *ln2_w, *ln2_b;
    // Time mixing. RWKV-4/5: time_mix_{k,v,r,g} interpolation vectors; RWKV-4: time_first and
    // time_decay (stored -exp(w)); RWKV-5.2: time_faaaa (bonus u) and time_decay (stored
    // exp(-exp(w))), both [1, head_size, n_head]; RWKV-5/7: ln_x, the per-head GroupNorm.
    const GgufTensor *att_mix_k, *att_mix_v, *att_mix_r, *att_mix_g;
    const GgufTensor *att_time_first, *att_time_decay, *att_time_faaaa;
    const GgufTensor *att_receptance, *att_key, *att_value, *att_output, *att_gate;
    const GgufTensor *att_ln_x_w, *att_ln_x_b;
    // RWKV-7: x_rwkvag [n_embd, 1, 6] (the six token-shift mixes r, w, k, v, a, g), the low-rank
    // pairs w1/w2, a1/a2, v1/v2 (not in block 0), g1/g2 with biases w0, a0, v0, and k_k, k_a, r_k.
    const GgufTensor *x_rwkvag, *w0, *w1, *w2, *a0, *a1, *a2, *v0, *v1, *v2, *g1, *g2, *k_k, *k_a, *r_k;
    // RWKV-6 (llama.cpp's names): time_mix_lerp_x and the five token-shift mixes w, k, v, r, g,
    // either fused ([n_embd, 1, 1, 5]) or as time_mix_lerp_{w,k,v,r,g}; the token-shift LoRA
    // time_mix_w1 [n_embd, 5 d_mix] / time_mix_w2 [d_mix, n_embd, 5]; the decay LoRA
    // time_mix_decay_w1 [n_embd, d_decay] / _w2 [d_decay, n_embd]. time_mix_first (the bonus) is
    // att_time_faaaa, time_mix_decay (log(-log) of the decay) att_time_decay, time_mix_ln ln_x.
    const GgufTensor *lerp_x, *lerp_fused, *lerp_w, *lerp_k, *lerp_v, *lerp_r, *lerp_g;
    const GgufTensor *ddlerp_w1, *ddlerp_w2, *decay_w1, *decay_w2;
    // Channel mixing. RWKV-4/5: time_mix_{k,r} and a receptance; RWKV-7: x_k and no receptance;
    // RWKV-6: x_k, x_r (channel_mix_lerp_{k,r}: x + (prev - x) * lerp) and a receptance.
    const GgufTensor *ffn_mix_k, *ffn_mix_r, *ffn_x_k, *ffn_x_r;
    const GgufTensor *ffn_key, *ffn_value, *ffn_receptance;
  };
  const GgufTensor *emb = nullptr, *ln0_w = nullptr, *ln0_b = nullptr;
  const GgufTensor *ln_out_w = nullptr, *ln_out_b = nullptr, *head = nullptr;
  std::vector<Layer> layers;

 private:
  RwkvHParams hp_;
};

// One sequence's recurrent state (F32) and scratch.
class RwkvContext : public Context {
 public:
  RwkvContext(const RwkvModel& model, int n_ctx, int n_threads);

  const std::vector<float>& eval(const std::vector<int32_t>& tokens, bool all_logits) override;
  const std::vector<float>& eval_from_layer(int start, const float* x, int n, bool all_logits) override;
  void reset() override;
  // Since the mark, every evaluated token's state is copied (the shifts from the LayerNorm
  // outputs, the WKV state from inside the recurrence), so a rollback is one copy.
  void mark_rollback() override;
  void rollback(int p) override;
  ContextState export_state() const override;
  void import_state(const ContextState& state) override;

 private:
  // A layer's vectors decoded to F32 once (any stored type).
  struct LayerVectors {
    std::vector<float> ln1_w, ln1_b, ln2_w, ln2_b;
    std::vector<float> att_mix_k, att_mix_v, att_mix_r, att_mix_g, time_first, time_decay, time_faaaa;
    std::vector<float> ln_x_w, ln_x_b;
    std::vector<float> x_rwkvag, w0, a0, v0, k_k, k_a, r_k;
    std::vector<float> lerp_x, lerp;  // RWKV-6: lerp holds the five mixes w, k, v, r, g (5 x n_embd)
    std::vector<float> ffn_mix_k, ffn_mix_r, ffn_x_k, ffn_x_r;
  };
  // The recurrent state of one block.
  struct LayerState {
    std::vector<float> att_shift, ffn_shift;  // the previous token's ln1 / ln2 output
    std::vector<float> aa, bb, pp;            // RWKV-4's WKV numerator, denominator, exponent
    std::vector<float> wkv;                   // RWKV-5/6/7: n_head matrices head_size x head_size
  };

  const std::vector<float>& run_layers(int start, int n, bool all_logits);
  // Where token t of the running batch records block l's state after it, or null when no mark
  // is set (the time-mixing recurrences write their WKV state there).
  LayerState* record_slot(int l, size_t t) {
    return mark_ < 0 ? nullptr : &history_[static_cast<size_t>(record_base_) + t][static_cast<size_t>(l)];
  }
  void observe(int layer, int n);
  // xn_ = LayerNorm(x_); prev_ = xn_ shifted one token down, `carry` entering first, and
  // `carry` = the last token's xn_.
  void norm_and_shift(const std::vector<float>& w, const std::vector<float>& b, std::vector<float>& carry, int n);
  // Time mixing of block l on xn_ / prev_ into out_ (one file per generation).
  void time_mix_v4(int l, int n);
  void time_mix_v5(int l, int n);
  void time_mix_v6(int l, int n);
  // The RWKV-5.2 / RWKV-6 WKV recurrence of layer l over n tokens (r_, k_, v_; rwkv5.cpp), into y.
  void wkv5_heads(int l, int n, const float* decay, size_t decay_token_stride, float* y);
  void time_mix_v7(int l, int n);
  void channel_mix(int l, int n);
  // Per-head GroupNorm of out_-sized rows in place, then ln_x's weight and bias.
  void group_norm(float* x, int n, const LayerVectors& v, float eps) const;

  const RwkvModel& rwkv_;
  std::vector<LayerVectors> vec_;
  std::vector<float> ln0_w_, ln0_b_, ln_out_w_, ln_out_b_;
  std::vector<LayerState> state_;
  // Rollback: the state at the mark and after each token evaluated since (history_[j]: after
  // token mark_ + j + 1); record_base_ is the running batch's first index in history_.
  int mark_ = -1, record_base_ = 0;
  std::vector<LayerState> mark_state_;
  std::vector<std::vector<LayerState>> history_;
  std::vector<float> logits_;
  // Per-batch buffers (n x n_embd unless noted), kept between calls.
  std::vector<float> x_, v_first_, xn_, prev_, out_, packed_;
  std::vector<float> xr_, xk_, xv_, xg_, xw_, xa_, r_, k_, v_, g_, w_, a_, kk_;
  std::vector<float> low_, low2_;  // RWKV-6/7's low-rank intermediates
  // RWKV-6: whether a LoRA's output matrix (as read: overrides included) holds only zeros, by its
  // data; such a LoRA adds nothing and is skipped unless an observer wants its inputs.
  bool zero_matrix(const GgufTensor& original);
  std::unordered_map<const GgufTensor*, bool> zero_matrices_;
  std::vector<float> ffn_k_;       // n x n_ff
};

}  // namespace mixq
