// In-place decode kernels, AVX-512 (F, BW, VL, VNNI): dot(weight row as stored, Q8 activations)
// read straight from each type's block layout (kernels.h, RowDotFn), so decode streams the file's
// bytes once instead of unpacking every row to the int8 integer view first.
//
// Every kernel builds the type's codes in activation order in a ZMM register (64 codes) from the
// packed bits, then forms exact int32 sums of four products per lane with VNNI's vpdpbusd (u8 x s8):
// codes that are never negative (q4_1, q5_1, the k-quants with minimums) go in as they are; signed
// ones go in as |q| against the activation codes carrying q's sign (|a| <= 127: no overflow), as the
// integer-view kernel does. Lanes are converted to F32 and multiplied by the same factor the
// reference applies to their group (the row's scale times the activation's dx), and the
// minimums' share is offset * dsum per group: the integer sums are the reference's, the F32
// summation order is not.
//
// Block layouts (formats/legacy.h, kquants/kquants.h, iq4.h) in short:
//   q4_0 / q4_1 / iq4_nl: 16 bytes of nibbles, low nibbles = values 0-15, high = 16-31;
//   q5_0 / q5_1: the same plus 32 fifth bits (bit i = value i); q8_0: 32 int8 codes;
//   q4_K / q5_K: 32-value sub-blocks j, codes of j and j + 1 (j even) in the low and high nibbles of
//     the same 32 bytes, fifth bits of sub-block j in bit j of qh[l];
//   q6_K: per 128 values, 64 bytes of low nibbles (values 0-63 low, 64-127 high) and 32 bytes of
//     2-bit pairs (bits 2k..2k+1 of qh[l] belong to value 32k + l);
//   q2_K / q3_K: per 128 values, 32 bytes of 2-bit fields (bits 2k..2k+1 of q[l]: value 32k + l),
//     q3_K's high bits in hmask (bit 4h + k of hmask[l] for value 128h + 32k + l);
//   iq4_xs: 32-value sub-blocks of 16 nibble bytes each, as iq4_nl;
//   lb3 / lb2: groups of 64, f16 s and z, then the codes as one bit stream (3 or 2 bits each).
#include "mixq/engine/kernels.h"

#include <array>
#include <cstring>
#include <type_traits>

#include "mixq/engine/kernels_lowbit.h"
#include "mixq/formats/iq4.h"
#include "mixq/formats/kquants/kquants.h"
#include "mixq/formats/legacy.h"
#include "mixq/formats/lowbit.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define MIXQ_HAVE_AVX512_ROWDOT 1
#endif

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace mixq::kernels {

#ifdef MIXQ_HAVE_AVX512_ROWDOT
namespace {

#define MIXQ_RD __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")))

using legacy::BlockQ4_0;
using legacy::BlockQ4_1;
using legacy::BlockQ5_0;
using legacy::BlockQ5_1;
using legacy::BlockQ8_0;

MIXQ_RD inline float h2f(uint16_t h) { return _cvtsh_ss(h); }

// Exact int32 sums of four products per lane: unsigned codes as they are, signed ones through
// |q| and the activation with q's sign.
MIXQ_RD inline __m512i dot_u(__m512i q, __m512i a) { return _mm512_dpbusd_epi32(_mm512_setzero_si512(), q, a); }
MIXQ_RD inline __m512i dot_s(__m512i q, __m512i a) {
  const __mmask64 neg = _mm512_movepi8_mask(q);
  return dot_u(_mm512_abs_epi8(q), _mm512_mask_sub_epi8(a, neg, _mm512_setzero_si512(), a));
}
MIXQ_RD inline __m256i dot_u256(__m256i q, __m256i a) { return _mm256_dpbusd_epi32(_mm256_setzero_si256(), q, a); }
MIXQ_RD inline __m256i dot_s256(__m256i q, __m256i a) {
  const __mmask32 neg = _mm256_movepi8_mask(q);
  return dot_u256(_mm256_abs_epi8(q), _mm256_mask_sub_epi8(a, neg, _mm256_setzero_si256(), a));
}

MIXQ_RD inline __m512i load512(const void* p) { return _mm512_loadu_si512(p); }
MIXQ_RD inline __m256i load256(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }
MIXQ_RD inline __m128i load128(const void* p) { return _mm_loadu_si128(static_cast<const __m128i*>(p)); }

// 16 bytes of nibbles -> 32 codes: low nibbles first, then high.
MIXQ_RD inline __m256i nibbles32(const uint8_t* qs) {
  const __m128i raw = load128(qs);
  const __m128i m = _mm_set1_epi8(0x0f);
  return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(raw, 4), m), _mm_and_si128(raw, m));
}
MIXQ_RD inline uint32_t bits32(const uint8_t* qh) {
  uint32_t v;
  std::memcpy(&v, qh, 4);
  return v;
}
MIXQ_RD inline __m256i grid_lut256() {
  return _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(iq4::kGrid.data())));
}

