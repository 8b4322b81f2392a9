// In-place decode kernels, AVX2 + FMA + F16C (kernels.h, RowDotFn): the layouts and the scheme are
// kernels_rowdot_avx512.cpp's, 32 codes per step. Products go through maddubs (u8 x s8 pairs summed
// to int16: codes and activations within +-127 keep each pair sum below 2^15) and madd against
// ones, or against the group's integer scale for the k-quants, to exact int32 sums; signed codes
// enter as |q| against the activation carrying q's sign. Only the F32 summation order differs from
// the reference (prepare_row + dot_int8).
#include "mixq/engine/kernels.h"

#include <array>
#include <cstring>

#include "mixq/engine/kernels_lowbit.h"
#include "mixq/formats/iq4.h"
#include "mixq/formats/kquants/kquants.h"
#include "mixq/formats/legacy.h"
#include "mixq/formats/lowbit.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define MIXQ_HAVE_AVX2_ROWDOT 1
#endif

namespace mixq::kernels {

#ifdef MIXQ_HAVE_AVX2_ROWDOT
namespace {

#define MIXQ_RD2 __attribute__((target("avx2,fma,f16c")))

MIXQ_RD2 inline float h2f(uint16_t h) { return _cvtsh_ss(h); }
MIXQ_RD2 inline __m256i load256(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }
MIXQ_RD2 inline __m128i load128(const void* p) { return _mm_loadu_si128(static_cast<const __m128i*>(p)); }

MIXQ_RD2 inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// Pair sums of products as int16: unsigned codes as they are, signed through |q| and sign(a, q).
MIXQ_RD2 inline __m256i pairs_u(__m256i q, __m256i a) { return _mm256_maddubs_epi16(q, a); }
MIXQ_RD2 inline __m256i pairs_s(__m256i q, __m256i a) {
  return _mm256_maddubs_epi16(_mm256_sign_epi8(q, q), _mm256_sign_epi8(a, q));
}

// 16 bytes of nibbles -> 32 codes: low nibbles first, then high.
MIXQ_RD2 inline __m256i nibbles32(const uint8_t* qs) {
  const __m128i raw = load128(qs);
  const __m128i m = _mm_set1_epi8(0x0f);
  return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(raw, 4), m), _mm_and_si128(raw, m));
}
// Byte i = 0x10 where bit i of the 32 bits at qh is set, else 0.
MIXQ_RD2 inline __m256i fifth_bits(const uint8_t* qh) {
  uint32_t bits;
  std::memcpy(&bits, qh, 4);
  const __m256i spread = _mm256_shuffle_epi8(
      _mm256_set1_epi32(static_cast<int>(bits)),
      _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3));
  const __m256i bit = _mm256_set1_epi64x(static_cast<int64_t>(0x8040201008040201ull));
  return _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit), _mm256_set1_epi8(0x10));
}

struct DecQ4_0 {
  using Block = legacy::BlockQ4_0;
  static constexpr bool kSigned = true, kAffine = false;
  MIXQ_RD2 static __m256i codes(const Block& b, __m256i) { return _mm256_sub_epi8(nibbles32(b.qs), _mm256_set1_epi8(8)); }
};
struct DecQ4_1 {
  using Block = legacy::BlockQ4_1;
  static constexpr bool kSigned = false, kAffine = true;
  MIXQ_RD2 static __m256i codes(const Block& b, __m256i) { return nibbles32(b.qs); }
};
struct DecQ5_0 {
  using Block = legacy::BlockQ5_0;
  static constexpr bool kSigned = true, kAffine = false;
  MIXQ_RD2 static __m256i codes(const Block& b, __m256i) {
    return _mm256_sub_epi8(_mm256_or_si256(nibbles32(b.qs), fifth_bits(b.qh)), _mm256_set1_epi8(16));
  }
};
struct DecQ5_1 {
  using Block = legacy::BlockQ5_1;
  static constexpr bool kSigned = false, kAffine = true;
  MIXQ_RD2 static __m256i codes(const Block& b, __m256i) { return _mm256_or_si256(nibbles32(b.qs), fifth_bits(b.qh)); }
};
struct DecQ8_0 {
  using Block = legacy::BlockQ8_0;
  static constexpr bool kSigned = true, kAffine = false;
  MIXQ_RD2 static __m256i codes(const Block& b, __m256i) { return load256(b.qs); }
};
struct DecIQ4NL {
  using Block = iq4::BlockIQ4NL;
  static constexpr bool kSigned = true, kAffine = false;
  MIXQ_RD2 static __m256i codes(const Block& b, __m256i lut) { return _mm256_shuffle_epi8(lut, nibbles32(b.qs)); }
};

