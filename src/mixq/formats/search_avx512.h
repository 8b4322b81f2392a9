// AVX-512 versions of the quantizers' scale searches (see search_isa.h). Each reproduces its
// reference (named beside it) bit for bit; call only where search::avx512_available().
#pragma once

#include <cstddef>
#include <cstdint>

namespace mixq::search {

// legacy.cpp fit_scale over a row of n values (n a multiple of 32; w: n weights, or null for all
// ones): block b decoded
// as d[b] * q, q in [lo, hi]; the seeds are (end -/+ offset) / extreme for end in {lo, hi} and the
// n_offsets offsets (2 * n_offsets <= 8), then refine_rounds of least squares. d[b] is f16-rounded.
void fit_scale_row_avx512(const float* x, const float* w, int64_t n, int lo, int hi, const float* offsets,
                          int n_offsets, int refine_rounds, int* q, float* d);
// The same search writing block b's 32 codes as bytes at q8 + b * stride (q8_0's layout: each
// block's codes follow its scale), without the ints in between.
void fit_scale_row_bytes_avx512(const float* x, const float* w, int64_t n, int lo, int hi, const float* offsets,
                                int n_offsets, int refine_rounds, int8_t* q8, ptrdiff_t stride, float* d);

// The legacy layouts' packing of 32 codes (plus bias): value j's low nibble in nibbles[j % 16]
// (low half for j < 16), bit 4 of value j in bit j of the little-endian high_bits (when not null).
void pack_nibbles_32_avx512(const int* q, int bias, uint8_t* nibbles, uint8_t* high_bits);

// iq4.cpp fit_group: the least-squares scale of 32 values on the IQ4 grid. nearest_value[512] is
// iq4.cpp's table of the nearest grid value per half-unit slot; the seeds map the extreme value to
// grid_lo - offset and grid_hi + offset (2 * n_offsets <= 16).
float iq4_fit_group_avx512(const float* x, const float* w, const float* nearest_value, int grid_lo, int grid_hi,
                           const float* offsets, int n_offsets, int refine_rounds);

// kquants/symmetric_search.cpp quantize_symmetric_super_block after its weights are prepared
// (w: 256 weights, each sub-block's sum positive): 16 sub-blocks of 16 values decoded as
// (d * sc[j]) * code, code in [code_lo, code_hi], |sc[j]| <= scale_max. seed_offsets (n_seeds <= 8)
// and the round counts are the reference's.
void symmetric_super_block_avx512(const float* x, const float* w, int code_lo, int code_hi, int scale_max,
                                  const float* seed_offsets, int n_seeds, int refine_rounds, int super_rounds,
                                  uint16_t* d, int8_t* sc, int8_t* codes);

// kquants/affine_search.cpp quantize_super_block<32> (Q4_K, Q5_K) after its weights are prepared:
// 8 sub-blocks of 32 decoded as (d * sc[j]) * code - (dmin * m[j]). The parameters are the
// reference's constants, passed so that there is one definition of each.
struct AffineSearchParams {
  int code_max, scale_max;
  float grid_half_width;
  int grid_steps, refine_steps, exact_scale_below, super_refine_steps;
};
void affine_super_block_32_avx512(const float* x, const float* w, const AffineSearchParams& p, uint16_t* d,
                                  uint16_t* dmin, uint8_t* sc, uint8_t* m, uint8_t* codes);

}  // namespace mixq::search
