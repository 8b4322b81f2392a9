// AVX-512 kernels (F, BW, VL and VNNI: Ice Lake, Sapphire Rapids, Zen 4 and later). Compiled with
// target attributes like the AVX2 set, so a portable build carries them and best_kernels() picks
// them only where CPUID and the OS (XCR0) report every one of those features.
//
// The integer kernel takes 64 codes per step: |q| (unsigned) against the activation codes with q's
// sign (a masked negate; |a| <= 127, so it cannot overflow) through VNNI's vpdpbusd, which sums four
// byte products into each int32 lane without saturation, so lanes 4g..4g+3 hold group g's share.
// The lanes are converted, multiplied by scale * dx of their group and accumulated in F32, as the
// other sets do; only the F32 summation order differs from the scalar reference. Row lengths
// that leave 32 codes after the last 64 use masked loads (masked-out bytes are never read).
//
// The attention and softmax kernels are the AVX2 set's (this CPU has AVX2 too): with the head
// sizes of the models here (8 to 64), wider vectors would not shorten their sequential F16 chains.
#include "mixq/engine/kernels.h"
#include "mixq/engine/repack.h"
#include "mixq/util/cpu_features.h"

#include <algorithm>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define MIXQ_HAVE_AVX512_KERNELS 1
#endif

// GCC 12's AVX-512 intrinsics pass _mm512_undefined_*() as the merge operand of unmasked
// operations (casts, conversions, reductions) and then warn that it is uninitialized (GCC bug
// 105593, fixed in GCC 13). Those operands are never read; silence just that, in this file only.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace mixq::kernels {

#ifdef MIXQ_HAVE_AVX512_KERNELS
namespace {

#define MIXQ_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")))

// Lane l of the result takes element l / 4 of c (the group factor for 64 codes = 4 groups).
MIXQ_AVX512 inline __m512 spread4(__m128 c) {
  const __m512i idx = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
  return _mm512_permutexvar_ps(idx, _mm512_broadcast_f32x4(c));
}

// sum over byte quads of q * a into int32 lanes, exact.
MIXQ_AVX512 inline __m512i dot_bytes(__m512i q, __m512i a) {
  const __mmask64 neg = _mm512_movepi8_mask(q);
  const __m512i a_signed = _mm512_mask_sub_epi8(a, neg, _mm512_setzero_si512(), a);
  return _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_abs_epi8(q), a_signed);
}

// Loads of a 64-code step (or its first half where only 32 codes remain).
struct Step {
  __mmask64 bytes;
  __mmask8 groups;
};
constexpr Step kFull{~__mmask64{0}, 0x0f};
constexpr Step kHalf{0xffffffffULL, 0x03};

MIXQ_AVX512 inline __m512i load_codes(const int8_t* p, Step s) { return _mm512_maskz_loadu_epi8(s.bytes, p); }
MIXQ_AVX512 inline __m128 load_groups(const float* p, Step s) { return _mm_maskz_loadu_ps(s.groups, p); }

// The offsets' share: sum over groups of offset * (dx * sum of the group's codes), added to acc.
MIXQ_AVX512 inline __m512 add_offsets(int64_t groups, const float* offset, const float* dsum, __m512 acc) {
  int64_t g = 0;
  for (; g + 16 <= groups; g += 16) acc = _mm512_fmadd_ps(_mm512_loadu_ps(offset + g), _mm512_loadu_ps(dsum + g), acc);
  if (g < groups) {
    const __mmask16 m = static_cast<__mmask16>((1u << (groups - g)) - 1);
    acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, offset + g), _mm512_maskz_loadu_ps(m, dsum + g), acc);
  }
  return acc;
}