// One block: acc + (codes . a) * d * dx in int32 lanes; the minimum's share (affine types) into macc.
template <class Dec>
MIXQ_RD2 inline __m256 legacy_block(const typename Dec::Block& blk, const int8_t* a, const float* dx, const float* dsum,
                                    __m256i lut, __m256 acc, float& macc) {
  const __m256i q = Dec::codes(blk, lut);
  const __m256i av = load256(a);
  const __m256i p = _mm256_madd_epi16(Dec::kSigned ? pairs_s(q, av) : pairs_u(q, av), _mm256_set1_epi16(1));
  if constexpr (Dec::kAffine) {
    const float m = h2f(blk.m);
    macc += m * dsum[0] + m * dsum[1];
  }
  return _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(h2f(blk.d) * dx[0]), acc);
}

template <class Dec>
MIXQ_RD2 float rowdot_legacy(const void* row, int64_t n, const ActRow& act) {
  [[maybe_unused]] const int8_t* a = act.q;
  [[maybe_unused]] const float* dx = act.dx;
  [[maybe_unused]] const float* dsum = act.dsum;
  const auto* blk = static_cast<const typename Dec::Block*>(row);
  const int64_t nb = n / 32;
  const __m256i lut = _mm256_broadcastsi128_si256(load128(iq4::kGrid.data()));
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  float macc = 0.0f;
  int64_t b = 0;
  for (; b + 2 <= nb; b += 2) {
    acc0 = legacy_block<Dec>(blk[b], a + 32 * b, dx + 2 * b, dsum + 2 * b, lut, acc0, macc);
    acc1 = legacy_block<Dec>(blk[b + 1], a + 32 * b + 32, dx + 2 * b + 2, dsum + 2 * b + 2, lut, acc1, macc);
  }
  if (b < nb) acc0 = legacy_block<Dec>(blk[b], a + 32 * b, dx + 2 * b, dsum + 2 * b, lut, acc0, macc);
  return hsum(_mm256_add_ps(acc0, acc1)) + macc;
}

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

// Q4_K: per super-block, the exact integer sum over sub-blocks of sc_j * (codes . a) times d * dx,
// minus the minimums' share (dmin * m_j) * dsum per group.
MIXQ_RD2 float rowdot_q4k(const void* row, int64_t n, const ActRow& act) {
  [[maybe_unused]] const int8_t* a = act.q;
  [[maybe_unused]] const float* dx = act.dx;
  [[maybe_unused]] const float* dsum = act.dsum;
  __m256 acc = _mm256_setzero_ps(), macc = _mm256_setzero_ps();
  const __m256i m4 = _mm256_set1_epi8(0x0f);
  for (int64_t sb = 0; sb < n / kq::kSuperBlock; ++sb) {
    const auto* B = static_cast<const kq::BlockQ4K*>(row) + sb;
    const int8_t* as = a + sb * kq::kSuperBlock;
    alignas(16) uint8_t sc[8], mn[8];
    scales_mins_k4(B->scales, sc, mn);
    __m256i isum = _mm256_setzero_si256();
    for (int k = 0; k < 4; ++k) {
      const __m256i raw = load256(B->qs + 32 * k);
      const __m256i lo = _mm256_and_si256(raw, m4), hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), m4);
      const __m256i p0 = _mm256_madd_epi16(pairs_u(lo, load256(as + 64 * k)), _mm256_set1_epi16(sc[2 * k]));
      const __m256i p1 = _mm256_madd_epi16(pairs_u(hi, load256(as + 64 * k + 32)), _mm256_set1_epi16(sc[2 * k + 1]));
      isum = _mm256_add_epi32(isum, _mm256_add_epi32(p0, p1));
    }
    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), _mm256_set1_ps(h2f(B->d) * dx[sb * 16]), acc);
    const __m256 off = _mm256_mul_ps(_mm256_set1_ps(h2f(B->dmin)),
                                     _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(mn)))));
    const __m256 off_lo = _mm256_permutevar8x32_ps(off, _mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3));
    const __m256 off_hi = _mm256_permutevar8x32_ps(off, _mm256_setr_epi32(4, 4, 5, 5, 6, 6, 7, 7));
    macc = _mm256_fmadd_ps(off_lo, _mm256_loadu_ps(dsum + sb * 16), macc);
    macc = _mm256_fmadd_ps(off_hi, _mm256_loadu_ps(dsum + sb * 16 + 8), macc);
  }
  return hsum(acc) - hsum(macc);
}