// --- Legacy types: blocks of 32 with a Q8_0 (or Q8_1) activation block each. ---
// Each decoder gives a block's 32 codes in value order; kSigned: codes may be negative; kAffine:
// value = d * code + m (the activation format is then Q8_1, whose dsum holds d * sum of codes).
struct DecQ4_0 {
  using Block = BlockQ4_0;
  static constexpr bool kSigned = true, kAffine = false;
  MIXQ_RD static __m256i codes(const Block& b, __m256i) { return _mm256_sub_epi8(nibbles32(b.qs), _mm256_set1_epi8(8)); }
};
struct DecQ4_1 {
  using Block = BlockQ4_1;
  static constexpr bool kSigned = false, kAffine = true;
  MIXQ_RD static __m256i codes(const Block& b, __m256i) { return nibbles32(b.qs); }
};
struct DecQ5_0 {
  using Block = BlockQ5_0;
  static constexpr bool kSigned = true, kAffine = false;
  MIXQ_RD static __m256i codes(const Block& b, __m256i) {
    const __m256i n = nibbles32(b.qs);
    return _mm256_sub_epi8(_mm256_mask_add_epi8(n, bits32(b.qh), n, _mm256_set1_epi8(16)), _mm256_set1_epi8(16));
  }
};
struct DecQ5_1 {
  using Block = BlockQ5_1;
  static constexpr bool kSigned = false, kAffine = true;
  MIXQ_RD static __m256i codes(const Block& b, __m256i) {
    const __m256i n = nibbles32(b.qs);
    return _mm256_mask_add_epi8(n, bits32(b.qh), n, _mm256_set1_epi8(16));
  }
};
struct DecQ8_0 {
  using Block = BlockQ8_0;
  static constexpr bool kSigned = true, kAffine = false;
  MIXQ_RD static __m256i codes(const Block& b, __m256i) { return load256(b.qs); }
};
struct DecIQ4NL {
  using Block = iq4::BlockIQ4NL;
  static constexpr bool kSigned = true, kAffine = false;
  MIXQ_RD static __m256i codes(const Block& b, __m256i lut) { return _mm256_shuffle_epi8(lut, nibbles32(b.qs)); }
};

// Four blocks of nibbles at once: their 16-byte fields in the four 128-bit lanes, split into low
// and high nibbles in one pass, then each block's low and high halves put back in value order
// (c0: blocks 0 and 1, c1: blocks 2 and 3).
template <class Block>
MIXQ_RD inline void nibbles4(const Block* b, __m512i& c0, __m512i& c1) {
  __m512i raw = _mm512_castsi128_si512(load128(b[0].qs));
  raw = _mm512_inserti32x4(raw, load128(b[1].qs), 1);
  raw = _mm512_inserti32x4(raw, load128(b[2].qs), 2);
  raw = _mm512_inserti32x4(raw, load128(b[3].qs), 3);
  const __m512i m = _mm512_set1_epi8(0x0f);
  const __m512i lo = _mm512_and_si512(raw, m), hi = _mm512_and_si512(_mm512_srli_epi16(raw, 4), m);
  c0 = _mm512_permutex2var_epi64(lo, _mm512_setr_epi64(0, 1, 8, 9, 2, 3, 10, 11), hi);
  c1 = _mm512_permutex2var_epi64(lo, _mm512_setr_epi64(4, 5, 12, 13, 6, 7, 14, 15), hi);
}
// The fifth bits of two blocks as a 64-bit byte mask (bit i: byte i of their 64 codes).
template <class Block>
MIXQ_RD inline __mmask64 fifth2(const Block* b) {
  return _cvtu64_mask64(static_cast<uint64_t>(bits32(b[0].qh)) | static_cast<uint64_t>(bits32(b[1].qh)) << 32);
}
template <class Dec>
MIXQ_RD inline void codes4(const typename Dec::Block* b, __m512i lut512, __m256i lut, __m512i& c0, __m512i& c1) {
  using B = typename Dec::Block;
  if constexpr (std::is_same_v<Dec, DecQ8_0>) {
    c0 = _mm512_inserti64x4(_mm512_castsi256_si512(load256(b[0].qs)), load256(b[1].qs), 1);
    c1 = _mm512_inserti64x4(_mm512_castsi256_si512(load256(b[2].qs)), load256(b[3].qs), 1);
  } else {
    nibbles4<B>(b, c0, c1);
    if constexpr (std::is_same_v<Dec, DecIQ4NL>) {
      c0 = _mm512_shuffle_epi8(lut512, c0);
      c1 = _mm512_shuffle_epi8(lut512, c1);
    }
    const __m512i sixteen = _mm512_set1_epi8(16);
    if constexpr (std::is_same_v<Dec, DecQ5_1>) {  // code = nibble + 16 * fifth bit
      c0 = _mm512_mask_add_epi8(c0, fifth2<B>(b), c0, sixteen);
      c1 = _mm512_mask_add_epi8(c1, fifth2<B>(b + 2), c1, sixteen);
    }
    if constexpr (std::is_same_v<Dec, DecQ5_0>) {  // code - 16 = nibble - 16 where the fifth bit is clear
      c0 = _mm512_mask_sub_epi8(c0, _knot_mask64(fifth2<B>(b)), c0, sixteen);
      c1 = _mm512_mask_sub_epi8(c1, _knot_mask64(fifth2<B>(b + 2)), c1, sixteen);
    }
    if constexpr (std::is_same_v<Dec, DecQ4_0>) {
      c0 = _mm512_sub_epi8(c0, _mm512_set1_epi8(8));
      c1 = _mm512_sub_epi8(c1, _mm512_set1_epi8(8));
    }
  }
  (void)lut;
}

