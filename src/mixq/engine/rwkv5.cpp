// RWKV-5.2 time mixing: per head, a state matrix S (key index i x value index j) that decays per
// key channel, read through the receptance with a bonus u (time_faaaa) for the current token:
//   y_t[j] = sum_i r_t[i] (u[i] k_t[i] v_t[j] + S[i][j]);   S[i][j] = w[i] S[i][j] + k_t[i] v_t[j]
// with w = exp(-exp(decay)) as rwkv.cpp stores it; then GroupNorm per head (eps 1e-5), the gate
// silu(gate @ xg) and the output product.
#include "mixq/engine/rwkv_model.h"
#include "mixq/engine/rwkv_ops.h"

#include <algorithm>

namespace mixq {

void RwkvContext::time_mix_v5(int l, int n) {
  const auto& hp = rwkv_.hparams();
  const RwkvModel::Layer& L = rwkv_.layers[static_cast<size_t>(l)];
  const LayerVectors& vec = vec_[static_cast<size_t>(l)];
  const auto E = static_cast<size_t>(hp.n_embd), un = static_cast<size_t>(n);
  for (auto* b : {&xk_, &xv_, &xr_, &xg_, &r_, &k_, &v_, &g_, &w_}) b->resize(un * E);
  rwkv::shift_mix_lerp(xn_.data(), prev_.data(), vec.att_mix_k.data(), un, E, xk_.data());
  rwkv::shift_mix_lerp(xn_.data(), prev_.data(), vec.att_mix_v.data(), un, E, xv_.data());
  rwkv::shift_mix_lerp(xn_.data(), prev_.data(), vec.att_mix_r.data(), un, E, xr_.data());
  rwkv::shift_mix_lerp(xn_.data(), prev_.data(), vec.att_mix_g.data(), un, E, xg_.data());
  mm_.invalidate();
  matmul(*L.att_receptance, xr_.data(), n, r_.data());
  matmul(*L.att_key, xk_.data(), n, k_.data());
  matmul(*L.att_value, xv_.data(), n, v_.data());
  matmul(*L.att_gate, xg_.data(), n, g_.data());
  float* y = w_.data();
  std::fill(w_.begin(), w_.end(), 0.0f);
  wkv5_heads(l, n, vec.time_decay.data(), 0, y);
  group_norm(y, n, vec, 1e-5f);
  for (size_t i = 0; i < un * E; ++i) y[i] *= g_[i] * rwkv::sigmoid(g_[i]);  // silu gate
  out_.resize(un * E);
  mm_.invalidate();
  matmul(*L.att_output, y, n, out_.data());
}

// y must be zero on entry. decay: w for token t, head h, key channel i at
// decay[t * decay_token_stride + h * S + i] (stride 0: RWKV-5.2's per-channel constant; n_embd: RWKV-6's
// per-token decay).
void RwkvContext::wkv5_heads(int l, int n, const float* decay, size_t decay_token_stride, float* y) {
  const auto& hp = rwkv_.hparams();
  LayerState& s = state_[static_cast<size_t>(l)];
  const auto E = static_cast<size_t>(hp.n_embd), un = static_cast<size_t>(n), S = static_cast<size_t>(hp.head_size);
  const float* u = vec_[static_cast<size_t>(l)].time_faaaa.data();
  // Heads never interact: each task runs its head through every token.
  pool_.parallel_for(hp.n_head, [&](int64_t h) {
    float* state = s.wkv.data() + static_cast<size_t>(h) * S * S;
    for (size_t t = 0; t < un; ++t) {
      const size_t base = t * E + static_cast<size_t>(h) * S;
      const float* w = decay + t * decay_token_stride + static_cast<size_t>(h) * S;
      for (size_t i = 0; i < S; ++i) {
        const float k = k_[base + i], r = r_[base + i], wi = w[i];
        const float ui = u[static_cast<size_t>(h) * S + i];
        float* row = state + i * S;
        for (size_t j = 0; j < S; ++j) {
          const float kv = v_[base + j] * k;
          const float prev = row[j];
          y[base + j] += (kv * ui + prev) * r;
          row[j] = prev * wi + kv;
        }
      }
      if (LayerState* rec = record_slot(l, t)) {
        std::copy(state, state + S * S, rec->wkv.data() + static_cast<size_t>(h) * S * S);
      }
    }
  });
}

}  // namespace mixq