// Q6_K: codes (6 bits) - 32; per 32 codes two groups, each with its signed 8-bit scale (madd
// against [scale A x 8 | scale B x 8] int16 lanes), exact int32 over the super-block.
MIXQ_RD2 float rowdot_q6k(const void* row, int64_t n, const ActRow& act) {
  [[maybe_unused]] const int8_t* a = act.q;
  [[maybe_unused]] const float* dx = act.dx;
  [[maybe_unused]] const float* dsum = act.dsum;
  __m256 acc = _mm256_setzero_ps();
  const __m256i m4 = _mm256_set1_epi8(0x0f), m2 = _mm256_set1_epi8(0x03), bias = _mm256_set1_epi8(32);
  for (int64_t sb = 0; sb < n / kq::kSuperBlock; ++sb) {
    const auto* B = static_cast<const kq::BlockQ6K*>(row) + sb;
    const int8_t* as = a + sb * kq::kSuperBlock;
    __m256i isum = _mm256_setzero_si256();
    for (int h = 0; h < 2; ++h) {
      const __m256i ql0 = load256(B->ql + 64 * h), ql1 = load256(B->ql + 64 * h + 32);
      const __m256i qh = load256(B->qh + 32 * h);
      const __m256i c[4] = {
          _mm256_or_si256(_mm256_and_si256(ql0, m4), _mm256_slli_epi16(_mm256_and_si256(qh, m2), 4)),
          _mm256_or_si256(_mm256_and_si256(ql1, m4), _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2), m2), 4)),
          _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4),
                          _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 4), m2), 4)),
          _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4),
                          _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 6), m2), 4)),
      };
      for (int k = 0; k < 4; ++k) {
        const int g = 8 * h + 2 * k;
        const __m256i scales = _mm256_set_m128i(_mm_set1_epi16(B->scales[g + 1]), _mm_set1_epi16(B->scales[g]));
        const __m256i p = pairs_s(_mm256_sub_epi8(c[k], bias), load256(as + 128 * h + 32 * k));
        isum = _mm256_add_epi32(isum, _mm256_madd_epi16(p, scales));
      }
    }
    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), _mm256_set1_ps(h2f(B->d) * dx[sb * 16]), acc);
  }
  return hsum(acc);
}

// 16-bit lanes shifted right by a run-time count.
MIXQ_RD2 inline __m256i shr16(__m256i v, int count) { return _mm256_srl_epi16(v, _mm_cvtsi32_si128(count)); }
// [a x 8 | b x 8] as int16 lanes: the scales of the two 16-value groups of a 32-code step.
MIXQ_RD2 inline __m256i two_scales(int a, int b) {
  return _mm256_set_m128i(_mm_set1_epi16(static_cast<short>(b)), _mm_set1_epi16(static_cast<short>(a)));
}
// Minimums' share: sum over the 16 groups of m[g] * dsum[g] (m as 16 floats in two vectors).
MIXQ_RD2 inline __m256 mins16(__m256 m_lo, __m256 m_hi, const float* dsum, __m256 macc) {
  return _mm256_fmadd_ps(m_hi, _mm256_loadu_ps(dsum + 8), _mm256_fmadd_ps(m_lo, _mm256_loadu_ps(dsum), macc));
}

