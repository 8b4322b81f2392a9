// AVX-512 scale searches. Bit-exactness with the references rests on three rules:
//  - the same IEEE operations on the same operands (this file is compiled with -ffp-contract=off,
//    like the references, so no multiply-add is fused; GCC lowers the
//    intrinsics' arithmetic to generic vector operations, which it would otherwise contract);
//  - every reduction keeps the reference's order: its partial sums live in the same lanes and are
//    added in the same sequence (float lanes first, then the double sum over lanes in lane order);
//  - ties and NaNs resolve as in the reference (vmaxps/vminps return their second operand when
//    either is NaN, which is what std::max(lo, v) / std::min(hi, v) do with the operands swapped).
#include "mixq/formats/search_avx512.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <initializer_list>
#include <vector>

#include "mixq/formats/half.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define MIXQ_SEARCH_HAVE_AVX512 1
#endif

// GCC 12's AVX-512 intrinsics pass _mm512_undefined_*() as merge operands and then warn (GCC bug
// 105593, fixed in GCC 13).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace mixq::search {

#ifdef MIXQ_SEARCH_HAVE_AVX512
#define MIXQ_SEARCH_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")))

namespace {

// Round to nearest, ties to even, for |v| < 2^22, exactly as the references' round_float.
MIXQ_SEARCH_AVX512 inline __m512 round_magic(__m512 v) {
  const __m512 magic = _mm512_set1_ps(0x1.8p23f);
  return _mm512_sub_ps(_mm512_add_ps(v, magic), magic);
}
MIXQ_SEARCH_AVX512 inline __m256 round_magic(__m256 v) {
  const __m256 magic = _mm256_set1_ps(0x1.8p23f);
  return _mm256_sub_ps(_mm256_add_ps(v, magic), magic);
}

// The same rounding in one instruction, where only sums of products of the code are used: it
// gives -0 where round_magic gives +0 (values in (-0.5, 0)), and a product with -0 added to
// sums that start at +0 never changes them (+0 + -0 is +0; x + -0 is x), nor a code comparison.
MIXQ_SEARCH_AVX512 inline __m512 round_for_sums(__m512 v) {
  return _mm512_roundscale_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}

// std::min(hi, std::max(lo, v)): a NaN v becomes lo.
MIXQ_SEARCH_AVX512 inline __m512 clamp_ref(__m512 v, __m512 lo, __m512 hi) {
  return _mm512_min_ps(_mm512_max_ps(v, lo), hi);
}
MIXQ_SEARCH_AVX512 inline __m256 clamp_ref(__m256 v, __m256 lo, __m256 hi) {
  return _mm256_min_ps(_mm256_max_ps(v, lo), hi);
}

// The low and high 8 floats of a register as doubles.
MIXQ_SEARCH_AVX512 inline __m512d lo_pd(__m512 v) { return _mm512_cvtps_pd(_mm512_castps512_ps256(v)); }
MIXQ_SEARCH_AVX512 inline __m512d hi_pd(__m512 v) {
  return _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
}

// Sequential double sum of 8 float lanes, lane 0 first: ((0 + s0) + s1) + ... + s7.
MIXQ_SEARCH_AVX512 inline double sum_lanes_in_order(__m256 s) {
  alignas(64) double d[8];
  _mm512_store_pd(d, _mm512_cvtps_pd(s));
  double a = 0;
  for (int k = 0; k < 8; ++k) a += d[k];
  return a;
}

// s[p] holds two candidates' 8 lane sums (candidate 2p in the low half, 2p + 1 in the high half);
// returns, per candidate c (a double lane), ((0 + lane 0) + lane 1) + ... + lane 7.
MIXQ_SEARCH_AVX512 inline __m512d sum_lanes_of_8_candidates(const __m512 s[4]) {
  // Stage 1: from a pair of registers (candidates c = 0..3), lanes 4 * kk + c = lane kk (low
  // group) or 4 + kk (high group) of candidate c.
  alignas(64) static const int32_t idx_lo[16] = {0, 8, 16, 24, 1, 9, 17, 25, 2, 10, 18, 26, 3, 11, 19, 27};
  alignas(64) static const int32_t idx_hi[16] = {4, 12, 20, 28, 5, 13, 21, 29, 6, 14, 22, 30, 7, 15, 23, 31};
  // Stage 2: lanes 0..7 = lane kk of candidates 0..7, lanes 8..15 = lane kk + 1.
  alignas(64) static const int32_t idx_k0[16] = {0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23};
  alignas(64) static const int32_t idx_k2[16] = {8, 9, 10, 11, 24, 25, 26, 27, 12, 13, 14, 15, 28, 29, 30, 31};
  const __m512i ilo = _mm512_load_si512(idx_lo), ihi = _mm512_load_si512(idx_hi);
  const __m512i ik0 = _mm512_load_si512(idx_k0), ik2 = _mm512_load_si512(idx_k2);
  const __m512 xlo = _mm512_permutex2var_ps(s[0], ilo, s[1]), xhi = _mm512_permutex2var_ps(s[0], ihi, s[1]);
  const __m512 ylo = _mm512_permutex2var_ps(s[2], ilo, s[3]), yhi = _mm512_permutex2var_ps(s[2], ihi, s[3]);
  const __m512 t[4] = {_mm512_permutex2var_ps(xlo, ik0, ylo), _mm512_permutex2var_ps(xlo, ik2, ylo),
                       _mm512_permutex2var_ps(xhi, ik0, yhi), _mm512_permutex2var_ps(xhi, ik2, yhi)};
  __m512d a = _mm512_setzero_pd();
  for (const __m512 tk : t) {
    a = _mm512_add_pd(a, _mm512_cvtps_pd(_mm512_castps512_ps256(tk)));
    a = _mm512_add_pd(a, _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(tk), 1))));
  }
  return a;
}

// Per lane of n transposed values v[0..n): the largest magnitude (NaNs skipped, 0 if none is
// larger) and the first value of that magnitude, as a sequential "if (|v| > amax)" scan finds them
// wherever that magnitude is positive (with amax 0 the scan keeps extreme 0; callers treat such
// lanes as empty and never read their extreme). The maximum is a tree of independent vmaxps (the
// second operand is returned on NaN, so a NaN magnitude never wins) and the first index of it is
// found by a backward scan of independent comparisons: no chain of compare-and-move latencies.
template <int N>
MIXQ_SEARCH_AVX512 inline void first_extreme_transposed(const __m512* v, __m512& amax, __m512& extreme) {
  static_assert(N % 4 == 0);
  __m512 m[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
  for (int i = 0; i < N; ++i) m[i % 4] = _mm512_max_ps(_mm512_abs_ps(v[i]), m[i % 4]);
  amax = _mm512_max_ps(_mm512_max_ps(m[0], m[1]), _mm512_max_ps(m[2], m[3]));
  extreme = _mm512_setzero_ps();
  for (int i = N - 1; i >= 0; --i) {
    extreme = _mm512_mask_mov_ps(extreme, _mm512_cmp_ps_mask(_mm512_abs_ps(v[i]), amax, _CMP_EQ_OQ), v[i]);
  }
}

// Index of the first value of largest magnitude among 32 (NaNs skipped), and that magnitude.
MIXQ_SEARCH_AVX512 inline float first_extreme_32(const float* x, int& index) {
  const __m512 x0 = _mm512_loadu_ps(x), x1 = _mm512_loadu_ps(x + 16);
  const __m512 a0 = _mm512_abs_ps(x0), a1 = _mm512_abs_ps(x1);
  // Second operand returned on NaN: a NaN magnitude never becomes the maximum.
  const __m512 m = _mm512_max_ps(a1, _mm512_max_ps(a0, _mm512_setzero_ps()));
  const float amax = _mm512_reduce_max_ps(m);
  const __m512 am = _mm512_set1_ps(amax);
  const uint32_t hits = static_cast<uint32_t>(_mm512_cmp_ps_mask(a0, am, _CMP_EQ_OQ)) |
                        static_cast<uint32_t>(_mm512_cmp_ps_mask(a1, am, _CMP_EQ_OQ)) << 16;
  index = hits != 0 ? __builtin_ctz(hits) : 0;
  return amax;
}

}  // namespace

