// Per-value weights for one block of a quantizer's error: the importance weights when given,
// otherwise all ones (plain squared error).
#pragma once

#include <algorithm>
#include <cstdint>

namespace mixq {

// A block whose importance weights are all zero (a column the calibration never exercised) falls
// back to plain squared error: a weighted fit would be singular there, and any scale is as good
// as another for the model, so the one that keeps the values themselves is the sensible pick.
inline void block_weights(const float* importance, int64_t first, int count, float* w) {
  if (importance) {
    float sum = 0;
    for (int i = 0; i < count; ++i) {
      w[i] = std::max(importance[first + i], 0.0f);
      sum += w[i];
    }
    if (sum > 0) return;
  }
  std::fill(w, w + count, 1.0f);
}

// The least-squares scale for a block whose values are approximated by scale * level(i).
struct ScaleFit {
  double gain = -1;  // reduction of sum w x^2 the least-squares scale achieves: (sum w x l)^2 / sum w l^2
  double scale = 0;
};

// level(i) gives the grid level chosen for value i; wx[i] = w[i] * x[i]. The partial sums are kept
// in 8 independent lanes so the compiler vectorizes them without reassociating a floating-point
// reduction (no -ffast-math); N must be a multiple of 8.
template <int N, typename Level>
inline ScaleFit least_squares_scale(const float* w, const float* wx, Level level) {
  constexpr int kLanes = 8;
  static_assert(N % kLanes == 0);
  float sxq[kLanes] = {}, sqq[kLanes] = {};
  for (int i = 0; i < N; i += kLanes) {
    for (int k = 0; k < kLanes; ++k) {
      const float l = level(i + k);
      sxq[k] += wx[i + k] * l;
      sqq[k] += w[i + k] * l * l;
    }
  }
  double a = 0, b = 0;
  for (int k = 0; k < kLanes; ++k) {
    a += sxq[k];
    b += sqq[k];
  }
  if (b <= 0) return {};
  return {a * a / b, a / b};
}

}  // namespace mixq