MIXQ_AVX512 float dot_int8_avx512(int64_t n_pad, const int8_t* q, const float* scale, const float* offset,
                                  bool has_offset, const int8_t* a, const float* dx, const float* dsum) {
  __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 128 <= n_pad; i += 128) {
    const __m512i p0 = dot_bytes(_mm512_loadu_si512(q + i), _mm512_loadu_si512(a + i));
    const __m512i p1 = dot_bytes(_mm512_loadu_si512(q + i + 64), _mm512_loadu_si512(a + i + 64));
    const __m128 c0 = _mm_mul_ps(_mm_loadu_ps(scale + i / 16), _mm_loadu_ps(dx + i / 16));
    const __m128 c1 = _mm_mul_ps(_mm_loadu_ps(scale + i / 16 + 4), _mm_loadu_ps(dx + i / 16 + 4));
    acc0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p0), spread4(c0), acc0);
    acc1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p1), spread4(c1), acc1);
  }
  for (; i < n_pad; i += 64) {
    const Step s = i + 64 <= n_pad ? kFull : kHalf;
    const __m512i p = dot_bytes(load_codes(q + i, s), load_codes(a + i, s));
    const __m128 c = _mm_mul_ps(load_groups(scale + i / 16, s), load_groups(dx + i / 16, s));
    acc0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), spread4(c), acc0);
  }
  __m512 acc = _mm512_add_ps(acc0, acc1);
  if (has_offset) acc = add_offsets(n_pad / 16, offset, dsum, acc);
  return _mm512_reduce_add_ps(acc);
}

MIXQ_AVX512 float dot_f32_avx512(int64_t n_pad, const float* w, const float* x) {
  __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps(), a2 = _mm512_setzero_ps(), a3 = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 64 <= n_pad; i += 64) {
    a0 = _mm512_fmadd_ps(_mm512_loadu_ps(w + i), _mm512_loadu_ps(x + i), a0);
    a1 = _mm512_fmadd_ps(_mm512_loadu_ps(w + i + 16), _mm512_loadu_ps(x + i + 16), a1);
    a2 = _mm512_fmadd_ps(_mm512_loadu_ps(w + i + 32), _mm512_loadu_ps(x + i + 32), a2);
    a3 = _mm512_fmadd_ps(_mm512_loadu_ps(w + i + 48), _mm512_loadu_ps(x + i + 48), a3);
  }
  for (; i < n_pad; i += 16) a0 = _mm512_fmadd_ps(_mm512_loadu_ps(w + i), _mm512_loadu_ps(x + i), a0);
  return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
}

template <int NT>
MIXQ_AVX512 void dot_int8_x4_impl(int64_t n_pad, const int8_t* const q[4], const float* const scale[4],
                                  const float* const offset[4], const int8_t* const a[2], const float* const dx[2],
                                  const float* const dsum[2], float* out) {
  __m512 acc[NT][4];
  for (auto& row : acc) {
    for (auto& v : row) v = _mm512_setzero_ps();
  }
  for (int64_t i = 0; i < n_pad; i += 64) {
    const Step s = i + 64 <= n_pad ? kFull : kHalf;
    __m512i av[NT];
    __m128 d4[NT];
    for (int j = 0; j < NT; ++j) {
      av[j] = load_codes(a[j] + i, s);
      d4[j] = load_groups(dx[j] + i / 16, s);
    }
    for (int r = 0; r < 4; ++r) {
      const __m512i qv = load_codes(q[r] + i, s);
      const __m512i qa = _mm512_abs_epi8(qv);
      const __mmask64 neg = _mm512_movepi8_mask(qv);
      const __m128 s4 = load_groups(scale[r] + i / 16, s);
      for (int j = 0; j < NT; ++j) {
        const __m512i as = _mm512_mask_sub_epi8(av[j], neg, _mm512_setzero_si512(), av[j]);
        const __m512i p = _mm512_dpbusd_epi32(_mm512_setzero_si512(), qa, as);
        acc[j][r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), spread4(_mm_mul_ps(s4, d4[j])), acc[j][r]);
      }
    }
  }
  for (int r = 0; r < 4; ++r) {
    if (offset[r] == nullptr) continue;
    for (int j = 0; j < NT; ++j) acc[j][r] = add_offsets(n_pad / 16, offset[r], dsum[j], acc[j][r]);
  }
  for (int j = 0; j < NT; ++j) {
    for (int r = 0; r < 4; ++r) out[4 * j + r] = _mm512_reduce_add_ps(acc[j][r]);
  }
}

