// AVX2 versions of prepare_activations' block quantizers (kernels.cpp: quantize_q8_0 and
// quantize_q8_k, ggml's quantize_row_q8_0_ref / quantize_row_q8_K_ref), bit for bit: the same
// maximum, the same divisions and reciprocals in scalar code, the same products per value (one
// vector multiply rounds exactly as the scalar multiply does) and the same rounding (half away from
// zero as trunc(v + copysign(0.49999997, v)) for Q8_0; to nearest even, capped at 127, for Q8_K).
// A prompt quantizes every product's input for every token, which made the scalar loops several
// percent of prefill. Blocks with a non-finite value, or whose reciprocal scale overflows, are
// left to the scalar code (its saturation rules); so are partial blocks.
#include "mixq/engine/kernels.h"
#include "mixq/util/cpu_features.h"

#include <cmath>
#include <limits>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define MIXQ_HAVE_AVX2_ACTS 1
#endif

namespace mixq::kernels {

#ifdef MIXQ_HAVE_AVX2_ACTS
namespace {

#define MIXQ_ACT __attribute__((target("avx2,fma,f16c")))

MIXQ_ACT inline float hmax(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_movehdup_ps(m));
  return _mm_cvtss_f32(m);
}
MIXQ_ACT inline int32_t hsum_epi32(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(1, 0, 3, 2)));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(2, 3, 0, 1)));
  return _mm_cvtsi128_si32(s);
}
// Four vectors of 8 int32 codes (|code| <= 127) -> 32 bytes in value order.
MIXQ_ACT inline void store_codes(const __m256i c[4], int8_t* q) {
  const __m256i w = _mm256_packs_epi16(_mm256_packs_epi32(c[0], c[1]), _mm256_packs_epi32(c[2], c[3]));
  const __m256i ordered = _mm256_permutevar8x32_epi32(w, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(q), ordered);
}
// |x| of 8 values, and whether all are finite.
MIXQ_ACT inline __m256 abs8(__m256 v) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), v); }
MIXQ_ACT inline bool all_finite(__m256 a) {
  return _mm256_movemask_ps(_mm256_cmp_ps(a, _mm256_set1_ps(std::numeric_limits<float>::infinity()), _CMP_LT_OQ)) == 0xff;
}

MIXQ_ACT bool q8_0_block_avx2(const float* x, int8_t* q, float* d_out, int32_t sums[2]) {
  __m256 v[4];
  __m256 amax = _mm256_setzero_ps();
  for (int k = 0; k < 4; ++k) {
    v[k] = _mm256_loadu_ps(x + 8 * k);
    const __m256 a = abs8(v[k]);
    if (!all_finite(a)) return false;
    amax = _mm256_max_ps(amax, a);
  }
  const float d = hmax(amax) / 127.0f;
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  if (!std::isfinite(id)) return false;
  const __m256 vid = _mm256_set1_ps(id), sign = _mm256_set1_ps(-0.0f), half = _mm256_set1_ps(0.49999997f);
  __m256i c[4];
  for (int k = 0; k < 4; ++k) {
    const __m256 p = _mm256_mul_ps(v[k], vid);
    const __m256 r = _mm256_round_ps(_mm256_add_ps(p, _mm256_or_ps(_mm256_and_ps(p, sign), half)),
                                     _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
    c[k] = _mm256_cvttps_epi32(r);
  }
  store_codes(c, q);
  sums[0] = hsum_epi32(_mm256_add_epi32(c[0], c[1]));
  sums[1] = hsum_epi32(_mm256_add_epi32(c[2], c[3]));
  *d_out = d;
  return true;
}

MIXQ_ACT bool q8_k_block_avx2(const float* x, int8_t* q, float* d_out, int32_t sums[16]) {
  __m256 amax = _mm256_setzero_ps();
  for (int k = 0; k < 32; ++k) {
    const __m256 a = abs8(_mm256_loadu_ps(x + 8 * k));
    if (!all_finite(a)) return false;
    amax = _mm256_max_ps(amax, a);
  }
  const float m = hmax(amax);
  if (m == 0.0f) {
    for (int i = 0; i < 256; ++i) q[i] = 0;
    for (int g = 0; g < 16; ++g) sums[g] = 0;
    *d_out = 0.0f;
    return true;
  }
  int first = 0;  // the first value of largest magnitude, as the scalar search keeps it
  while (std::fabs(x[first]) != m) ++first;
  const float iscale = -127.0f / x[first];
  const __m256 vs = _mm256_set1_ps(iscale), cap = _mm256_set1_ps(127.0f);
  for (int b = 0; b < 8; ++b) {
    __m256i c[4];
    for (int k = 0; k < 4; ++k) {
      const __m256 r = _mm256_round_ps(_mm256_mul_ps(vs, _mm256_loadu_ps(x + 32 * b + 8 * k)),
                                       _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      c[k] = _mm256_cvttps_epi32(_mm256_min_ps(r, cap));
    }
    store_codes(c, q + 32 * b);
    sums[2 * b] = hsum_epi32(_mm256_add_epi32(c[0], c[1]));
    sums[2 * b + 1] = hsum_epi32(_mm256_add_epi32(c[2], c[3]));
  }
  *d_out = 1.0f / iscale;
  return true;
}

bool cpu_has_avx2() { return cpu_features().has_avx2_fma(); }

}  // namespace

const ActBlockQuantizers* avx2_act_block_quantizers() {
  static const ActBlockQuantizers q{q8_0_block_avx2, q8_k_block_avx2};
  static const ActBlockQuantizers* p = cpu_has_avx2() ? &q : nullptr;
  return p;
}
#else
const ActBlockQuantizers* avx2_act_block_quantizers() { return nullptr; }
#endif

}  // namespace mixq::kernels
