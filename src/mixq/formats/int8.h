// mixq's INT8 weight formats.
//
// I8_ROW: symmetric, one scale per row (per output channel). A row of n values is 4 + n bytes: the
// f32 scale s (little-endian) at the start of the row, then n int8 codes q in [-127, 127];
// value = q * s with s = absmax / 127. -128 is never written, so the grid is symmetric. The scale is
// read and written with memcpy: a row of odd length leaves the next row's scale unaligned.
//
// I8_MM: asymmetric min/max in blocks of 64, 68 bytes: f16 scale d, f16 minimum m (both
// little-endian), then 64 uint8 codes; value = m + q * d. The guarantee: every value of a block
// whose range fits f16 decodes within d / 2 of the input, exactly, with no rounding slack. m is
// rounded down and d up when they are stored, so [m, m + 255 d] still covers the block; both are
// kept on multiples of the f32 spacing at the grid's magnitude, so m + q * d decodes without
// rounding (in any evaluation order, FMA or not); and each code is chosen on the decoded values
// themselves, not on a rounded quotient.
//
// Neither quantizer uses importance weights: both scales are fixed by the format's definition, and
// for a fixed grid the nearest code is already the best one for every weighting.
#pragma once

#include "mixq/formats/calibration.h"

#include <cstdint>

namespace mixq::int8 {

inline constexpr int kMinMaxBlock = 64;
inline constexpr int kRowHeaderBytes = 4;

struct BlockI8MM {
  uint16_t d;
  uint16_t m;
  uint8_t qs[kMinMaxBlock];
};
static_assert(sizeof(BlockI8MM) == 68);

void quantize_row_i8_row(const float* x, void* dst, int64_t n, const float* importance);
void dequantize_row_i8_row(const void* src, float* y, int64_t n);
void quantize_row_i8_mm(const float* x, void* dst, int64_t n, const float* importance);
void dequantize_row_i8_mm(const void* src, float* y, int64_t n);
// With a --calib range choice (formats/calibration.h).
void quantize_row_i8_row_calib(const float* x, void* dst, int64_t n, const float* importance, const Calibration& c);
// With a --calib range choice (formats/calibration.h).
void quantize_row_i8_mm_calib(const float* x, void* dst, int64_t n, const float* importance, const Calibration& c);
// Integer view (type_table.h, UnpackRowFn) of I8_ROW.
void unpack_row_i8_row(const void* src, int8_t* q, float* scale, float* offset, int64_t n);

}  // namespace mixq::int8