MIXQ_AVX512 void dot_int8_x4_avx512(int64_t n_pad, const int8_t* const q[4], const float* const scale[4],
                                    const float* const offset[4], const int8_t* const a[2], const float* const dx[2],
                                    const float* const dsum[2], int nt, float* out) {
  if (nt == 2) {
    dot_int8_x4_impl<2>(n_pad, q, scale, offset, a, dx, dsum, out);
  } else {
    dot_int8_x4_impl<1>(n_pad, q, scale, offset, a, dx, dsum, out);
  }
}

template <int NT>
MIXQ_AVX512 void dot_f32_x4_impl(int64_t n_pad, const float* const w[4], const float* const x[2], float* out) {
  __m512 acc[NT][4];
  for (auto& row : acc) {
    for (auto& v : row) v = _mm512_setzero_ps();
  }
  for (int64_t i = 0; i < n_pad; i += 16) {
    __m512 xv[NT];
    for (int j = 0; j < NT; ++j) xv[j] = _mm512_loadu_ps(x[j] + i);
    for (int r = 0; r < 4; ++r) {
      const __m512 wv = _mm512_loadu_ps(w[r] + i);
      for (int j = 0; j < NT; ++j) acc[j][r] = _mm512_fmadd_ps(wv, xv[j], acc[j][r]);
    }
  }
  for (int j = 0; j < NT; ++j) {
    for (int r = 0; r < 4; ++r) out[4 * j + r] = _mm512_reduce_add_ps(acc[j][r]);
  }
}

MIXQ_AVX512 void dot_f32_x4_avx512(int64_t n_pad, const float* const w[4], const float* const x[2], int nt,
                                   float* out) {
  if (nt == 2) {
    dot_f32_x4_impl<2>(n_pad, w, x, out);
  } else {
    dot_f32_x4_impl<1>(n_pad, w, x, out);
  }
}

// Four rows times four tokens in 16 accumulators (acc[4 r + j]: row r, token j), each the same FMA
// chain over 16-lane steps as dot_f32_x4_impl, then the 16 reductions together: GCC's
// _mm512_reduce_add_ps adds lanes 8 apart, then 4, 2 and 1 apart, and the tree below makes the
// same pairs, four vectors' worth per shuffle, so every sum is bit for bit dot_f32_x4's. After
// it, lane 4 j + r holds (row r, token j).
MIXQ_AVX512 __m512 dot_f32_4x4(int64_t n_pad, const float* const w[4], const float* const x[4]) {
  __m512 acc[16];
#pragma GCC unroll 16
  for (auto& a : acc) a = _mm512_setzero_ps();
  for (int64_t i = 0; i < n_pad; i += 16) {
    __m512 xv[4];
    // Every operand in a register (the empty asm statements): GCC would otherwise fold the w or
    // the x loads into the FMAs, 16 loads per step instead of 8, and the load ports (one 64-byte
    // load per cycle on Zen 4) would set the pace instead of the FMAs.
#pragma GCC unroll 4
    for (int j = 0; j < 4; ++j) {
      xv[j] = _mm512_loadu_ps(x[j] + i);
      __asm__("" : "+v"(xv[j]));
    }
#pragma GCC unroll 4
    for (int r = 0; r < 4; ++r) {
      __m512 wv = _mm512_loadu_ps(w[r] + i);
      __asm__("" : "+v"(wv));
      for (int j = 0; j < 4; ++j) acc[4 * r + j] = _mm512_fmadd_ps(wv, xv[j], acc[4 * r + j]);
    }
  }
  // Lanes 8 apart: b1[k] = accumulators 2k (lanes 0-7) and 2k + 1 (lanes 8-15).
  __m512 b1[8];
#pragma GCC unroll 8
  for (int k = 0; k < 8; ++k) {
    const __m512 a = acc[2 * k], b = acc[2 * k + 1];
    b1[k] = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(1, 0, 1, 0)), _mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(3, 2, 3, 2)));
  }
  // 4 apart: b2[k] = accumulators 4k .. 4k + 3, one 128-bit lane each.
  __m512 b2[4];