namespace {

// Every weight exactly 1 (n a multiple of 16).
MIXQ_SEARCH_AVX512 inline bool all_ones(const float* w, int64_t n) {
  __mmask16 ok = 0xffff;
  for (int64_t i = 0; i < n; i += 16) ok &= _mm512_cmp_ps_mask(_mm512_loadu_ps(w + i), _mm512_set1_ps(1.0f), _CMP_EQ_OQ);
  return ok == 0xffff;
}

// fit_scale's seed search for one block: the best seed's gain, scale and inverse scale (gain -1 and
// scale 0 when no seed has a positive sum of squares; the caller handles tiny blocks first).
struct SeedChoice {
  double gain = -1, scale = 0;
  float iscale = 0;
};

// Without importance every weight is 1, and 1 * v is v exactly: kUnit skips those products.
template <bool kUnit>
MIXQ_SEARCH_AVX512 SeedChoice seed_search_32(const float* x, const float* w, float extreme, int lo, int hi,
                                             const float* offsets, int n_offsets) {
  const auto flo = static_cast<float>(lo), fhi = static_cast<float>(hi);
  // The block as four chunks of 8 (lane k of chunk c is value 8c + k: the reference's lanes),
  // each duplicated in both halves of a register so two candidates run side by side.
  __m512 xc[4], wc[4], wxc[4];
  for (int c = 0; c < 4; ++c) {
    const __m256 x8 = _mm256_loadu_ps(x + 8 * c), w8 = kUnit ? x8 : _mm256_loadu_ps(w + 8 * c);
    xc[c] = _mm512_broadcast_f32x8(x8);
    wc[c] = _mm512_broadcast_f32x8(w8);
    wxc[c] = _mm512_broadcast_f32x8(_mm256_mul_ps(w8, x8));
  }
  const __m512 vlo = _mm512_set1_ps(flo), vhi = _mm512_set1_ps(fhi);
  // The seeds, in the reference's order; unused slots repeat the last one and are never chosen.
  float iscale[8];
  int n = 0;
  for (const int end : {lo, hi}) {
    for (int o = 0; o < n_offsets; ++o) {
      iscale[n++] = (end < 0 ? static_cast<float>(end) - offsets[o] : static_cast<float>(end) + offsets[o]) / extreme;
    }
  }
  for (int k = n; k < 8; ++k) iscale[k] = iscale[n - 1];
  __m512 sxq[4], sqq[4];
  const int pairs = (n + 1) / 2;
  for (int p = pairs; p < 4; ++p) sxq[p] = sqq[p] = _mm512_setzero_ps();
  for (int p = 0; p < pairs; ++p) {
    const __m512 is = _mm512_insertf32x8(_mm512_set1_ps(iscale[2 * p]), _mm256_set1_ps(iscale[2 * p + 1]), 1);
    __m512 s = _mm512_setzero_ps(), t = _mm512_setzero_ps();
    for (int c = 0; c < 4; ++c) {
      const __m512 l = round_for_sums(clamp_ref(_mm512_mul_ps(xc[c], is), vlo, vhi));
      s = _mm512_add_ps(s, _mm512_mul_ps(kUnit ? xc[c] : wxc[c], l));
      t = _mm512_add_ps(t, _mm512_mul_ps(kUnit ? l : _mm512_mul_ps(wc[c], l), l));
    }
    sxq[p] = s;
    sqq[p] = t;
  }
  const __m512d a = sum_lanes_of_8_candidates(sxq), b = sum_lanes_of_8_candidates(sqq);
  const __mmask8 ok = _mm512_cmp_pd_mask(b, _mm512_setzero_pd(), _CMP_NLE_UQ);  // !(b <= 0), else gain -1
  // The reference keeps the first candidate whose gain beats every earlier one (and -1): the first
  // lane holding the largest gain, NaN gains never chosen.
  const __m512d g = _mm512_mask_div_pd(_mm512_set1_pd(-1.0), ok, _mm512_mul_pd(a, a), b);
  const auto used = static_cast<__mmask8>((1u << n) - 1);
  const __mmask8 real = used & _mm512_cmp_pd_mask(g, g, _CMP_ORD_Q);
  const double gmax = _mm512_mask_reduce_max_pd(real, g);
  SeedChoice best;
  if (real != 0 && gmax > -1.0) {
    const int k = __builtin_ctz(real & _mm512_cmp_pd_mask(g, _mm512_set1_pd(gmax), _CMP_EQ_OQ));
    alignas(64) double sa[8], sb[8];
    _mm512_store_pd(sa, a);
    _mm512_store_pd(sb, b);
    best.gain = gmax;
    best.scale = sa[k] / sb[k];
    best.iscale = iscale[k];
  }
  return best;
}

// fit_scale for B (1 or 2) consecutive blocks of 32: the seeds block by block, then the
// least-squares rounds of all B blocks in lockstep (block k in 256-bit half k of each register,
// each leaving at its own first round without gain), so the rounds' long dependency chains overlap.
// The seed stage of one block: tiny blocks (no usable scale) are flagged, the others searched.
struct BlockSeed {
  SeedChoice c;
  bool tiny = false;
};

template <bool kUnit>
MIXQ_SEARCH_AVX512 inline BlockSeed seed_block(const float* x, const float* w, int lo, int hi, const float* offsets,
                                               int n_offsets) {
  BlockSeed s;
  int at = 0;
  s.tiny = first_extreme_32(x, at) < 1e-20f;
  if (!s.tiny) s.c = seed_search_32<kUnit>(x, w, x[at], lo, hi, offsets, n_offsets);
  return s;
}

// Where the legacy search's codes go: block b's 32 codes as ints at q + 32 b, or, with q8 set, as
// bytes at q8 + b * stride (q8_0 writes them straight into its blocks, after each block's scale).
struct Codes {
  int* q = nullptr;
  int8_t* q8 = nullptr;
  ptrdiff_t stride = 0;
  Codes at(int64_t b) const { return {q != nullptr ? q + 32 * b : nullptr, q8 != nullptr ? q8 + b * stride : nullptr, stride}; }
};

// Block b's codes for its final scale d (all 0 for a tiny block, as the reference's).
MIXQ_SEARCH_AVX512 inline void store_codes(const float* x, float d, bool tiny, __m512 vlo, __m512 vhi, const Codes& out,
                                           int64_t b) {
  const __m512 id = _mm512_set1_ps(!tiny && d != 0 ? 1.0f / d : 0.0f);
  for (int h = 0; h < 2; ++h) {
    const __m512i c = tiny ? _mm512_setzero_si512()
                           : _mm512_cvttps_epi32(round_magic(clamp_ref(_mm512_mul_ps(_mm512_loadu_ps(x + 16 * h), id), vlo, vhi)));
    if (out.q8 != nullptr) {
      _mm_storeu_si128(reinterpret_cast<__m128i*>(out.q8 + b * out.stride + 16 * h), _mm512_cvtepi32_epi8(c));
    } else {
      _mm512_storeu_si512(out.q + 32 * b + 16 * h, c);
    }
  }
}

// The codes of B blocks (block k in half k) for their inverse scales is[k].
template <int B>
MIXQ_SEARCH_AVX512 inline void codes_for(const __m512* xc, const float* is, __m512 vlo, __m512 vhi, __m512* l) {
  const __m512 v = _mm512_insertf32x8(_mm512_set1_ps(is[0]), _mm256_set1_ps(is[B - 1]), 1);
  for (int c = 0; c < 4; ++c) l[c] = round_for_sums(clamp_ref(_mm512_mul_ps(xc[c], v), vlo, vhi));
}

template <int B, bool kUnit>
MIXQ_SEARCH_AVX512 void refine_blocks(const float* x, const float* w, const BlockSeed* seeds, int lo, int hi,
                                      int refine_rounds, const Codes& q, float* d) {
  const auto flo = static_cast<float>(lo), fhi = static_cast<float>(hi);
  double gain[2] = {-1, -1}, scale[2] = {0, 0};
  float iscale[2] = {0, 0};
  bool tiny[2] = {false, false};
  for (int k = 0; k < B; ++k) {
    tiny[k] = seeds[k].tiny;
    gain[k] = seeds[k].c.gain;
    scale[k] = seeds[k].c.scale;
    iscale[k] = seeds[k].c.iscale;
  }

  // Chunk c of the B blocks: values 8c..8c+7 of block k in half k.
  __m512 xc[4], wc[4], wxc[4];
  for (int c = 0; c < 4; ++c) {
    const __m256 x0 = _mm256_loadu_ps(x + 8 * c), w0 = kUnit ? x0 : _mm256_loadu_ps(w + 8 * c);
    const __m256 x1 = B == 2 ? _mm256_loadu_ps(x + 32 + 8 * c) : x0;
    const __m256 w1 = kUnit ? x1 : B == 2 ? _mm256_loadu_ps(w + 32 + 8 * c) : w0;
    xc[c] = _mm512_insertf32x8(_mm512_castps256_ps512(x0), x1, 1);
    wc[c] = _mm512_insertf32x8(_mm512_castps256_ps512(w0), w1, 1);
    wxc[c] = _mm512_mul_ps(wc[c], xc[c]);
  }
  const __m512 vlo = _mm512_set1_ps(flo), vhi = _mm512_set1_ps(fhi);
  // Codes equal to the best ones give the same sums and gain, which ends the reference's loop.
  bool running[2] = {false, false};
  for (int k = 0; k < B; ++k) running[k] = !tiny[k] && scale[k] != 0;
  __m512 best_l[4];
  codes_for<B>(xc, iscale, vlo, vhi, best_l);
  for (int round = 0; round < refine_rounds && (running[0] || running[1]); ++round) {
    float is[2];
    for (int k = 0; k < B; ++k) is[k] = running[k] ? static_cast<float>(1.0 / scale[k]) : iscale[k];
    __m512 l[4];
    codes_for<B>(xc, is, vlo, vhi, l);
    __mmask16 same = 0xffff;
    for (int c = 0; c < 4; ++c) same &= _mm512_cmp_ps_mask(l[c], best_l[c], _CMP_EQ_OQ);
    for (int k = 0; k < B; ++k) running[k] = running[k] && ((same >> (8 * k)) & 0xff) != 0xff;
    if (!running[0] && !running[1]) break;
    __m512 sx = _mm512_setzero_ps(), sq = _mm512_setzero_ps();
    for (int c = 0; c < 4; ++c) {
      sx = _mm512_add_ps(sx, _mm512_mul_ps(kUnit ? xc[c] : wxc[c], l[c]));
      sq = _mm512_add_ps(sq, _mm512_mul_ps(kUnit ? l[c] : _mm512_mul_ps(wc[c], l[c]), l[c]));
    }
    alignas(64) double lanes[4][8];  // sums of block 0, block 1; squares of block 0, block 1
    _mm512_store_pd(lanes[0], lo_pd(sx));
    _mm512_store_pd(lanes[1], hi_pd(sx));
    _mm512_store_pd(lanes[2], lo_pd(sq));
    _mm512_store_pd(lanes[3], hi_pd(sq));
    double ra[2] = {0, 0}, rb[2] = {0, 0};
    for (int j = 0; j < 8; ++j) {
      for (int k = 0; k < B; ++k) {
        ra[k] += lanes[k][j];
        rb[k] += lanes[2 + k][j];
      }
    }
    __mmask16 take_mask = 0;
    for (int k = 0; k < B; ++k) {
      if (!running[k]) continue;
      const double g = rb[k] <= 0 ? -1.0 : ra[k] * ra[k] / rb[k];
      if (!(g > gain[k])) {
        running[k] = false;
        continue;
      }
      gain[k] = g;
      scale[k] = ra[k] / rb[k];
      iscale[k] = is[k];
      take_mask |= static_cast<__mmask16>(0xff << (8 * k));
    }
    for (int c = 0; c < 4; ++c) best_l[c] = _mm512_mask_mov_ps(best_l[c], take_mask, l[c]);
  }

  for (int k = 0; k < B; ++k) {
    d[k] = tiny[k] ? 0.0f : round_fp16(static_cast<float>(scale[k]));
    store_codes(x + 32 * k, d[k], tiny[k], vlo, vhi, q, k);
  }
}

// fit_scale for 16 blocks at once, transposed: block j in lane j of every register, so that each
// of the reference's operations is one vertical instruction over the 16 blocks and no reduction
// crosses lanes. The reference's float lane k (values k, k + 8, k + 16, k + 24 of a block,
// accumulated in that order) is a chain of vertical adds over those four positions, and its
// double sum over lanes 0..7 (from +0, in lane order) a chain of vertical double adds; the seeds'
// and rounds' "take it if its gain is larger" are masked moves in the same sequence; each block's
// refinement stops at its own first round without gain (its lane is frozen while the others
// continue). Three shortcuts, all exact: the float lane sums start at their first product instead
// of at +0 (0 + p is p except that -0 becomes +0, and a lane sum that differs only in the sign of
// a zero gives the same double sum, which starts at +0 and so never is -0 itself: the sign of a
// zero term never shows); the codes that only enter sums are rounded by vrndscaleps (round_for_sums:
// its -0 for values in (-0.5, 0) only changes the sign of zero products, likewise invisible); and
// without importance the sum of squared codes is formed in any order (sums_16_blocks). Blocks whose
// largest magnitude is below 1e-20 get d = 0 and zero codes, as in the reference; their lanes
// compute a meaningless search (exceptions are masked) that is never used.
MIXQ_SEARCH_AVX512 inline void transpose_8x8(__m256 r[8]) {
  const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
  const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
  const __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
  const __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
  const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xee);
  const __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xee);
  const __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xee);
  const __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xee);
  r[0] = _mm256_permute2f128_ps(u0, u4, 0x20);
  r[1] = _mm256_permute2f128_ps(u1, u5, 0x20);
  r[2] = _mm256_permute2f128_ps(u2, u6, 0x20);
  r[3] = _mm256_permute2f128_ps(u3, u7, 0x20);
  r[4] = _mm256_permute2f128_ps(u0, u4, 0x31);
  r[5] = _mm256_permute2f128_ps(u1, u5, 0x31);
  r[6] = _mm256_permute2f128_ps(u2, u6, 0x31);
  r[7] = _mm256_permute2f128_ps(u3, u7, 0x31);
}

// Value i (0..31) of 8 consecutive blocks of 32, lane j = block j: out[i].
MIXQ_SEARCH_AVX512 inline void transpose_8_blocks(const float* x, __m256* out) {
  for (int c = 0; c < 4; ++c) {
    __m256* r = out + 8 * c;
    for (int j = 0; j < 8; ++j) r[j] = _mm256_loadu_ps(x + 32 * j + 8 * c);
    transpose_8x8(r);
  }
}

// Value i (0..31) of 16 consecutive blocks of 32, lane j = block j: out[i].
MIXQ_SEARCH_AVX512 inline void transpose_16_blocks(const float* x, __m512* out) {
  __m256 lo[32], hi[32];
  transpose_8_blocks(x, lo);
  transpose_8_blocks(x + 8 * 32, hi);
  for (int i = 0; i < 32; ++i) out[i] = _mm512_insertf32x8(_mm512_castps256_ps512(lo[i]), hi[i], 1);
}

// Doubles of 16 blocks: blocks 0..7 in lo, 8..15 in hi.
struct Double16 {
  __m512d lo, hi;
};

