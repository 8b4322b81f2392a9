#include "mixq/formats/iq4.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>

#include "mixq/formats/block_weights.h"
#include "mixq/formats/half.h"
#include "mixq/formats/search_avx512.h"
#include "mixq/formats/search_isa.h"

namespace mixq::iq4 {
namespace {

constexpr double distance(double a, double b) { return a > b ? a - b : b - a; }

// Nearest grid index for a value in grid units, looked up in half-unit steps over [-128, 128):
// every midpoint between neighbouring grid values is a multiple of 1/2, so no step straddles one.
constexpr std::array<uint8_t, 512> make_nearest_table() {
  std::array<uint8_t, 512> table{};
  for (int k = 0; k < 512; ++k) {
    const double v = (k - 256) / 2.0 + 0.25;
    int best = 0;
    for (int i = 1; i < 16; ++i) {
      if (distance(v, kGrid[i]) < distance(v, kGrid[best])) best = i;
    }
    table[k] = static_cast<uint8_t>(best);
  }
  return table;
}
constexpr std::array<uint8_t, 512> kNearest = make_nearest_table();
// The grid value itself, for the searches that only need sums.
constexpr std::array<float, 512> kNearestValue = [] {
  std::array<float, 512> table{};
  for (int k = 0; k < 512; ++k) table[k] = kGrid[kNearest[k]];
  return table;
}();

// Slot of v in the tables. After the clamp 2v + 256 lies in [0, 511.5], so truncation is floor;
// the clamp's order sends a NaN to the lowest slot rather than into the conversion.
inline int table_slot(float v) { return static_cast<int>(2.0f * std::min(127.75f, std::max(-128.0f, v)) + 256.0f); }

// Partial sums are kept in kLanes independent accumulators so the compiler can vectorize the
// arithmetic without reassociating a floating-point reduction (no -ffast-math here).
constexpr int kLanes = 8;

// Where the group's extreme value may land, in grid units past either end of the grid (-127 or
// 113). Negative offsets leave headroom, positive ones clip the extreme for finer steps near zero.
// Each candidate's scale is then refined by least squares for its indices.
constexpr std::array<float, 8> kEndOffsets = {-8.0f, -4.0f, 0.0f, 4.0f, 8.0f, 12.0f, 18.0f, 26.0f};

// Rounds of alternating nearest indices and least-squares scale after the seed search.
constexpr int kRefineRounds = 2;

using ScaleCandidate = ScaleFit;

// Nearest grid values for x * iscale and their least-squares scale; wx[i] = w[i] * x[i].
ScaleCandidate fit_for_inverse_scale(const float* x, const float* w, const float* wx, float iscale) {
  return least_squares_scale<kGroup>(w, wx, [&](int i) { return kNearestValue[table_slot(x[i] * iscale)]; });
}

// Best scale for one group of 32 values (value = scale * kGrid[index]), minimizing
// sum w (x - value)^2; 0 for an all-zero group.
float fit_group(const float* x, const float* w) {
  if (search::isa() == search::Isa::avx512) {
    return search::iq4_fit_group_avx512(x, w, kNearestValue.data(), kGrid.front(), kGrid.back(), kEndOffsets.data(),
                                        static_cast<int>(kEndOffsets.size()), kRefineRounds);
  }
  float amax = 0, extreme = 0;
  for (int i = 0; i < kGroup; ++i) {
    if (std::fabs(x[i]) > amax) {
      amax = std::fabs(x[i]);
      extreme = x[i];
    }
  }
  if (amax < 1e-20f) return 0;
  float wx[kGroup];
  for (int i = 0; i < kGroup; ++i) wx[i] = w[i] * x[i];
  ScaleCandidate best;
  // The grid is lopsided (-127..113): the extreme value may map to either end.
  for (const int end : {int{kGrid.front()}, int{kGrid.back()}}) {
    for (const float off : kEndOffsets) {
      const float iscale = (end < 0 ? static_cast<float>(end) - off : static_cast<float>(end) + off) / extreme;
      const ScaleCandidate c = fit_for_inverse_scale(x, w, wx, iscale);
      if (c.gain > best.gain) best = c;
    }
  }
  for (int round = 0; round < kRefineRounds && best.scale != 0; ++round) {
    const ScaleCandidate c = fit_for_inverse_scale(x, w, wx, static_cast<float>(1.0 / best.scale));
    if (!(c.gain > best.gain)) break;
    best = c;
  }
  return static_cast<float>(best.scale);
}

// Nearest indices for a fixed scale and the weighted squared error they leave.
float indices_for_scale(const float* x, const float* w, float scale, uint8_t* idx) {
  const float inv = scale != 0 ? 1.0f / scale : 0.0f;
  float err[kLanes] = {};
  for (int i = 0; i < kGroup; i += kLanes) {
    for (int k = 0; k < kLanes; ++k) {
      const int slot = table_slot(x[i + k] * inv);
      idx[i + k] = kNearest[slot];
      const float e = x[i + k] - scale * kNearestValue[slot];
      err[k] += w[i + k] * e * e;
    }
  }
  return std::accumulate(err, err + kLanes, 0.0f);
}

void pack_group(const uint8_t* idx, uint8_t* qs) {
  for (int j = 0; j < kGroup / 2; ++j) qs[j] = static_cast<uint8_t>(idx[j] | idx[j + kGroup / 2] << 4);
}

}  // namespace

// An IQ4_NL block is fitted exactly like one IQ4_XS group, with its scale stored directly in f16.
static_assert(kBlockNL == kGroup);

void quantize_row_iq4_nl(const float* x, void* dst, int64_t n, const float* importance) {
  auto* out = static_cast<BlockIQ4NL*>(dst);
  float w[kBlockNL];
  uint8_t idx[kBlockNL];
  for (int64_t b = 0; b < n / kBlockNL; ++b) {
    const float* xb = x + b * kBlockNL;
    block_weights(importance, b * kBlockNL, kBlockNL, w);
    const float d = round_fp16(fit_group(xb, w));
    indices_for_scale(xb, w, d, idx);
    out[b].d = fp32_to_fp16(d);
    pack_group(idx, out[b].qs);
  }
}

void dequantize_row_iq4_nl(const void* src, float* y, int64_t n) {
  const auto* in = static_cast<const BlockIQ4NL*>(src);
  for (int64_t b = 0; b < n / kBlockNL; ++b, y += kBlockNL) {
    const float d = fp16_to_fp32(in[b].d);
    for (int j = 0; j < kBlockNL / 2; ++j) {
      y[j] = d * static_cast<float>(kGrid[in[b].qs[j] & 0xf]);
      y[j + kBlockNL / 2] = d * static_cast<float>(kGrid[in[b].qs[j] >> 4]);
    }
  }
}

// IQ4_XS: fit each group's ideal scale, then pick the super-scale. The 6-bit group scales are
// coarse for groups much quieter than the loudest one, so each group tries both neighbours of
// its ideal scale on the 6-bit grid and keeps the one whose re-chosen indices err least.
void quantize_row_iq4_xs(const float* x, void* dst, int64_t n, const float* importance) {
  constexpr int kGroups = kBlockXS / kGroup;
  auto* out = static_cast<BlockIQ4XS*>(dst);
  float w[kBlockXS];
  uint8_t idx[kGroup];
  for (int64_t b = 0; b < n / kBlockXS; ++b) {
    const float* xb = x + b * kBlockXS;
    BlockIQ4XS& blk = out[b];
    std::memset(&blk, 0, sizeof(blk));
    for (int g = 0; g < kGroups; ++g) block_weights(importance, b * kBlockXS + g * kGroup, kGroup, w + g * kGroup);

    float scales[kGroups];
    float smax = 0;
    for (int g = 0; g < kGroups; ++g) {
      scales[g] = fit_group(xb + g * kGroup, w + g * kGroup);
      if (std::fabs(scales[g]) > std::fabs(smax)) smax = scales[g];
    }
    if (smax == 0) continue;

    // The loudest group goes to either end of the lopsided 6-bit range [-32, 31].
    double best_err = INFINITY;
    for (const float cand : {smax / -32.0f, smax / 31.0f}) {
      const float d = round_fp16(cand);
      if (d == 0) continue;
      double err = 0;
      int ls[kGroups];
      uint8_t qs[kBlockXS / 2];
      for (int g = 0; g < kGroups; ++g) {
        const int lf = static_cast<int>(std::floor(scales[g] / d));
        double group_best = INFINITY;
        for (int l = std::clamp(lf, -32, 31); l <= std::clamp(lf + 1, -32, 31); ++l) {
          // The same float expression the dequantizer evaluates, so the error is the real one.
          const float dl = d * static_cast<float>(l);
          const double e = indices_for_scale(xb + g * kGroup, w + g * kGroup, dl, idx);
          if (e < group_best) {
            group_best = e;
            ls[g] = l + 32;
            pack_group(idx, qs + g * kGroup / 2);
          }
        }
        err += group_best;
      }
      if (err < best_err) {
        best_err = err;
        blk.d = fp32_to_fp16(d);
        blk.scales_h = 0;
        std::fill(std::begin(blk.scales_l), std::end(blk.scales_l), 0);
        for (int g = 0; g < kGroups; ++g) {
          blk.scales_l[g / 2] |= static_cast<uint8_t>((ls[g] & 0xf) << (4 * (g % 2)));
          blk.scales_h |= static_cast<uint16_t>((ls[g] >> 4) << (2 * g));
        }
        std::memcpy(blk.qs, qs, sizeof(qs));
      }
    }
  }
}

void dequantize_row_iq4_xs(const void* src, float* y, int64_t n) {
  const auto* in = static_cast<const BlockIQ4XS*>(src);
  for (int64_t b = 0; b < n / kBlockXS; ++b) {
    const float d = fp16_to_fp32(in[b].d);
    const uint8_t* qs = in[b].qs;
    for (int g = 0; g < kBlockXS / kGroup; ++g, y += kGroup, qs += kGroup / 2) {
      const int ls = ((in[b].scales_l[g / 2] >> (4 * (g % 2))) & 0xf) | (((in[b].scales_h >> (2 * g)) & 3) << 4);
      // ggml rounds d * (ls - 32) to float before applying it; the order is part of the result.
      const float dl = d * static_cast<float>(ls - 32);
      for (int j = 0; j < kGroup / 2; ++j) {
        y[j] = dl * static_cast<float>(kGrid[qs[j] & 0xf]);
        y[j + kGroup / 2] = dl * static_cast<float>(kGrid[qs[j] >> 4]);
      }
    }
  }
}


// Integer views: the grid values themselves are the int8 codes.
void unpack_row_iq4_nl(const void* src, int8_t* q, float* scale, float* offset, int64_t n) {
  const auto* in = static_cast<const BlockIQ4NL*>(src);
  for (int64_t b = 0; b < n / kBlockNL; ++b, q += kBlockNL) {
    for (int j = 0; j < kBlockNL / 2; ++j) {
      q[j] = kGrid[in[b].qs[j] & 0xf];
      q[j + kBlockNL / 2] = kGrid[in[b].qs[j] >> 4];
    }
    scale[2 * b] = scale[2 * b + 1] = fp16_to_fp32(in[b].d);
    offset[2 * b] = offset[2 * b + 1] = 0.0f;
  }
}

void unpack_row_iq4_xs(const void* src, int8_t* q, float* scale, float* offset, int64_t n) {
  const auto* in = static_cast<const BlockIQ4XS*>(src);
  for (int64_t b = 0; b < n / kBlockXS; ++b) {
    const float d = fp16_to_fp32(in[b].d);
    const uint8_t* qs = in[b].qs;
    for (int g = 0; g < kBlockXS / kGroup; ++g, q += kGroup, qs += kGroup / 2) {
      const int ls = ((in[b].scales_l[g / 2] >> (4 * (g % 2))) & 0xf) | (((in[b].scales_h >> (2 * g)) & 3) << 4);
      *scale++ = d * static_cast<float>(ls - 32);
      *scale++ = d * static_cast<float>(ls - 32);
      *offset++ = 0.0f;
      *offset++ = 0.0f;
      for (int j = 0; j < kGroup / 2; ++j) {
        q[j] = kGrid[qs[j] & 0xf];
        q[j + kGroup / 2] = kGrid[qs[j] >> 4];
      }
    }
  }
}

}  // namespace mixq::iq4
