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

}  // namespace mixq