// The reference's least_squares_scale over 16 transposed blocks for NC candidates at once (their
// inverse scales is[c]; side by side so that their long add chains overlap): the double sums
// a = sum w x l and b = sum w l^2 per block.
// Without importance (kUnit) b is the sum of the 32 squared codes: integers of at most 128^2 =
// 2^14, so every partial sum, the reference's float lanes and its double sum as well as any other
// order in float, is an integer below 32 * 2^14 = 2^19 < 2^24 and exact. b is then summed in float
// in whatever order is cheapest (one chain per lane position, then a tree) and widened once: the
// same double as the reference's.
template <bool kUnit, int NC>
MIXQ_SEARCH_AVX512 inline void sums_16_blocks(const __m512* xt, const __m512* wt, const __m512* wxt, const __m512* is,
                                              __m512 vlo, __m512 vhi, Double16* a, Double16* b) {
  __m512 sq_unit[NC][2];
  for (int n = 0; n < NC; ++n) {
    a[n].lo = a[n].hi = b[n].lo = b[n].hi = _mm512_setzero_pd();
    sq_unit[n][0] = sq_unit[n][1] = _mm512_setzero_ps();
  }
  for (int k = 0; k < 8; ++k) {
    for (int n = 0; n < NC; ++n) {
      __m512 sx = _mm512_setzero_ps(), sq = _mm512_setzero_ps();
      for (int c = 0; c < 4; ++c) {
        const int i = 8 * c + k;
        const __m512 l = round_for_sums(clamp_ref(_mm512_mul_ps(xt[i], is[n]), vlo, vhi));
        const __m512 px = _mm512_mul_ps(kUnit ? xt[i] : wxt[i], l);
        sx = c == 0 ? px : _mm512_add_ps(sx, px);
        if constexpr (kUnit) {
          // Exact either way (see above), so one fused instruction: l * l + sum has no rounding.
          sq_unit[n][c & 1] = _mm512_fmadd_ps(l, l, sq_unit[n][c & 1]);
        } else {
          const __m512 pq = _mm512_mul_ps(_mm512_mul_ps(wt[i], l), l);
          sq = c == 0 ? pq : _mm512_add_ps(sq, pq);
        }
      }
      a[n].lo = _mm512_add_pd(a[n].lo, lo_pd(sx));
      a[n].hi = _mm512_add_pd(a[n].hi, hi_pd(sx));
      if constexpr (!kUnit) {
        b[n].lo = _mm512_add_pd(b[n].lo, lo_pd(sq));
        b[n].hi = _mm512_add_pd(b[n].hi, hi_pd(sq));
      }
    }
  }
  if constexpr (kUnit) {
    for (int n = 0; n < NC; ++n) {
      const __m512 sq = _mm512_add_ps(sq_unit[n][0], sq_unit[n][1]);
      b[n].lo = lo_pd(sq);
      b[n].hi = hi_pd(sq);
    }
  }
}

// The best candidate so far per block (the reference's ScaleCandidate: gain -1, scale 0 at first).
struct Best16 {
  Double16 gain, scale;
};

// One candidate's sums: where its sum of squares is positive (!(b <= 0)), gain a^2 / b and scale
// a / b, else -1 and 0; taken in the lanes of `lanes` whose gain beats the best (NaN never does).
// Returns the lanes that took it.
MIXQ_SEARCH_AVX512 inline __mmask8 take_half(__m512d a, __m512d b, __mmask8 lanes, __m512d& gain, __m512d& scale) {
  const __m512d zero = _mm512_setzero_pd();
  const __mmask8 ok = _mm512_cmp_pd_mask(b, zero, _CMP_NLE_UQ);
  const __m512d g = _mm512_mask_div_pd(_mm512_set1_pd(-1.0), ok, _mm512_mul_pd(a, a), b);
  const __m512d s = _mm512_mask_div_pd(zero, ok, a, b);
  const __mmask8 take = lanes & _mm512_cmp_pd_mask(g, gain, _CMP_GT_OQ);
  gain = _mm512_mask_mov_pd(gain, take, g);
  scale = _mm512_mask_mov_pd(scale, take, s);
  return take;
}
MIXQ_SEARCH_AVX512 inline __mmask16 take16(const Double16& a, const Double16& b, __mmask16 lanes, Best16& best) {
  const __mmask8 lo = take_half(a.lo, b.lo, static_cast<__mmask8>(lanes), best.gain.lo, best.scale.lo);
  const __mmask8 hi = take_half(a.hi, b.hi, static_cast<__mmask8>(lanes >> 8), best.gain.hi, best.scale.hi);
  return static_cast<__mmask16>(lo | static_cast<unsigned>(hi) << 8);
}

// float(1.0 / scale) per block, as the reference's refinement rounds compute their inverse scale.
MIXQ_SEARCH_AVX512 inline __m512 inverse_scale16(const Double16& scale) {
  const __m512d one = _mm512_set1_pd(1.0);
  const __m256 lo = _mm512_cvtpd_ps(_mm512_div_pd(one, scale.lo)), hi = _mm512_cvtpd_ps(_mm512_div_pd(one, scale.hi));
  return _mm512_insertf32x8(_mm512_castps256_ps512(lo), hi, 1);
}

// One group of 16 blocks in fit_scale_16_blocks: its transposed values and its search state.
template <bool kUnit>
struct Group16 {
  __m512 xt[32], wt[kUnit ? 1 : 32], wxt[kUnit ? 1 : 32];
  __m512 vlo, vhi;
  Best16 best;
  __mmask16 tiny, running;
};

// The seeds of a group, and the blocks that enter the rounds.
template <bool kUnit>
MIXQ_SEARCH_AVX512 void group_seeds(const float* x, const float* w, int lo, int hi, const float* offsets,
                                    int n_offsets, Group16<kUnit>& g) {
  const auto flo = static_cast<float>(lo), fhi = static_cast<float>(hi);
  __m512* const xt = g.xt;
  transpose_16_blocks(x, xt);
  if constexpr (!kUnit) {
    transpose_16_blocks(w, g.wt);
    for (int i = 0; i < 32; ++i) g.wxt[i] = _mm512_mul_ps(g.wt[i], xt[i]);
  }
  // The first value of largest magnitude (NaNs never compare larger), as the reference's scan.
  __m512 amax, extreme;
  first_extreme_transposed<32>(xt, amax, extreme);
  g.tiny = _mm512_cmp_ps_mask(amax, _mm512_set1_ps(1e-20f), _CMP_LT_OQ);
  g.vlo = _mm512_set1_ps(flo);
  g.vhi = _mm512_set1_ps(fhi);
  Best16& best = g.best;
  best.gain.lo = best.gain.hi = _mm512_set1_pd(-1.0);
  best.scale.lo = best.scale.hi = _mm512_setzero_pd();
  // The seeds in the reference's order, two at a time (an odd count's last one alone).
  __m512 seeds[16];
  int n = 0;
  for (const int end : {lo, hi}) {
    for (int o = 0; o < n_offsets; ++o) {
      const float num = end < 0 ? static_cast<float>(end) - offsets[o] : static_cast<float>(end) + offsets[o];
      seeds[n++] = _mm512_div_ps(_mm512_set1_ps(num), extreme);
    }
  }
  int s = 0;
  for (; s + 1 < n; s += 2) {
    Double16 a[2], b[2];
    sums_16_blocks<kUnit, 2>(xt, g.wt, g.wxt, seeds + s, g.vlo, g.vhi, a, b);
    take16(a[0], b[0], 0xffff, best);
    take16(a[1], b[1], 0xffff, best);
  }
  if (s < n) {
    Double16 a, b;
    sums_16_blocks<kUnit, 1>(xt, g.wt, g.wxt, seeds + s, g.vlo, g.vhi, &a, &b);
    take16(a, b, 0xffff, best);
  }
  // Rounds while the scale is not 0 (a NaN scale is not 0, as in the reference), each block
  // leaving at its first round without gain.
  const __m512d zero = _mm512_setzero_pd();
  g.running = static_cast<__mmask16>(
      ~g.tiny & (_mm512_cmp_pd_mask(best.scale.lo, zero, _CMP_NEQ_UQ) |
                 static_cast<unsigned>(_mm512_cmp_pd_mask(best.scale.hi, zero, _CMP_NEQ_UQ)) << 8));
}

// One least-squares round of a group's running blocks.
template <bool kUnit>
MIXQ_SEARCH_AVX512 void group_round(Group16<kUnit>& g) {
  const __m512 is = inverse_scale16(g.best.scale);
  Double16 a, b;
  sums_16_blocks<kUnit, 1>(g.xt, g.wt, g.wxt, &is, g.vlo, g.vhi, &a, &b);
  g.running = take16(a, b, g.running, g.best);
}

// The group's d and codes from its best scales.
template <bool kUnit>
MIXQ_SEARCH_AVX512 void group_finish(const float* x, const Group16<kUnit>& g, const Codes& q, float* d) {
  alignas(64) float s32[16];
  _mm256_store_ps(s32, _mm512_cvtpd_ps(g.best.scale.lo));
  _mm256_store_ps(s32 + 8, _mm512_cvtpd_ps(g.best.scale.hi));
  for (int j = 0; j < 16; ++j) {
    const bool tiny = ((g.tiny >> j) & 1) != 0;
    d[j] = tiny ? 0.0f : round_fp16(s32[j]);
    store_codes(x + 32 * j, d[j], tiny, g.vlo, g.vhi, q, j);
  }
}

// fit_scale for G (1 or 2) consecutive groups of 16 blocks: each group's computation is exactly
// the one-group search; with two, their rounds alternate (group 0's round r, then group 1's), so
// one group's round can start while the other's ends in its chain of divisions.
template <bool kUnit, int G>
MIXQ_SEARCH_AVX512 void fit_scale_16_blocks(const float* x, const float* w, int lo, int hi, const float* offsets,
                                            int n_offsets, int refine_rounds, const Codes& q, float* d) {
  Group16<kUnit> g[G];
  for (int k = 0; k < G; ++k) {
    group_seeds<kUnit>(x + 512 * k, kUnit ? nullptr : w + 512 * k, lo, hi, offsets, n_offsets, g[k]);
  }
  for (int round = 0; round < refine_rounds; ++round) {
    bool any = false;
    for (int k = 0; k < G; ++k) {
      if (g[k].running != 0) {
        group_round<kUnit>(g[k]);
        any = true;
      }
    }
    if (!any) break;
  }
  for (int k = 0; k < G; ++k) group_finish<kUnit>(x + 512 * k, g[k], q.at(16 * k), d + 16 * k);
}

template <bool kUnit>
MIXQ_SEARCH_AVX512 void fit_scale_row(const float* x, const float* w, int64_t blocks, int lo, int hi,
                                      const float* offsets, int n_offsets, int refine_rounds, const Codes& q, float* d,
                                      BlockSeed* seeds) {
  // Groups of 16 blocks transposed; the rest: all seeds first (independent blocks whose long
  // reductions overlap), then the rounds in pairs. Without importance w is not read (may be null).
  int64_t b0 = 0;
  for (; b0 + 32 <= blocks; b0 += 32) {
    if (b0 + 64 <= blocks) {
      for (int l = 0; l < 64; ++l) _mm_prefetch(reinterpret_cast<const char*>(x + 32 * (b0 + 32) + 16 * l), _MM_HINT_T0);
    }
    fit_scale_16_blocks<kUnit, 2>(x + 32 * b0, kUnit ? nullptr : w + 32 * b0, lo, hi, offsets, n_offsets,
                                  refine_rounds, q.at(b0), d + b0);
  }
  for (; b0 + 16 <= blocks; b0 += 16) {
    fit_scale_16_blocks<kUnit, 1>(x + 32 * b0, kUnit ? nullptr : w + 32 * b0, lo, hi, offsets, n_offsets, refine_rounds,
                              q.at(b0), d + b0);
  }
  const auto wb = [&](int64_t b) { return kUnit ? nullptr : w + 32 * b; };
  for (int64_t b = b0; b < blocks; ++b) seeds[b] = seed_block<kUnit>(x + 32 * b, wb(b), lo, hi, offsets, n_offsets);
  int64_t b = b0;
  for (; b + 1 < blocks; b += 2) {
    refine_blocks<2, kUnit>(x + 32 * b, wb(b), seeds + b, lo, hi, refine_rounds, q.at(b), d + b);
  }
  if (b < blocks) refine_blocks<1, kUnit>(x + 32 * b, wb(b), seeds + b, lo, hi, refine_rounds, q.at(b), d + b);
}

