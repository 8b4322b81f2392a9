// RWKV-4 time mixing: per channel, a weighted average of past values whose weights decay by
// exp(w) per token (rwkv.cpp stores time_decay = -exp(w)), with a bonus exp(u) (time_first) for
// the current token:
//   wkv_t = (sum_{s<t} e^{(t-1-s)w + k_s} v_s + e^{u + k_t} v_t) / (same without v)
// kept as numerator aa, denominator bb and a shared exponent pp so that no exp overflows.
#include "mixq/engine/rwkv_model.h"
#include "mixq/engine/rwkv_ops.h"

#include <algorithm>
#include <cmath>

namespace mixq {

void RwkvContext::time_mix_v4(int l, int n) {
  const RwkvModel::Layer& L = rwkv_.layers[static_cast<size_t>(l)];
  const LayerVectors& vec = vec_[static_cast<size_t>(l)];
  LayerState& s = state_[static_cast<size_t>(l)];
  const auto E = static_cast<size_t>(rwkv_.hparams().n_embd), un = static_cast<size_t>(n);
  for (auto* b : {&xk_, &xv_, &xr_, &r_, &k_, &v_, &xg_}) b->resize(un * E);
  rwkv::shift_mix_lerp(xn_.data(), prev_.data(), vec.att_mix_k.data(), un, E, xk_.data());
  rwkv::shift_mix_lerp(xn_.data(), prev_.data(), vec.att_mix_v.data(), un, E, xv_.data());
  rwkv::shift_mix_lerp(xn_.data(), prev_.data(), vec.att_mix_r.data(), un, E, xr_.data());
  mm_.invalidate();
  matmul(*L.att_receptance, xr_.data(), n, r_.data());
  matmul(*L.att_key, xk_.data(), n, k_.data());
  matmul(*L.att_value, xv_.data(), n, v_.data());
  float* rwkv_out = xg_.data();  // sigmoid(r) * wkv, the output product's input
  const float* u = vec.time_first.data();
  const float* w = vec.time_decay.data();
  for (size_t t = 0; t < un; ++t) {
    for (size_t i = 0; i < E; ++i) {
      const float k = k_[t * E + i], v = v_[t * E + i];
      float& aa = s.aa[i];
      float& bb = s.bb[i];
      float& pp = s.pp[i];
      // Output: the history plus the current token with its bonus.
      float ww = u[i] + k;
      float qq = std::max(pp, ww);
      float e1 = std::exp(pp - qq), e2 = std::exp(ww - qq);
      const float a = e1 * aa + e2 * v, b = e1 * bb + e2;
      rwkv_out[t * E + i] = rwkv::sigmoid(r_[t * E + i]) * (a / b);
      // State: the history decayed one step plus the current token without the bonus.
      ww = pp + w[i];
      qq = std::max(ww, k);
      e1 = std::exp(ww - qq);
      e2 = std::exp(k - qq);
      aa = e1 * aa + e2 * v;
      bb = e1 * bb + e2;
      pp = qq;
    }
    if (LayerState* rec = record_slot(l, t)) {
      rec->aa = s.aa;
      rec->bb = s.bb;
      rec->pp = s.pp;
    }
  }
  out_.resize(un * E);
  mm_.invalidate();
  matmul(*L.att_output, rwkv_out, n, out_.data());
}

}  // namespace mixq