// The signed types' codes plus a bias 2^kBiasShift<Dec>, as the unsigned bytes vpdpbusd takes:
// a lane that starts at -bias * (its four activation codes' sum) (ActRow::nsum4, shifted) then
// holds the exact signed sum, one instruction instead of dot_s's three per 64 codes.
template <class Dec>
inline constexpr int kBiasShift = std::is_same_v<Dec, DecQ4_0> ? 3 : std::is_same_v<Dec, DecQ5_0> ? 4 : 7;  // iq4_nl: 7
// (q8_0 keeps dot_s: its codes need no unpacking, and there the extra stream of lane sums cost
// more than the two instructions it saves, 12 % in bench/kernels.cpp's row_dot.)
template <class Dec>
MIXQ_RD inline void biased_codes4(const typename Dec::Block* b, __m512i lut512_biased, __m512i& c0, __m512i& c1) {
  using B = typename Dec::Block;
  nibbles4<B>(b, c0, c1);  // q4_0: the nibble is the code + 8 already
  if constexpr (std::is_same_v<Dec, DecIQ4NL>) {
    c0 = _mm512_shuffle_epi8(lut512_biased, c0);
    c1 = _mm512_shuffle_epi8(lut512_biased, c1);
  }
  if constexpr (std::is_same_v<Dec, DecQ5_0>) {  // code + 16 = nibble + 16 * fifth bit
    const __m512i sixteen = _mm512_set1_epi8(16);
    c0 = _mm512_mask_add_epi8(c0, fifth2<B>(b), c0, sixteen);
    c1 = _mm512_mask_add_epi8(c1, fifth2<B>(b + 2), c1, sixteen);
  }
}

template <class Dec>
MIXQ_RD float rowdot_legacy(const void* row, int64_t n, const ActRow& act) {
  [[maybe_unused]] const int8_t* a = act.q;
  [[maybe_unused]] const float* dx = act.dx;
  [[maybe_unused]] const float* dsum = act.dsum;
  const auto* blk = static_cast<const typename Dec::Block*>(row);
  const int64_t nb = n / 32;
  const __m256i lut = grid_lut256();
  __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
  float macc = 0.0f;
  int64_t b = 0;
  // Four blocks per step (two ZMM products), the block factors d * dx spread over their 8 lanes;
  // the four f16 scales (and minimums) converted in one instruction.
  const __m512i lut512 = _mm512_broadcast_i32x4(_mm256_castsi256_si128(lut));
  __m256 macc8 = _mm256_setzero_ps();
  const __m512i lut512_biased = _mm512_add_epi8(lut512, _mm512_set1_epi8(static_cast<char>(0x80)));
  for (; b + 4 <= nb; b += 4) {
    __m512i q0, q1, p0, p1;
    const __m512i a0 = load512(a + 32 * b), a1 = load512(a + 32 * b + 64);
    if constexpr (Dec::kSigned && !std::is_same_v<Dec, DecQ8_0>) {
      biased_codes4<Dec>(blk + b, lut512_biased, q0, q1);
      const __m512i s0 = _mm512_slli_epi32(load512(act.nsum4 + 8 * b), kBiasShift<Dec>);
      const __m512i s1 = _mm512_slli_epi32(load512(act.nsum4 + 8 * b + 16), kBiasShift<Dec>);
      p0 = _mm512_dpbusd_epi32(s0, q0, a0);
      p1 = _mm512_dpbusd_epi32(s1, q1, a1);
    } else {
      codes4<Dec>(blk + b, lut512, lut, q0, q1);
      p0 = Dec::kSigned ? dot_s(q0, a0) : dot_u(q0, a0);
      p1 = Dec::kSigned ? dot_s(q1, a1) : dot_u(q1, a1);
    }
    const __m128 d = _mm_cvtph_ps(_mm_setr_epi16(static_cast<short>(blk[b].d), static_cast<short>(blk[b + 1].d),
                                                 static_cast<short>(blk[b + 2].d), static_cast<short>(blk[b + 3].d), 0, 0, 0, 0));
    const __m256 dx8 = _mm256_loadu_ps(dx + 2 * b);  // dx per 16 values: one per block at even entries
    const __m512 f = _mm512_castps128_ps512(_mm_mul_ps(d, _mm256_castps256_ps128(_mm256_permutevar8x32_ps(dx8, _mm256_setr_epi32(0, 2, 4, 6, 0, 0, 0, 0)))));
    const __m512 f0 = _mm512_permutexvar_ps(_mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1), f);
    const __m512 f1 = _mm512_permutexvar_ps(_mm512_setr_epi32(2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3), f);
    acc0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p0), f0, acc0);
    acc1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p1), f1, acc1);
    if constexpr (Dec::kAffine) {
      const __m128 m = _mm_cvtph_ps(_mm_setr_epi16(static_cast<short>(blk[b].m), static_cast<short>(blk[b + 1].m),
                                                   static_cast<short>(blk[b + 2].m), static_cast<short>(blk[b + 3].m), 0, 0, 0, 0));
      const __m256 m8 = _mm256_permutevar8x32_ps(_mm256_castps128_ps256(m), _mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3));
      macc8 = _mm256_fmadd_ps(m8, _mm256_loadu_ps(dsum + 2 * b), macc8);
    }
  }
  if constexpr (Dec::kAffine) {
    __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(macc8), _mm256_extractf128_ps(macc8, 1));
    s4 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    macc += _mm_cvtss_f32(_mm_add_ss(s4, _mm_movehdup_ps(s4)));
  }
  __m256 acc2 = _mm256_setzero_ps();
  for (; b < nb; ++b) {
    const __m256i q = Dec::codes(blk[b], lut);
    const __m256i av = load256(a + 32 * b);
    const __m256i p = Dec::kSigned ? dot_s256(q, av) : dot_u256(q, av);
    acc2 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(h2f(blk[b].d) * dx[2 * b]), acc2);
    if constexpr (Dec::kAffine) {
      const float m = h2f(blk[b].m);
      macc += m * dsum[2 * b] + m * dsum[2 * b + 1];
    }
  }
  const __m512 acc = _mm512_add_ps(_mm512_add_ps(acc0, acc1), _mm512_castps256_ps512(acc2));
  return _mm512_reduce_add_ps(acc) + macc;
}

