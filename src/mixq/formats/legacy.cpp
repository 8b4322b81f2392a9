#include "mixq/formats/legacy.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <cmath>
#include <span>
#include <vector>

#include "mixq/formats/block_weights.h"
#include "mixq/formats/half.h"
#include "mixq/formats/search_avx512.h"
#include "mixq/formats/search_isa.h"

// The dequantizers must reproduce ggml's floats bit for bit. ggml evaluates the affine types as
// code * d + m with two roundings; a fused multiply-add would round once and differ in the last
// bit, so this file is compiled with -ffp-contract=off (see CMakeLists.txt).

namespace mixq::legacy {
namespace {

// Partial sums per block are kept in kLanes independent accumulators: the compiler vectorizes
// across them without having to reassociate a floating-point reduction (no -ffast-math here).
constexpr int kLanes = 8;

// Nearest integer (ties to even) for |v| < 2^22: adding 1.5 * 2^23 pushes the fraction out of the
// mantissa. Unlike lrintf or a cast this vectorizes on baseline x86-64 (SSE2 has no roundps).
inline float round_float(float v) { return (v + 0x1.8p23f) - 0x1.8p23f; }
// Clamp written so that a NaN lands on lo instead of flowing into a later integer conversion.
inline float clamp_code(float v, float lo, float hi) { return std::min(hi, std::max(lo, v)); }

// How far past the end of the code range (in code steps) the block's extreme value may be mapped.
// Clipping the largest value a little buys a finer step for all the others; each candidate is then
// refined by least squares, so a coarse set of starting points is enough (four seeds per end
// measured within 0.3% of the RMSE of eight, at 1.6x the speed).
constexpr std::array<float, 4> kScaleOffsets = {0.0f, 0.5f, 1.0f, 1.5f};
// Eight-bit codes lose almost nothing to rounding the extreme value; clipping never pays there.
constexpr std::array<float, 2> kQ8Offsets = {0.0f, 0.5f};
// Affine blocks also choose where the grid sits between the minimum and the maximum. With uneven
// importance weights the error is very rugged in that phase, and anchoring the grid at the minimum
// (as ggml does) misses most of the good fits; three phases per spacing recover them.
constexpr std::array<float, 5> kAffineOffsets = {-0.5f, 0.0f, 0.5f, 1.0f, 1.5f};
constexpr std::array<float, 3> kAffinePhases = {-1.0f / 3, 0.0f, 1.0f / 3};
// Rounds of alternating nearest codes and least-squares scales after the seed search.
constexpr int kRefineRounds = 3;

using ScaleCandidate = ScaleFit;

// Scale-only blocks (value = d * q, q in [lo, hi]): minimizes sum w (x - d q)^2. Candidate code
// assignments each get their least-squares d; the best is polished by alternating nearest codes
// and least squares. Returns d rounded to f16 with the codes that are nearest for that rounded d.
float fit_scale(const float* x, const float* w, int lo, int hi, std::span<const float> offsets, int* q) {
  float amax = 0, extreme = 0;
  for (int i = 0; i < kBlock; ++i) {
    if (std::fabs(x[i]) > amax) {
      amax = std::fabs(x[i]);
      extreme = x[i];
    }
  }
  // Below this no f16 scale can represent the block anyway; it also keeps 1/extreme finite.
  if (amax < 1e-20f) {
    std::fill(q, q + kBlock, 0);
    return 0;
  }
  const auto flo = static_cast<float>(lo), fhi = static_cast<float>(hi);
  float wx[kBlock];
  for (int i = 0; i < kBlock; ++i) wx[i] = w[i] * x[i];
  // Codes round(x * iscale) and their least-squares d.
  const auto evaluate = [&](float iscale) {
    return least_squares_scale<kBlock>(w, wx, [&](int i) { return round_float(clamp_code(x[i] * iscale, flo, fhi)); });
  };
  ScaleCandidate best;
  // GGML's code ranges are lopsided (Q4_0: -8..7), so the extreme value may go to either end.
  for (const int end : {lo, hi}) {
    for (const float off : offsets) {
      const ScaleCandidate c = evaluate((end < 0 ? flo - off : fhi + off) / extreme);
      if (c.gain > best.gain) best = c;
    }
  }
  for (int round = 0; round < kRefineRounds && best.scale != 0; ++round) {
    const ScaleCandidate c = evaluate(static_cast<float>(1.0 / best.scale));
    if (!(c.gain > best.gain)) break;
    best = c;
  }
  const float d = round_fp16(static_cast<float>(best.scale));
  const float id = d != 0 ? 1.0f / d : 0.0f;
  for (int i = 0; i < kBlock; ++i) q[i] = static_cast<int>(round_float(clamp_code(x[i] * id, flo, fhi)));
  return d;
}

// The block weights of a row for the AVX-512 search (null without importance: the search is told
// that every weight is 1 by a null w), per thread and reused: rows of one tensor are all alike.
const float* row_block_weights(const float* importance, int64_t blocks) {
  if (importance == nullptr) return nullptr;
  thread_local std::vector<float> w;
  w.resize(static_cast<size_t>(blocks * kBlock));
  for (int64_t b = 0; b < blocks; ++b) block_weights(importance, b * kBlock, kBlock, w.data() + b * kBlock);
  return w.data();
}

// The AVX-512 search (search_avx512.cpp: the same result as fit_scale, block by block), where
// this CPU runs it: store(b, d, codes) receives each block. False when it does not run here.
template <typename Store>
bool fit_scale_rows_avx512(const float* x, int64_t n, const float* importance, int lo, int hi,
                           std::span<const float> offsets, Store store) {
  if (search::isa() != search::Isa::avx512) return false;
  static_assert(kBlock == 32);
  const int64_t blocks = n / kBlock;
  thread_local std::vector<float> d;
  thread_local std::vector<int> q;
  q.resize(static_cast<size_t>(blocks * kBlock));
  d.resize(static_cast<size_t>(blocks));
  search::fit_scale_row_avx512(x, row_block_weights(importance, blocks), blocks * kBlock, lo, hi, offsets.data(),
                               static_cast<int>(offsets.size()), kRefineRounds, q.data(), d.data());
  for (int64_t b = 0; b < blocks; ++b) store(b, d[static_cast<size_t>(b)], q.data() + b * kBlock);
  return true;
}

struct AffineFit {
  float d, m;
};

struct AffineCandidate {
  double gain = -1e300;  // reduction of sum w x^2 achieved by the least-squares (d, m)
  double d = 0, m = 0;
};

// Affine blocks (value = d * q + m, q in [0, hi]): minimizes sum w (x - d q - m)^2. A few grid
// spacings and phases seed the code assignment; the best one is then polished by alternating
// nearest codes and least-squares (d, m), which never increases the error.
AffineFit fit_affine(const float* x, const float* w, int hi, int* q) {
  float lo_v = x[0], hi_v = x[0];
  double sw = 0, sx = 0;
  for (int i = 0; i < kBlock; ++i) {
    lo_v = std::min(lo_v, x[i]);
    hi_v = std::max(hi_v, x[i]);
    sw += w[i];
    sx += static_cast<double>(w[i]) * x[i];
  }
  const float range = hi_v - lo_v;
  // A constant block: only the offset carries information (and 1/range must stay finite).
  if (range < 1e-30f) {
    std::fill(q, q + kBlock, 0);
    return {0, round_fp16(lo_v)};
  }
  const float fhi = static_cast<float>(hi);
  float wx[kBlock];
  for (int i = 0; i < kBlock; ++i) wx[i] = w[i] * x[i];
  // Codes round((x - base) * iscale - shift) and their least-squares (d, m).
  const auto evaluate = [&](float base, float iscale, float shift) -> AffineCandidate {
    float sq[kLanes] = {}, sqq[kLanes] = {}, sxq[kLanes] = {};
    for (int i = 0; i < kBlock; i += kLanes) {
      for (int k = 0; k < kLanes; ++k) {
        const float l = round_float(clamp_code((x[i + k] - base) * iscale - shift, 0.0f, fhi));
        sq[k] += w[i + k] * l;
        sqq[k] += w[i + k] * l * l;
        sxq[k] += wx[i + k] * l;
      }
    }
    double a = 0, b = 0, c = 0;
    for (int k = 0; k < kLanes; ++k) {
      a += sq[k];
      b += sqq[k];
      c += sxq[k];
    }
    const double det = sw * b - a * a;
    if (!(det > 0)) return {};
    AffineCandidate r;
    r.d = (sw * c - a * sx) / det;
    r.m = (b * sx - a * c) / det;
    r.gain = r.d * c + r.m * sx;
    return r;
  };
  AffineCandidate best{-1e300, range / fhi, lo_v};
  for (const float off : kAffineOffsets) {
    const float iscale = (fhi + off) / range;
    for (const float phase : kAffinePhases) {
      // off/2 steps clipped at either end, keeping the grid centred on the block, then moved by phase.
      const AffineCandidate c = evaluate(lo_v, iscale, 0.5f * off - phase);
      if (c.gain > best.gain) best = c;
    }
  }
  for (int round = 0; round < kRefineRounds && best.d > 0; ++round) {
    const AffineCandidate c = evaluate(static_cast<float>(best.m), static_cast<float>(1.0 / best.d), 0.0f);
    if (!(c.gain > best.gain)) break;
    best = c;
  }
  // The offset's f16 rounding error lands on all 32 values alike, so round it first and refit d
  // around the stored offset before rounding d.
  const float m = round_fp16(static_cast<float>(best.m));
  const float id0 = best.d > 0 ? static_cast<float>(1.0 / best.d) : 0.0f;
  double sqr = 0, sqq = 0;
  for (int i = 0; i < kBlock; ++i) {
    const float l = round_float(clamp_code((x[i] - m) * id0, 0.0f, fhi));
    sqr += static_cast<double>(w[i]) * l * (x[i] - m);
    sqq += static_cast<double>(w[i]) * l * l;
  }
  const float d = round_fp16(sqq > 0 ? static_cast<float>(sqr / sqq) : 0.0f);
  const float id = d > 0 ? 1.0f / d : 0.0f;
  for (int i = 0; i < kBlock; ++i) q[i] = static_cast<int>(round_float(clamp_code((x[i] - m) * id, 0.0f, fhi)));
  return {d > 0 ? d : 0.0f, m};
}

// Codes in [0, 31] (or [0, 15]): low nibbles in qs, value j and j + 16 sharing byte j.
void pack_nibbles(const int* codes, uint8_t* qs) {
  for (int j = 0; j < kBlock / 2; ++j) {
    qs[j] = static_cast<uint8_t>((codes[j] & 0xf) | ((codes[j + kBlock / 2] & 0xf) << 4));
  }
}

void pack_high_bits(const int* codes, uint8_t* qh) {
  uint32_t bits = 0;
  for (int j = 0; j < kBlock; ++j) bits |= static_cast<uint32_t>((codes[j] >> 4) & 1) << j;
  for (int b = 0; b < 4; ++b) qh[b] = static_cast<uint8_t>(bits >> (8 * b));
}

uint32_t high_bits(const uint8_t* qh) {
  return static_cast<uint32_t>(qh[0]) | static_cast<uint32_t>(qh[1]) << 8 | static_cast<uint32_t>(qh[2]) << 16 |
         static_cast<uint32_t>(qh[3]) << 24;
}

// Code of value j (0..31) from the split nibble layout.
inline int nibble(const uint8_t* qs, int j) {
  return j < kBlock / 2 ? qs[j] & 0xf : qs[j - kBlock / 2] >> 4;
}

template <typename Block>
Block* blocks(void* p) {
  return static_cast<Block*>(p);
}
template <typename Block>
const Block* blocks(const void* p) {
  return static_cast<const Block*>(p);
}

}  // namespace

void quantize_row_q4_0(const float* x, void* dst, int64_t n, const float* importance) {
  auto* out = blocks<BlockQ4_0>(dst);
  if (fit_scale_rows_avx512(x, n, importance, -8, 7, kScaleOffsets, [&](int64_t b, float d, const int* q) {
        out[b].d = fp32_to_fp16(d);
        search::pack_nibbles_32_avx512(q, 8, out[b].qs, nullptr);
      })) {
    return;
  }
  float w[kBlock];
  int q[kBlock];
  for (int64_t b = 0; b < n / kBlock; ++b) {
    block_weights(importance, b * kBlock, kBlock, w);
    const float d = fit_scale(x + b * kBlock, w, -8, 7, kScaleOffsets, q);
    out[b].d = fp32_to_fp16(d);
    for (int& c : q) c += 8;
    pack_nibbles(q, out[b].qs);
  }
}

void dequantize_row_q4_0(const void* src, float* y, int64_t n) {
  const auto* in = blocks<BlockQ4_0>(src);
  for (int64_t b = 0; b < n / kBlock; ++b, y += kBlock) {
    const float d = fp16_to_fp32(in[b].d);
    for (int j = 0; j < kBlock; ++j) y[j] = static_cast<float>(nibble(in[b].qs, j) - 8) * d;
  }
}

void quantize_row_q4_1(const float* x, void* dst, int64_t n, const float* importance) {
  auto* out = blocks<BlockQ4_1>(dst);
  float w[kBlock];
  int q[kBlock];
  for (int64_t b = 0; b < n / kBlock; ++b) {
    block_weights(importance, b * kBlock, kBlock, w);
    const AffineFit f = fit_affine(x + b * kBlock, w, 15, q);
    out[b].d = fp32_to_fp16(f.d);
    out[b].m = fp32_to_fp16(f.m);
    pack_nibbles(q, out[b].qs);
  }
}

void dequantize_row_q4_1(const void* src, float* y, int64_t n) {
  const auto* in = blocks<BlockQ4_1>(src);
  for (int64_t b = 0; b < n / kBlock; ++b, y += kBlock) {
    const float d = fp16_to_fp32(in[b].d);
    const float m = fp16_to_fp32(in[b].m);
    for (int j = 0; j < kBlock; ++j) y[j] = static_cast<float>(nibble(in[b].qs, j)) * d + m;
  }
}

void quantize_row_q5_0(const float* x, void* dst, int64_t n, const float* importance) {
  auto* out = blocks<BlockQ5_0>(dst);
  if (fit_scale_rows_avx512(x, n, importance, -16, 15, kScaleOffsets, [&](int64_t b, float d, const int* q) {
        out[b].d = fp32_to_fp16(d);
        search::pack_nibbles_32_avx512(q, 16, out[b].qs, out[b].qh);
      })) {
    return;
  }
  float w[kBlock];
  int q[kBlock];
  for (int64_t b = 0; b < n / kBlock; ++b) {
    block_weights(importance, b * kBlock, kBlock, w);
    const float d = fit_scale(x + b * kBlock, w, -16, 15, kScaleOffsets, q);
    out[b].d = fp32_to_fp16(d);
    for (int& c : q) c += 16;
    pack_nibbles(q, out[b].qs);
    pack_high_bits(q, out[b].qh);
  }
}

void dequantize_row_q5_0(const void* src, float* y, int64_t n) {
  const auto* in = blocks<BlockQ5_0>(src);
  for (int64_t b = 0; b < n / kBlock; ++b, y += kBlock) {
    const float d = fp16_to_fp32(in[b].d);
    const uint32_t qh = high_bits(in[b].qh);
    for (int j = 0; j < kBlock; ++j) {
      const int code = nibble(in[b].qs, j) | static_cast<int>((qh >> j) & 1) << 4;
      y[j] = static_cast<float>(code - 16) * d;
    }
  }
}

void quantize_row_q5_1(const float* x, void* dst, int64_t n, const float* importance) {
  auto* out = blocks<BlockQ5_1>(dst);
  float w[kBlock];
  int q[kBlock];
  for (int64_t b = 0; b < n / kBlock; ++b) {
    block_weights(importance, b * kBlock, kBlock, w);
    const AffineFit f = fit_affine(x + b * kBlock, w, 31, q);
    out[b].d = fp32_to_fp16(f.d);
    out[b].m = fp32_to_fp16(f.m);
    pack_nibbles(q, out[b].qs);
    pack_high_bits(q, out[b].qh);
  }
}

void dequantize_row_q5_1(const void* src, float* y, int64_t n) {
  const auto* in = blocks<BlockQ5_1>(src);
  for (int64_t b = 0; b < n / kBlock; ++b, y += kBlock) {
    const float d = fp16_to_fp32(in[b].d);
    const float m = fp16_to_fp32(in[b].m);
    const uint32_t qh = high_bits(in[b].qh);
    for (int j = 0; j < kBlock; ++j) {
      const int code = nibble(in[b].qs, j) | static_cast<int>((qh >> j) & 1) << 4;
      y[j] = static_cast<float>(code) * d + m;
    }
  }
}

void quantize_row_q8_0(const float* x, void* dst, int64_t n, const float* importance) {
  auto* out = blocks<BlockQ8_0>(dst);
  if (search::isa() == search::Isa::avx512) {
    // The codes go straight into the blocks; the scales after them.
    const int64_t nb = n / kBlock;
    thread_local std::vector<float> d;
    d.resize(static_cast<size_t>(nb));
    search::fit_scale_row_bytes_avx512(x, row_block_weights(importance, nb), nb * kBlock, -128, 127, kQ8Offsets.data(),
                                       static_cast<int>(kQ8Offsets.size()), kRefineRounds, out[0].qs,
                                       sizeof(BlockQ8_0), d.data());
    for (int64_t b = 0; b < nb; ++b) out[b].d = fp32_to_fp16(d[static_cast<size_t>(b)]);
    return;
  }
  float w[kBlock];
  int q[kBlock];
  for (int64_t b = 0; b < n / kBlock; ++b) {
    block_weights(importance, b * kBlock, kBlock, w);
    out[b].d = fp32_to_fp16(fit_scale(x + b * kBlock, w, -128, 127, kQ8Offsets, q));
    for (int j = 0; j < kBlock; ++j) out[b].qs[j] = static_cast<int8_t>(q[j]);
  }
}

void dequantize_row_q8_0(const void* src, float* y, int64_t n) {
  const auto* in = blocks<BlockQ8_0>(src);
  for (int64_t b = 0; b < n / kBlock; ++b, y += kBlock) {
    const float d = fp16_to_fp32(in[b].d);
    for (int j = 0; j < kBlock; ++j) y[j] = static_cast<float>(in[b].qs[j]) * d;
  }
}

// Q8_1 carries activations, quantized on the fly before every dot product: it takes GGML's
// single-pass absmax scale rather than a search, and has no use for importance weights.
void quantize_row_q8_1(const float* x, void* dst, int64_t n, const float*) {
  auto* out = blocks<BlockQ8_1>(dst);
  for (int64_t b = 0; b < n / kBlock; ++b, x += kBlock) {
    float lanes[kLanes] = {};
    for (int i = 0; i < kBlock; i += kLanes) {
      for (int k = 0; k < kLanes; ++k) lanes[k] = std::max(lanes[k], std::fabs(x[i + k]));
    }
    const float amax = *std::max_element(lanes, lanes + kLanes);
    const float d = amax / 127.0f;
    const float id = d != 0 ? 1.0f / d : 0.0f;
    int sum = 0;
    for (int j = 0; j < kBlock; ++j) {
      const int c = static_cast<int>(round_float(clamp_code(x[j] * id, -127.0f, 127.0f)));
      out[b].qs[j] = static_cast<int8_t>(c);
      sum += c;
    }
    out[b].d = fp32_to_fp16(d);
    out[b].s = fp32_to_fp16(static_cast<float>(sum) * d);
  }
}

void dequantize_row_q8_1(const void* src, float* y, int64_t n) {
  const auto* in = blocks<BlockQ8_1>(src);
  for (int64_t b = 0; b < n / kBlock; ++b, y += kBlock) {
    const float d = fp16_to_fp32(in[b].d);
    for (int j = 0; j < kBlock; ++j) y[j] = static_cast<float>(in[b].qs[j]) * d;
  }
}


// Integer views for the engine's dot kernels (see UnpackRowFn): value = scale * code + offset per
// 16 values, with the very operations the dequantizers above round with.
namespace {
constexpr uint64_t kOnes = 0x0101010101010101ull, kLowNibbles = 0x0F * kOnes, kTopBits = 0x80 * kOnes;
// Byte i of kSpreadBits[m] is bit i of m (0 or 1).
constexpr auto kSpreadBits = [] {
  std::array<uint64_t, 256> t{};
  for (int m = 0; m < 256; ++m) {
    for (int i = 0; i < 8; ++i) t[static_cast<size_t>(m)] |= static_cast<uint64_t>((m >> i) & 1) << (8 * i);
  }
  return t;
}();

template <class Block, bool kFive, int kCodeBias, bool kAffine>
void unpack_legacy(const void* src, int8_t* q, float* scale, float* offset, int64_t n) {
  const auto* in = blocks<Block>(src);
  for (int64_t b = 0; b < n / kBlock; ++b, q += kBlock) {
    const float d = fp16_to_fp32(in[b].d);
    float m = 0.0f;
    if constexpr (kAffine) m = fp16_to_fp32(in[b].m);
    // Eight codes at a time in 64-bit words (SWAR): nibbles split with masks, the Q5 fifth bits
    // spread from a byte-expansion table, the bias subtracted bytewise without borrows (every
    // byte is offset by 0x80 first, and the top bit flipped back after).
    uint64_t lo[2], hi[2];
    std::memcpy(lo, in[b].qs, sizeof lo);
    for (int k = 0; k < 2; ++k) {
      hi[k] = (lo[k] >> 4) & kLowNibbles;
      lo[k] &= kLowNibbles;
    }
    uint64_t w[4] = {lo[0], lo[1], hi[0], hi[1]};
    if constexpr (kFive) {
      const uint32_t qh = high_bits(in[b].qh);
      for (int k = 0; k < 4; ++k) w[k] |= kSpreadBits[(qh >> (8 * k)) & 0xFF] << 4;
    }
    if constexpr (kCodeBias != 0) {
      for (auto& x : w) x = ((x | kTopBits) - kCodeBias * kOnes) ^ kTopBits;
    }
    std::memcpy(q, w, sizeof w);
    scale[2 * b] = scale[2 * b + 1] = d;
    offset[2 * b] = offset[2 * b + 1] = m;
  }
}
}  // namespace

void unpack_row_q4_0(const void* src, int8_t* q, float* s, float* o, int64_t n) { unpack_legacy<BlockQ4_0, false, 8, false>(src, q, s, o, n); }
void unpack_row_q4_1(const void* src, int8_t* q, float* s, float* o, int64_t n) { unpack_legacy<BlockQ4_1, false, 0, true>(src, q, s, o, n); }
void unpack_row_q5_0(const void* src, int8_t* q, float* s, float* o, int64_t n) { unpack_legacy<BlockQ5_0, true, 16, false>(src, q, s, o, n); }
void unpack_row_q5_1(const void* src, int8_t* q, float* s, float* o, int64_t n) { unpack_legacy<BlockQ5_1, true, 0, true>(src, q, s, o, n); }

void unpack_row_q8_0(const void* src, int8_t* q, float* scale, float* offset, int64_t n) {
  const auto* in = blocks<BlockQ8_0>(src);
  for (int64_t b = 0; b < n / kBlock; ++b, q += kBlock) {
    std::memcpy(q, in[b].qs, kBlock);
    scale[2 * b] = scale[2 * b + 1] = fp16_to_fp32(in[b].d);
    offset[2 * b] = offset[2 * b + 1] = 0.0f;
  }
}

}  // namespace mixq::legacy