MIXQ_SEARCH_AVX512 void fit_scale_row_codes(const float* x, const float* w, int64_t n, int lo, int hi, const float* offsets,
                                            int n_offsets, int refine_rounds, const Codes& q, float* d) {
  const int64_t blocks = n / 32;
  thread_local std::vector<BlockSeed> seeds;
  if (static_cast<int64_t>(seeds.size()) < blocks) seeds.resize(static_cast<size_t>(blocks));
  const bool unit = w == nullptr || all_ones(w, n);
  // The unit-weight path's exact integer sum of squares needs codes of at most 128 in magnitude
  // (every legacy type's); wider grids would take the weighted path with weights of 1.
  if (unit && lo >= -128 && hi <= 128) {
    fit_scale_row<true>(x, w, blocks, lo, hi, offsets, n_offsets, refine_rounds, q, d, seeds.data());
  } else if (w == nullptr) {
    thread_local std::vector<float> ones;
    ones.assign(static_cast<size_t>(n), 1.0f);
    fit_scale_row<false>(x, ones.data(), blocks, lo, hi, offsets, n_offsets, refine_rounds, q, d, seeds.data());
  } else {
    fit_scale_row<false>(x, w, blocks, lo, hi, offsets, n_offsets, refine_rounds, q, d, seeds.data());
  }
}

}  // namespace

void fit_scale_row_avx512(const float* x, const float* w, int64_t n, int lo, int hi, const float* offsets, int n_offsets,
                          int refine_rounds, int* q, float* d) {
  fit_scale_row_codes(x, w, n, lo, hi, offsets, n_offsets, refine_rounds, Codes{q, nullptr, 0}, d);
}

void fit_scale_row_bytes_avx512(const float* x, const float* w, int64_t n, int lo, int hi, const float* offsets,
                                int n_offsets, int refine_rounds, int8_t* q8, ptrdiff_t stride, float* d) {
  fit_scale_row_codes(x, w, n, lo, hi, offsets, n_offsets, refine_rounds, Codes{nullptr, q8, stride}, d);
}

MIXQ_SEARCH_AVX512 void pack_nibbles_32_avx512(const int* q, int bias, uint8_t* nibbles, uint8_t* high_bits) {
  const __m512i b = _mm512_set1_epi32(bias), low4 = _mm512_set1_epi32(0xf);
  const __m512i c0 = _mm512_add_epi32(_mm512_loadu_si512(q), b), c1 = _mm512_add_epi32(_mm512_loadu_si512(q + 16), b);
  const __m512i packed = _mm512_or_si512(_mm512_and_si512(c0, low4), _mm512_slli_epi32(_mm512_and_si512(c1, low4), 4));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(nibbles), _mm512_cvtepi32_epi8(packed));
  if (high_bits != nullptr) {
    const __m512i bit4 = _mm512_set1_epi32(16);
    const uint32_t bits = static_cast<uint32_t>(_mm512_test_epi32_mask(c0, bit4)) |
                          static_cast<uint32_t>(_mm512_test_epi32_mask(c1, bit4)) << 16;
    for (int k = 0; k < 4; ++k) high_bits[k] = static_cast<uint8_t>(bits >> (8 * k));
  }
}

namespace {

// The symmetric k-quants' super-block, transposed: register i holds value i of every sub-block
// (lane j = sub-block j), so the reference's sequential sums over a sub-block's 16 values become
// 16 sequential vector additions, one lane per sub-block.
struct Transposed16 {
  __m512 v[16];
};

MIXQ_SEARCH_AVX512 inline void transpose_load(const float* x, Transposed16& t) {
  const __m512i rows = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                          _mm512_set1_epi32(16));
  for (int i = 0; i < 16; ++i) t.v[i] = _mm512_i32gather_ps(rows, x + i, 4);
}

// Per sub-block: the reference's Fit {gain, scale} in doubles, lanes 0-7 and 8-15.
// Per sub-block: the reference's Fit gain in doubles (lanes 0-7, 8-15) and the float sums it came
// from; its scale, (double) sxq / sqq where sqq > 0 and 0 elsewhere, is formed only when needed.
struct Fit16 {
  __m512d gain[2];
  __m512 sxq, sqq;
};

MIXQ_SEARCH_AVX512 inline void scale_of(const Fit16& f, __m512d scale[2]) {
  const __mmask16 pos = _mm512_cmp_ps_mask(f.sqq, _mm512_setzero_ps(), _CMP_GT_OQ);
  scale[0] = _mm512_maskz_div_pd(static_cast<__mmask8>(pos), lo_pd(f.sxq), lo_pd(f.sqq));
  scale[1] = _mm512_maskz_div_pd(static_cast<__mmask8>(pos >> 8), hi_pd(f.sxq), hi_pd(f.sqq));
}


// fit_sub_block's evaluate for every sub-block at its own inverse scale.
// kUnit: every weight is 1 (1 * v is v exactly, so those products are skipped).
template <bool kUnit>
MIXQ_SEARCH_AVX512 inline Fit16 evaluate16(const Transposed16& x, const Transposed16& w, const Transposed16& wx,
                                           __m512 iscale, __m512 lo, __m512 hi) {
  __m512 sxq = _mm512_setzero_ps(), sqq = _mm512_setzero_ps();
  for (int i = 0; i < 16; ++i) {
    const __m512 q = round_for_sums(clamp_ref(_mm512_mul_ps(x.v[i], iscale), lo, hi));
    sxq = _mm512_add_ps(sxq, _mm512_mul_ps(kUnit ? x.v[i] : wx.v[i], q));
    sqq = _mm512_add_ps(sqq, _mm512_mul_ps(kUnit ? q : _mm512_mul_ps(w.v[i], q), q));
  }
  const __mmask16 pos = _mm512_cmp_ps_mask(sqq, _mm512_setzero_ps(), _CMP_GT_OQ);
  Fit16 f;
  const __m512d s[2] = {lo_pd(sxq), hi_pd(sxq)}, t[2] = {lo_pd(sqq), hi_pd(sqq)};
  for (int h = 0; h < 2; ++h) {
    const auto m = static_cast<__mmask8>(pos >> (8 * h));
    f.gain[h] = _mm512_maskz_div_pd(m, _mm512_mul_pd(s[h], s[h]), t[h]);
  }
  f.sxq = sxq;
  f.sqq = sqq;
  return f;
}

// evaluate16 at two inverse scales in one pass: each lane's two pairs of sums are formed by the
// same operations in the same order as two evaluate16 calls would, so the results are identical;
// the two independent addition chains only overlap in time.
template <bool kUnit>
MIXQ_SEARCH_AVX512 inline void evaluate16x2(const Transposed16& x, const Transposed16& w, const Transposed16& wx,
                                            __m512 iscale0, __m512 iscale1, __m512 lo, __m512 hi, Fit16& f0,
                                            Fit16& f1) {
  __m512 sxq0 = _mm512_setzero_ps(), sqq0 = _mm512_setzero_ps();
  __m512 sxq1 = _mm512_setzero_ps(), sqq1 = _mm512_setzero_ps();
  for (int i = 0; i < 16; ++i) {
    const __m512 q0 = round_for_sums(clamp_ref(_mm512_mul_ps(x.v[i], iscale0), lo, hi));
    const __m512 q1 = round_for_sums(clamp_ref(_mm512_mul_ps(x.v[i], iscale1), lo, hi));
    const __m512 a = kUnit ? x.v[i] : wx.v[i];
    sxq0 = _mm512_add_ps(sxq0, _mm512_mul_ps(a, q0));
    sxq1 = _mm512_add_ps(sxq1, _mm512_mul_ps(a, q1));
    sqq0 = _mm512_add_ps(sqq0, _mm512_mul_ps(kUnit ? q0 : _mm512_mul_ps(w.v[i], q0), q0));
    sqq1 = _mm512_add_ps(sqq1, _mm512_mul_ps(kUnit ? q1 : _mm512_mul_ps(w.v[i], q1), q1));
  }
  Fit16* const out[2] = {&f0, &f1};
  const __m512 sx[2] = {sxq0, sxq1}, sq[2] = {sqq0, sqq1};
  for (int k = 0; k < 2; ++k) {
    const __mmask16 pos = _mm512_cmp_ps_mask(sq[k], _mm512_setzero_ps(), _CMP_GT_OQ);
    const __m512d s[2] = {lo_pd(sx[k]), hi_pd(sx[k])}, t[2] = {lo_pd(sq[k]), hi_pd(sq[k])};
    for (int h = 0; h < 2; ++h) {
      const auto m = static_cast<__mmask8>(pos >> (8 * h));
      out[k]->gain[h] = _mm512_maskz_div_pd(m, _mm512_mul_pd(s[h], s[h]), t[h]);
    }
    out[k]->sxq = sx[k];
    out[k]->sqq = sq[k];
  }
}

// Lanes of `use` take f's values.
MIXQ_SEARCH_AVX512 inline void take(Fit16& best, const Fit16& f, __mmask16 use) {
  for (int h = 0; h < 2; ++h) {
    const auto m = static_cast<__mmask8>(use >> (8 * h));
    best.gain[h] = _mm512_mask_mov_pd(best.gain[h], m, f.gain[h]);
  }
  best.sxq = _mm512_mask_mov_ps(best.sxq, use, f.sxq);
  best.sqq = _mm512_mask_mov_ps(best.sqq, use, f.sqq);
}

MIXQ_SEARCH_AVX512 inline __mmask16 gain_above(const Fit16& f, const Fit16& best) {
  return static_cast<__mmask16>(_mm512_cmp_pd_mask(f.gain[0], best.gain[0], _CMP_GT_OQ) |
                                (_mm512_cmp_pd_mask(f.gain[1], best.gain[1], _CMP_GT_OQ) << 8));
}

// A choice of integer scales and codes for one super-scale (the reference's Choice).
struct Choice16 {
  float err;
  __m512i sc;           // per sub-block
  Transposed16 codes;   // codes as floats, transposed
};

