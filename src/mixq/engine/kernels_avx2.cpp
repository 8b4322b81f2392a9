// AVX2 + FMA kernels. Compiled with target attributes, so a portable build (MIXQ_NATIVE=OFF) still
// carries them and best_kernels() picks them only when the CPU reports AVX2 and FMA.
#include "mixq/engine/kernels.h"
#include "mixq/util/cpu_features.h"

#include <algorithm>
#include <cmath>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define MIXQ_HAVE_AVX2_KERNELS 1
#endif

namespace mixq::kernels {

#ifdef MIXQ_HAVE_AVX2_KERNELS
namespace {

#define MIXQ_AVX2 __attribute__((target("avx2,fma,f16c")))

MIXQ_AVX2 inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// 32 codes per step: |q| * sign(a, q) with maddubs (no overflow: |q| <= 128, |a| <= 127), pairs
// summed to eight int32 lanes (lanes 0-3: the first 16 values, 4-7: the next 16), converted and
// multiplied by scale * dx of their group.
MIXQ_AVX2 float dot_int8_avx2(int64_t n_pad, const int8_t* q, const float* scale, const float* offset,
                              bool has_offset, const int8_t* a, const float* dx, const float* dsum) {
  const __m256i ones = _mm256_set1_epi16(1);
  const __m256i spread = _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1);
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 64 <= n_pad; i += 64) {
    const __m256i q0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + i));
    const __m256i a0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + i));
    const __m256i q1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + i + 32));
    const __m256i a1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + i + 32));
    const __m256i p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_sign_epi8(q0, q0), _mm256_sign_epi8(a0, q0)), ones);
    const __m256i p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_sign_epi8(q1, q1), _mm256_sign_epi8(a1, q1)), ones);
    const __m128 c = _mm_mul_ps(_mm_loadu_ps(scale + i / 16), _mm_loadu_ps(dx + i / 16));
    const __m256 cc = _mm256_castps128_ps256(c);
    const __m256 c0 = _mm256_permutevar8x32_ps(cc, spread);
    const __m256 c1 = _mm256_permutevar8x32_ps(cc, _mm256_add_epi32(spread, _mm256_set1_epi32(2)));
    acc0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p0), c0, acc0);
    acc1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p1), c1, acc1);
  }
  for (; i < n_pad; i += 32) {
    const __m256i q0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + i));
    const __m256i a0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + i));
    const __m256i p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_sign_epi8(q0, q0), _mm256_sign_epi8(a0, q0)), ones);
    const __m128 c = _mm_setr_ps(scale[i / 16] * dx[i / 16], scale[i / 16 + 1] * dx[i / 16 + 1], 0.0f, 0.0f);
    acc0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p0), _mm256_permutevar8x32_ps(_mm256_castps128_ps256(c), spread), acc0);
  }
  float sum = hsum(_mm256_add_ps(acc0, acc1));
  if (has_offset) {
    __m256 o = _mm256_setzero_ps();
    int64_t g = 0;
    const int64_t groups = n_pad / 16;
    for (; g + 8 <= groups; g += 8) o = _mm256_fmadd_ps(_mm256_loadu_ps(offset + g), _mm256_loadu_ps(dsum + g), o);
    sum += hsum(o);
    for (; g < groups; ++g) sum += offset[g] * dsum[g];
  }
  return sum;
}

MIXQ_AVX2 float dot_f32_avx2(int64_t n_pad, const float* w, const float* x) {
  __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 32 <= n_pad; i += 32) {
    a0 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i), _mm256_loadu_ps(x + i), a0);
    a1 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i + 8), _mm256_loadu_ps(x + i + 8), a1);
    a2 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i + 16), _mm256_loadu_ps(x + i + 16), a2);
    a3 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i + 24), _mm256_loadu_ps(x + i + 24), a3);
  }
  float sum = hsum(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
  for (; i < n_pad; ++i) sum += w[i] * x[i];
  return sum;
}

MIXQ_AVX2 __m256 exp_nonpositive(__m256 x);

// x[i] = exp(x[i]) for x[i] <= 0.
MIXQ_AVX2 void exp_inplace(float* x, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(x + i, exp_nonpositive(_mm256_loadu_ps(x + i)));
  for (; i < n; ++i) x[i] = std::exp(x[i]);
}


