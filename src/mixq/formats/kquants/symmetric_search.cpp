#include "mixq/formats/kquants/symmetric_search.h"

#include <algorithm>
#include <cmath>
#include <iterator>

#include "mixq/formats/half.h"
#include "mixq/formats/search_avx512.h"
#include "mixq/formats/search_isa.h"

namespace mixq::kq {
namespace {

// Nearest integer, ties to even, for |v| < 2^22 (vectorizes, unlike lrintf).
inline float round_float(float v) { return (v + 0x1.8p23f) - 0x1.8p23f; }
inline float clampf(float v, float lo, float hi) { return std::min(hi, std::max(lo, v)); }

// Where the sub-block's largest-magnitude value is mapped, in code steps past the end of the
// range: clipping it slightly gives every other value a finer grid. Each seed is refined by least
// squares, so a coarse set suffices.
constexpr float kSeedOffsets[] = {-0.5f, -0.25f, 0.0f, 0.25f, 0.5f, 1.0f};
constexpr int kRefineRounds = 2;
// Least-squares refits of the super-scale after the first choice of integer scales.
constexpr int kSuperRefineRounds = 2;

struct Fit {
  double gain = 0;  // (sum w x q)^2 / sum w q^2: how much the least-squares scale removes
  double scale = 0;
};

// The best real-valued scale for one sub-block (codes clamped to [lo, hi]).
Fit fit_sub_block(const float* x, const float* w, float lo, float hi) {
  float amax = 0, extreme = 0;
  for (int i = 0; i < kSymSub; ++i) {
    if (std::fabs(x[i]) > amax) {
      amax = std::fabs(x[i]);
      extreme = x[i];
    }
  }
  if (amax < 1e-30f) return {};
  const auto evaluate = [&](float iscale) {
    float sxq = 0, sqq = 0;
    for (int i = 0; i < kSymSub; ++i) {
      const float q = round_float(clampf(x[i] * iscale, lo, hi));
      sxq += w[i] * x[i] * q;
      sqq += w[i] * q * q;
    }
    Fit f;
    if (sqq > 0) {
      f.gain = static_cast<double>(sxq) * sxq / sqq;
      f.scale = static_cast<double>(sxq) / sqq;
    }
    return f;
  };
  Fit best;
  for (const float end : {lo, hi}) {
    for (const float off : kSeedOffsets) {
      const float target = end < 0 ? end - off : end + off;
      const Fit f = evaluate(target / extreme);
      if (f.gain > best.gain) best = f;
    }
  }
  for (int r = 0; r < kRefineRounds && best.scale != 0; ++r) {
    const Fit f = evaluate(static_cast<float>(1.0 / best.scale));
    if (!(f.gain > best.gain)) break;
    best = f;
  }
  return best;
}

// Codes for one sub-block under the decoder's scale D = d * sc, and their weighted error.
float encode_sub_block(const float* x, const float* w, float D, float lo, float hi, int8_t* codes) {
  const float inv = D != 0 ? 1.0f / D : 0.0f;
  float err = 0;
  for (int i = 0; i < kSymSub; ++i) {
    const float q = round_float(clampf(x[i] * inv, lo, hi));
    codes[i] = static_cast<int8_t>(q);
    const float diff = x[i] - D * q;
    err += w[i] * diff * diff;
  }
  return err;
}

struct Choice {
  float err = 0;
  int8_t sc[kSymSubBlocks];
  int8_t codes[kSuperBlock];
};

// With the super-scale fixed, each sub-block picks the integer scale (the nearest to its ideal
// and its two neighbours) whose re-encoded codes give the least error.
void choose_scales(const float* x, const float* w, const double* ideal, float d, const SymmetricShape& s,
                   Choice& out) {
  const auto lo = static_cast<float>(s.code_lo), hi = static_cast<float>(s.code_hi);
  out.err = 0;
  int8_t trial[kSymSub];
  for (int j = 0; j < kSymSubBlocks; ++j) {
    const float* xj = x + j * kSymSub;
    const float* wj = w + j * kSymSub;
    const int centre = d != 0 ? static_cast<int>(std::lround(ideal[j] / d)) : 0;
    float best_err = INFINITY;
    for (int sc = centre - 1; sc <= centre + 1; ++sc) {
      if (sc < -s.scale_max || sc > s.scale_max) continue;
      const float D = d * static_cast<float>(sc);
      const float err = encode_sub_block(xj, wj, D, lo, hi, trial);
      if (err < best_err) {
        best_err = err;
        out.sc[j] = static_cast<int8_t>(sc);
        std::copy(trial, trial + kSymSub, out.codes + j * kSymSub);
      }
    }
    out.err += best_err;
  }
}

}  // namespace

void quantize_symmetric_super_block(const float* x, const float* importance, const SymmetricShape& shape,
                                    SymmetricSuperBlock& out) {
  float w[kSuperBlock];
  for (int i = 0; i < kSuperBlock; ++i) w[i] = importance ? importance[i] : 1.0f;
  // A sub-block whose importance is all zero would have no preferred scale: weigh it plainly.
  for (int j = 0; j < kSymSubBlocks; ++j) {
    float sum = 0;
    for (int i = 0; i < kSymSub; ++i) sum += w[j * kSymSub + i];
    if (!(sum > 0)) std::fill(w + j * kSymSub, w + (j + 1) * kSymSub, 1.0f);
  }
  if (search::isa() == search::Isa::avx512) {
    search::symmetric_super_block_avx512(x, w, shape.code_lo, shape.code_hi, shape.scale_max, kSeedOffsets,
                                         static_cast<int>(std::size(kSeedOffsets)), kRefineRounds, kSuperRefineRounds,
                                         &out.d, out.sc, out.codes);
    return;
  }
  const auto lo = static_cast<float>(shape.code_lo), hi = static_cast<float>(shape.code_hi);
  double ideal[kSymSubBlocks];
  double max_abs = 0;
  for (int j = 0; j < kSymSubBlocks; ++j) {
    ideal[j] = fit_sub_block(x + j * kSymSub, w + j * kSymSub, lo, hi).scale;
    max_abs = std::max(max_abs, std::fabs(ideal[j]));
  }
  out.d = 0;
  std::fill(std::begin(out.sc), std::end(out.sc), 0);
  std::fill(std::begin(out.codes), std::end(out.codes), 0);
  if (max_abs == 0) return;

  // Zero-initialized: when no super-scale is usable (all too small or too large for f16) the block
  // stores d = 0 with zero scales and codes, not whatever the stack held.
  Choice best{}, trial;
  best.err = INFINITY;
  uint16_t best_d = 0;
  const auto try_d = [&](double candidate) {
    const uint16_t bits = fp32_to_fp16(static_cast<float>(candidate));
    const float d = fp16_to_fp32(bits);
    if (!(d > 0) || !std::isfinite(d)) return;
    choose_scales(x, w, ideal, d, shape, trial);
    if (trial.err < best.err) {
      best = trial;
      best_d = bits;
    }
  };
  // The largest ideal scale lands on scale_max, or a little inside it so its rounding has room.
  const double m = static_cast<double>(shape.scale_max);
  for (const double top : {m, m - 0.5, m - 1.0}) try_d(max_abs / top);
  // Least-squares super-scale for the chosen integer scales and codes, kept if it helps.
  for (int round = 0; round < kSuperRefineRounds; ++round) {
    double num = 0, den = 0;
    for (int j = 0; j < kSymSubBlocks; ++j) {
      for (int i = 0; i < kSymSub; ++i) {
        const double sq = static_cast<double>(best.sc[j]) * best.codes[j * kSymSub + i];
        num += w[j * kSymSub + i] * x[j * kSymSub + i] * sq;
        den += w[j * kSymSub + i] * sq * sq;
      }
    }
    if (den <= 0) break;
    const uint16_t before = best_d;
    try_d(num / den);
    if (best_d == before) break;
  }
  out.d = best_d;
  std::copy(std::begin(best.sc), std::end(best.sc), out.sc);
  std::copy(std::begin(best.codes), std::end(best.codes), out.codes);
}

}  // namespace mixq::kq