// lround (halves away from zero) of doubles that are integers or have a fraction.
MIXQ_SEARCH_AVX512 inline __m256i lround_pd(__m512d v) {
  const __m512d t = _mm512_roundscale_pd(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
  const __m512d frac = _mm512_abs_pd(_mm512_sub_pd(v, t));
  const __mmask8 up = _mm512_cmp_pd_mask(frac, _mm512_set1_pd(0.5), _CMP_GE_OQ);
  const __m512d one = _mm512_castsi512_pd(_mm512_or_si512(
      _mm512_castpd_si512(_mm512_set1_pd(1.0)),
      _mm512_and_si512(_mm512_castpd_si512(v), _mm512_castpd_si512(_mm512_set1_pd(-0.0)))));
  return _mm512_cvtpd_epi32(_mm512_mask_add_pd(t, up, t, one));
}

// choose_scales: for super-scale d, each sub-block tries the integer scales next to its ideal one.
template <bool kUnit>
MIXQ_SEARCH_AVX512 void choose_scales16(const Transposed16& x, const Transposed16& w, const __m512d ideal[2], float d,
                                        int scale_max, __m512 lo, __m512 hi, Choice16& out) {
  const __m512d dd = _mm512_set1_pd(static_cast<double>(d));
  const __m512i centre = _mm512_inserti64x4(_mm512_castsi256_si512(lround_pd(_mm512_div_pd(ideal[0], dd))),
                                            lround_pd(_mm512_div_pd(ideal[1], dd)), 1);
  const __m512 vd = _mm512_set1_ps(d);
  // The three candidate scales (centre - 1, centre, centre + 1) are tried in one pass: each
  // lane's error for each candidate is the same chain of operations in the same order as a pass
  // per candidate would form, so only the independent chains overlap; the choice is then made in
  // the reference's order (a later candidate wins only with a strictly lower error).
  __m512i sc[3];
  __mmask16 valid[3];
  __m512 D[3], inv[3], err[3];
  for (int k = 0; k < 3; ++k) {
    sc[k] = _mm512_add_epi32(centre, _mm512_set1_epi32(k - 1));
    valid[k] = _mm512_cmp_epi32_mask(sc[k], _mm512_set1_epi32(-scale_max), _MM_CMPINT_NLT) &
               _mm512_cmp_epi32_mask(sc[k], _mm512_set1_epi32(scale_max), _MM_CMPINT_LE);
    D[k] = _mm512_mul_ps(vd, _mm512_cvtepi32_ps(sc[k]));
    const __mmask16 nonzero = _mm512_cmp_ps_mask(D[k], _mm512_setzero_ps(), _CMP_NEQ_UQ);
    inv[k] = _mm512_maskz_div_ps(nonzero, _mm512_set1_ps(1.0f), D[k]);
    err[k] = _mm512_setzero_ps();
  }
  Transposed16 q[3];
  for (int i = 0; i < 16; ++i) {
    for (int k = 0; k < 3; ++k) {
      // -0 codes (round_for_sums) change neither the error (diff is x, or a zero whose square is
      // +0) nor the stored code (converted to 0) nor the super-scale sums (zero terms).
      q[k].v[i] = round_for_sums(clamp_ref(_mm512_mul_ps(x.v[i], inv[k]), lo, hi));
      const __m512 diff = _mm512_sub_ps(x.v[i], _mm512_mul_ps(D[k], q[k].v[i]));
      err[k] = _mm512_add_ps(err[k], _mm512_mul_ps(kUnit ? diff : _mm512_mul_ps(w.v[i], diff), diff));
    }
  }
  // Sequentially: use_k = valid_k & (err_k < best so far), best starting at +inf. The lane's
  // final pick is the last candidate whose use bit is set (none: scale 0, codes 0).
  __m512 best_err = _mm512_set1_ps(INFINITY);
  __mmask16 use[3];
  for (int k = 0; k < 3; ++k) {
    use[k] = valid[k] & _mm512_cmp_ps_mask(err[k], best_err, _CMP_LT_OQ);
    best_err = _mm512_mask_mov_ps(best_err, use[k], err[k]);
  }
  out.sc = _mm512_mask_mov_epi32(
      _mm512_mask_mov_epi32(_mm512_maskz_mov_epi32(use[0], sc[0]), use[1], sc[1]), use[2], sc[2]);
  for (int i = 0; i < 16; ++i) {
    out.codes.v[i] = _mm512_mask_mov_ps(
        _mm512_mask_mov_ps(_mm512_maskz_mov_ps(use[0], q[0].v[i]), use[1], q[1].v[i]), use[2], q[2].v[i]);
  }
  alignas(64) float e[16];
  _mm512_store_ps(e, best_err);
  out.err = 0;
  for (const float v : e) out.err += v;
}


// The super-scales already tried in one super-block (f16 bits).
struct Tried {
  uint16_t bits[8];
  int n = 0;
  bool contains(uint16_t v) const {
    for (int k = 0; k < n; ++k) {
      if (bits[k] == v) return true;
    }
    return false;
  }
};

// The reference's try_d: the f16 super-scale nearest `candidate`, if usable, with its integer
// scales; kept (in chosen, best_d) when its error is lower.
//
// A super-scale already tried is skipped: choose_scales16 depends only on the super-block, the
// ideal scales (fixed once the super-scale search starts) and d, so trying it again would give
// the same error, which was not below the chosen error then and, the chosen error only ever
// decreasing, is not below it now; the reference's retry changes nothing (chosen, best_d stay).
template <bool kUnit>
MIXQ_SEARCH_AVX512 void try_super_scale(const Transposed16& x, const Transposed16& w, const __m512d ideal[2],
                                        double candidate, int scale_max, __m512 lo, __m512 hi, Choice16& trial,
                                        Choice16& chosen, uint16_t& best_d, Tried& tried) {
  const uint16_t bits = fp32_to_fp16(static_cast<float>(candidate));
  const float d = fp16_to_fp32(bits);
  if (!(d > 0) || !std::isfinite(d)) return;
  if (tried.contains(bits)) return;
  if (tried.n < 8) tried.bits[tried.n++] = bits;
  choose_scales16<kUnit>(x, w, ideal, d, scale_max, lo, hi, trial);
  if (trial.err < chosen.err) {
    chosen = trial;
    best_d = bits;
  }
}

template <bool kUnit>
MIXQ_SEARCH_AVX512 void symmetric_super_block(const float* x_in, const float* w_in, int code_lo, int code_hi,
                                              int scale_max, const float* seed_offsets, int n_seeds, int refine_rounds,
                                              int super_rounds, uint16_t* d_out, int8_t* sc_out, int8_t* codes_out) {
  Transposed16 x, w, wx;
  transpose_load(x_in, x);
  if constexpr (kUnit) {
    // Every weight 1: w * x is x exactly, and every use of w or wx below reads x or nothing
    // instead (kUnit), except the super-scale sums' wx: x there.
    for (int i = 0; i < 16; ++i) wx.v[i] = x.v[i];
  } else {
    transpose_load(w_in, w);
    for (int i = 0; i < 16; ++i) wx.v[i] = _mm512_mul_ps(w.v[i], x.v[i]);
  }
  const auto flo = static_cast<float>(code_lo), fhi = static_cast<float>(code_hi);
  const __m512 lo = _mm512_set1_ps(flo), hi = _mm512_set1_ps(fhi);

  // fit_sub_block for all 16 sub-blocks: the first value of largest magnitude, the seeds, the
  // least-squares refinement (each lane leaves at its first round without gain, as its loop does).
  __m512 amax, extreme;
  first_extreme_transposed<16>(x.v, amax, extreme);
  const __mmask16 active = _mm512_cmp_ps_mask(amax, _mm512_set1_ps(1e-30f), _CMP_GE_OQ);
  Fit16 best;
  best.gain[0] = best.gain[1] = _mm512_setzero_pd();
  best.sxq = best.sqq = _mm512_setzero_ps();
  __m512d scale[2];  // the ideal scale of each sub-block
  if (active != 0) {
    // The seeds in the reference's order (the low end's, then the high end's), evaluated two at a
    // time (their sums are independent) and taken one at a time, in that order.
    // (An array, not a lambda: clang does not give a lambda its enclosing function's target.)
    const int n_targets = 2 * n_seeds;
    __m512 iscale[16];
    for (int t = 0; t < n_targets; ++t) {
      const float end = t < n_seeds ? flo : fhi, off = seed_offsets[t % n_seeds];
      const float target = end < 0 ? end - off : end + off;
      iscale[t] = _mm512_div_ps(_mm512_set1_ps(target), extreme);
    }
    int t = 0;
    for (; t + 1 < n_targets; t += 2) {
      Fit16 f0, f1;
      evaluate16x2<kUnit>(x, w, wx, iscale[t], iscale[t + 1], lo, hi, f0, f1);
      take(best, f0, active & gain_above(f0, best));
      take(best, f1, active & gain_above(f1, best));
    }
    if (t < n_targets) {
      const Fit16 f = evaluate16<kUnit>(x, w, wx, iscale[t], lo, hi);
      take(best, f, active & gain_above(f, best));
    }
    const __m512d one = _mm512_set1_pd(1.0), zero = _mm512_setzero_pd();
    __mmask16 running = active;
    for (int r = 0; r < refine_rounds; ++r) {
      scale_of(best, scale);
      running &= static_cast<__mmask16>(_mm512_cmp_pd_mask(scale[0], zero, _CMP_NEQ_UQ) |
                                        (_mm512_cmp_pd_mask(scale[1], zero, _CMP_NEQ_UQ) << 8));
      if (running == 0) break;
      const __m512 iscale = _mm512_insertf32x8(
          _mm512_castps256_ps512(_mm512_cvtpd_ps(_mm512_div_pd(one, scale[0]))),
          _mm512_cvtpd_ps(_mm512_div_pd(one, scale[1])), 1);
      const Fit16 f = evaluate16<kUnit>(x, w, wx, iscale, lo, hi);
      running &= gain_above(f, best);
      take(best, f, running);
    }
  }

  // The super-scale: the largest ideal scale on scale_max (or just inside), then least squares
  // over the chosen integers, as in the reference.
  scale_of(best, scale);
  const __m512d max2 = _mm512_max_pd(_mm512_abs_pd(scale[0]), _mm512_abs_pd(scale[1]));
  const double max_abs = _mm512_reduce_max_pd(max2);
  if (max_abs == 0) {
    *d_out = 0;
    std::memset(sc_out, 0, 16);
    std::memset(codes_out, 0, 256);
    return;
  }
  Choice16 chosen, trial;
  chosen.err = INFINITY;
  chosen.sc = _mm512_setzero_si512();
  for (auto& v : chosen.codes.v) v = _mm512_setzero_ps();
  uint16_t best_d = 0;
  Tried tried;
  const auto m = static_cast<double>(scale_max);
  for (const double top : {m, m - 0.5, m - 1.0}) {
    try_super_scale<kUnit>(x, w, scale, max_abs / top, scale_max, lo, hi, trial, chosen, best_d, tried);
  }
  for (int round = 0; round < super_rounds; ++round) {
    // num = sum w x (sc * code), den = sum w (sc * code)^2 in the reference's order: sub-block by
    // sub-block, value by value, in doubles. The terms are formed in lanes, the sums in order.
    //
    // Every term is exact (a float times an integer below 2^12, or times its square), so a sum
    // rounds only where a partial sum needs more than 53 bits. The terms of one sum are multiples
    // of 2^L, L the lowest exponent of their float factor's last mantissa bit; when 256 times the
    // largest term stays below 2^(L + 53), no partial sum in any order rounds, and the sums are
    // formed in lanes. Otherwise (a super-block spanning a very wide range) they are formed in
    // the reference's order.
    alignas(64) double tn[16][16], td[16][16];  // [value i][sub-block j]
    const __m512d sc[2] = {_mm512_cvtepi32_pd(_mm512_castsi512_si256(chosen.sc)),
                           _mm512_cvtepi32_pd(_mm512_extracti64x4_epi64(chosen.sc, 1))};
    __m512d vnum = _mm512_setzero_pd(), vden = _mm512_setzero_pd();
    __m512d max_n = _mm512_setzero_pd(), max_d = _mm512_setzero_pd();
    __m512 low_n = _mm512_set1_ps(INFINITY), low_d = _mm512_set1_ps(INFINITY);
    const __mmask16 sc_nonzero = _mm512_cmp_epi32_mask(chosen.sc, _mm512_setzero_si512(), _MM_CMPINT_NE);
    for (int i = 0; i < 16; ++i) {
      const __m512d q[2] = {lo_pd(chosen.codes.v[i]), hi_pd(chosen.codes.v[i])};
      const __m512d wxd[2] = {lo_pd(wx.v[i]), hi_pd(wx.v[i])};
      __m512d wd[2] = {_mm512_set1_pd(1.0), _mm512_set1_pd(1.0)};  // kUnit: w is not loaded
      if (!kUnit) {
        wd[0] = lo_pd(w.v[i]);
        wd[1] = hi_pd(w.v[i]);
      }
      // Lanes whose terms are not zero: their float factors' exponents bound L from below.
      const __mmask16 used =
          sc_nonzero & _mm512_cmp_ps_mask(chosen.codes.v[i], _mm512_setzero_ps(), _CMP_NEQ_UQ);
      low_n = _mm512_mask_min_ps(low_n, used & _mm512_cmp_ps_mask(wx.v[i], _mm512_setzero_ps(), _CMP_NEQ_UQ), low_n,
                                 _mm512_getexp_ps(wx.v[i]));
      if (!kUnit) {
        low_d = _mm512_mask_min_ps(low_d, used & _mm512_cmp_ps_mask(w.v[i], _mm512_setzero_ps(), _CMP_NEQ_UQ), low_d,
                                   _mm512_getexp_ps(w.v[i]));
      }
      for (int h = 0; h < 2; ++h) {
        const __m512d sq = _mm512_mul_pd(sc[h], q[h]);
        // kUnit: 1.0 * sq is sq exactly.
        const __m512d n = _mm512_mul_pd(wxd[h], sq),
                      d = _mm512_mul_pd(kUnit ? sq : _mm512_mul_pd(wd[h], sq), sq);
        _mm512_store_pd(&tn[i][8 * h], n);
        _mm512_store_pd(&td[i][8 * h], d);
        vnum = _mm512_add_pd(vnum, n);
        vden = _mm512_add_pd(vden, d);
        max_n = _mm512_max_pd(max_n, _mm512_abs_pd(n));
        max_d = _mm512_max_pd(max_d, _mm512_abs_pd(d));
      }
    }
    // Float mantissas have 24 bits: the last one is 2^(exponent - 23). With unit weights the
    // squares are integers (L = 0).
    const float en = _mm512_reduce_min_ps(low_n), ed = kUnit ? 23.0f : _mm512_reduce_min_ps(low_d);
    const auto bound = [](float e) { return std::isfinite(e) ? std::ldexp(1.0, static_cast<int>(e) - 23 + 53 - 8) : INFINITY; };
    const bool exact = _mm512_reduce_max_pd(max_n) < bound(en) && _mm512_reduce_max_pd(max_d) < bound(ed);
    double num = 0, den = 0;
    if (exact) {
      num = _mm512_reduce_add_pd(vnum);
      den = _mm512_reduce_add_pd(vden);
    } else {
      for (int j = 0; j < 16; ++j) {
        for (int i = 0; i < 16; ++i) {
          num += tn[i][j];
          den += td[i][j];
        }
      }
    }
    if (den <= 0) break;
    const uint16_t before = best_d;
    try_super_scale<kUnit>(x, w, scale, num / den, scale_max, lo, hi, trial, chosen, best_d, tried);
    if (best_d == before) break;
  }

  *d_out = best_d;
  alignas(64) int32_t sc32[16];
  _mm512_store_si512(sc32, chosen.sc);
  for (int j = 0; j < 16; ++j) sc_out[j] = static_cast<int8_t>(sc32[j]);
  alignas(16) int8_t t[16][16];  // [value i][sub-block j]
  for (int i = 0; i < 16; ++i) {
    _mm_store_si128(reinterpret_cast<__m128i*>(t[i]), _mm512_cvtsepi32_epi8(_mm512_cvttps_epi32(chosen.codes.v[i])));
  }
  for (int j = 0; j < 16; ++j) {
    for (int i = 0; i < 16; ++i) codes_out[16 * j + i] = t[i][j];
  }
}

}  // namespace