// Q5_K: Q4_K plus the fifth bit of sub-block j in bit j of qh[l].
MIXQ_RD2 float rowdot_q5k(const void* row, int64_t n, const ActRow& act) {
  [[maybe_unused]] const int8_t* a = act.q;
  [[maybe_unused]] const float* dx = act.dx;
  [[maybe_unused]] const float* dsum = act.dsum;
  __m256 acc = _mm256_setzero_ps(), macc = _mm256_setzero_ps();
  const __m256i m4 = _mm256_set1_epi8(0x0f), one = _mm256_set1_epi8(1);
  for (int64_t sb = 0; sb < n / kq::kSuperBlock; ++sb) {
    const auto* B = static_cast<const kq::BlockQ5K*>(row) + sb;
    const int8_t* as = a + sb * kq::kSuperBlock;
    alignas(16) uint8_t sc[8], mn[8];
    scales_mins_k4(B->scales, sc, mn);
    const __m256i qh = load256(B->qh);
    __m256i isum = _mm256_setzero_si256();
    for (int k = 0; k < 4; ++k) {
      const __m256i raw = load256(B->qs + 32 * k);
      const __m256i h0 = _mm256_slli_epi16(_mm256_and_si256(shr16(qh, 2 * k), one), 4);
      const __m256i h1 = _mm256_slli_epi16(_mm256_and_si256(shr16(qh, 2 * k + 1), one), 4);
      const __m256i lo = _mm256_or_si256(_mm256_and_si256(raw, m4), h0);
      const __m256i hi = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(raw, 4), m4), h1);
      const __m256i p0 = _mm256_madd_epi16(pairs_u(lo, load256(as + 64 * k)), _mm256_set1_epi16(sc[2 * k]));
      const __m256i p1 = _mm256_madd_epi16(pairs_u(hi, load256(as + 64 * k + 32)), _mm256_set1_epi16(sc[2 * k + 1]));
      isum = _mm256_add_epi32(isum, _mm256_add_epi32(p0, p1));
    }
    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), _mm256_set1_ps(h2f(B->d) * dx[sb * 16]), acc);
    const __m256 off = _mm256_mul_ps(_mm256_set1_ps(h2f(B->dmin)),
                                     _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(mn)))));
    macc = mins16(_mm256_permutevar8x32_ps(off, _mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3)),
                  _mm256_permutevar8x32_ps(off, _mm256_setr_epi32(4, 4, 5, 5, 6, 6, 7, 7)), dsum + sb * 16, macc);
  }
  return hsum(acc) - hsum(macc);
}

// Q2_K: 2-bit codes; per group a 4-bit scale (low nibble) and minimum (high nibble).
MIXQ_RD2 float rowdot_q2k(const void* row, int64_t n, const ActRow& act) {
  [[maybe_unused]] const int8_t* a = act.q;
  [[maybe_unused]] const float* dx = act.dx;
  [[maybe_unused]] const float* dsum = act.dsum;
  __m256 acc = _mm256_setzero_ps(), macc = _mm256_setzero_ps();
  const __m256i m2 = _mm256_set1_epi8(0x03);
  for (int64_t sb = 0; sb < n / kq::kSuperBlock; ++sb) {
    const auto* B = static_cast<const kq::BlockQ2K*>(row) + sb;
    const int8_t* as = a + sb * kq::kSuperBlock;
    __m256i isum = _mm256_setzero_si256();
    for (int h = 0; h < 2; ++h) {
      const __m256i q = load256(B->qs + 32 * h);
      for (int k = 0; k < 4; ++k) {
        const int g = 8 * h + 2 * k;
        const __m256i c = _mm256_and_si256(shr16(q, 2 * k), m2);
        const __m256i p = pairs_u(c, load256(as + 128 * h + 32 * k));
        isum = _mm256_add_epi32(isum, _mm256_madd_epi16(p, two_scales(B->scales[g] & 0xF, B->scales[g + 1] & 0xF)));
      }
    }
    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), _mm256_set1_ps(h2f(B->d) * dx[sb * 16]), acc);
    const __m128i s = load128(B->scales);
    const __m256 dmin = _mm256_set1_ps(h2f(B->dmin));
    const __m256 m_lo = _mm256_mul_ps(dmin, _mm256_cvtepi32_ps(_mm256_srli_epi32(_mm256_cvtepu8_epi32(s), 4)));
    const __m256 m_hi = _mm256_mul_ps(dmin, _mm256_cvtepi32_ps(_mm256_srli_epi32(_mm256_cvtepu8_epi32(_mm_srli_si128(s, 8)), 4)));
    macc = mins16(m_lo, m_hi, dsum + sb * 16, macc);
  }
  return hsum(acc) - hsum(macc);
}