MIXQ_AVX2 inline float hmax(__m256 v) {
  __m128 x = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  x = _mm_max_ps(x, _mm_movehl_ps(x, x));
  x = _mm_max_ss(x, _mm_movehdup_ps(x));
  return _mm_cvtss_f32(x);
}

// Sums of four vectors, one per lane of the result.
MIXQ_AVX2 inline __m128 hsum4(__m256 a, __m256 b, __m256 c, __m256 d) {
  const __m256 ab = _mm256_hadd_ps(a, b), cd = _mm256_hadd_ps(c, d);
  const __m256 abcd = _mm256_hadd_ps(ab, cd);
  return _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1));
}

template <int NT>
MIXQ_AVX2 void dot_int8_x4_impl(int64_t n_pad, const int8_t* const q[4], const float* const scale[4],
                                const float* const offset[4], const int8_t* const a[2], const float* const dx[2],
                                const float* const dsum[2], float* out) {
  const __m256i ones = _mm256_set1_epi16(1);
  const __m256i spread = _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1);
  __m256 acc[NT][4];
  for (auto& row : acc) {
    for (auto& v : row) v = _mm256_setzero_ps();
  }
  for (int64_t i = 0; i < n_pad; i += 32) {
    __m256i av[NT];
    __m128 d2[NT];
    for (int j = 0; j < NT; ++j) {
      av[j] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a[j] + i));
      d2[j] = _mm_castpd_ps(_mm_load_sd(reinterpret_cast<const double*>(dx[j] + i / 16)));
    }
    for (int r = 0; r < 4; ++r) {
      const __m256i qv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q[r] + i));
      const __m256i qa = _mm256_sign_epi8(qv, qv);
      const __m128 s2 = _mm_castpd_ps(_mm_load_sd(reinterpret_cast<const double*>(scale[r] + i / 16)));
      for (int j = 0; j < NT; ++j) {
        const __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(qa, _mm256_sign_epi8(av[j], qv)), ones);
        const __m256 c = _mm256_permutevar8x32_ps(_mm256_castps128_ps256(_mm_mul_ps(s2, d2[j])), spread);
        acc[j][r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), c, acc[j][r]);
      }
    }
  }
  // The offsets' share: sum over groups of offset * (dx * sum of the group's codes).
  const int64_t groups = n_pad / 16;
  for (int r = 0; r < 4; ++r) {
    if (offset[r] == nullptr) continue;
    for (int j = 0; j < NT; ++j) {
      int64_t g = 0;
      for (; g + 8 <= groups; g += 8) {
        acc[j][r] = _mm256_fmadd_ps(_mm256_loadu_ps(offset[r] + g), _mm256_loadu_ps(dsum[j] + g), acc[j][r]);
      }
      if (g < groups) {
        alignas(32) float o[8] = {}, d[8] = {};
        for (int64_t k = g; k < groups; ++k) o[k - g] = offset[r][k], d[k - g] = dsum[j][k];
        acc[j][r] = _mm256_fmadd_ps(_mm256_load_ps(o), _mm256_load_ps(d), acc[j][r]);
      }
    }
  }
  for (int j = 0; j < NT; ++j) _mm_storeu_ps(out + 4 * j, hsum4(acc[j][0], acc[j][1], acc[j][2], acc[j][3]));
}

MIXQ_AVX2 void dot_int8_x4_avx2(int64_t n_pad, const int8_t* const q[4], const float* const scale[4],
                                const float* const offset[4], const int8_t* const a[2], const float* const dx[2],
                                const float* const dsum[2], int nt, float* out) {
  if (nt == 2) {
    dot_int8_x4_impl<2>(n_pad, q, scale, offset, a, dx, dsum, out);
  } else {
    dot_int8_x4_impl<1>(n_pad, q, scale, offset, a, dx, dsum, out);
  }
}