MIXQ_SEARCH_AVX512 void symmetric_super_block_avx512(const float* x, const float* w, int code_lo, int code_hi,
                                                     int scale_max, const float* seed_offsets, int n_seeds,
                                                     int refine_rounds, int super_rounds, uint16_t* d, int8_t* sc,
                                                     int8_t* codes) {
  if (all_ones(w, 256)) {
    symmetric_super_block<true>(x, w, code_lo, code_hi, scale_max, seed_offsets, n_seeds, refine_rounds, super_rounds,
                                d, sc, codes);
  } else {
    symmetric_super_block<false>(x, w, code_lo, code_hi, scale_max, seed_offsets, n_seeds, refine_rounds, super_rounds,
                                 d, sc, codes);
  }
}

namespace {

// The affine k-quants' super-block of 8 sub-blocks of 32. The reference sums each sub-block in 4
// lanes (value i in lane i % 4, chunks of 4 in order) and adds the lanes as (l0 + l2) + (l1 + l3).
// Here register h of chunk c holds chunk c of sub-blocks 4h..4h+3, one 128-bit group each, so
// every group reproduces one sub-block's lanes; per-sub-block quantities are __m256 (lane j =
// sub-block j).
struct AffineData {
  __m512 x[8][2], w[8][2];
};

MIXQ_SEARCH_AVX512 inline __m512i affine_gather_index() {
  // lane 4g + k -> value 32g + k (plus 4c and 128h at the call)
  return _mm512_setr_epi32(0, 1, 2, 3, 32, 33, 34, 35, 64, 65, 66, 67, 96, 97, 98, 99);
}

// (Lambdas do not inherit the target attribute: in a build without -march=native their intrinsics
// would not compile, so the helpers here are functions.)
MIXQ_SEARCH_AVX512 inline __m512 fold_groups(__m512 v) {
  const __m512 t = _mm512_add_ps(v, _mm512_permute_ps(v, 0x4e));  // (0+2, 1+3, 2+0, 3+1); + commutes exactly
  return _mm512_add_ps(t, _mm512_permute_ps(t, 0xb1));          // lane 0: (0+2) + (1+3)
}

// (l0 + l2) + (l1 + l3) of every group; a: sub-blocks 0-3, b: 4-7.
MIXQ_SEARCH_AVX512 inline __m256 group_sums(__m512 a, __m512 b) {
  const auto fold = fold_groups;
  const __m512i first = _mm512_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28, 0, 0, 0, 0, 0, 0, 0, 0);
  return _mm512_castps512_ps256(_mm512_permutex2var_ps(fold(a), first, fold(b)));
}

// Lane j of p to the four lanes of sub-block j's group.
MIXQ_SEARCH_AVX512 inline void spread(__m256 p, __m512& a, __m512& b) {
  const __m512 v = _mm512_castps256_ps512(p);
  a = _mm512_permutexvar_ps(_mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3), v);
  b = _mm512_permutexvar_ps(_mm512_setr_epi32(4, 4, 4, 4, 5, 5, 5, 5, 6, 6, 6, 6, 7, 7, 7, 7), v);
}

// The first of four in each group: std::min(std::min(v0, v1), std::min(v2, v3)) or the max.
template <bool kMax>
MIXQ_SEARCH_AVX512 inline __m512 group_extreme(__m512 v) {
  // std::min(a, b) is (b < a) ? b : a, i.e. vminps(b, a); std::max(a, b) is vmaxps(b, a).
  if constexpr (kMax) {
    const __m512 m = _mm512_max_ps(_mm512_permute_ps(v, 0xb1), v);  // lane 0: max(v1, v0), lane 2: max(v3, v2)
    return _mm512_max_ps(_mm512_permute_ps(m, 0x4e), m);            // lane 0: max(m23, m01)
  } else {
    const __m512 m = _mm512_min_ps(_mm512_permute_ps(v, 0xb1), v);
    return _mm512_min_ps(_mm512_permute_ps(m, 0x4e), m);
  }
}

// -v exactly (a sign flip, as the reference's unary minus; 0 - v would turn -0 into +0).
MIXQ_SEARCH_AVX512 inline __m256 neg8(__m256 v) { return _mm256_xor_ps(v, _mm256_set1_ps(-0.0f)); }

struct Moments8 {
  __m256 a, b, c;
};

struct AffineFit8 {
  __m256 s, b, gain;
  Moments8 cm;  // sl, sll, sxl
};

// solve_affine for 8 sub-blocks; dm = (sw, sx, sxx).
MIXQ_SEARCH_AVX512 inline AffineFit8 solve_affine8(const Moments8& dm, const Moments8& cm) {
  const __m256 sw = dm.a, sx = dm.b, sl = cm.a, sll = cm.b, sxl = cm.c, zero = _mm256_setzero_ps();
  const __m256 det = _mm256_sub_ps(_mm256_mul_ps(sw, sll), _mm256_mul_ps(sl, sl));
  const __mmask8 regular =
      _mm256_cmp_ps_mask(det, _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(1e-6f), sw), sll), _CMP_GT_OQ);
  const __m256 inv = _mm256_div_ps(_mm256_set1_ps(1.0f), det);
  const __m256 s1 = _mm256_mul_ps(_mm256_sub_ps(_mm256_mul_ps(sw, sxl), _mm256_mul_ps(sl, sx)), inv);
  const __m256 b1 = _mm256_mul_ps(_mm256_sub_ps(_mm256_mul_ps(sll, sx), _mm256_mul_ps(sl, sxl)), inv);
  const __mmask8 free_ok = regular & _mm256_cmp_ps_mask(s1, zero, _CMP_GE_OQ) & _mm256_cmp_ps_mask(b1, zero, _CMP_LE_OQ);
  const __m256 g1 = _mm256_add_ps(_mm256_mul_ps(s1, sxl), _mm256_mul_ps(b1, sx));
  const __mmask8 s2_ok = _mm256_cmp_ps_mask(sll, zero, _CMP_GT_OQ) & _mm256_cmp_ps_mask(sxl, zero, _CMP_GT_OQ);
  const __m256 s2 = _mm256_maskz_div_ps(s2_ok, sxl, sll);
  const __mmask8 b2_ok = _mm256_cmp_ps_mask(sw, zero, _CMP_GT_OQ) & _mm256_cmp_ps_mask(sx, zero, _CMP_LT_OQ);
  const __m256 b2 = _mm256_maskz_div_ps(b2_ok, sx, sw);
  const __m256 g_no_offset = _mm256_mul_ps(s2, sxl), g_no_scale = _mm256_mul_ps(b2, sx);
  const __mmask8 no_offset = _mm256_cmp_ps_mask(g_no_offset, g_no_scale, _CMP_GE_OQ);
  AffineFit8 f;
  f.s = _mm256_mask_mov_ps(_mm256_maskz_mov_ps(no_offset, s2), free_ok, s1);
  f.b = _mm256_mask_mov_ps(_mm256_maskz_mov_ps(static_cast<__mmask8>(~no_offset), b2), free_ok, b1);
  f.gain = _mm256_mask_mov_ps(_mm256_mask_mov_ps(g_no_scale, no_offset, g_no_offset), free_ok, g1);
  f.cm = cm;
  return f;
}

MIXQ_SEARCH_AVX512 inline void take8(AffineFit8& best, const AffineFit8& f, __mmask8 m) {
  best.s = _mm256_mask_mov_ps(best.s, m, f.s);
  best.b = _mm256_mask_mov_ps(best.b, m, f.b);
  best.gain = _mm256_mask_mov_ps(best.gain, m, f.gain);
  best.cm.a = _mm256_mask_mov_ps(best.cm.a, m, f.cm.a);
  best.cm.b = _mm256_mask_mov_ps(best.cm.b, m, f.cm.b);
  best.cm.c = _mm256_mask_mov_ps(best.cm.c, m, f.cm.c);
}

// codes_of: clamp((x - offset) * inv, 0, code_max), rounded.
MIXQ_SEARCH_AVX512 inline __m512 affine_codes(__m512 x, __m512 inv, __m512 offset, __m512 hi) {
  const __m512 v = _mm512_mul_ps(_mm512_sub_ps(x, offset), inv);
  return round_magic(_mm512_min_ps(_mm512_max_ps(v, _mm512_setzero_ps()), hi));
}

