#include "mixq/formats/nf4.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <cstring>

#include "mixq/formats/block_weights.h"
#include "mixq/formats/half.h"

namespace mixq::nf4 {
namespace {

// Scales tried, as fractions of the block's absmax. 1 is bitsandbytes' rule, so the search can only
// do better than it; the smaller ones clip the extreme value to give the bulk of a block finer
// levels, which pays off for heavy-tailed blocks.
constexpr std::array<float, 7> kShrink = {1.0f, 0.96f, 0.92f, 0.88f, 0.84f, 0.80f, 0.76f};

constexpr float kHalfMax = 65504.0f;

// Rounds of least-squares re-fit after the best starting scale.
constexpr int kRefitRounds = 2;

// Midpoints between neighbouring levels and the steps between them: the nearest level of a
// normalized value v is kLevels[0] plus the steps of every midpoint below v, a form the compiler
// can vectorize (no table lookup per value).
constexpr std::array<float, 15> kMid = [] {
  std::array<float, 15> m{};
  for (int k = 0; k < 15; ++k) m[k] = 0.5f * (kLevels[k] + kLevels[k + 1]);
  return m;
}();
constexpr std::array<float, 15> kStep = [] {
  std::array<float, 15> s{};
  for (int k = 0; k < 15; ++k) s[k] = kLevels[k + 1] - kLevels[k];
  return s;
}();

// Partial sums in independent lanes, so the loop vectorizes without reassociating a reduction.
constexpr int kLanes = 8;

// Weighted squared error of the block at scale d with every value on its nearest level. The
// nearest level of x for a scale d of either sign is the nearest level of x / d, since
// |x - L d| = |d| |x / d - L|. Used to rank scales; the summed levels can differ from the table by
// an ulp, which does not matter for a ranking.
float nf4_score(const float* x, const float* w, float d) {
  const float inv = 1.0f / d;
  float acc[kLanes] = {};
  for (int i = 0; i < kBlock; i += kLanes) {
    for (int k = 0; k < kLanes; ++k) {
      const float v = x[i + k] * inv;
      float level = kLevels[0];
      for (int j = 0; j < 15; ++j) level += v > kMid[j] ? kStep[j] : 0.0f;
      const float e = x[i + k] - level * d;
      acc[k] += w[i + k] * e * e;
    }
  }
  float sum = 0;
  for (const float a : acc) sum += a;
  return sum;
}

void nearest_indices(const float* x, float d, uint8_t* idx) {
  const float inv = 1.0f / d;
  for (int i = 0; i < kBlock; ++i) {
    const float v = x[i] * inv;
    int c = 0;
    for (int j = 0; j < 15; ++j) c += v > kMid[j];
    idx[i] = static_cast<uint8_t>(c);
  }
}

// The f16 scale nearest to v, kept finite: a block beyond f16's range saturates instead of
// decoding to inf and NaN.
float half_scale(double v) {
  return round_fp16(static_cast<float>(std::clamp(v, -static_cast<double>(kHalfMax), static_cast<double>(kHalfMax))));
}

// Least-squares scale for fixed indices: argmin_d sum w (x - L d)^2.
double refit_scale(const float* x, const float* w, const uint8_t* idx, double fallback) {
  double sxl = 0, sll = 0;
  for (int i = 0; i < kBlock; ++i) {
    const double l = kLevels[idx[i]];
    sxl += w[i] * x[i] * l;
    sll += w[i] * l * l;
  }
  return sll > 0 ? sxl / sll : fallback;
}

// Best f16 scale for one block (0 for a block of zeros, whose indices all decode to 0).
float fit_scale(const float* x, const float* w) {
  float amax = 0, zero_err = 0;
  for (int i = 0; i < kBlock; ++i) {
    amax = std::max(amax, std::fabs(x[i]));
    zero_err += w[i] * x[i] * x[i];
  }
  float best_d = 0, best_err = zero_err;
  auto consider = [&](float d) {
    if (d == 0) return false;
    const float err = nf4_score(x, w, d);
    if (!(err < best_err)) return false;
    best_err = err;
    best_d = d;
    return true;
  };
  for (const float sign : {1.0f, -1.0f}) {
    for (const float f : kShrink) consider(half_scale(static_cast<double>(sign) * amax * f));
  }
  uint8_t idx[kBlock];
  for (int round = 0; round < kRefitRounds && best_d != 0; ++round) {
    nearest_indices(x, best_d, idx);
    if (!consider(half_scale(refit_scale(x, w, idx, best_d)))) break;
  }
  return best_d;
}

}  // namespace

void quantize_row_nf4_calib(const float* x, void* dst, int64_t n, const float* importance, const Calibration& c) {
  auto* out = static_cast<uint8_t*>(dst);
  float w[kBlock];
  uint8_t idx[kBlock];
  for (int64_t b = 0; b < n / kBlock; ++b) {
    const float* xb = x + b * kBlock;
    block_weights(importance, b * kBlock, kBlock, w);
    float d;
    if (c.method == ScaleMethod::Search) {
      d = fit_scale(xb, w);  // symmetric by construction; no zero point to refine
    } else {
      // NF4 codes span [-1, 1] times the block's scale: the clip value is the scale.
      const auto score = [&](float /*lo*/, float hi) {
        const float s = half_scale(hi);
        return s != 0 ? nf4_score(xb, w, s) : std::numeric_limits<float>::infinity();
      };
      d = half_scale(calib::choose_range(xb, w, kBlock, c, true, score).hi);
    }
    if (d != 0) {
      nearest_indices(xb, d, idx);
    } else {
      std::fill(idx, idx + kBlock, static_cast<uint8_t>(kZeroIndex));
    }
    BlockNF4 block;
    block.d = fp32_to_fp16(d);
    for (int j = 0; j < kBlock / 2; ++j) {
      block.qs[j] = static_cast<uint8_t>((idx[2 * j] << 4) | idx[2 * j + 1]);
    }
    std::memcpy(out + b * sizeof(BlockNF4), &block, sizeof block);
  }
}

void quantize_row_nf4(const float* x, void* dst, int64_t n, const float* importance) {
  quantize_row_nf4_calib(x, dst, n, importance, Calibration{});
}

void dequantize_row_nf4(const void* src, float* y, int64_t n) {
  const auto* in = static_cast<const uint8_t*>(src);
  for (int64_t b = 0; b < n / kBlock; ++b) {
    BlockNF4 block;
    std::memcpy(&block, in + b * sizeof(BlockNF4), sizeof block);
    const float d = fp16_to_fp32(block.d);
    float* yb = y + b * kBlock;
    for (int j = 0; j < kBlock / 2; ++j) {
      yb[2 * j] = kLevels[block.qs[j] >> 4] * d;
      yb[2 * j + 1] = kLevels[block.qs[j] & 0x0f] * d;
    }
  }
}

}  // namespace mixq::nf4
