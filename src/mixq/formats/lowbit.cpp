#include "mixq/formats/lowbit.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <limits>

#include "mixq/formats/block_weights.h"
#include "mixq/formats/half.h"

namespace mixq::lowbit {
namespace {

constexpr float kHalfMax = 65504.0f;

// Fractions of the group's range cut off at the low and at the high end. Clipping a lone extreme
// value gives every other value finer steps; with 4 or 8 levels that trade pays off often.
constexpr std::array<float, 5> kShrink = {0.0f, 0.05f, 0.1f, 0.15f, 0.2f};

// Least-squares re-fit and re-coding: how many of the best starting ranges get it, and how many
// rounds each.
constexpr int kRefitStarts = 3;
constexpr int kRefitRounds = 2;

// Partial sums in independent lanes, so the loop vectorizes without reassociating a reduction.
constexpr int kLanes = 8;

// The f16 nearest to v, kept finite: parameters beyond f16's range saturate instead of decoding
// to inf and NaN.
float to_half_range(double v) {
  return round_fp16(static_cast<float>(std::clamp(v, -static_cast<double>(kHalfMax), static_cast<double>(kHalfMax))));
}

// f16-rounded parameters and the midpoints between the levels they decode to; s > 0, so the
// levels ascend and the nearest code of x is the number of midpoints below it.
template <int kLevels>
struct Grid {
  float s, z;
  float mid[kLevels - 1];

  Grid(float s_, float z_) : s(s_), z(z_) {
    for (int k = 0; k + 1 < kLevels; ++k) mid[k] = 0.5f * (decode(k) + decode(k + 1));
  }

  // The dequantizer's arithmetic, so the error scored is the error stored.
  float decode(int c) const { return static_cast<float>(c) * s - z * s; }

  int nearest(float x) const {
    int c = 0;
    for (int k = 0; k + 1 < kLevels; ++k) c += x > mid[k];
    return c;
  }

  // Weighted squared error of the group with every value on its nearest level.
  float score(const float* x, const float* w) const {
    float acc[kLanes] = {};
    for (int i = 0; i < kGroup; i += kLanes) {
      for (int k = 0; k < kLanes; ++k) {
        const float e = x[i + k] - decode(nearest(x[i + k]));
        acc[k] += w[i + k] * e * e;
      }
    }
    float sum = 0;
    for (const float a : acc) sum += a;
    return sum;
  }