// code_moments: sum w l, sum w l^2, sum w x l with per-sub-block inverse scale and offset.
MIXQ_SEARCH_AVX512 inline Moments8 affine_code_moments(const AffineData& dt, __m256 inv, __m256 offset, __m512 hi) {
  __m512 inv2[2], off2[2];
  spread(inv, inv2[0], inv2[1]);
  spread(offset, off2[0], off2[1]);
  __m512 sl[2], sll[2], sxl[2];
  for (int h = 0; h < 2; ++h) {
    sl[h] = sll[h] = sxl[h] = _mm512_setzero_ps();
    for (int c = 0; c < 8; ++c) {
      const __m512 l = affine_codes(dt.x[c][h], inv2[h], off2[h], hi);
      const __m512 wl = _mm512_mul_ps(dt.w[c][h], l);
      sl[h] = _mm512_add_ps(sl[h], wl);
      sll[h] = _mm512_add_ps(sll[h], _mm512_mul_ps(wl, l));
      sxl[h] = _mm512_add_ps(sxl[h], _mm512_mul_ps(wl, dt.x[c][h]));
    }
  }
  return {group_sums(sl[0], sl[1]), group_sums(sll[0], sll[1]), group_sums(sxl[0], sxl[1])};
}

// grid_error: sum w (x - (dl * code - ml))^2 with the best codes for that grid.
MIXQ_SEARCH_AVX512 inline __m256 affine_grid_error(const AffineData& dt, __m256 dl, __m256 ml, __m512 hi) {
  const __m256 inv = _mm256_maskz_div_ps(_mm256_cmp_ps_mask(dl, _mm256_setzero_ps(), _CMP_GT_OQ),
                                         _mm256_set1_ps(1.0f), dl);
  __m512 inv2[2], dl2[2], ml2[2], off2[2];
  spread(inv, inv2[0], inv2[1]);
  spread(dl, dl2[0], dl2[1]);
  spread(ml, ml2[0], ml2[1]);
  spread(neg8(ml), off2[0], off2[1]);
  __m512 err[2];
  for (int h = 0; h < 2; ++h) {
    err[h] = _mm512_setzero_ps();
    for (int c = 0; c < 8; ++c) {
      const __m512 l = affine_codes(dt.x[c][h], inv2[h], off2[h], hi);
      const __m512 e = _mm512_sub_ps(dt.x[c][h], _mm512_sub_ps(_mm512_mul_ps(dl2[h], l), ml2[h]));
      err[h] = _mm512_add_ps(err[h], _mm512_mul_ps(_mm512_mul_ps(dt.w[c][h], e), e));
    }
  }
  return group_sums(err[0], err[1]);
}

struct AffineCandidate8 {
  uint16_t d_half, dmin_half;
  __m256i sc, m;
  double err;
};

MIXQ_SEARCH_AVX512 inline __m256i floor_to_grid8(__m256 v, float step, int scale_max) {
  if (!(step > 0)) return _mm256_setzero_si256();
  return _mm256_min_epi32(_mm256_cvttps_epi32(_mm256_div_ps(v, _mm256_set1_ps(step))), _mm256_set1_epi32(scale_max));
}

// quantize_scales: the integer scale and minimum of each sub-block for the given super-scales
// (choose_integers), and the total error.
MIXQ_SEARCH_AVX512 AffineCandidate8 affine_quantize_scales(const AffineData& dt, const AffineFit8& f, const Moments8& dm,
                                                          float d_target, float dmin_target,
                                                          const AffineSearchParams& p, __m512 hi) {
  AffineCandidate8 c;
  c.d_half = fp32_to_fp16(d_target);
  c.dmin_half = fp32_to_fp16(dmin_target);
  const float d = fp16_to_fp32(c.d_half), dmin = fp16_to_fp32(c.dmin_half);
  const __m256 vd = _mm256_set1_ps(d), vdmin = _mm256_set1_ps(dmin), zero = _mm256_setzero_ps();
  const __m256i smax = _mm256_set1_epi32(p.scale_max);
  const __m256i sc0 = floor_to_grid8(f.s, d, p.scale_max);
  const __mmask8 exact = _mm256_cmp_epi32_mask(sc0, _mm256_set1_epi32(p.exact_scale_below), _MM_CMPINT_LT);
  __m256i best_sc = sc0, best_m = _mm256_setzero_si256();
  __m256 best_err = _mm256_set1_ps(INFINITY);
  for (int dsc = 0; dsc <= 1; ++dsc) {
    const __m256i sc = _mm256_add_epi32(sc0, _mm256_set1_epi32(dsc));
    const __mmask8 sc_ok = dsc == 0 ? static_cast<__mmask8>(0xff) : _mm256_cmp_epi32_mask(sc, smax, _MM_CMPINT_LE);
    const __m256 dl = _mm256_mul_ps(vd, _mm256_cvtepi32_ps(sc));
    const __m256 slv = _mm256_maskz_mov_ps(_mm256_cmp_epi32_mask(sc, _mm256_setzero_si256(), _MM_CMPINT_GT), f.cm.a);
    const __m256 b = _mm256_maskz_div_ps(_mm256_cmp_ps_mask(dm.a, zero, _CMP_GT_OQ),
                                         _mm256_sub_ps(dm.b, _mm256_mul_ps(dl, slv)), dm.a);
    const __m256i m0 = floor_to_grid8(_mm256_max_ps(neg8(b), zero), dmin, p.scale_max);
    for (int dm_ = 0; dm_ <= 1; ++dm_) {
      const __m256i m = _mm256_add_epi32(m0, _mm256_set1_epi32(dm_));
      const __mmask8 ok = sc_ok & (dm_ == 0 ? static_cast<__mmask8>(0xff) : _mm256_cmp_epi32_mask(m, smax, _MM_CMPINT_LE));
      if (ok == 0) continue;
      const __m256 ml = _mm256_mul_ps(vdmin, _mm256_cvtepi32_ps(m));
      // fixed_code_error(dm, cm, s = dl, b = -ml) in the reference's order of operations.
      const __m256 s = dl, bb = neg8(ml), two = _mm256_set1_ps(2.0f);
      __m256 err = _mm256_sub_ps(dm.c, _mm256_mul_ps(two, _mm256_add_ps(_mm256_mul_ps(s, f.cm.c), _mm256_mul_ps(bb, dm.b))));
      err = _mm256_add_ps(err, _mm256_mul_ps(_mm256_mul_ps(s, s), f.cm.b));
      err = _mm256_add_ps(err, _mm256_mul_ps(_mm256_mul_ps(_mm256_mul_ps(two, s), bb), f.cm.a));
      err = _mm256_add_ps(err, _mm256_mul_ps(_mm256_mul_ps(bb, bb), dm.a));
      if ((ok & exact) != 0) err = _mm256_mask_mov_ps(err, exact, affine_grid_error(dt, dl, ml, hi));
      const __mmask8 use = ok & _mm256_cmp_ps_mask(err, best_err, _CMP_LT_OQ);
      best_err = _mm256_mask_mov_ps(best_err, use, err);
      best_sc = _mm256_mask_mov_epi32(best_sc, use, sc);
      best_m = _mm256_mask_mov_epi32(best_m, use, m);
    }
  }
  c.sc = best_sc;
  c.m = best_m;
  const __m256 e = affine_grid_error(dt, _mm256_mul_ps(vd, _mm256_cvtepi32_ps(best_sc)),
                                     _mm256_mul_ps(vdmin, _mm256_cvtepi32_ps(best_m)), hi);
  alignas(32) float ev[8];
  _mm256_store_ps(ev, e);
  c.err = 0;
  for (const float v : ev) c.err += v;
  return c;
}

// refit_super_scales: least squares for (d, dmin) with the integers and codes fixed.
MIXQ_SEARCH_AVX512 bool affine_refit(const AffineData& dt, const Moments8& dm, const AffineCandidate8& c, __m512 hi,
                                     float& d, float& dmin) {
  const float d0 = fp16_to_fp32(c.d_half), dmin0 = fp16_to_fp32(c.dmin_half);
  const __m256 scf = _mm256_cvtepi32_ps(c.sc), mf = _mm256_cvtepi32_ps(c.m);
  const __m256 dl = _mm256_mul_ps(_mm256_set1_ps(d0), scf);
  const __mmask8 pos = _mm256_cmp_ps_mask(dl, _mm256_setzero_ps(), _CMP_GT_OQ);
  const __m256 inv = _mm256_maskz_div_ps(pos, _mm256_set1_ps(1.0f), dl);
  const __m256 off = neg8(_mm256_mul_ps(_mm256_set1_ps(dmin0), mf));
  const Moments8 cm = affine_code_moments(dt, inv, off, hi);
  alignas(32) float sl[8], sll[8], sxl[8], sw[8], sx[8];
  alignas(32) int32_t sc[8], m[8];
  _mm256_store_ps(sl, _mm256_maskz_mov_ps(pos, cm.a));
  _mm256_store_ps(sll, _mm256_maskz_mov_ps(pos, cm.b));
  _mm256_store_ps(sxl, _mm256_maskz_mov_ps(pos, cm.c));
  _mm256_store_ps(sw, dm.a);
  _mm256_store_ps(sx, dm.b);
  _mm256_store_si256(reinterpret_cast<__m256i*>(sc), c.sc);
  _mm256_store_si256(reinterpret_cast<__m256i*>(m), c.m);
  double saa = 0, sak = 0, skk = 0, sxa = 0, sxk = 0;
  for (int j = 0; j < 8; ++j) {
    const double s = sc[j], k = m[j];
    saa += s * s * sll[j];
    sak += s * k * sl[j];
    skk += k * k * sw[j];
    sxa += s * sxl[j];
    sxk += k * sx[j];
  }
  const double det = saa * skk - sak * sak;
  if (!(det > 1e-12 * saa * skk)) return false;
  d = static_cast<float>((sxa * skk - sak * sxk) / det);
  dmin = static_cast<float>((sxa * sak - saa * sxk) / det);
  return d > 0 && dmin >= 0;
}

}  // namespace

