#include "mixq/formats/int8.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "mixq/formats/block_weights.h"
#include "mixq/formats/half.h"

namespace mixq::int8 {
namespace {

constexpr float kHalfMax = 65504.0f;

// Neighbouring f16 values, by bit pattern (sign-magnitude: the magnitude steps the other way for
// negatives; both zeros step to the smallest subnormal of the right sign).
uint16_t half_step_down(uint16_t h) {
  if ((h & 0x7fffu) == 0) return 0x8001u;
  return (h & 0x8000u) ? static_cast<uint16_t>(h + 1) : static_cast<uint16_t>(h - 1);
}
uint16_t half_step_up(uint16_t h) {
  if ((h & 0x7fffu) == 0) return 0x0001u;
  return (h & 0x8000u) ? static_cast<uint16_t>(h - 1) : static_cast<uint16_t>(h + 1);
}

// The largest f16 <= v and the smallest f16 >= v, for v within f16's finite range.
uint16_t half_round_down(float v) {
  const uint16_t h = fp32_to_fp16(v);
  return fp16_to_fp32(h) > v ? half_step_down(h) : h;
}
uint16_t half_round_up(float v) {
  const uint16_t h = fp32_to_fp16(v);
  return fp16_to_fp32(h) < v ? half_step_up(h) : h;
}

// The code in [lo, hi] whose decoded value is nearest x. `guess` comes from a rounded quotient,
// which float rounding can put one off the true nearest code near a midpoint, so its neighbours
// are compared on the decoded values themselves.
template <typename Decode>
int nearest_code(float x, long guess, int lo, int hi, Decode decode) {
  const int q0 = static_cast<int>(std::clamp<long>(guess, lo, hi));
  int best = q0;
  // Compared in double, where the difference of two nearby floats is exact, so near-ties are
  // judged right too.
  double best_err = std::fabs(static_cast<double>(x) - decode(q0));
  for (const int q : {q0 - 1, q0 + 1}) {
    if (q < lo || q > hi) continue;
    const double err = std::fabs(static_cast<double>(x) - decode(q));
    if (err < best_err) {
      best_err = err;
      best = q;
    }
  }
  return best;
}


// Spacing of f32 values at magnitude v, when it is coarser than f16's finest step (2^-24, of which
// every f16 value is a multiple); 0 otherwise.
double coarse_f32_spacing(double v) {
  if (!(v > 0)) return 0;
  const double u = std::ldexp(1.0, std::ilogb(v) - 23);
  return u > 0x1p-24 ? u : 0;
}

// v rounded up (down) to a multiple of u (u = 0: unchanged), then to an f16 no smaller (larger).
uint16_t half_up_to_multiple(double v, double u) {
  if (u > 0) v = std::ceil(v / u) * u;
  return half_round_up(static_cast<float>(std::min(v, static_cast<double>(kHalfMax))));
}
uint16_t half_down_to_multiple(double v, double u) {
  if (u > 0) v = std::floor(v / u) * u;
  return half_round_down(static_cast<float>(std::max(v, -static_cast<double>(kHalfMax))));
}

struct MinMaxGrid {
  uint16_t d, m;
};

// The I8_MM grid of a block with extremes lo and hi: m <= lo and m + 255 d >= hi, so every value
// is within d / 2 of a grid point. The grid points must also decode exactly, or f32 rounding of
// m + q * d could move one by up to half an f32 ulp and break that bound (a narrow block far from
// zero: m = 999.5, d = 2^-7 + 2^-17). q * d is always exact (8-bit q, 11-bit significand); the sum
// is exact when m and d are multiples of the f32 spacing u at the grid's largest magnitude. So m
// and d are rounded outward to multiples of u; that can move the top into the next binade, hence
// the loop (u only grows, so it ends). For weights centred on zero u is far below d's own f16
// step and nothing changes.
MinMaxGrid fit_min_max(float lo, float hi) {
  const double lo_c = std::clamp(lo, -kHalfMax, kHalfMax);
  const double hi_c = std::clamp(hi, -kHalfMax, kHalfMax);
  double u = 0;
  for (;;) {
    const uint16_t m = half_down_to_multiple(lo_c, u);
    const double mv = fp16_to_fp32(m);
    uint16_t d = half_up_to_multiple((hi_c - mv) / 255.0, u);
    // In double, hi - m and m + 255 d are exact, so this is the true cover condition; the division
    // above may have rounded just below it.
    while (mv + 255.0 * fp16_to_fp32(d) < hi_c && d < 0x7bffu) {
      d = u > 0 ? half_up_to_multiple(fp16_to_fp32(d) + u, u) : half_step_up(d);
    }
    const double top = std::max(std::fabs(mv), std::fabs(mv + 255.0 * fp16_to_fp32(d)));
    const double needed = coarse_f32_spacing(top);
    if (needed <= u) return {d, m};
    u = needed;
  }
}

}  // namespace

void quantize_row_i8_row(const float* x, void* dst, int64_t n, const float* /*importance*/) {
  auto* out = static_cast<uint8_t*>(dst);
  float amax = 0;
  for (int64_t i = 0; i < n; ++i) amax = std::max(amax, std::fabs(x[i]));
  const float s = amax / 127.0f;
  std::memcpy(out, &s, sizeof s);
  auto* q = reinterpret_cast<int8_t*>(out + kRowHeaderBytes);
  if (!(s > 0)) {
    std::fill(q, q + n, int8_t{0});
    return;
  }
  const auto decode = [s](int c) { return static_cast<float>(c) * s; };
  for (int64_t i = 0; i < n; ++i) {
    q[i] = static_cast<int8_t>(nearest_code(x[i], std::lrint(x[i] / s), -127, 127, decode));
  }
}

void dequantize_row_i8_row(const void* src, float* y, int64_t n) {
  const auto* in = static_cast<const uint8_t*>(src);
  float s;
  std::memcpy(&s, in, sizeof s);
  const auto* q = reinterpret_cast<const int8_t*>(in + kRowHeaderBytes);
  for (int64_t i = 0; i < n; ++i) y[i] = static_cast<float>(q[i]) * s;
}

void quantize_row_i8_mm(const float* x, void* dst, int64_t n, const float* /*importance*/) {
  auto* out = static_cast<uint8_t*>(dst);
  for (int64_t b = 0; b < n / kMinMaxBlock; ++b) {
    const float* xb = x + b * kMinMaxBlock;
    const auto [lo_it, hi_it] = std::minmax_element(xb, xb + kMinMaxBlock);
    const MinMaxGrid grid = fit_min_max(*lo_it, *hi_it);
    BlockI8MM block;
    block.d = grid.d;
    block.m = grid.m;
    const float d = fp16_to_fp32(grid.d);
    const float m = fp16_to_fp32(grid.m);
    const auto decode = [m, d](int c) { return m + static_cast<float>(c) * d; };
    for (int i = 0; i < kMinMaxBlock; ++i) {
      const long guess = d > 0 ? std::lrint((xb[i] - m) / d) : 0;
      block.qs[i] = static_cast<uint8_t>(nearest_code(xb[i], guess, 0, 255, decode));
    }
    std::memcpy(out + b * sizeof(BlockI8MM), &block, sizeof block);
  }
}

void quantize_row_i8_row_calib(const float* x, void* dst, int64_t n, const float* importance, const Calibration& c) {
  if (c.method == ScaleMethod::Search || c.method == ScaleMethod::MinMax) {
    quantize_row_i8_row(x, dst, n, importance);  // absmax: per-row symmetric by construction
    return;
  }
  std::vector<float> w(static_cast<size_t>(n));
  block_weights(importance, 0, static_cast<int>(n), w.data());
  const auto code = [](float v, float s) { return std::clamp(std::nearbyint(v / s), -127.0f, 127.0f); };
  const auto score = [&](float /*lo*/, float hi) {
    const float s = hi / 127.0f;
    if (!(s > 0)) return std::numeric_limits<float>::infinity();
    double e = 0;
    for (int64_t i = 0; i < n; ++i) {
      const double d = x[i] - code(x[i], s) * s;
      e += w[static_cast<size_t>(i)] * d * d;
    }
    return static_cast<float>(e);
  };
  const calib::Range r = calib::choose_range(x, w.data(), n, c, true, score);
  auto* out = static_cast<uint8_t*>(dst);
  const float s = r.hi / 127.0f;
  std::memcpy(out, &s, sizeof s);
  auto* q = reinterpret_cast<int8_t*>(out + kRowHeaderBytes);
  for (int64_t i = 0; i < n; ++i) q[i] = s > 0 ? static_cast<int8_t>(code(x[i], s)) : int8_t{0};
}

void quantize_row_i8_mm_calib(const float* x, void* dst, int64_t n, const float* importance, const Calibration& c) {
  if (c.is_default()) {
    quantize_row_i8_mm(x, dst, n, importance);
    return;
  }
  auto* out = static_cast<uint8_t*>(dst);
  float w[kMinMaxBlock];
  auto encode = [&](const float* xb, float lo, float hi, BlockI8MM& block) {
    if (c.symmetric) {
      const float a = std::max(std::fabs(lo), std::fabs(hi));
      lo = -a;
      hi = a;
    }
    const MinMaxGrid grid = fit_min_max(lo, hi);
    block.d = grid.d;
    block.m = grid.m;
    const float d = fp16_to_fp32(grid.d), m = fp16_to_fp32(grid.m);
    const auto decode = [m, d](int q) { return m + static_cast<float>(q) * d; };
    for (int i = 0; i < kMinMaxBlock; ++i) {
      const long guess = d > 0 ? std::lrint((xb[i] - m) / d) : 0;
      block.qs[i] = static_cast<uint8_t>(nearest_code(xb[i], guess, 0, 255, decode));
    }
  };
  for (int64_t b = 0; b < n / kMinMaxBlock; ++b) {
    const float* xb = x + b * kMinMaxBlock;
    block_weights(importance, b * kMinMaxBlock, kMinMaxBlock, w);
    const auto score = [&](float lo, float hi) {
      BlockI8MM block;
      encode(xb, lo, hi, block);
      const float d = fp16_to_fp32(block.d), m = fp16_to_fp32(block.m);
      double e = 0;
      for (int i = 0; i < kMinMaxBlock; ++i) {
        const double err = xb[i] - (m + static_cast<float>(block.qs[i]) * d);
        e += w[i] * err * err;
      }
      return static_cast<float>(e);
    };
    const calib::Range r = calib::choose_range(xb, w, kMinMaxBlock, c, c.symmetric, score);
    BlockI8MM block;
    encode(xb, r.lo, r.hi, block);
    if (c.hqq_iterations > 0 && !c.symmetric) {
      // value = m + q d = (q - z) d with z = -m / d: refine z, store m = -z d.
      const float d = fp16_to_fp32(block.d);
      if (d > 0) {
        const float z = calib::hqq_zero(xb, kMinMaxBlock, 255, d, -fp16_to_fp32(block.m) / d, c.hqq_iterations);
        block.m = fp32_to_fp16(std::clamp(-z * d, -kHalfMax, kHalfMax));
        const float m = fp16_to_fp32(block.m);
        const auto decode = [m, d](int q) { return m + static_cast<float>(q) * d; };
        for (int i = 0; i < kMinMaxBlock; ++i) {
          block.qs[i] = static_cast<uint8_t>(nearest_code(xb[i], std::lrint((xb[i] - m) / d), 0, 255, decode));
        }
      }
    }
    std::memcpy(out + b * sizeof(BlockI8MM), &block, sizeof block);
  }
}

void dequantize_row_i8_mm(const void* src, float* y, int64_t n) {
  const auto* in = static_cast<const uint8_t*>(src);
  for (int64_t b = 0; b < n / kMinMaxBlock; ++b) {
    BlockI8MM block;
    std::memcpy(&block, in + b * sizeof(BlockI8MM), sizeof block);
    const float d = fp16_to_fp32(block.d);
    const float m = fp16_to_fp32(block.m);
    float* yb = y + b * kMinMaxBlock;
    for (int i = 0; i < kMinMaxBlock; ++i) yb[i] = m + static_cast<float>(block.qs[i]) * d;
  }
}


// Integer view of I8_ROW: the codes and the row scale (a last partial group of 16 shares it).
void unpack_row_i8_row(const void* src, int8_t* q, float* scale, float* offset, int64_t n) {
  const auto* in = static_cast<const uint8_t*>(src);
  float s;
  std::memcpy(&s, in, sizeof s);
  std::memcpy(q, in + kRowHeaderBytes, static_cast<size_t>(n));
  for (int64_t g = 0; g < (n + 15) / 16; ++g) {
    scale[g] = s;
    offset[g] = 0.0f;
  }
}

}  // namespace mixq::int8