// --- k-quants and iq4_xs: super-blocks of 256 with a Q8_K activation block (dx constant over it). ---

// Lane l takes element base + l / 4 of v (16 group factors -> the 4 groups of a 64-code product).
MIXQ_RD inline __m512 spread_groups(__m512 v, int base) {
  const __m512i idx = _mm512_add_epi32(_mm512_set1_epi32(base),
                                       _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3));
  return _mm512_permutexvar_ps(idx, v);
}
// Lane l takes element base + l / 8 of v (per-32 sub-block factors -> the 2 sub-blocks of a product).
MIXQ_RD inline __m512 spread_subblocks(__m512 v, int base) {
  const __m512i idx = _mm512_add_epi32(_mm512_set1_epi32(base),
                                       _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1));
  return _mm512_permutexvar_ps(idx, v);
}
// 16 per-group values from 8 per-sub-block ones (each twice).
MIXQ_RD inline __m512 pairs_of(__m256 v8) {
  return _mm512_permutexvar_ps(_mm512_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7), _mm512_castps256_ps512(v8));
}
// 16-bit lanes shifted right by lo in the low 256 bits and hi in the high 256 bits.
MIXQ_RD inline __m512i shift_halves(__m512i v, int lo, int hi) {
  const __m512i cnt = _mm512_inserti64x4(_mm512_set1_epi16(static_cast<int16_t>(lo)), _mm256_set1_epi16(static_cast<int16_t>(hi)), 1);
  return _mm512_srlv_epi16(v, cnt);
}
MIXQ_RD inline __m512i bytes(int v) { return _mm512_set1_epi8(static_cast<char>(v)); }

// Q4_K / Q5_K packed 6-bit scales and minimums -> 8 scales, 8 minimums (bytes).
inline void scales_mins_k4(const uint8_t* packed, uint8_t sc[8], uint8_t m[8]) {
  uint32_t u[3];
  std::memcpy(u, packed, 12);
  const uint32_t lo6 = 0x3f3f3f3fu, lo4 = 0x0f0f0f0fu, lo2 = 0x03030303u;
  const uint32_t s[2] = {u[0] & lo6, (u[2] & lo4) | (((u[0] >> 6) & lo2) << 4)};
  const uint32_t mm[2] = {u[1] & lo6, ((u[2] >> 4) & lo4) | (((u[1] >> 6) & lo2) << 4)};
  std::memcpy(sc, s, 8);
  std::memcpy(m, mm, 8);
}
MIXQ_RD inline __m256 u8x8_to_f32(const uint8_t* p) {
  return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
}

