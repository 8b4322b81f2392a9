// Four-row interleaved decode kernels, AVX-512 (F, BW, VL, VNNI) on engine/repack.h's layouts.
//
// Per interleaved block (32 values of 4 rows): 128-bit lane r of a ZMM holds row r's codes of 16
// values as unsigned bytes (code + bias), the activation's 16 codes broadcast to the four lanes,
// and vpdpbusd leaves in int32 lane 4 r + j the sum over values 4 j .. 4 j + 3 and 16 + 4 j ..
// 16 + 4 j + 3 (two instructions, low and high half). The lane starts at -bias * (those eight
// activation codes' sum), made once per call from ActRow::nsum4, so it holds the exact signed
// sum. Then one conversion and one FMA per block with the factors d[r] * dx spread over each row's
// four lanes; the four lanes of a row are added at the end.
#include <array>
#include <cstring>
#include <vector>

#include "mixq/engine/repack.h"
#include "mixq/formats/iq4.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define MIXQ_HAVE_AVX512_REPACK 1
#endif

#if defined(__GNUC__) && !defined(__clang__)  // GCC 12's intrinsics headers (undefined upper lanes)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace mixq::kernels {

#ifdef MIXQ_HAVE_AVX512_REPACK
namespace {

#define MIXQ_R4 __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")))

enum class Layout { kQ5_0, kQ8_0, kIQ4NL };
template <Layout L>
inline constexpr int kBlockBytes = L == Layout::kQ5_0 ? 88 : L == Layout::kQ8_0 ? 136 : 72;
template <Layout L>
inline constexpr int kBiasShift = L == Layout::kQ5_0 ? 4 : 7;

MIXQ_R4 inline __m512i bcast16(const int8_t* p) {
  return _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

// y[0..3] = the four rows' sums of a group's 16 lanes (4 per row).
MIXQ_R4 inline void store_rows(__m512 acc, float* y) {
  __m512 t = _mm512_add_ps(acc, _mm512_shuffle_ps(acc, acc, _MM_SHUFFLE(2, 3, 0, 1)));
  t = _mm512_add_ps(t, _mm512_shuffle_ps(t, t, _MM_SHUFFLE(1, 0, 3, 2)));
  _mm_storeu_ps(y, _mm512_castps512_ps128(_mm512_permutexvar_ps(_mm512_setr_epi32(0, 4, 8, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0), t)));
}

template <Layout L>
MIXQ_R4 void rowdot4(const void* groups, int64_t n, int64_t n_groups, const ActRow& act, float* y) {
  const int64_t nb = n / 32;
  // Per block, lane j of each row: -bias * (the codes' sum over values 4j..4j+3 and 16+4j..16+4j+3).
  thread_local std::vector<int32_t> start_buf;
  if (start_buf.size() < static_cast<size_t>(4 * nb)) start_buf.resize(static_cast<size_t>(4 * nb));
  int32_t* start = start_buf.data();
  for (int64_t b = 0; b < nb; ++b) {
    const __m128i s = _mm_add_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(act.nsum4 + 8 * b)),
                                    _mm_loadu_si128(reinterpret_cast<const __m128i*>(act.nsum4 + 8 * b + 4)));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(start + 4 * b), _mm_slli_epi32(s, kBiasShift<L>));
  }
  const __m512i m4 = _mm512_set1_epi8(0x0f), sixteen = _mm512_set1_epi8(16);
  [[maybe_unused]] const __m512i lut = _mm512_add_epi8(
      _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(iq4::kGrid.data()))), _mm512_set1_epi8(static_cast<char>(0x80)));
  const __m512i spread = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
  const auto* p = static_cast<const uint8_t*>(groups);
  for (int64_t g = 0; g < n_groups; ++g) {
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; ++b, p += kBlockBytes<L>) {
      __m512i lo, hi;
      if constexpr (L == Layout::kQ8_0) {
        lo = _mm512_loadu_si512(p + 8);
        hi = _mm512_loadu_si512(p + 72);
      } else {
        const __m512i raw = _mm512_loadu_si512(p + (L == Layout::kQ5_0 ? 24 : 8));
        lo = _mm512_and_si512(raw, m4);
        hi = _mm512_and_si512(_mm512_srli_epi16(raw, 4), m4);
        if constexpr (L == Layout::kQ5_0) {
          uint64_t mlo, mhi;
          std::memcpy(&mlo, p + 8, 8);
          std::memcpy(&mhi, p + 16, 8);
          lo = _mm512_mask_add_epi8(lo, _cvtu64_mask64(mlo), lo, sixteen);
          hi = _mm512_mask_add_epi8(hi, _cvtu64_mask64(mhi), hi, sixteen);
        } else {
          lo = _mm512_shuffle_epi8(lut, lo);
          hi = _mm512_shuffle_epi8(lut, hi);
        }
      }
      __m512i s = _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(start + 4 * b)));
      s = _mm512_dpbusd_epi32(s, lo, bcast16(act.q + 32 * b));
      s = _mm512_dpbusd_epi32(s, hi, bcast16(act.q + 32 * b + 16));
      const __m128 d = _mm_cvtph_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
      const __m512 f = _mm512_mul_ps(_mm512_permutexvar_ps(spread, _mm512_castps128_ps512(d)), _mm512_set1_ps(act.dx[2 * b]));
      if (b & 1) {
        acc1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), f, acc1);
      } else {
        acc0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), f, acc0);
      }
    }
    store_rows(_mm512_add_ps(acc0, acc1), y + 4 * g);
  }
}

}  // namespace

const RowDot4Fn* avx512_row_dot4_table() {
  static const auto table = [] {
    std::array<RowDot4Fn, kRowDotSlots> t{};
    t[row_dot_slot(TypeId::Q5_0)] = rowdot4<Layout::kQ5_0>;
    t[row_dot_slot(TypeId::Q8_0)] = rowdot4<Layout::kQ8_0>;
    t[row_dot_slot(TypeId::IQ4_NL)] = rowdot4<Layout::kIQ4NL>;
    return t;
  }();
  return table.data();
}
#else
const RowDot4Fn* avx512_row_dot4_table() { return nullptr; }
#endif

}  // namespace mixq::kernels
