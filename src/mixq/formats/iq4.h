// GGML's non-linear 4-bit types IQ4_NL and IQ4_XS.
//
// Both store 4-bit indices into one fixed 16-entry int8 grid (kGrid, GGML's kvalues_iq4nl), denser
// near zero where weights cluster. Indices are split in halves like the legacy quants: byte j of
// a 32-value group holds value j in its low nibble and value j + 16 in its high nibble.
// IQ4_NL: blocks of 32 with an f16 scale. IQ4_XS: super-blocks of 256 with an f16 super-scale and
// a 6-bit signed scale (stored + 32) per 32 values: low 4 bits in scales_l (two per byte, even
// group in the low nibble), high 2 bits in scales_h (bits 2g, 2g+1 for group g).
#pragma once

#include <array>
#include <cstdint>

namespace mixq::iq4 {

inline constexpr std::array<int8_t, 16> kGrid = {-127, -104, -83, -65, -49, -35, -22, -10,
                                                 1,    13,   25,  38,  53,  69,  89,  113};

inline constexpr int kBlockNL = 32;   // values per IQ4_NL block
inline constexpr int kBlockXS = 256;  // values per IQ4_XS super-block
inline constexpr int kGroup = 32;     // values per IQ4_XS scale

struct BlockIQ4NL {
  uint16_t d;
  uint8_t qs[kBlockNL / 2];
};
static_assert(sizeof(BlockIQ4NL) == 18);

struct BlockIQ4XS {
  uint16_t d;
  uint16_t scales_h;
  uint8_t scales_l[kBlockXS / 64];
  uint8_t qs[kBlockXS / 2];
};
static_assert(sizeof(BlockIQ4XS) == 136);

void quantize_row_iq4_nl(const float* x, void* dst, int64_t n, const float* importance);
void dequantize_row_iq4_nl(const void* src, float* y, int64_t n);
void quantize_row_iq4_xs(const float* x, void* dst, int64_t n, const float* importance);
void dequantize_row_iq4_xs(const void* src, float* y, int64_t n);
// Integer views (type_table.h, UnpackRowFn).
void unpack_row_iq4_nl(const void* src, int8_t* q, float* scale, float* offset, int64_t n);
void unpack_row_iq4_xs(const void* src, int8_t* q, float* scale, float* offset, int64_t n);

}  // namespace mixq::iq4