template <int NT>
MIXQ_AVX2 void dot_f32_x4_impl(int64_t n_pad, const float* const w[4], const float* const x[2], float* out) {
  __m256 acc[NT][4];
  for (auto& row : acc) {
    for (auto& v : row) v = _mm256_setzero_ps();
  }
  for (int64_t i = 0; i < n_pad; i += 8) {
    __m256 xv[NT];
    for (int j = 0; j < NT; ++j) xv[j] = _mm256_loadu_ps(x[j] + i);
    for (int r = 0; r < 4; ++r) {
      const __m256 wv = _mm256_loadu_ps(w[r] + i);
      for (int j = 0; j < NT; ++j) acc[j][r] = _mm256_fmadd_ps(wv, xv[j], acc[j][r]);
    }
  }
  for (int j = 0; j < NT; ++j) _mm_storeu_ps(out + 4 * j, hsum4(acc[j][0], acc[j][1], acc[j][2], acc[j][3]));
}

MIXQ_AVX2 void dot_f32_x4_avx2(int64_t n_pad, const float* const w[4], const float* const x[2], int nt, float* out) {
  if (nt == 2) {
    dot_f32_x4_impl<2>(n_pad, w, x, out);
  } else {
    dot_f32_x4_impl<1>(n_pad, w, x, out);
  }
}

MIXQ_AVX2 void dot_f32_tile_avx2(int64_t n_pad, const float* const w[4], const float* x, int64_t ldx, int nt, float* y,
                                 int64_t ldy) {
  int j = 0;
  for (; j + 2 <= nt; j += 2) {
    const float* xs[2] = {x + j * ldx, x + (j + 1) * ldx};
    float out[8];
    dot_f32_x4_impl<2>(n_pad, w, xs, out);
    std::copy(out, out + 4, y + j * ldy);
    std::copy(out + 4, out + 8, y + (j + 1) * ldy);
  }
  if (j < nt) {
    const float* xs[2] = {x + j * ldx, x + j * ldx};
    dot_f32_x4_impl<1>(n_pad, w, xs, y + j * ldy);
  }
}

// exp(x) for x <= 0: x = k ln2 + r with |r| <= ln2 / 2 (ln2 split in two for an exact product),
// exp(r) by its Taylor series to r^7 (relative error below 1e-7 on that range), times 2^k built in
// the exponent bits. Below -87.3 (where the result would be subnormal) and for -inf: 0.
MIXQ_AVX2 __m256 exp_nonpositive(__m256 x) {
  const __m256 lo = _mm256_set1_ps(-87.3f);
  const __m256 underflow = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
  x = _mm256_max_ps(x, lo);
  const __m256 k = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(k, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(k, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.0f / 5040);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 720));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  const __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(k), _mm256_set1_epi32(127)), 23);
  return _mm256_andnot_ps(underflow, _mm256_mul_ps(p, _mm256_castsi256_ps(bits)));
}

MIXQ_AVX2 double exp_sum_avx2(float* x, int64_t n, float m) {
  const __m256 vm = _mm256_set1_ps(m);
  __m256d acc = _mm256_setzero_pd();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 e = exp_nonpositive(_mm256_sub_ps(_mm256_loadu_ps(x + i), vm));
    _mm256_storeu_ps(x + i, e);
    acc = _mm256_add_pd(acc, _mm256_cvtps_pd(_mm256_castps256_ps128(e)));
    acc = _mm256_add_pd(acc, _mm256_cvtps_pd(_mm256_extractf128_ps(e, 1)));
  }
  alignas(32) double lanes[4];
  _mm256_store_pd(lanes, acc);
  double sum = (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]);
  if (i < n) {
    alignas(32) float tail[8];
    for (int j = 0; j < 8; ++j) tail[j] = i + j < n ? x[i + j] - m : -INFINITY;
    _mm256_store_ps(tail, exp_nonpositive(_mm256_load_ps(tail)));
    for (int64_t j = 0; i + j < n; ++j) sum += (x[i + j] = tail[j]);
  }
  return sum;
}