// Q4_K and Q5_K: per super-block, factor (d * sc_j) * dx per sub-block, minimums -(dmin * m_j)
// against dsum per group.
template <bool kFive>
MIXQ_RD float rowdot_q45k(const void* row, int64_t n, const ActRow& act) {
  [[maybe_unused]] const int8_t* a = act.q;
  [[maybe_unused]] const float* dx = act.dx;
  [[maybe_unused]] const float* dsum = act.dsum;
  __m512 acc = _mm512_setzero_ps(), macc = _mm512_setzero_ps();
  const __m512i m4 = bytes(0x0f);
  for (int64_t sb = 0; sb < n / kq::kSuperBlock; ++sb) {
    const uint8_t* scales;
    const uint8_t* qs;
    const uint8_t* qh = nullptr;
    uint16_t dh, dminh;
    if constexpr (kFive) {
      const auto* B = static_cast<const kq::BlockQ5K*>(row) + sb;
      scales = B->scales, qs = B->qs, qh = B->qh, dh = B->d, dminh = B->dmin;
    } else {
      const auto* B = static_cast<const kq::BlockQ4K*>(row) + sb;
      scales = B->scales, qs = B->qs, dh = B->d, dminh = B->dmin;
    }
    alignas(16) uint8_t sc[8], mn[8];
    scales_mins_k4(scales, sc, mn);
    const int8_t* as = a + sb * kq::kSuperBlock;
    const float d = h2f(dh), dmin = h2f(dminh), dxs = dx[sb * 16];
    const __m512 f = _mm512_castps256_ps512(_mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(d), u8x8_to_f32(sc)), _mm256_set1_ps(dxs)));
    const __m512i hb = kFive ? _mm512_broadcast_i64x4(load256(qh)) : _mm512_setzero_si512();
    for (int h = 0; h < 2; ++h) {
      const __m512i raw = load512(qs + 64 * h);
      const __m512i lo = _mm512_and_si512(raw, m4), hi = _mm512_and_si512(_mm512_srli_epi16(raw, 4), m4);
      __m512i c0 = _mm512_shuffle_i64x2(lo, hi, _MM_SHUFFLE(1, 0, 1, 0));  // sub-blocks 4h, 4h + 1
      __m512i c1 = _mm512_shuffle_i64x2(lo, hi, _MM_SHUFFLE(3, 2, 3, 2));  // sub-blocks 4h + 2, 4h + 3
      if constexpr (kFive) {
        const __m512i one = bytes(1);
        c0 = _mm512_or_si512(c0, _mm512_slli_epi16(_mm512_and_si512(shift_halves(hb, 4 * h, 4 * h + 1), one), 4));
        c1 = _mm512_or_si512(c1, _mm512_slli_epi16(_mm512_and_si512(shift_halves(hb, 4 * h + 2, 4 * h + 3), one), 4));
      }
      const __m512i p0 = dot_u(c0, load512(as + 128 * h)), p1 = dot_u(c1, load512(as + 128 * h + 64));
      acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p0), spread_subblocks(f, 4 * h), acc);
      acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p1), spread_subblocks(f, 4 * h + 2), acc);
    }
    const __m512 off = pairs_of(_mm256_mul_ps(_mm256_set1_ps(dmin), u8x8_to_f32(mn)));
    macc = _mm512_fmadd_ps(off, _mm512_loadu_ps(dsum + sb * 16), macc);
  }
  return _mm512_reduce_add_ps(acc) - _mm512_reduce_add_ps(macc);
}

// Q6_K: codes (6 bits) - 32, a signed 8-bit scale per group.
MIXQ_RD float rowdot_q6k(const void* row, int64_t n, const ActRow& act) {
  [[maybe_unused]] const int8_t* a = act.q;
  [[maybe_unused]] const float* dx = act.dx;
  [[maybe_unused]] const float* dsum = act.dsum;
  __m512 acc = _mm512_setzero_ps();
  const __m512i m4 = bytes(0x0f), m2 = bytes(0x03);
  for (int64_t sb = 0; sb < n / kq::kSuperBlock; ++sb) {
    const auto* B = static_cast<const kq::BlockQ6K*>(row) + sb;
    const int8_t* as = a + sb * kq::kSuperBlock;
    const __m512 sc = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(load128(B->scales)));
    const __m512 f = _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(h2f(B->d)), sc), _mm512_set1_ps(dx[sb * 16]));
    for (int h = 0; h < 2; ++h) {
      const __m512i ql = load512(B->ql + 64 * h);
      const __m512i qh = _mm512_broadcast_i64x4(load256(B->qh + 32 * h));
      const __m512i h0 = _mm512_slli_epi16(_mm512_and_si512(shift_halves(qh, 0, 2), m2), 4);
      const __m512i h1 = _mm512_slli_epi16(_mm512_and_si512(shift_halves(qh, 4, 6), m2), 4);
      // code + 32 as unsigned bytes against lanes that start at -32 * their activation sum.
      const __m512i u0 = _mm512_or_si512(_mm512_and_si512(ql, m4), h0);
      const __m512i u1 = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(ql, 4), m4), h1);
      const int32_t* ns = act.nsum4 + sb * (kq::kSuperBlock / 4) + 32 * h;
      const __m512i p0 = _mm512_dpbusd_epi32(_mm512_slli_epi32(load512(ns), 5), u0, load512(as + 128 * h));
      const __m512i p1 = _mm512_dpbusd_epi32(_mm512_slli_epi32(load512(ns + 16), 5), u1, load512(as + 128 * h + 64));
      acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p0), spread_groups(f, 8 * h), acc);
      acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p1), spread_groups(f, 8 * h + 4), acc);
    }
  }
  return _mm512_reduce_add_ps(acc);
}

