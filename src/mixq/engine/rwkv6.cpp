// RWKV-6 ("Finch") time mixing, as llama.cpp's rwkv6 graph computes it (its src/models/rwkv6-base.cpp
// and ggml's rwkv_wkv6 op). With sx = prev - x (the token shift):
//   xxx = x + sx * lerp_x;  z = tanh(time_mix_w1 @ xxx), split into five d_mix-wide parts
//   x_m = x + sx * (lerp_m + time_mix_w2[m] @ z_m)        m = w, k, v, r, g (data-dependent lerp)
//   r, k, v = receptance @ xr, key @ xk, value @ xv;  g = silu(gate @ xg)
//   w = exp(-exp(time_mix_decay + decay_w2 @ tanh(decay_w1 @ xw)))   (a decay per token and channel)
// then per head the RWKV-5.2 recurrence with that per-token decay (S: key index i x value index j):
//   y_t[j] = sum_i r_t[i] (u[i] k_t[i] v_t[j] + S[i][j]);   S[i][j] = w_t[i] S[i][j] + k_t[i] v_t[j]
// with u = time_mix_first, and y -> GroupNorm per head (eps 64e-5, fixed in llama.cpp's graph) with
// time_mix_ln -> * g -> output @ y. time_mix_w2 [d_mix, n_embd, 5] is five matrices one after
// another in the file; each product reads its rows in place (a view), so any weight type works.
// A LoRA whose output matrix is all zeros (RWKV-5.2 converted into this layout: `convert --layout
// llama.cpp`) adds exactly zero to finite inputs, so its two products are skipped (1.8x the CPU
// time otherwise on the tiny model), except while an observer collects every product's inputs.
#include "mixq/engine/repack.h"
#include "mixq/engine/rwkv_model.h"
#include "mixq/engine/rwkv_ops.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

namespace mixq {

namespace {
bool all_zero(const GgufTensor& t) {
  std::vector<float> values(static_cast<size_t>(t.n_elements()));
  kernels::dequantize_tensor(t, values.data());
  return std::all_of(values.begin(), values.end(), [](float v) { return v == 0.0f; });
}
}  // namespace

// The model's own tensors are looked at once; an override (a measurement probe's matrix, whose
// memory may later hold another) every time it is read.
bool RwkvContext::zero_matrix(const GgufTensor& original) {
  const GgufTensor& used = mm_.resolve(original);
  if (&used != &original) return all_zero(used);
  const auto [it, fresh] = zero_matrices_.try_emplace(&original, false);
  if (fresh) it->second = all_zero(original);
  return it->second;
}

void RwkvContext::time_mix_v6(int l, int n) {
  const auto& hp = rwkv_.hparams();
  const RwkvModel::Layer& L = rwkv_.layers[static_cast<size_t>(l)];
  const LayerVectors& vec = vec_[static_cast<size_t>(l)];
  const auto E = static_cast<size_t>(hp.n_embd), un = static_cast<size_t>(n);
  const auto X = static_cast<size_t>(hp.d_mix);
  const size_t NE = un * E;
  for (auto* b : {&xw_, &xk_, &xv_, &xr_, &xg_, &xa_, &r_, &w_, &k_, &v_, &g_}) b->resize(NE);
  const float *x = xn_.data(), *prev = prev_.data();

  // The data-dependent token shift: xxx (in xa_), its LoRA's five parts, each part's product
  // (+-0 where the LoRA's output matrix is all zeros: not computed then).
  const bool ddlerp = mm_.has_observer() || !zero_matrix(*L.ddlerp_w2);
  // A product may be overridden (measurement probes): the views read the tensor actually in use.
  const GgufTensor& w2 = mm_.resolve(*L.ddlerp_w2);
  if (ddlerp) {
    for (size_t at = 0; at < NE; ++at) xa_[at] = (prev[at] - x[at]) * vec.lerp_x[at % E] + x[at];
    low_.resize(un * 5 * X);
    mm_.invalidate();
    matmul(*L.ddlerp_w1, xa_.data(), n, low_.data());
    for (float& z : low_) z = std::tanh(z);
    // The views below read rows in the file's layout: a three-dimensional tensor is never
    // interleaved in place (kernels::interleave_in_place takes matrices only), and this says so if
    // that changes.
    if (kernels::interleaved(w2)) throw std::logic_error("rwkv6: time_mix_w2 is interleaved; its views need the file's layout");
    low2_.resize(un * X);
  }
  const size_t part_bytes = static_cast<size_t>(w2.type->row_bytes(hp.d_mix)) * E;
  std::vector<float>* mixed[5] = {&xw_, &xk_, &xv_, &xr_, &xg_};
  for (size_t m = 0; m < 5; ++m) {
    float* xm = mixed[m]->data();
    if (ddlerp) {
      GgufTensor part = w2;
      part.shape = {hp.d_mix, hp.n_embd};
      part.data = w2.data + m * part_bytes;
      part.nbytes = part_bytes;
      for (size_t t = 0; t < un; ++t) std::copy_n(&low_[(t * 5 + m) * X], X, &low2_[t * X]);
      mm_.invalidate();
      matmul(part, low2_.data(), n, xm);
    } else {
      std::fill(xm, xm + NE, 0.0f);
    }
    const float* lerp = vec.lerp.data() + m * E;
    for (size_t at = 0; at < NE; ++at) xm[at] = (xm[at] + lerp[at % E]) * (prev[at] - x[at]) + x[at];
  }

  mm_.invalidate();
  matmul(*L.att_receptance, xr_.data(), n, r_.data());
  matmul(*L.att_key, xk_.data(), n, k_.data());
  matmul(*L.att_value, xv_.data(), n, v_.data());
  matmul(*L.att_gate, xg_.data(), n, g_.data());
  for (float& gi : g_) gi = gi / (1.0f + std::exp(-gi));  // silu, as ggml_silu
  // The decay: its LoRA on xw, then exp(-exp(.)).
  if (!mm_.has_observer() && zero_matrix(*L.decay_w2)) {
    std::fill(w_.begin(), w_.end(), 0.0f);  // the LoRA's +-0 (finite inputs)
  } else {
    low_.resize(un * static_cast<size_t>(hp.d_decay));
    matmul(*L.decay_w1, xw_.data(), n, low_.data());
    for (float& z : low_) z = std::tanh(z);
    mm_.invalidate();
    matmul(*L.decay_w2, low_.data(), n, w_.data());
  }
  for (size_t at = 0; at < NE; ++at) w_[at] = std::exp(-std::exp(w_[at] + vec.time_decay[at % E]));

  float* y = xr_.data();  // spent after the receptance product
  std::fill(xr_.begin(), xr_.end(), 0.0f);
  wkv5_heads(l, n, w_.data(), E, y);  // the RWKV-5.2 recurrence with the per-token decay
  group_norm(y, n, vec, 64e-5f);
  for (size_t i = 0; i < NE; ++i) y[i] *= g_[i];
  out_.resize(NE);
  mm_.invalidate();
  matmul(*L.att_output, y, n, out_.data());
}

}  // namespace mixq