MIXQ_AVX2 void attn_scores_avx2(const float* q, const float* kt, int64_t stride, int hd, float* s) {
  __m256 acc[kAttnTile / 8];
  for (auto& a : acc) a = _mm256_setzero_ps();
  for (int i = 0; i < hd; ++i) {
    const __m256 qi = _mm256_broadcast_ss(q + i);
    const float* k = kt + i * stride;
    for (int j = 0; j < kAttnTile / 8; ++j) acc[j] = _mm256_fmadd_ps(qi, _mm256_loadu_ps(k + 8 * j), acc[j]);
  }
  for (int j = 0; j < kAttnTile / 8; ++j) _mm256_storeu_ps(s + 8 * j, acc[j]);
}

MIXQ_AVX2 void attn_accumulate_avx2(const float* w, int n, const float* v, int64_t stride, int hd, float* out) {
  int i = 0;
  // 64 dimensions at a time: eight chains (each still in position order) instead of two, so the
  // FMA latency no longer bounds a head of 64.
  for (; i + 64 <= hd; i += 64) {
    __m256 a[8];
    for (int j = 0; j < 8; ++j) a[j] = _mm256_loadu_ps(out + i + 8 * j);
    for (int p = 0; p < n; ++p) {
      const __m256 wp = _mm256_broadcast_ss(w + p);
      const float* vp = v + p * stride + i;
      for (int j = 0; j < 8; ++j) a[j] = _mm256_fmadd_ps(wp, _mm256_loadu_ps(vp + 8 * j), a[j]);
    }
    for (int j = 0; j < 8; ++j) _mm256_storeu_ps(out + i + 8 * j, a[j]);
  }
  for (; i + 16 <= hd; i += 16) {
    __m256 a0 = _mm256_loadu_ps(out + i), a1 = _mm256_loadu_ps(out + i + 8);
    for (int p = 0; p < n; ++p) {
      const __m256 wp = _mm256_broadcast_ss(w + p);
      a0 = _mm256_fmadd_ps(wp, _mm256_loadu_ps(v + p * stride + i), a0);
      a1 = _mm256_fmadd_ps(wp, _mm256_loadu_ps(v + p * stride + i + 8), a1);
    }
    _mm256_storeu_ps(out + i, a0);
    _mm256_storeu_ps(out + i + 8, a1);
  }
  for (; i + 8 <= hd; i += 8) {
    __m256 a0 = _mm256_loadu_ps(out + i);
    for (int p = 0; p < n; ++p) a0 = _mm256_fmadd_ps(_mm256_broadcast_ss(w + p), _mm256_loadu_ps(v + p * stride + i), a0);
    _mm256_storeu_ps(out + i, a0);
  }
  for (; i < hd; ++i) {
    for (int p = 0; p < n; ++p) out[i] = std::fma(w[p], v[p * stride + i], out[i]);
  }
}

MIXQ_AVX2 inline __m256 round_f16(__m256 x) { return _mm256_cvtph_ps(_mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT)); }

// The sequential part of attn_f16 with the accumulator in NV registers (hd = 8 NV).
template <int NV>
MIXQ_AVX2 void attn_f16_accumulate(const float* vs_arr, const float* ms_arr, int len, const float* v, int64_t vstride,
                                   float* out) {
  __m256 acc[NV];
  for (int j = 0; j < NV; ++j) acc[j] = _mm256_setzero_ps();
  float sum = 0.0f;
  for (int p = 0; p < len; ++p) {
    const float ms = ms_arr[p], vs = vs_arr[p];
    if (ms != 1.0f) {
      const __m256 vms = _mm256_set1_ps(ms);
      for (int j = 0; j < NV; ++j) acc[j] = round_f16(_mm256_mul_ps(acc[j], vms));
    }
    const __m256 vvs = _mm256_set1_ps(vs);
    const float* vp = v + p * vstride;
    for (int j = 0; j < NV; ++j) acc[j] = round_f16(_mm256_fmadd_ps(_mm256_loadu_ps(vp + 8 * j), vvs, acc[j]));
    sum = sum * ms + vs;
  }
  const __m256 inv = _mm256_set1_ps(sum == 0.0f ? 0.0f : 1.0f / sum);
  for (int j = 0; j < NV; ++j) _mm256_storeu_ps(out + 8 * j, _mm256_mul_ps(acc[j], inv));
}