// Q2_K: 2-bit codes, per group a 4-bit scale (low nibble) and a 4-bit minimum (high nibble).
MIXQ_RD float rowdot_q2k(const void* row, int64_t n, const ActRow& act) {
  [[maybe_unused]] const int8_t* a = act.q;
  [[maybe_unused]] const float* dx = act.dx;
  [[maybe_unused]] const float* dsum = act.dsum;
  __m512 acc = _mm512_setzero_ps(), macc = _mm512_setzero_ps();
  const __m512i m2 = bytes(0x03);
  for (int64_t sb = 0; sb < n / kq::kSuperBlock; ++sb) {
    const auto* B = static_cast<const kq::BlockQ2K*>(row) + sb;
    const int8_t* as = a + sb * kq::kSuperBlock;
    const __m512i s = _mm512_cvtepu8_epi32(load128(B->scales));
    const __m512 sc = _mm512_cvtepi32_ps(_mm512_and_si512(s, _mm512_set1_epi32(0x0f)));
    const __m512 mn = _mm512_cvtepi32_ps(_mm512_srli_epi32(s, 4));
    const __m512 f = _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(h2f(B->d)), sc), _mm512_set1_ps(dx[sb * 16]));
    for (int h = 0; h < 2; ++h) {
      const __m512i q = _mm512_broadcast_i64x4(load256(B->qs + 32 * h));
      const __m512i c0 = _mm512_and_si512(shift_halves(q, 0, 2), m2);
      const __m512i c1 = _mm512_and_si512(shift_halves(q, 4, 6), m2);
      const __m512i p0 = dot_u(c0, load512(as + 128 * h)), p1 = dot_u(c1, load512(as + 128 * h + 64));
      acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p0), spread_groups(f, 8 * h), acc);
      acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p1), spread_groups(f, 8 * h + 4), acc);
    }
    macc = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_set1_ps(h2f(B->dmin)), mn), _mm512_loadu_ps(dsum + sb * 16), macc);
  }
  return _mm512_reduce_add_ps(acc) - _mm512_reduce_add_ps(macc);
}

// Q3_K: codes low2 - (high bit ? 0 : 4), 16 signed 6-bit scales (stored + 32).
MIXQ_RD float rowdot_q3k(const void* row, int64_t n, const ActRow& act) {
  [[maybe_unused]] const int8_t* a = act.q;
  [[maybe_unused]] const float* dx = act.dx;
  [[maybe_unused]] const float* dsum = act.dsum;
  __m512 acc = _mm512_setzero_ps();
  const __m512i m2 = bytes(0x03), one = bytes(1), four = bytes(4);
  for (int64_t sb = 0; sb < n / kq::kSuperBlock; ++sb) {
    const auto* B = static_cast<const kq::BlockQ3K*>(row) + sb;
    const int8_t* as = a + sb * kq::kSuperBlock;
    // Scale j: low 4 bits from the low (j < 8) or high nibble of byte j % 8, high 2 bits from
    // bits 2 * (j / 4) of byte 8 + j % 4; stored + 32.
    uint64_t lo8;
    uint32_t hi4;
    std::memcpy(&lo8, B->scales, 8);
    std::memcpy(&hi4, B->scales + 8, 4);
    const __m128i m4x = _mm_set1_epi8(0x0f);
    const __m128i l = _mm_cvtsi64_si128(static_cast<long long>(lo8));
    const __m128i low = _mm_unpacklo_epi64(_mm_and_si128(l, m4x), _mm_and_si128(_mm_srli_epi16(l, 4), m4x));
    const __m128i h = _mm_set1_epi32(static_cast<int>(hi4));
    __m128i high = _mm_mask_mov_epi8(h, 0x00f0, _mm_srli_epi16(h, 2));
    high = _mm_mask_mov_epi8(high, 0x0f00, _mm_srli_epi16(h, 4));
    high = _mm_mask_mov_epi8(high, 0xf000, _mm_srli_epi16(h, 6));
    high = _mm_slli_epi16(_mm_and_si128(high, _mm_set1_epi8(3)), 4);
    const __m128i s6 = _mm_sub_epi8(_mm_or_si128(low, high), _mm_set1_epi8(32));
    const __m512 f = _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(h2f(B->d)), _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(s6))),
                                   _mm512_set1_ps(dx[sb * 16]));
    const __m512i hm = _mm512_broadcast_i64x4(load256(B->hmask));
    for (int h = 0; h < 2; ++h) {
      const __m512i q = _mm512_broadcast_i64x4(load256(B->qs + 32 * h));
      const __m512i l0 = _mm512_and_si512(shift_halves(q, 0, 2), m2), l1 = _mm512_and_si512(shift_halves(q, 4, 6), m2);
      const __m512i b0 = _mm512_and_si512(shift_halves(hm, 4 * h, 4 * h + 1), one);
      const __m512i b1 = _mm512_and_si512(shift_halves(hm, 4 * h + 2, 4 * h + 3), one);
      const __m512i c0 = _mm512_sub_epi8(_mm512_or_si512(l0, _mm512_slli_epi16(b0, 2)), four);
      const __m512i c1 = _mm512_sub_epi8(_mm512_or_si512(l1, _mm512_slli_epi16(b1, 2)), four);
      const __m512i p0 = dot_s(c0, load512(as + 128 * h)), p1 = dot_s(c1, load512(as + 128 * h + 64));
      acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p0), spread_groups(f, 8 * h), acc);
      acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p1), spread_groups(f, 8 * h + 4), acc);
    }
  }
  return _mm512_reduce_add_ps(acc);
}

