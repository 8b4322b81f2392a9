#include "mixq/engine/attention.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include <fmt/format.h>

#include "mixq/formats/half.h"

namespace mixq {

AttentionMode parse_attention_mode(const std::string& name) {
  if (name == "f16") return AttentionMode::kLlamaCppF16;
  if (name == "tiled") return AttentionMode::kTiled;
  if (name == "f32") return AttentionMode::kF32;
  throw std::runtime_error(fmt::format("unknown attention mode '{}': use f16 (llama.cpp's reference numerics, the "
                                       "default), tiled (F32 tiles over an F16 cache, newer llama.cpp) or f32",
                                       name));
}

KvCache::KvCache(int n_layer, int n_ctx, AttentionShape shape) : shape_(shape), n_layer_(n_layer), n_ctx_(n_ctx) {
  stride_ = (n_ctx + kernels::kAttnTile - 1) / kernels::kAttnTile * kernels::kAttnTile;
  const size_t kvd = static_cast<size_t>(shape.kv_dim()), layers = static_cast<size_t>(n_layer);
  k_.assign(static_cast<size_t>(stride_) * kvd * layers, 0.0f);
  v_.assign(static_cast<size_t>(n_ctx) * kvd * layers, 0.0f);
}

void KvCache::store(int layer, int pos, int n, const float* k, const float* v, AttentionMode mode) {
  const int kvd = shape_.kv_dim();
  float* kc = k_.data() + static_cast<size_t>(layer) * static_cast<size_t>(stride_) * kvd;
  float* vc = v_.data() + static_cast<size_t>(layer) * static_cast<size_t>(n_ctx_) * kvd;
  const bool f16 = mode != AttentionMode::kF32;
  for (int t = 0; t < n; ++t) {
    const size_t p = static_cast<size_t>(pos + t);
    for (int i = 0; i < kvd; ++i) {
      const float kv = k[t * kvd + i];
      kc[static_cast<size_t>(i) * static_cast<size_t>(stride_) + p] = f16 ? round_fp16(kv) : kv;
      vc[p * kvd + i] = f16 ? round_fp16(v[t * kvd + i]) : v[t * kvd + i];
    }
  }
}

void KvCache::save(int n, std::vector<float>& k, std::vector<float>& v) const {
  const auto kvd = static_cast<size_t>(shape_.kv_dim()), un = static_cast<size_t>(n), st = static_cast<size_t>(stride_);
  k.resize(static_cast<size_t>(n_layer_) * kvd * un);
  v.resize(k.size());
  for (size_t l = 0; l < static_cast<size_t>(n_layer_); ++l) {
    const float* kc = k_.data() + l * st * kvd;
    const float* vc = v_.data() + l * static_cast<size_t>(n_ctx_) * kvd;
    for (size_t i = 0; i < kvd; ++i) std::copy(kc + i * st, kc + i * st + un, k.data() + (l * kvd + i) * un);
    std::copy(vc, vc + un * kvd, v.data() + l * un * kvd);
  }
}

void KvCache::load(int n, const std::vector<float>& k, const std::vector<float>& v) {
  const auto kvd = static_cast<size_t>(shape_.kv_dim()), un = static_cast<size_t>(n), st = static_cast<size_t>(stride_);
  if (n < 0 || n > n_ctx_ || k.size() != static_cast<size_t>(n_layer_) * kvd * un || v.size() != k.size()) {
    throw std::runtime_error(fmt::format("KV cache load: {} positions ({} / {} values) for a cache of {} positions, {} "
                                         "layers of width {}",
                                         n, k.size(), v.size(), n_ctx_, n_layer_, kvd));
  }
  for (size_t l = 0; l < static_cast<size_t>(n_layer_); ++l) {
    float* kc = k_.data() + l * st * kvd;
    float* vc = v_.data() + l * static_cast<size_t>(n_ctx_) * kvd;
    for (size_t i = 0; i < kvd; ++i) std::copy(k.data() + (l * kvd + i) * un, k.data() + (l * kvd + i + 1) * un, kc + i * st);
    std::copy(v.data() + l * un * kvd, v.data() + (l + 1) * un * kvd, vc);
  }
}

void KvCache::attend(int layer, int pos, int n, const float* q, AttentionMode mode, const kernels::KernelSet& ks,
                     ThreadPool& pool, float* att) const {
  const int kvd = shape_.kv_dim(), hd = shape_.head_dim, e = shape_.q_dim(), n_head = shape_.n_head;
  const int group = n_head / shape_.n_head_kv;
  const float att_scale = 1.0f / std::sqrt(static_cast<float>(hd));
  const float* kc = k_.data() + static_cast<size_t>(layer) * static_cast<size_t>(stride_) * kvd;
  const float* vc = v_.data() + static_cast<size_t>(layer) * static_cast<size_t>(n_ctx_) * kvd;
  const int stride = stride_;
  if (mode == AttentionMode::kLlamaCppF16) {
    // llama.cpp's F16 flash attention, tasks of four consecutive tokens of one head (the kernel
    // interleaves their sequential parts).
    const int groups = (n + 3) / 4;
    pool.parallel_for(static_cast<int64_t>(groups) * n_head, [&](int64_t task) {
      const int t0 = static_cast<int>(task / n_head) * 4, h = static_cast<int>(task % n_head);
      const int kvh = h / group;
      const float* kt = kc + static_cast<size_t>(kvh) * hd * static_cast<size_t>(stride);
      const float* vh = vc + static_cast<size_t>(kvh) * hd;
      thread_local std::vector<float> scratch;
      scratch.resize(8 * static_cast<size_t>(pos + t0 + 4 + 8));
      auto qp = [&](int t) { return &q[static_cast<size_t>(t) * e + static_cast<size_t>(h) * hd]; };
      auto op = [&](int t) { return &att[static_cast<size_t>(t) * e + static_cast<size_t>(h) * hd]; };
      if (t0 + 4 <= n) {
        const float* qs[4] = {qp(t0), qp(t0 + 1), qp(t0 + 2), qp(t0 + 3)};
        float* outs[4] = {op(t0), op(t0 + 1), op(t0 + 2), op(t0 + 3)};
        const int lens[4] = {pos + t0 + 1, pos + t0 + 2, pos + t0 + 3, pos + t0 + 4};
        ks.attn_f16_x4(qs, kt, stride, vh, kvd, hd, lens, att_scale, scratch.data(), outs);
      } else {
        for (int t = t0; t < n; ++t) {
          ks.attn_f16(qp(t), kt, stride, vh, kvd, hd, pos + t + 1, att_scale, scratch.data(), op(t));
        }
      }
    });
    return;
  }
  // Tiled F32 flash attention (kTiled, and kF32 over its F32 cache; kernels.h,
  // attn_tiled_reference): tasks of kAttnQueries consecutive tokens of one head, the longest
  // (latest) tokens first so the short tasks even out the threads at the end.
  constexpr int kQ = kernels::kAttnQueries;
  const int groups = (n + kQ - 1) / kQ;
  pool.parallel_for(static_cast<int64_t>(groups) * n_head, [&](int64_t task) {
    const int t0 = (groups - 1 - static_cast<int>(task / n_head)) * kQ, h = static_cast<int>(task % n_head);
    const int kvh = h / group, nq = std::min(kQ, n - t0);
    const float* qs[kQ];
    float* outs[kQ];
    int lens[kQ];
    for (int j = 0; j < nq; ++j) {
      qs[j] = &q[static_cast<size_t>(t0 + j) * e + static_cast<size_t>(h) * hd];
      outs[j] = &att[static_cast<size_t>(t0 + j) * e + static_cast<size_t>(h) * hd];
      lens[j] = pos + t0 + j + 1;
    }
    ks.attn_tiled(qs, nq, kc + static_cast<size_t>(kvh) * hd * static_cast<size_t>(stride), stride,
                  vc + static_cast<size_t>(kvh) * hd, kvd, hd, lens, att_scale, outs);
  });
}

}  // namespace mixq
