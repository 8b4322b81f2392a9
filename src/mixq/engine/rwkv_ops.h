// Element-wise pieces the RWKV graphs share (engine/rwkv_model.h), in rwkv.cpp's order of
// operations so F32 models reproduce its logits to rounding.
#pragma once

#include <cmath>
#include <cstddef>

namespace mixq::rwkv {

// A dot product in 8 interleaved partial sums, which the compiler turns into SIMD without
// reassociating float math on its own.
inline float dot(const float* a, const float* b, size_t n) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    for (size_t u = 0; u < 8; ++u) acc[u] += a[i + u] * b[i + u];
  }
  float sum = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
  for (; i < n; ++i) sum += a[i] * b[i];
  return sum;
}

inline float sigmoid(float x) { return 1.0f / (1.0f + std::exp(-x)); }

// (x - mean) / sqrt(var + eps) over n values, sums in double as ggml_norm does.
inline void normalize(const float* x, int n, float eps, float* out) {
  double sum = 0;
  for (int i = 0; i < n; ++i) sum += x[i];
  const auto mean = static_cast<float>(sum / n);
  double sum2 = 0;
  for (int i = 0; i < n; ++i) {
    const float d = x[i] - mean;
    sum2 += static_cast<double>(d) * d;
  }
  const float scale = 1.0f / std::sqrt(static_cast<float>(sum2 / n) + eps);
  for (int i = 0; i < n; ++i) out[i] = (x[i] - mean) * scale;
}

// LayerNorm with weight and bias (eps 1e-5 in every RWKV generation; llama.cpp's rwkv6 files
// record theirs); out may alias x.
inline void layer_norm(const float* x, const float* w, const float* b, int n, float* out, float eps = 1e-5f) {
  normalize(x, n, eps, out);
  for (int i = 0; i < n; ++i) out[i] = out[i] * w[i] + b[i];
}

// RWKV-4/5 token shift: x * m + prev * (1 - m), written as rwkv.cpp computes it.
inline void shift_mix_lerp(const float* x, const float* prev, const float* m, size_t n_tokens, size_t e, float* out) {
  for (size_t t = 0; t < n_tokens; ++t) {
    for (size_t i = 0; i < e; ++i) {
      const float p = prev[t * e + i];
      out[t * e + i] = x[t * e + i] * m[i] + (p - p * m[i]);
    }
  }
}

// RWKV-6/7 token shift: x + (prev - x) * m.
inline void shift_mix_delta(const float* x, const float* prev, const float* m, size_t n_tokens, size_t e, float* out) {
  for (size_t t = 0; t < n_tokens; ++t) {
    for (size_t i = 0; i < e; ++i) out[t * e + i] = (prev[t * e + i] - x[t * e + i]) * m[i] + x[t * e + i];
  }
}

}  // namespace mixq::rwkv