// IQ4_XS: grid codes, a 6-bit scale (stored + 32) per 32 values.
MIXQ_RD float rowdot_iq4xs(const void* row, int64_t n, const ActRow& act) {
  [[maybe_unused]] const int8_t* a = act.q;
  [[maybe_unused]] const float* dx = act.dx;
  [[maybe_unused]] const float* dsum = act.dsum;
  __m512 acc = _mm512_setzero_ps();
  const __m512i m4 = bytes(0x0f);
  const __m512i lut = _mm512_add_epi8(_mm512_broadcast_i32x4(load128(iq4::kGrid.data())), bytes(static_cast<char>(0x80)));
  const __m512i sel0 = _mm512_setr_epi64(0, 1, 8, 9, 2, 3, 10, 11), sel1 = _mm512_setr_epi64(4, 5, 12, 13, 6, 7, 14, 15);
  for (int64_t sb = 0; sb < n / iq4::kBlockXS; ++sb) {
    const auto* B = static_cast<const iq4::BlockIQ4XS*>(row) + sb;
    const int8_t* as = a + sb * iq4::kBlockXS;
    alignas(32) float ls[8];
    for (int g = 0; g < 8; ++g) {
      ls[g] = static_cast<float>((((B->scales_l[g / 2] >> (4 * (g % 2))) & 0xf) | (((B->scales_h >> (2 * g)) & 3) << 4)) - 32);
    }
    const __m512 f = _mm512_castps256_ps512(
        _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(h2f(B->d)), _mm256_load_ps(ls)), _mm256_set1_ps(dx[sb * 16])));
    for (int h = 0; h < 2; ++h) {
      const __m512i raw = load512(B->qs + 64 * h);
      const __m512i lo = _mm512_shuffle_epi8(lut, _mm512_and_si512(raw, m4));
      const __m512i hi = _mm512_shuffle_epi8(lut, _mm512_and_si512(_mm512_srli_epi16(raw, 4), m4));
      const __m512i c0 = _mm512_permutex2var_epi64(lo, sel0, hi), c1 = _mm512_permutex2var_epi64(lo, sel1, hi);
      // grid value + 128 as unsigned bytes against lanes that start at -128 * their activation sum.
      const int32_t* ns = act.nsum4 + sb * (iq4::kBlockXS / 4) + 32 * h;
      const __m512i p0 = _mm512_dpbusd_epi32(_mm512_slli_epi32(load512(ns), 7), c0, load512(as + 128 * h));
      const __m512i p1 = _mm512_dpbusd_epi32(_mm512_slli_epi32(load512(ns + 16), 7), c1, load512(as + 128 * h + 64));
      acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p0), spread_subblocks(f, 4 * h), acc);
      acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p1), spread_subblocks(f, 4 * h + 2), acc);
    }
  }
  return _mm512_reduce_add_ps(acc);
}