// Q3_K: codes low2 - (high bit ? 0 : 4), 16 signed 6-bit scales (stored + 32).
MIXQ_RD2 float rowdot_q3k(const void* row, int64_t n, const ActRow& act) {
  [[maybe_unused]] const int8_t* a = act.q;
  [[maybe_unused]] const float* dx = act.dx;
  [[maybe_unused]] const float* dsum = act.dsum;
  __m256 acc = _mm256_setzero_ps();
  const __m256i m2 = _mm256_set1_epi8(0x03), one = _mm256_set1_epi8(1), four = _mm256_set1_epi8(4);
  for (int64_t sb = 0; sb < n / kq::kSuperBlock; ++sb) {
    const auto* B = static_cast<const kq::BlockQ3K*>(row) + sb;
    const int8_t* as = a + sb * kq::kSuperBlock;
    int s6[16];
    for (int j = 0; j < 16; ++j) {
      const int low = j < 8 ? B->scales[j] & 0xF : B->scales[j - 8] >> 4;
      const int high = (B->scales[8 + j % 4] >> (2 * (j / 4))) & 3;
      s6[j] = (low | (high << 4)) - 32;
    }
    const __m256i hm = load256(B->hmask);
    __m256i isum = _mm256_setzero_si256();
    for (int h = 0; h < 2; ++h) {
      const __m256i q = load256(B->qs + 32 * h);
      for (int k = 0; k < 4; ++k) {
        const int g = 8 * h + 2 * k;
        const __m256i low = _mm256_and_si256(shr16(q, 2 * k), m2);
        const __m256i hb = _mm256_and_si256(shr16(hm, 4 * h + k), one);
        const __m256i c = _mm256_sub_epi8(_mm256_or_si256(low, _mm256_slli_epi16(hb, 2)), four);
        const __m256i p = pairs_s(c, load256(as + 128 * h + 32 * k));
        isum = _mm256_add_epi32(isum, _mm256_madd_epi16(p, two_scales(s6[g], s6[g + 1])));
      }
    }
    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), _mm256_set1_ps(h2f(B->d) * dx[sb * 16]), acc);
  }
  return hsum(acc);
}

// IQ4_XS: grid codes, a 6-bit scale (stored + 32) per 32 values.
MIXQ_RD2 float rowdot_iq4xs(const void* row, int64_t n, const ActRow& act) {
  [[maybe_unused]] const int8_t* a = act.q;
  [[maybe_unused]] const float* dx = act.dx;
  [[maybe_unused]] const float* dsum = act.dsum;
  __m256 acc = _mm256_setzero_ps();
  const __m256i lut = _mm256_broadcastsi128_si256(load128(iq4::kGrid.data()));
  for (int64_t sb = 0; sb < n / iq4::kBlockXS; ++sb) {
    const auto* B = static_cast<const iq4::BlockIQ4XS*>(row) + sb;
    const int8_t* as = a + sb * iq4::kBlockXS;
    __m256i isum = _mm256_setzero_si256();
    for (int g = 0; g < 8; ++g) {
      const int ls = (((B->scales_l[g / 2] >> (4 * (g % 2))) & 0xf) | (((B->scales_h >> (2 * g)) & 3) << 4)) - 32;
      const __m256i c = _mm256_shuffle_epi8(lut, nibbles32(B->qs + 16 * g));
      const __m256i p = pairs_s(c, load256(as + 32 * g));
      isum = _mm256_add_epi32(isum, _mm256_madd_epi16(p, _mm256_set1_epi16(static_cast<short>(ls))));
    }
    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), _mm256_set1_ps(h2f(B->d) * dx[sb * 16]), acc);
  }
  return hsum(acc);
}