// Four queries of consecutive tokens (lengths len0 .. len0 + 3) accumulated together for the
// first len0 positions (four independent rounding chains hide each other's latency), then each
// query's remaining positions.
template <int NV>
MIXQ_AVX2 void attn_f16_accumulate4(const float* const vs_arr[4], const float* const ms_arr[4], const int len[4],
                                    const float* v, int64_t vstride, float* const out[4]) {
  __m256 acc[4][NV];
  float sum[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  for (int r = 0; r < 4; ++r) {
    for (int j = 0; j < NV; ++j) acc[r][j] = _mm256_setzero_ps();
  }
  const int common = std::min(std::min(len[0], len[1]), std::min(len[2], len[3]));
  auto step = [&](int r, int p) MIXQ_AVX2 {
    const float ms = ms_arr[r][p], vs = vs_arr[r][p];
    if (ms != 1.0f) {
      const __m256 vms = _mm256_set1_ps(ms);
      for (int j = 0; j < NV; ++j) acc[r][j] = round_f16(_mm256_mul_ps(acc[r][j], vms));
    }
    const __m256 vvs = _mm256_set1_ps(vs);
    const float* vp = v + p * vstride;
    for (int j = 0; j < NV; ++j) acc[r][j] = round_f16(_mm256_fmadd_ps(_mm256_loadu_ps(vp + 8 * j), vvs, acc[r][j]));
    sum[r] = sum[r] * ms + vs;
  };
  for (int p = 0; p < common; ++p) {
    step(0, p);
    step(1, p);
    step(2, p);
    step(3, p);
  }
  for (int r = 0; r < 4; ++r) {
    for (int p = common; p < len[r]; ++p) step(r, p);
    const __m256 inv = _mm256_set1_ps(sum[r] == 0.0f ? 0.0f : 1.0f / sum[r]);
    for (int j = 0; j < NV; ++j) _mm256_storeu_ps(out[r] + 8 * j, _mm256_mul_ps(acc[r][j], inv));
  }
}

MIXQ_AVX2 void attn_f16_accumulate_any(const float* vs_arr, const float* ms_arr, int len, const float* v,
                                       int64_t vstride, int hd, float* out) {
  for (int i = 0; i < hd; ++i) out[i] = 0.0f;
  float sum = 0.0f;
  for (int p = 0; p < len; ++p) {
    const float ms = ms_arr[p], vs = vs_arr[p];
    const __m256 vms = _mm256_set1_ps(ms), vvs = _mm256_set1_ps(vs);
    const float* vp = v + p * vstride;
    for (int i = 0; i < hd; i += 8) {
      __m256 a = _mm256_loadu_ps(out + i);
      if (ms != 1.0f) a = round_f16(_mm256_mul_ps(a, vms));
      _mm256_storeu_ps(out + i, round_f16(_mm256_fmadd_ps(_mm256_loadu_ps(vp + i), vvs, a)));
    }
    sum = sum * ms + vs;
  }
  const float inv = sum == 0.0f ? 0.0f : 1.0f / sum;
  for (int i = 0; i < hd; ++i) out[i] *= inv;
}

// Scores of NQ queries (F16-rounded, q16: NQ rows of 256) against NB blocks of 8 positions from p0:
// s[r][p] = scale * (FMA chain over dimensions in order). Each K vector loaded once serves every
// query, and the NQ * NB chains are independent, so the FMA latency is hidden.
template <int NQ, int NB>
MIXQ_AVX2 inline void attn_score_blocks(const float* q16, const float* kt, int64_t kstride, int hd, int p0, float scale,
                                        float* const s[]) {
  __m256 acc[NQ][NB];
  for (int r = 0; r < NQ; ++r) {
    for (int c = 0; c < NB; ++c) acc[r][c] = _mm256_setzero_ps();
  }
  for (int i = 0; i < hd; ++i) {
    const float* k = kt + i * kstride + p0;
    __m256 kv[NB];
    for (int c = 0; c < NB; ++c) kv[c] = _mm256_loadu_ps(k + 8 * c);
    for (int r = 0; r < NQ; ++r) {
      const __m256 qi = _mm256_broadcast_ss(q16 + 256 * r + i);
      for (int c = 0; c < NB; ++c) acc[r][c] = _mm256_fmadd_ps(qi, kv[c], acc[r][c]);
    }
  }
  const __m256 vscale = _mm256_set1_ps(scale);
  for (int r = 0; r < NQ; ++r) {
    for (int c = 0; c < NB; ++c) _mm256_storeu_ps(s[r] + p0 + 8 * c, _mm256_mul_ps(acc[r][c], vscale));
  }
}

// s[r][p] for p < len (rounded up to 8; kt readable that far), NQ queries (1 or 4) at once.
template <int NQ>
MIXQ_AVX2 void attn_scores_f16(const float* const q[], const float* kt, int64_t kstride, int hd, int len, float scale,
                               float* const s[]) {
  alignas(32) float q16[NQ * 256];
  for (int r = 0; r < NQ; ++r) {
    for (int i = 0; i < hd; i += 8) _mm256_store_ps(q16 + 256 * r + i, round_f16(_mm256_loadu_ps(q[r] + i)));
  }
  constexpr int kBlocks = NQ == 1 ? 8 : 2;  // 8 chains either way
  int p0 = 0;
  for (; p0 + 8 * kBlocks <= len; p0 += 8 * kBlocks) attn_score_blocks<NQ, kBlocks>(q16, kt, kstride, hd, p0, scale, s);
  for (; p0 < len; p0 += 8) attn_score_blocks<NQ, 1>(q16, kt, kstride, hd, p0, scale, s);
}

// From the scores s[p] (p < len): the running maximum and each step's two factors (ms rescales the
// accumulator on a new maximum, vs weighs the value), whose exponentials are vectorized too; only
// the F16-rounded accumulation stays sequential.
MIXQ_AVX2 void attn_f16_factors(int len, float* s, float* f) {
  // Positions that raise the maximum get ms = exp(old - new), vs = 1; others ms = 1 and
  // vs = exp(s - max). Exponent arguments first, then one vector pass each.
  // The running maximum m_p = max(m_{p-1}, s_p) in vectors (a prefix maximum per 8 positions,
  // carried over): both cases of the step are then ms = exp(m_{p-1} - m_p) and vs = exp(s_p - m_p)
  // (a new maximum gives vs = exp(0); an old one ms = exp(0)), the same values as the branches below.
  float m = -INFINITY;
  int p = 0;
  {
    const __m256 ninf = _mm256_set1_ps(-INFINITY);
    const __m256i up1 = _mm256_setr_epi32(0, 0, 1, 2, 3, 4, 5, 6), up2 = _mm256_setr_epi32(0, 0, 0, 1, 2, 3, 4, 5),
                  up4 = _mm256_setr_epi32(0, 0, 0, 0, 0, 1, 2, 3);
    __m256 carry = ninf;
    for (; p + 8 <= len; p += 8) {
      const __m256 x = _mm256_loadu_ps(s + p);
      __m256 c = _mm256_max_ps(x, _mm256_blend_ps(_mm256_permutevar8x32_ps(x, up1), ninf, 0x01));
      c = _mm256_max_ps(c, _mm256_blend_ps(_mm256_permutevar8x32_ps(c, up2), ninf, 0x03));
      c = _mm256_max_ps(c, _mm256_blend_ps(_mm256_permutevar8x32_ps(c, up4), ninf, 0x0f));
      const __m256 incl = _mm256_max_ps(c, carry);
      const __m256 prev = _mm256_blend_ps(_mm256_permutevar8x32_ps(incl, up1), carry, 0x01);
      _mm256_storeu_ps(f + p, _mm256_sub_ps(prev, incl));
      _mm256_storeu_ps(s + p, _mm256_sub_ps(x, incl));
      carry = _mm256_permutevar8x32_ps(incl, _mm256_set1_epi32(7));
    }
    m = _mm256_cvtss_f32(carry);
  }
  for (; p < len; ++p) {
    if (s[p] > m) {
      f[p] = m - s[p];
      m = s[p];
      s[p] = 0.0f;
    } else {
      f[p] = 0.0f;
      s[p] -= m;
    }
  }
  exp_inplace(s, len);
  exp_inplace(f, len);
}

MIXQ_AVX2 void attn_f16_avx2(const float* q, const float* kt, int64_t kstride, const float* v, int64_t vstride,
                             int hd, int len, float scale, float* scratch, float* out) {
  if (hd % 8 != 0 || hd > 256) {
    scalar_kernels().attn_f16(q, kt, kstride, v, vstride, hd, len, scale, scratch, out);
    return;
  }
  float* s = scratch;                      // vs
  float* f = scratch + (len + 7) / 8 * 8;  // ms
  {
    const float* qs[1] = {q};
    float* ss[1] = {s};
    attn_scores_f16<1>(qs, kt, kstride, hd, len, scale, ss);
  }
  attn_f16_factors(len, s, f);
  switch (hd / 8) {
    case 1: attn_f16_accumulate<1>(s, f, len, v, vstride, out); break;
    case 2: attn_f16_accumulate<2>(s, f, len, v, vstride, out); break;
    case 4: attn_f16_accumulate<4>(s, f, len, v, vstride, out); break;
    case 8: attn_f16_accumulate<8>(s, f, len, v, vstride, out); break;
    case 16: attn_f16_accumulate<16>(s, f, len, v, vstride, out); break;
    default: attn_f16_accumulate_any(s, f, len, v, vstride, hd, out);
  }
}

MIXQ_AVX2 void attn_f16_x4_avx2(const float* const q[4], const float* kt, int64_t kstride, const float* v,
                                int64_t vstride, int hd, const int len[4], float scale, float* scratch,
                                float* const out[4]) {
  if (hd % 8 != 0 || hd > 64) {
    for (int r = 0; r < 4; ++r) attn_f16_avx2(q[r], kt, kstride, v, vstride, hd, len[r], scale, scratch, out[r]);
    return;
  }
  const int max_len = std::max(std::max(len[0], len[1]), std::max(len[2], len[3]));
  const int stride = (max_len + 7) / 8 * 8;
  const float* vs[4];
  const float* ms[4];
  float* sc[4];
  for (int r = 0; r < 4; ++r) sc[r] = scratch + 2 * r * stride;
  // All four queries' scores over the longest length in one pass over K (each query's positions
  // past its own length are computed and ignored).
  attn_scores_f16<4>(q, kt, kstride, hd, max_len, scale, sc);
  for (int r = 0; r < 4; ++r) {
    attn_f16_factors(len[r], sc[r], sc[r] + stride);
    vs[r] = sc[r];
    ms[r] = sc[r] + stride;
  }
  switch (hd / 8) {
    case 1: attn_f16_accumulate4<1>(vs, ms, len, v, vstride, out); break;
    case 2: attn_f16_accumulate4<2>(vs, ms, len, v, vstride, out); break;
    case 4: attn_f16_accumulate4<4>(vs, ms, len, v, vstride, out); break;
    default: attn_f16_accumulate4<8>(vs, ms, len, v, vstride, out); break;
  }
}

// attn_tiled for heads of 8: all kAttnQueries queries at once (missing ones padded with empty
// queries), so each K row segment and each V row is loaded once for all of them, and the eight
// V accumulators are independent FMA chains (one query's chain is latency-bound: a head of 8 is
// one vector). Per query the operations and their order are attn_tiled_reference's.
MIXQ_AVX2 void attn_tiled_hd8(const float* const q_in[], int nq, const float* kt, int64_t kstride, const float* v,
                              int64_t vstride, const int len_in[], float scale, float* const out[]) {
  constexpr int kQ = kAttnQueries;
  const float* q[kQ];
  int len[kQ];
  int max_len = 0;
  for (int j = 0; j < kQ; ++j) {
    q[j] = q_in[j < nq ? j : 0];
    len[j] = j < nq ? len_in[j] : 0;
    max_len = std::max(max_len, len[j]);
  }
  __m256 acc[kQ];
  float m[kQ], sum[kQ];
  for (int j = 0; j < kQ; ++j) {
    acc[j] = _mm256_setzero_ps();
    m[j] = -INFINITY;
    sum[j] = 0.0f;
  }
  alignas(32) float s[kQ][kAttnTile];
  const __m256 vscale = _mm256_set1_ps(scale), ninf = _mm256_set1_ps(-INFINITY);
  for (int p0 = 0; p0 < max_len; p0 += kAttnTile) {
    // Scores (attn_scores: an FMA chain in dimension order, then the scale), every query over the
    // whole tile; positions past a query's length are ignored below.
    for (int b = 0; b < kAttnTile; b += 8) {
      __m256 kv[8];
      for (int i = 0; i < 8; ++i) kv[i] = _mm256_loadu_ps(kt + i * kstride + p0 + b);
#pragma GCC unroll 8
      for (int j = 0; j < kQ; ++j) {
        __m256 a = _mm256_setzero_ps();
        for (int i = 0; i < 8; ++i) a = _mm256_fmadd_ps(_mm256_broadcast_ss(q[j] + i), kv[i], a);
        _mm256_store_ps(s[j] + b, _mm256_mul_ps(a, vscale));
      }
    }
    int tl_max = 0;
    for (int j = 0; j < kQ; ++j) tl_max = std::max(tl_max, std::min(kAttnTile, len[j] - p0));
    for (int j = 0; j < kQ; ++j) {
      const int tl = std::min(kAttnTile, len[j] - p0);
      if (tl <= 0) {
        for (int p = 0; p < tl_max; p += 8) _mm256_store_ps(s[j] + p, _mm256_setzero_ps());
        continue;
      }
      // The tile maximum (exact in any order).
      __m256 mx = ninf;
      int p = 0;
      for (; p + 8 <= tl; p += 8) mx = _mm256_max_ps(mx, _mm256_load_ps(s[j] + p));
      float tile_max = hmax(mx);
      for (; p < tl; ++p) tile_max = std::max(tile_max, s[j][p]);
      if (tile_max > m[j]) {
        const float ms = std::exp(m[j] - tile_max);
        acc[j] = _mm256_mul_ps(acc[j], _mm256_set1_ps(ms));
        sum[j] *= ms;
        m[j] = tile_max;
      }
      sum[j] = static_cast<float>(static_cast<double>(sum[j]) + exp_sum_avx2(s[j], tl, m[j]));
      // Zero weights past the query's length, up to the tile's longest: fma(0, v, acc) leaves acc
      // as it is.
      for (int p = tl; p < tl_max; ++p) s[j][p] = 0.0f;
    }
    for (int p = 0; p < tl_max; ++p) {
      const __m256 vp = _mm256_loadu_ps(v + static_cast<int64_t>(p0 + p) * vstride);
#pragma GCC unroll 8
      for (int j = 0; j < kQ; ++j) acc[j] = _mm256_fmadd_ps(_mm256_broadcast_ss(s[j] + p), vp, acc[j]);
    }
  }
  for (int j = 0; j < nq; ++j) _mm256_storeu_ps(out[j], _mm256_mul_ps(acc[j], _mm256_set1_ps(1.0f / sum[j])));
}

MIXQ_AVX2 void attn_tiled_avx2(const float* const q[], int nq, const float* kt, int64_t kstride, const float* v,
                               int64_t vstride, int hd, const int len[], float scale, float* const out[]) {
  if (hd == 8 && nq > 1) {
    attn_tiled_hd8(q, nq, kt, kstride, v, vstride, len, scale, out);
    return;
  }
  for (int j = 0; j < nq; ++j) attn_tiled_reference(*avx2_kernels(), q[j], kt, kstride, v, vstride, hd, len[j], scale, out[j]);
}

const KernelSet kAvx2{"avx2", dot_int8_avx2, dot_f32_avx2, dot_int8_x4_avx2, dot_f32_x4_avx2, dot_f32_tile_avx2, exp_sum_avx2, attn_scores_avx2, attn_accumulate_avx2,
                      attn_f16_avx2, attn_f16_x4_avx2, attn_tiled_avx2, nullptr, nullptr};

}  // namespace

const KernelSet* avx2_kernels() {
  if (!(cpu_features().has_avx2_fma() && cpu_features().f16c)) return nullptr;
  static const KernelSet k = [] {
    KernelSet s = kAvx2;
    s.row_dot = avx2_row_dot_table();
    return s;
  }();
  return &k;
}
#else
const KernelSet* avx2_kernels() { return nullptr; }
#endif

}  // namespace mixq::kernels