#pragma GCC unroll 8
  for (int k = 0; k < 4; ++k) {
    const __m512 a = b1[2 * k], b = b1[2 * k + 1];
    b2[k] = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(2, 0, 2, 0)), _mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(3, 1, 3, 1)));
  }
  // 2 apart: b3[k], 128-bit lane l = [accumulator 8k + l: two partial sums, 8k + 4 + l: two].
  __m512 b3[2];
#pragma GCC unroll 8
  for (int k = 0; k < 2; ++k) {
    const __m512 a = b2[2 * k], b = b2[2 * k + 1];
    b3[k] = _mm512_add_ps(_mm512_shuffle_ps(a, b, _MM_SHUFFLE(1, 0, 1, 0)), _mm512_shuffle_ps(a, b, _MM_SHUFFLE(3, 2, 3, 2)));
  }
  // 1 apart: lane 4 l + c = accumulator 4 c + l.
  return _mm512_add_ps(_mm512_shuffle_ps(b3[0], b3[1], _MM_SHUFFLE(2, 0, 2, 0)),
                       _mm512_shuffle_ps(b3[0], b3[1], _MM_SHUFFLE(3, 1, 3, 1)));
}

MIXQ_AVX512 void dot_f32_tile_avx512(int64_t n_pad, const float* const w[4], const float* x, int64_t ldx, int nt,
                                     float* y, int64_t ldy) {
  int j = 0;
  for (; j + 4 <= nt; j += 4) {
    const float* xs[4] = {x + j * ldx, x + (j + 1) * ldx, x + (j + 2) * ldx, x + (j + 3) * ldx};
    const __m512 r = dot_f32_4x4(n_pad, w, xs);
    _mm_storeu_ps(y + j * ldy, _mm512_castps512_ps128(r));
    _mm_storeu_ps(y + (j + 1) * ldy, _mm512_extractf32x4_ps(r, 1));
    _mm_storeu_ps(y + (j + 2) * ldy, _mm512_extractf32x4_ps(r, 2));
    _mm_storeu_ps(y + (j + 3) * ldy, _mm512_extractf32x4_ps(r, 3));
  }
  if (j < nt) {
    const int left = nt - j;
    const float* xs[4];
    for (int i = 0; i < 4; ++i) xs[i] = x + (j + std::min(i, left - 1)) * ldx;
    alignas(64) float r[16];
    _mm512_store_ps(r, dot_f32_4x4(n_pad, w, xs));
    for (int i = 0; i < left; ++i) std::copy(r + 4 * i, r + 4 * i + 4, y + (j + i) * ldy);
  }
}

}  // namespace

const KernelSet* avx512_kernels() {
  static const KernelSet* set = []() -> const KernelSet* {
    const KernelSet* avx2 = avx2_kernels();
    const CpuFeatures& cpu = cpu_features();
    if (avx2 == nullptr || !cpu.has_avx512_fbwvl() || !cpu.avx512vnni) return nullptr;
    static KernelSet k = *avx2;
    k.name = "avx512";
    k.dot_int8 = dot_int8_avx512;
    k.dot_f32 = dot_f32_avx512;
    k.dot_int8_x4 = dot_int8_x4_avx512;
    k.dot_f32_x4 = dot_f32_x4_avx512;
    k.dot_f32_tile = dot_f32_tile_avx512;
    k.row_dot = avx512_row_dot_table();
    k.panel_int8 = avx512_panel_kernel();
    k.row_dot4 = avx512_row_dot4_table();
    return &k;
  }();
  return set;
}
#else
const KernelSet* avx512_kernels() { return nullptr; }
#endif

}  // namespace mixq::kernels
