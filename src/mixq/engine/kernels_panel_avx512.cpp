// The prefill panel kernel, AVX-512 VNNI (kernels.h, PackedPanel / PanelFn).
//
// Why a panel: the integer-view kernel (dot_int8_x4) spends per 64 codes and per (row, token) a sign
// fix-up, a dpbusd, a conversion, a factor shuffle and an FMA, so the 64 multiply-adds of one
// vpdpbusd cost six vector operations. In a panel the 16 lanes of one dpbusd belong to 16 rows:
// a token's 4 activation bytes are broadcast (one load) and meet 4 codes of each of the 16 rows
// (one 64-byte load shared by every token of the tile); the int32 lanes then sum a whole group (8
// dpbusd for 32 values) before the one conversion and the FMA with scale * dx that the group needs.
// Register tile: np (1 or 2) panels x NT (1 to 4) tokens, each with an int32 group sum and an F32
// accumulator.
//
// Exactness: the activation enters as code + 128 (unsigned, as vpdpbusd's first operand must be),
// and each group's sum starts at the panel's bias, -128 * the row's code sum over the group, so the
// int32 lane ends at exactly sum(code * activation code) (|sum| < 2^20: no overflow). Per group the
// result is (scale * dx) * sum + offset * dsum, the reference's terms; only their F32 order differs.
#include "mixq/engine/kernels.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define MIXQ_HAVE_AVX512_PANEL 1
#endif

#include <cstring>

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace mixq::kernels {

#ifdef MIXQ_HAVE_AVX512_PANEL
namespace {

#define MIXQ_PANEL __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")))

MIXQ_PANEL inline __m512i broadcast4(const uint8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return _mm512_set1_epi32(v);
}

template <int NP, int NT, int G>
MIXQ_PANEL void panel_tile(const PackedPanel* const panels[2], const PreparedActs& a, int t0, float* y, int64_t ldy) {
  constexpr int P = kPanelRows;
  const int64_t groups = a.n_pad / G;
  const uint8_t* au[NT];
  const float* dx[NT];
  const float* ds[NT];
  for (int j = 0; j < NT; ++j) {
    au[j] = a.qu_row(t0 + j);
    dx[j] = a.dx_row(t0 + j);
    ds[j] = a.dsum_row(t0 + j);
  }
  const int8_t* wq[NP];
  const float* sc[NP];
  const float* of[NP];
  const int32_t* bs[NP];
  bool any_offset = false;
  for (int p = 0; p < NP; ++p) {
    wq[p] = panels[p]->q.data();
    sc[p] = panels[p]->scale.data();
    of[p] = panels[p]->has_offset ? panels[p]->offset.data() : nullptr;
    bs[p] = panels[p]->bias.data();
    any_offset = any_offset || of[p] != nullptr;
  }
  __m512 acc[NP][NT];
  for (int p = 0; p < NP; ++p) {
    for (int j = 0; j < NT; ++j) acc[p][j] = _mm512_setzero_ps();
  }
  for (int64_t g = 0; g < groups; ++g) {
    __m512i s[NP][NT];
    for (int p = 0; p < NP; ++p) {
      const __m512i b = _mm512_loadu_si512(bs[p] + g * P);
      for (int j = 0; j < NT; ++j) s[p][j] = b;
    }
    const int64_t i0 = g * G;
#pragma GCC unroll 8
    for (int c = 0; c < G / 4; ++c) {
      __m512i w[NP];
      for (int p = 0; p < NP; ++p) {
        w[p] = _mm512_loadu_si512(wq[p] + (i0 + 4 * c) * P);
        __asm__("" : "+v"(w[p]));  // one load per panel and chunk, not one folded into each dpbusd
      }
      for (int j = 0; j < NT; ++j) {
        const __m512i av = broadcast4(au[j] + i0 + 4 * c);
        for (int p = 0; p < NP; ++p) s[p][j] = _mm512_dpbusd_epi32(s[p][j], av, w[p]);
      }
    }
    const int64_t h = i0 / 16;  // the group's first 16-group (dx and dsum are kept per 16)
    for (int p = 0; p < NP; ++p) {
      const __m512 scale = _mm512_loadu_ps(sc[p] + g * P);
      for (int j = 0; j < NT; ++j) {
        acc[p][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s[p][j]), _mm512_mul_ps(scale, _mm512_set1_ps(dx[j][h])), acc[p][j]);
      }
    }
    if (any_offset) {
      for (int p = 0; p < NP; ++p) {
        if (of[p] == nullptr) continue;
        const __m512 off = _mm512_loadu_ps(of[p] + g * P);
        for (int j = 0; j < NT; ++j) {
          const float d = G == 32 ? ds[j][h] + ds[j][h + 1] : ds[j][h];
          acc[p][j] = _mm512_fmadd_ps(off, _mm512_set1_ps(d), acc[p][j]);
        }
      }
    }
  }
  for (int p = 0; p < NP; ++p) {
    const auto mask = static_cast<__mmask16>((1u << panels[p]->rows) - 1);
    for (int j = 0; j < NT; ++j) _mm512_mask_storeu_ps(y + j * ldy + P * p, mask, acc[p][j]);
  }
}

template <int NP, int G>
MIXQ_PANEL void panel_tokens(const PackedPanel* const panels[2], const PreparedActs& a, int t0, int nt, float* y,
                             int64_t ldy) {
  switch (nt) {
    case 1: panel_tile<NP, 1, G>(panels, a, t0, y, ldy); break;
    case 2: panel_tile<NP, 2, G>(panels, a, t0, y, ldy); break;
    case 3: panel_tile<NP, 3, G>(panels, a, t0, y, ldy); break;
    default: panel_tile<NP, 4, G>(panels, a, t0, y, ldy); break;
  }
}

MIXQ_PANEL void panel_int8_avx512(const PackedPanel* const panels[2], int np, const PreparedActs& a, int t0, int nt,
                                  float* y, int64_t ldy) {
  // Both panels must group alike to share a loop; otherwise each runs alone.
  if (np == 2 && panels[0]->group != panels[1]->group) {
    panel_int8_avx512(panels, 1, a, t0, nt, y, ldy);
    const PackedPanel* second[2] = {panels[1], panels[1]};
    panel_int8_avx512(second, 1, a, t0, nt, y + kPanelRows, ldy);
    return;
  }
  const bool g32 = panels[0]->group == 32;
  if (np == 2) {
    g32 ? panel_tokens<2, 32>(panels, a, t0, nt, y, ldy) : panel_tokens<2, 16>(panels, a, t0, nt, y, ldy);
  } else {
    g32 ? panel_tokens<1, 32>(panels, a, t0, nt, y, ldy) : panel_tokens<1, 16>(panels, a, t0, nt, y, ldy);
  }
}

}  // namespace

PanelFn avx512_panel_kernel() { return panel_int8_avx512; }
#else
PanelFn avx512_panel_kernel() { return nullptr; }
#endif

}  // namespace mixq::kernels