// LB3 / LB2 (kernels_rowdot_avx512.cpp's scheme, 32 codes per step): codes from
// kernels_lowbit.h's shuffles and multiplications, per 32 values s * dx * (codes . a), and the
// offset -z * s against dsum.
template <int kBits>
struct LowbitDecoder {
  __m256i even[2], odd[2], even_mul[2], odd_mul[2], even_mask, odd_mask;
  MIXQ_RD2 explicit LowbitDecoder(const lowbit_simd::Tables& t)
      : even_mask(_mm256_set1_epi16(static_cast<int16_t>(lowbit_simd::kEvenMask<kBits>))),
        odd_mask(_mm256_set1_epi16(static_cast<int16_t>(lowbit_simd::kOddMask<kBits>))) {
    for (int h = 0; h < 2; ++h) {
      even[h] = load256(t.even + 32 * h);
      odd[h] = load256(t.odd + 32 * h);
      even_mul[h] = load256(t.even_mul + 16 * h);
      odd_mul[h] = load256(t.odd_mul + 16 * h);
    }
  }
  // Codes 32h .. 32h + 31 of a group, one per byte, in value order.
  MIXQ_RD2 __m256i codes(const uint8_t* qs, int h) const {
    const __m256i raw = _mm256_broadcastsi128_si256(load128(kBits == 3 ? qs + 8 * h : qs));
    const __m256i e = _mm256_srli_epi16(_mm256_mullo_epi16(_mm256_shuffle_epi8(raw, even[h]), even_mul[h]), 8);
    const __m256i o = _mm256_mullo_epi16(_mm256_shuffle_epi8(raw, odd[h]), odd_mul[h]);
    return _mm256_or_si256(_mm256_and_si256(e, even_mask), _mm256_and_si256(o, odd_mask));
  }
};

template <int kBits, class Block>
MIXQ_RD2 float rowdot_lowbit(const void* row, int64_t n, const ActRow& act) {
  [[maybe_unused]] const int8_t* a = act.q;
  [[maybe_unused]] const float* dx = act.dx;
  [[maybe_unused]] const float* dsum = act.dsum;
  const auto* blk = static_cast<const Block*>(row);
  const LowbitDecoder<kBits> dec(kBits == 3 ? lowbit_simd::kLB3 : lowbit_simd::kLB2);
  const __m256i ones = _mm256_set1_epi16(1);
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  __m128 zacc = _mm_setzero_ps();
  for (int64_t g = 0; g < n / lowbit::kGroup; ++g) {
    const Block& b = blk[g];
    const int8_t* ag = a + 64 * g;
    const __m256i p0 = _mm256_madd_epi16(pairs_u(dec.codes(b.qs, 0), load256(ag)), ones);
    const __m256i p1 = _mm256_madd_epi16(pairs_u(dec.codes(b.qs, 1), load256(ag + 32)), ones);
    const float s = h2f(b.s);
    acc0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p0), _mm256_set1_ps(s * dx[4 * g]), acc0);
    acc1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p1), _mm256_set1_ps(s * dx[4 * g + 2]), acc1);
    zacc = _mm_fmadd_ps(_mm_set1_ps(h2f(b.z) * s), _mm_loadu_ps(dsum + 4 * g), zacc);
  }
  zacc = _mm_add_ps(zacc, _mm_movehl_ps(zacc, zacc));
  return hsum(_mm256_add_ps(acc0, acc1)) - _mm_cvtss_f32(_mm_add_ss(zacc, _mm_movehdup_ps(zacc)));
}

}  // namespace

const RowDotFn* avx2_row_dot_table() {
  static const auto table = [] {
    std::array<RowDotFn, kRowDotSlots> t{};
    auto set = [&](TypeId id, RowDotFn f) { t[row_dot_slot(id)] = f; };
    set(TypeId::Q4_0, rowdot_legacy<DecQ4_0>);
    set(TypeId::Q4_1, rowdot_legacy<DecQ4_1>);
    set(TypeId::Q5_0, rowdot_legacy<DecQ5_0>);
    set(TypeId::Q5_1, rowdot_legacy<DecQ5_1>);
    set(TypeId::Q8_0, rowdot_legacy<DecQ8_0>);
    set(TypeId::IQ4_NL, rowdot_legacy<DecIQ4NL>);
    set(TypeId::Q4_K, rowdot_q4k);
    set(TypeId::Q6_K, rowdot_q6k);
    set(TypeId::Q2_K, rowdot_q2k);
    set(TypeId::Q3_K, rowdot_q3k);
    set(TypeId::Q5_K, rowdot_q5k);
    set(TypeId::IQ4_XS, rowdot_iq4xs);
    set(TypeId::LB3, rowdot_lowbit<3, lowbit::BlockLB3>);
    set(TypeId::LB2, rowdot_lowbit<2, lowbit::BlockLB2>);
    return t;
  }();
  return table.data();
}
#else
const RowDotFn* avx2_row_dot_table() { return nullptr; }
#endif

}  // namespace mixq::kernels