  void codes(const float* x, uint8_t* q) const {
    for (int i = 0; i < kGroup; ++i) q[i] = static_cast<uint8_t>(nearest(x[i]));
  }
};

struct Fit {
  float s = 0, z = 0;
  float err = std::numeric_limits<float>::infinity();
  bool constant = false;  // every code 0: the group decodes to s
};

// Weighted least squares of x ~ s * q + b for fixed codes, then the offset re-fitted for the
// f16-rounded s, since that is the s that will be stored. False when the codes cannot determine a
// positive scale (all equal, or a fit that would reverse the order).
bool refit(const float* x, const float* w, const uint8_t* q, float& s, float& z) {
  double sw = 0, sq = 0, sqq = 0, sx = 0, sqx = 0;
  for (int i = 0; i < kGroup; ++i) {
    sw += w[i];
    sq += w[i] * q[i];
    sqq += w[i] * q[i] * q[i];
    sx += w[i] * x[i];
    sqx += w[i] * q[i] * x[i];
  }
  const double det = sw * sqq - sq * sq;
  if (!(det > 1e-12 * sw * sqq)) return false;
  const float s16 = to_half_range((sw * sqx - sq * sx) / det);
  if (!(s16 > 0)) return false;
  const double b = (sx - s16 * sq) / sw;
  s = s16;
  z = to_half_range(-b / s16);
  return true;
}

template <int kLevels>
Fit fit_group(const float* x, const float* w) {
  constexpr int qmax = kLevels - 1;
  const auto [lo_it, hi_it] = std::minmax_element(x, x + kGroup);
  const double lo = *lo_it, hi = *hi_it;
  // Every code 0 with z = -1 decodes to s itself: s at the group's middle is the answer for a
  // constant group and a floor for groups too narrow for any f16 scale. s may be negative here, so
  // this candidate is scored directly rather than through a Grid, whose levels must ascend.
  Fit best{to_half_range(0.5 * (lo + hi)), -1.0f, 0.0f, true};
  for (int i = 0; i < kGroup; ++i) best.err += w[i] * (x[i] - best.s) * (x[i] - best.s);
  const double range = hi - lo;
  if (!(range > 0)) return best;

  // The best few starting ranges, by error, ascending.
  std::array<Fit, kRefitStarts> starts{};
  for (const float a : kShrink) {
    for (const float b : kShrink) {
      const double lo_c = lo + a * range, hi_c = hi - b * range;
      const float s = to_half_range((hi_c - lo_c) / qmax);
      if (!(s > 0)) continue;
      const float z = to_half_range(-lo_c / s);
      Fit f{s, z, Grid<kLevels>(s, z).score(x, w)};
      for (auto& slot : starts) {
        if (f.err < slot.err) std::swap(f, slot);
      }
    }
  }
  uint8_t q[kGroup];
  for (Fit f : starts) {
    for (int round = 0; round < kRefitRounds && f.err < std::numeric_limits<float>::infinity(); ++round) {
      Grid<kLevels>(f.s, f.z).codes(x, q);
      float s, z;
      if (!refit(x, w, q, s, z)) break;
      const float err = Grid<kLevels>(s, z).score(x, w);
      if (!(err < f.err)) break;
      f = {s, z, err};
    }
    if (f.err < best.err) best = f;
  }
  return best;
}

// One row, group by group. The default calibration (search) is fit_group's search; the others take
// the range from calib::choose_range (symmetric: the zero point at the middle code), then
// optionally HQQ's zero-point refinement.
template <int kLevels, typename Block, typename Pack>
void quantize_row_calib(const float* x, void* dst, int64_t n, const float* importance, const Calibration& c, Pack pack) {
  constexpr int qmax = kLevels - 1;
  auto* out = static_cast<uint8_t*>(dst);
  float w[kGroup];
  uint8_t codes[kGroup];
  auto params = [&](float lo, float hi, float& s, float& z) {
    if (c.symmetric) {
      s = to_half_range(2.0 * std::max(std::fabs(lo), std::fabs(hi)) / qmax);
      z = to_half_range(qmax / 2.0);
    } else {
      s = to_half_range((static_cast<double>(hi) - lo) / qmax);
      z = s > 0 ? to_half_range(-lo / s) : 0.0f;
    }
    return s > 0;
  };
  for (int64_t g = 0; g < n / kGroup; ++g) {
    block_weights(importance, g * kGroup, kGroup, w);
    const float* xg = x + g * kGroup;
    Fit best;
    if (c.method == ScaleMethod::Search && !c.symmetric) {
      best = fit_group<kLevels>(xg, w);
    } else {
      const auto score = [&](float lo, float hi) {
        float s, z;
        return params(lo, hi, s, z) ? Grid<kLevels>(s, z).score(xg, w) : std::numeric_limits<float>::infinity();
      };
      const calib::Range r = calib::choose_range(xg, w, kGroup, c, c.symmetric, score);
      if (!params(r.lo, r.hi, best.s, best.z)) {
        best = {to_half_range(0.5 * (static_cast<double>(r.lo) + r.hi)), -1.0f, 0.0f, true};  // constant group
      }
    }
    if (c.hqq_iterations > 0 && !best.constant && !c.symmetric) {
      best.z = to_half_range(calib::hqq_zero(xg, kGroup, qmax, best.s, best.z, c.hqq_iterations));
    }
    if (best.constant) {
      std::fill(codes, codes + kGroup, uint8_t{0});
    } else {
      Grid<kLevels>(best.s, best.z).codes(xg, codes);
    }
    Block block;
    block.s = fp32_to_fp16(best.s);
    block.z = fp32_to_fp16(best.z);
    pack(codes, block.qs);
    std::memcpy(out + g * sizeof(Block), &block, sizeof block);
  }
}

// Each group of a row: its index, scale s, zs = z * s and its codes, unpacked.
template <typename Block, typename Unpack, typename Fn>
void for_each_group(const void* src, int64_t n, Unpack unpack, Fn fn) {
  const auto* in = static_cast<const uint8_t*>(src);
  uint8_t codes[kGroup];
  for (int64_t g = 0; g < n / kGroup; ++g) {
    Block block;
    std::memcpy(&block, in + g * sizeof(Block), sizeof block);
    const float s = fp16_to_fp32(block.s);
    const float zs = fp16_to_fp32(block.z) * s;
    unpack(block.qs, codes);
    fn(g, s, zs, codes);
  }
}

template <typename Block, typename Unpack>
void dequantize_row(const void* src, float* y, int64_t n, Unpack unpack) {
  for_each_group<Block>(src, n, unpack, [&](int64_t g, float s, float zs, const uint8_t* codes) {
    float* yg = y + g * kGroup;
    for (int i = 0; i < kGroup; ++i) yg[i] = static_cast<float>(codes[i]) * s - zs;
  });
}

// The integer view: the codes as they are, scale s and offset -z * s for each 16 of the group, so
// scale * q + offset is the dequantizer's c * s - z * s bit for bit.
template <typename Block, typename Unpack>
void unpack_row(const void* src, int8_t* q, float* scale, float* offset, int64_t n, Unpack unpack) {
  for_each_group<Block>(src, n, unpack, [&](int64_t g, float s, float zs, const uint8_t* codes) {
    std::memcpy(q + g * kGroup, codes, kGroup);
    for (int k = 0; k < kGroup / 16; ++k) {
      scale[g * (kGroup / 16) + k] = s;
      offset[g * (kGroup / 16) + k] = -zs;
    }
  });
}

void pack_lb3(const uint8_t* codes, uint8_t* qs) {
  for (int j = 0; j < kGroup / 8; ++j) pack8x3(codes + 8 * j, qs + 3 * j);
}
void unpack_lb3(const uint8_t* qs, uint8_t* codes) {
  for (int j = 0; j < kGroup / 8; ++j) unpack8x3(qs + 3 * j, codes + 8 * j);
}
void pack_lb2(const uint8_t* codes, uint8_t* qs) {
  for (int j = 0; j < kGroup / 4; ++j) qs[j] = pack4x2(codes + 4 * j);
}
void unpack_lb2(const uint8_t* qs, uint8_t* codes) {
  for (int j = 0; j < kGroup / 4; ++j) unpack4x2(qs[j], codes + 4 * j);
}

}  // namespace

void quantize_row_lb3(const float* x, void* dst, int64_t n, const float* importance) {
  quantize_row_calib<8, BlockLB3>(x, dst, n, importance, Calibration{}, pack_lb3);
}
void dequantize_row_lb3(const void* src, float* y, int64_t n) { dequantize_row<BlockLB3>(src, y, n, unpack_lb3); }
void unpack_row_lb3(const void* src, int8_t* q, float* scale, float* offset, int64_t n) {
  unpack_row<BlockLB3>(src, q, scale, offset, n, unpack_lb3);
}
void quantize_row_lb2(const float* x, void* dst, int64_t n, const float* importance) {
  quantize_row_calib<4, BlockLB2>(x, dst, n, importance, Calibration{}, pack_lb2);
}
void dequantize_row_lb2(const void* src, float* y, int64_t n) { dequantize_row<BlockLB2>(src, y, n, unpack_lb2); }
void unpack_row_lb2(const void* src, int8_t* q, float* scale, float* offset, int64_t n) {
  unpack_row<BlockLB2>(src, q, scale, offset, n, unpack_lb2);
}
void quantize_row_lb3_calib(const float* x, void* dst, int64_t n, const float* importance, const Calibration& c) {
  quantize_row_calib<8, BlockLB3>(x, dst, n, importance, c, pack_lb3);
}
void quantize_row_lb2_calib(const float* x, void* dst, int64_t n, const float* importance, const Calibration& c) {
  quantize_row_calib<4, BlockLB2>(x, dst, n, importance, c, pack_lb2);
}

}  // namespace mixq::lowbit
