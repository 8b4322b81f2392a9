// RWKV-7 ("Goose") time mixing. Six token-shift mixes (x_rwkvag: r, w, k, v, a, g) feed:
//   r = receptance @ xr, k = key @ xk, v = value @ xv
//   w = exp(-0.606531 * sigmoid(w0 + w2 @ tanh(w1 @ xw)))   (RWKV-LM's exp(-exp(-softplus(-z) - 0.5)))
//   a = sigmoid(a0 + a2 @ (a1 @ xa))                         (in-context learning rate)
//   g = g2 @ sigmoid(g1 @ xg)
//   kk = per-head L2-normalized k * k_k;  k = k * (1 + (a - 1) * k_a)
//   v = v + (v_first - v) * sigmoid(v0 + v2 @ (v1 @ xv)) in blocks > 0; block 0's v is v_first
// then per head a state S (value index i x key index j), a generalized delta rule:
//   S = S diag(w) + v k^T + (S (-kk)) (kk * a)^T,   y = S r
// and y -> GroupNorm per head (eps 64e-5, as rwkv.cpp) with ln_x -> + v * sum_head(r * k * r_k)
// (the current token's bonus) -> * g -> output @ y.
#include "mixq/engine/rwkv_model.h"
#include "mixq/engine/rwkv_ops.h"

#include <algorithm>
#include <cmath>

namespace mixq {

void RwkvContext::time_mix_v7(int l, int n) {
  const auto& hp = rwkv_.hparams();
  const RwkvModel::Layer& L = rwkv_.layers[static_cast<size_t>(l)];
  const LayerVectors& vec = vec_[static_cast<size_t>(l)];
  LayerState& s = state_[static_cast<size_t>(l)];
  const auto E = static_cast<size_t>(hp.n_embd), un = static_cast<size_t>(n), S = static_cast<size_t>(hp.head_size);
  const size_t NE = un * E;
  for (auto* b : {&xr_, &xw_, &xk_, &xv_, &xa_, &xg_, &r_, &w_, &k_, &v_, &a_, &g_, &kk_}) b->resize(NE);
  std::vector<float>* mixed[6] = {&xr_, &xw_, &xk_, &xv_, &xa_, &xg_};
  for (size_t c = 0; c < 6; ++c) {
    rwkv::shift_mix_delta(xn_.data(), prev_.data(), vec.x_rwkvag.data() + c * E, un, E, mixed[c]->data());
  }
  // A low-rank product: y = second @ f(first @ x), each a batched matrix product.
  auto low_rank = [&](const GgufTensor& first, const GgufTensor& second, const std::vector<float>& x, float (*f)(float),
                      float* y) {
    low_.resize(un * static_cast<size_t>(first.n_rows()));
    matmul(first, x.data(), n, low_.data());
    if (f != nullptr) {
      for (float& z : low_) z = f(z);
    }
    mm_.invalidate();
    matmul(second, low_.data(), n, y);
  };
  mm_.invalidate();
  matmul(*L.att_receptance, xr_.data(), n, r_.data());
  matmul(*L.att_key, xk_.data(), n, k_.data());
  matmul(*L.att_value, xv_.data(), n, v_.data());
  low_rank(*L.w1, *L.w2, xw_, [](float z) { return std::tanh(z); }, w_.data());
  mm_.invalidate();
  low_rank(*L.a1, *L.a2, xa_, nullptr, a_.data());
  mm_.invalidate();
  low_rank(*L.g1, *L.g2, xg_, [](float z) { return rwkv::sigmoid(z); }, g_.data());
  if (l == 0) {
    std::copy(v_.begin(), v_.end(), v_first_.begin());
  } else {
    mm_.invalidate();
    low_rank(*L.v1, *L.v2, xv_, nullptr, xw_.data());  // xw_ is spent: reuse it for the mix
    for (size_t t = 0; t < un; ++t) {
      for (size_t i = 0; i < E; ++i) {
        const size_t at = t * E + i;
        v_[at] += (v_first_[at] - v_[at]) * rwkv::sigmoid(xw_[at] + vec.v0[i]);
      }
    }
  }
  for (size_t t = 0; t < un; ++t) {
    for (size_t i = 0; i < E; ++i) {
      const size_t at = t * E + i;
      w_[at] = std::exp(rwkv::sigmoid(w_[at] + vec.w0[i]) * -0.606531f);
      a_[at] = rwkv::sigmoid(a_[at] + vec.a0[i]);
      kk_[at] = k_[at] * vec.k_k[i];
      const float ka = k_[at] * vec.k_a[i];
      k_[at] = k_[at] + (a_[at] * ka - ka);
    }
    for (size_t h = 0; h < static_cast<size_t>(hp.n_head); ++h) {
      float* q = &kk_[t * E + h * S];
      float sum = 0;
      for (size_t j = 0; j < S; ++j) sum += q[j] * q[j];
      const float scale = 1.0f / std::max(std::sqrt(sum), 1e-12f);
      for (size_t j = 0; j < S; ++j) q[j] *= scale;
    }
  }
  float* y = xr_.data();  // spent after the receptance product
  pool_.parallel_for(hp.n_head, [&](int64_t h) {
    float* state = s.wkv.data() + static_cast<size_t>(h) * S * S;
    std::vector<float> b(S);
    for (size_t t = 0; t < un; ++t) {
      const size_t base = t * E + static_cast<size_t>(h) * S;
      const float *r = &r_[base], *w = &w_[base], *k = &k_[base], *v = &v_[base], *kk = &kk_[base], *a = &a_[base];
      for (size_t j = 0; j < S; ++j) b[j] = kk[j] * a[j];
      for (size_t i = 0; i < S; ++i) {
        float* row = state + i * S;
        // The state before this token's update, read along -kk; then the update; then the
        // readout by r. Two separate dot products (8 partial sums each) let them vectorize.
        const float sa = -rwkv::dot(kk, row, S);
        const float vi = v[i];
        for (size_t j = 0; j < S; ++j) row[j] = row[j] * w[j] + vi * k[j] + sa * b[j];
        y[base + i] = rwkv::dot(row, r, S);
      }
      if (LayerState* rec = record_slot(l, t)) {
        std::copy(state, state + S * S, rec->wkv.data() + static_cast<size_t>(h) * S * S);
      }
    }
  });
  group_norm(y, n, vec, 64e-5f);
  for (size_t t = 0; t < un; ++t) {
    for (size_t h = 0; h < static_cast<size_t>(hp.n_head); ++h) {
      const size_t base = t * E + h * S;
      float bonus = 0;
      for (size_t j = 0; j < S; ++j) bonus += k_[base + j] * r_[base + j] * vec.r_k[h * S + j];
      for (size_t i = 0; i < S; ++i) y[base + i] = (y[base + i] + v_[base + i] * bonus) * g_[base + i];
    }
  }
  out_.resize(NE);
  mm_.invalidate();
  matmul(*L.att_output, y, n, out_.data());
}

}  // namespace mixq