// LB3 / LB2: groups of 64 with an f16 scale s and zero-point z, codes 0..7 / 0..3 (unsigned, as
// they are) against Q8_0 activations: per group s * dx * (codes . a) for each of its two 32s, and
// the offset -z * s against dsum. The codes come from kernels_lowbit.h's shuffles and shifts.
template <int kBits>
struct LowbitDecoder {
  __m512i even, odd, even_down, odd_up, even_mask, odd_mask;
  MIXQ_RD explicit LowbitDecoder(const lowbit_simd::Tables& t)
      : even(load512(t.even)), odd(load512(t.odd)), even_down(load512(t.even_down)), odd_up(load512(t.odd_up)),
        even_mask(_mm512_set1_epi16(static_cast<int16_t>(lowbit_simd::kEvenMask<kBits>))),
        odd_mask(_mm512_set1_epi16(static_cast<int16_t>(lowbit_simd::kOddMask<kBits>))) {}
  // The 64 codes of a group, one per byte, in value order.
  MIXQ_RD __m512i codes(const uint8_t* qs) const {
    __m512i raw;
    if constexpr (kBits == 3) {
      raw = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_broadcastsi128_si256(load128(qs))),
                               _mm256_broadcastsi128_si256(load128(qs + 8)), 1);
    } else {
      raw = _mm512_broadcast_i32x4(load128(qs));
    }
    const __m512i e = _mm512_srlv_epi16(_mm512_shuffle_epi8(raw, even), even_down);
    const __m512i o = _mm512_sllv_epi16(_mm512_shuffle_epi8(raw, odd), odd_up);
    return _mm512_or_si512(_mm512_and_si512(e, even_mask), _mm512_and_si512(o, odd_mask));
  }
};

// One group into acc (its codes' sums) and zacc (z * s against its four dsum entries).
template <int kBits, class Block>
MIXQ_RD inline __m512 lowbit_group(const LowbitDecoder<kBits>& dec, const Block& b, const int8_t* a, const float* dx,
                                   const float* dsum, __m512 acc, __m128& zacc) {
  // Lanes 0-7 hold the first 32 values' sums (dx[0]), lanes 8-15 the second's (dx[2]).
  const __m512i halves = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 2, 2, 2, 2, 2, 2, 2, 2);
  const __m512i p = dot_u(dec.codes(b.qs), load512(a));
  const float s = h2f(b.s);
  const __m512 f = _mm512_mul_ps(_mm512_permutexvar_ps(halves, _mm512_castps128_ps512(_mm_loadu_ps(dx))), _mm512_set1_ps(s));
  zacc = _mm_fmadd_ps(_mm_set1_ps(h2f(b.z) * s), _mm_loadu_ps(dsum), zacc);
  return _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), f, acc);
}

template <int kBits, class Block>
MIXQ_RD float rowdot_lowbit(const void* row, int64_t n, const ActRow& act) {
  [[maybe_unused]] const int8_t* a = act.q;
  [[maybe_unused]] const float* dx = act.dx;
  [[maybe_unused]] const float* dsum = act.dsum;
  const auto* blk = static_cast<const Block*>(row);
  const LowbitDecoder<kBits> dec(kBits == 3 ? lowbit_simd::kLB3 : lowbit_simd::kLB2);
  const int64_t ng = n / lowbit::kGroup;
  __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
  __m128 zacc = _mm_setzero_ps();
  int64_t g = 0;
  for (; g + 2 <= ng; g += 2) {
    acc0 = lowbit_group(dec, blk[g], a + 64 * g, dx + 4 * g, dsum + 4 * g, acc0, zacc);
    acc1 = lowbit_group(dec, blk[g + 1], a + 64 * g + 64, dx + 4 * g + 4, dsum + 4 * g + 4, acc1, zacc);
  }
  if (g < ng) acc0 = lowbit_group(dec, blk[g], a + 64 * g, dx + 4 * g, dsum + 4 * g, acc0, zacc);
  zacc = _mm_add_ps(zacc, _mm_movehl_ps(zacc, zacc));
  return _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1)) - _mm_cvtss_f32(_mm_add_ss(zacc, _mm_movehdup_ps(zacc)));
}

}  // namespace

const RowDotFn* avx512_row_dot_table() {
  static const auto table = [] {
    std::array<RowDotFn, kRowDotSlots> t{};
    auto set = [&](TypeId id, RowDotFn f) { t[row_dot_slot(id)] = f; };
    set(TypeId::Q4_0, rowdot_legacy<DecQ4_0>);
    set(TypeId::Q4_1, rowdot_legacy<DecQ4_1>);
    set(TypeId::Q5_0, rowdot_legacy<DecQ5_0>);
    set(TypeId::Q5_1, rowdot_legacy<DecQ5_1>);
    set(TypeId::Q8_0, rowdot_legacy<DecQ8_0>);
    set(TypeId::IQ4_NL, rowdot_legacy<DecIQ4NL>);
    set(TypeId::Q2_K, rowdot_q2k);
    set(TypeId::Q3_K, rowdot_q3k);
    set(TypeId::Q4_K, rowdot_q45k<false>);
    set(TypeId::Q5_K, rowdot_q45k<true>);
    set(TypeId::Q6_K, rowdot_q6k);
    set(TypeId::IQ4_XS, rowdot_iq4xs);
    set(TypeId::LB3, rowdot_lowbit<3, lowbit::BlockLB3>);
    set(TypeId::LB2, rowdot_lowbit<2, lowbit::BlockLB2>);
    return t;
  }();
  return table.data();
}
#else
const RowDotFn* avx512_row_dot_table() { return nullptr; }
#endif

}  // namespace mixq::kernels
