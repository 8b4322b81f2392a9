// NF4, bitsandbytes' 4-bit NormalFloat type (QLoRA), as a mixq extension format.
//
// Block of 64 values, 34 bytes: an f16 scale d (little-endian), then 32 bytes of 4-bit indices into
// kLevels; value = kLevels[index] * d. Byte j holds value 2j in its HIGH nibble and value 2j + 1 in
// its low nibble: bitsandbytes packs in that order, so a block's code bytes can be handed to its
// kernels unchanged (bitsandbytes keeps the scale apart, as f32 absmax; here it is f16 in the block).
//
// bitsandbytes stores d = absmax of the block. mixq's quantizer also tries smaller and negative
// scales (the table is not symmetric, so -d with mirrored indices is a different grid) and keeps
// the one with the least, importance-weighted, squared error; decoding is the same multiply.
#pragma once

#include "mixq/formats/calibration.h"

#include <array>
#include <cstdint>

namespace mixq::nf4 {

// bitsandbytes' NF4 levels (csrc/kernels.cu), ascending: quantiles of N(0, 1) normalized to [-1, 1]
// with an exact zero.
inline constexpr std::array<float, 16> kLevels = {
    -1.0f,
    -0.6961928009986877f,
    -0.5250730514526367f,
    -0.39491748809814453f,
    -0.28444138169288635f,
    -0.18477343022823334f,
    -0.09105003625154495f,
    0.0f,
    0.07958029955625534f,
    0.16093020141124725f,
    0.24611230194568634f,
    0.33791524171829224f,
    0.44070982933044434f,
    0.5626170039176941f,
    0.7229568362236023f,
    1.0f,
};

inline constexpr int kBlock = 64;
inline constexpr int kZeroIndex = 7;

struct BlockNF4 {
  uint16_t d;
  uint8_t qs[kBlock / 2];
};
static_assert(sizeof(BlockNF4) == 34);

void quantize_row_nf4(const float* x, void* dst, int64_t n, const float* importance);
void dequantize_row_nf4(const void* src, float* y, int64_t n);
// With a --calib range choice (formats/calibration.h).
void quantize_row_nf4_calib(const float* x, void* dst, int64_t n, const float* importance, const Calibration& c);

}  // namespace mixq::nf4