MIXQ_SEARCH_AVX512 void affine_super_block_32_avx512(const float* x, const float* w, const AffineSearchParams& p,
                                                     uint16_t* d_out, uint16_t* dmin_out, uint8_t* sc_out,
                                                     uint8_t* m_out, uint8_t* codes_out) {
  AffineData dt;
  const __m512i gidx = affine_gather_index();
  for (int c = 0; c < 8; ++c) {
    for (int h = 0; h < 2; ++h) {
      dt.x[c][h] = _mm512_i32gather_ps(gidx, x + 4 * c + 128 * h, 4);
      dt.w[c][h] = _mm512_i32gather_ps(gidx, w + 4 * c + 128 * h, 4);
    }
  }
  const auto code_max = static_cast<float>(p.code_max);
  const __m512 hi = _mm512_set1_ps(code_max);

  // fit_sub_block for the 8 sub-blocks.
  __m512 sw[2], sx[2], sxx[2], vmin[2], vmax[2];
  for (int h = 0; h < 2; ++h) {
    sw[h] = sx[h] = sxx[h] = _mm512_setzero_ps();
    vmin[h] = vmax[h] = dt.x[0][h];
    for (int c = 0; c < 8; ++c) {
      const __m512 xv = dt.x[c][h], wx = _mm512_mul_ps(dt.w[c][h], xv);
      sw[h] = _mm512_add_ps(sw[h], dt.w[c][h]);
      sx[h] = _mm512_add_ps(sx[h], wx);
      sxx[h] = _mm512_add_ps(sxx[h], _mm512_mul_ps(wx, xv));
      vmin[h] = _mm512_min_ps(xv, vmin[h]);
      vmax[h] = _mm512_max_ps(xv, vmax[h]);
    }
  }
  const Moments8 dm{group_sums(sw[0], sw[1]), group_sums(sx[0], sx[1]), group_sums(sxx[0], sxx[1])};
  const __m512i first = _mm512_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28, 0, 0, 0, 0, 0, 0, 0, 0);
  const __m256 mn = _mm512_castps512_ps256(
      _mm512_permutex2var_ps(group_extreme<false>(vmin[0]), first, group_extreme<false>(vmin[1])));
  const __m256 mx = _mm512_castps512_ps256(
      _mm512_permutex2var_ps(group_extreme<true>(vmax[0]), first, group_extreme<true>(vmax[1])));
  const __m256 zero = _mm256_setzero_ps();
  const __m256 lo = _mm256_min_ps(zero, mn);  // std::min(xmin, 0.0f) = (0 < xmin) ? 0 : xmin
  const __m256 range = _mm256_sub_ps(mx, lo);
  const __mmask8 valid = _mm256_cmp_ps_mask(range, zero, _CMP_GT_OQ);

  AffineFit8 best;
  best.s = best.b = zero;
  best.gain = _mm256_set1_ps(-INFINITY);
  best.cm = {zero, zero, zero};
  if (valid != 0) {
    __m512 lo2[2];
    spread(lo, lo2[0], lo2[1]);
    __m512 shifted[8][2];
    for (int c = 0; c < 8; ++c) {
      for (int h = 0; h < 2; ++h) shifted[c][h] = _mm512_sub_ps(dt.x[c][h], lo2[h]);
    }
    const float hw = p.grid_half_width;
    for (int step = 0; step <= p.grid_steps; ++step) {
      const float numer = code_max - hw + 2 * hw * static_cast<float>(step) / static_cast<float>(p.grid_steps);
      __m512 inv2[2];
      spread(_mm256_div_ps(_mm256_set1_ps(numer), range), inv2[0], inv2[1]);
      __m512 sl[2], sll[2], ssl[2];
      for (int h = 0; h < 2; ++h) {
        sl[h] = sll[h] = ssl[h] = _mm512_setzero_ps();
        for (int c = 0; c < 8; ++c) {
          const __m512 xs = shifted[c][h];
          const __m512 l = round_magic(_mm512_min_ps(_mm512_mul_ps(xs, inv2[h]), hi));
          const __m512 wl = _mm512_mul_ps(dt.w[c][h], l);
          sl[h] = _mm512_add_ps(sl[h], wl);
          sll[h] = _mm512_add_ps(sll[h], _mm512_mul_ps(wl, l));
          ssl[h] = _mm512_add_ps(ssl[h], _mm512_mul_ps(wl, xs));
        }
      }
      const __m256 hsl = group_sums(sl[0], sl[1]);
      const Moments8 cm{hsl, group_sums(sll[0], sll[1]), _mm256_add_ps(group_sums(ssl[0], ssl[1]), _mm256_mul_ps(lo, hsl))};
      const AffineFit8 f = solve_affine8(dm, cm);
      take8(best, f, valid & _mm256_cmp_ps_mask(f.gain, best.gain, _CMP_GT_OQ));
    }
    __mmask8 running = valid;
    for (int step = 0; step < p.refine_steps; ++step) {
      running &= _mm256_cmp_ps_mask(best.s, zero, _CMP_GT_OQ);
      if (running == 0) break;
      const __m256 inv = _mm256_div_ps(_mm256_set1_ps(1.0f), best.s);
      const AffineFit8 f = solve_affine8(dm, affine_code_moments(dt, inv, best.b, hi));
      running &= _mm256_cmp_ps_mask(f.gain, best.gain, _CMP_GT_OQ);
      take8(best, f, running);
    }
  }
  if (valid != 0xff) {
    // A sub-block without range: the fit of no codes at all.
    const Moments8 none{zero, zero, zero};
    const AffineFit8 f = solve_affine8(dm, none);
    take8(best, f, static_cast<__mmask8>(~valid));
  }

  alignas(32) float s8[8], b8[8];
  _mm256_store_ps(s8, best.s);
  _mm256_store_ps(b8, best.b);
  float max_s = 0, max_o = 0;
  for (int j = 0; j < 8; ++j) {
    max_s = std::max(max_s, s8[j]);
    max_o = std::max(max_o, -b8[j]);
  }
  AffineCandidate8 chosen = affine_quantize_scales(dt, best, dm, max_s / static_cast<float>(p.scale_max),
                                                   max_o / static_cast<float>(p.scale_max), p, hi);
  for (int step = 0; step < p.super_refine_steps; ++step) {
    float d, dmin;
    if (!affine_refit(dt, dm, chosen, hi, d, dmin)) break;
    const AffineCandidate8 c = affine_quantize_scales(dt, best, dm, d, dmin, p, hi);
    if (!(c.err < chosen.err)) break;
    chosen = c;
  }

  *d_out = chosen.d_half;
  *dmin_out = chosen.dmin_half;
  alignas(32) int32_t sc[8], m[8];
  _mm256_store_si256(reinterpret_cast<__m256i*>(sc), chosen.sc);
  _mm256_store_si256(reinterpret_cast<__m256i*>(m), chosen.m);
  for (int j = 0; j < 8; ++j) {
    sc_out[j] = static_cast<uint8_t>(sc[j]);
    m_out[j] = static_cast<uint8_t>(m[j]);
  }
  // write_codes: the codes for the stored grid of each sub-block.
  const float d = fp16_to_fp32(chosen.d_half), dmin = fp16_to_fp32(chosen.dmin_half);
  const __m256 dl = _mm256_mul_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(chosen.sc));
  const __m256 ml = _mm256_mul_ps(_mm256_set1_ps(dmin), _mm256_cvtepi32_ps(chosen.m));
  const __m256 inv = _mm256_maskz_div_ps(_mm256_cmp_ps_mask(dl, zero, _CMP_GT_OQ), _mm256_set1_ps(1.0f), dl);
  __m512 inv2[2], off2[2];
  spread(inv, inv2[0], inv2[1]);
  spread(neg8(ml), off2[0], off2[1]);
  alignas(64) float codes[256];
  for (int c = 0; c < 8; ++c) {
    for (int h = 0; h < 2; ++h) {
      _mm512_i32scatter_ps(codes + 4 * c + 128 * h, gidx, affine_codes(dt.x[c][h], inv2[h], off2[h], hi), 4);
    }
  }
  for (int i = 0; i < 256; i += 16) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(codes_out + i), _mm512_cvtepi32_epi8(_mm512_cvttps_epi32(_mm512_load_ps(codes + i))));
  }
}

namespace {

// iq4.cpp's table_slot and lookup: 2 * clamp(v, -128, 127.75) + 256 truncated (2v is exact, so a
// fused or a separate multiply-add give the same slot), then the nearest grid value of the slot.
MIXQ_SEARCH_AVX512 inline __m512 iq4_level(__m512 v, const float* nearest_value) {
  const __m512 c = _mm512_min_ps(_mm512_max_ps(v, _mm512_set1_ps(-128.0f)), _mm512_set1_ps(127.75f));
  const __m512i slot = _mm512_cvttps_epi32(_mm512_fmadd_ps(c, _mm512_set1_ps(2.0f), _mm512_set1_ps(256.0f)));
  return _mm512_i32gather_ps(slot, nearest_value, 4);
}

MIXQ_SEARCH_AVX512 float iq4_fit_group(const float* x, const float* w, const float* nearest_value, int grid_lo,
                                       int grid_hi, const float* offsets, int n_offsets, int refine_rounds) {
  int at = 0;
  const float amax = first_extreme_32(x, at);
  if (amax < 1e-20f) return 0;
  const float extreme = x[at];
  __m512 xc[4], wc[4], wxc[4];
  __m256 x8[4], w8[4], wx8[4];
  for (int c = 0; c < 4; ++c) {
    x8[c] = _mm256_loadu_ps(x + 8 * c);
    w8[c] = _mm256_loadu_ps(w + 8 * c);
    wx8[c] = _mm256_mul_ps(w8[c], x8[c]);
    xc[c] = _mm512_broadcast_f32x8(x8[c]);
    wc[c] = _mm512_broadcast_f32x8(w8[c]);
    wxc[c] = _mm512_broadcast_f32x8(wx8[c]);
  }
  float iscale[16];
  int n = 0;
  for (const int end : {grid_lo, grid_hi}) {
    for (int o = 0; o < n_offsets; ++o) {
      iscale[n++] = (end < 0 ? static_cast<float>(end) - offsets[o] : static_cast<float>(end) + offsets[o]) / extreme;
    }
  }
  for (int k = n; k < 16; ++k) iscale[k] = iscale[n - 1];
  // Lanes as least_squares_scale keeps them (value i in lane i % 8).
  double gain[16], sa[16], sb[16];
  for (int half = 0; half < 2; ++half) {
    __m512 sxq[4], sqq[4];
    for (int p = 0; p < 4; ++p) {
      const float* is = iscale + 8 * half + 2 * p;
      const __m512 v = _mm512_insertf32x8(_mm512_set1_ps(is[0]), _mm256_set1_ps(is[1]), 1);
      __m512 s = _mm512_setzero_ps(), t = _mm512_setzero_ps();
      for (int c = 0; c < 4; ++c) {
        const __m512 l = iq4_level(_mm512_mul_ps(xc[c], v), nearest_value);
        s = _mm512_add_ps(s, _mm512_mul_ps(wxc[c], l));
        t = _mm512_add_ps(t, _mm512_mul_ps(_mm512_mul_ps(wc[c], l), l));
      }
      sxq[p] = s;
      sqq[p] = t;
    }
    const __m512d a = sum_lanes_of_8_candidates(sxq), b = sum_lanes_of_8_candidates(sqq);
    const __mmask8 ok = _mm512_cmp_pd_mask(b, _mm512_setzero_pd(), _CMP_NLE_UQ);
    _mm512_storeu_pd(gain + 8 * half, _mm512_mask_div_pd(_mm512_set1_pd(-1.0), ok, _mm512_mul_pd(a, a), b));
    _mm512_storeu_pd(sa + 8 * half, a);
    _mm512_storeu_pd(sb + 8 * half, b);
  }
  double best_gain = -1, best_scale = 0;
  for (int k = 0; k < n; ++k) {
    if (gain[k] > best_gain) {
      best_gain = gain[k];
      best_scale = sa[k] / sb[k];
    }
  }
  for (int round = 0; round < refine_rounds && best_scale != 0; ++round) {
    const __m512 v = _mm512_set1_ps(static_cast<float>(1.0 / best_scale));
    __m256 s = _mm256_setzero_ps(), t = _mm256_setzero_ps();
    for (int c = 0; c < 4; ++c) {
      // Both halves hold the same values (every gathered slot is a valid index).
      const __m256 l = _mm512_castps512_ps256(iq4_level(_mm512_mul_ps(xc[c], v), nearest_value));
      s = _mm256_add_ps(s, _mm256_mul_ps(wx8[c], l));
      t = _mm256_add_ps(t, _mm256_mul_ps(_mm256_mul_ps(w8[c], l), l));
    }
    const double ra = sum_lanes_in_order(s), rb = sum_lanes_in_order(t);
    const double g = rb <= 0 ? -1.0 : ra * ra / rb;
    if (!(g > best_gain)) break;
    best_gain = g;
    best_scale = ra / rb;
  }
  return static_cast<float>(best_scale);
}

}  // namespace

MIXQ_SEARCH_AVX512 float iq4_fit_group_avx512(const float* x, const float* w, const float* nearest_value, int grid_lo,
                                              int grid_hi, const float* offsets, int n_offsets, int refine_rounds) {
  return iq4_fit_group(x, w, nearest_value, grid_lo, grid_hi, offsets, n_offsets, refine_rounds);
}

#else

void fit_scale_row_avx512(const float*, const float*, int64_t, int, int, const float*, int, int, int*, float*) {}
void fit_scale_row_bytes_avx512(const float*, const float*, int64_t, int, int, const float*, int, int, int8_t*, ptrdiff_t,
                                float*) {}
float iq4_fit_group_avx512(const float*, const float*, const float*, int, int, const float*, int, int) { return 0; }
void symmetric_super_block_avx512(const float*, const float*, int, int, int, const float*, int, int, int, uint16_t*,
                                  int8_t*, int8_t*) {}
void pack_nibbles_32_avx512(const int*, int, uint8_t*, uint8_t*) {}
void affine_super_block_32_avx512(const float*, const float*, const AffineSearchParams&, uint16_t*, uint16_t*, uint8_t*,
                                  uint8_t*, uint8_t*) {}

#endif

}  // namespace mixq::search
