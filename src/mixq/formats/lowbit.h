// mixq's low-bit affine formats LB3 and LB2: groups of 64 values, each with an f16 scale s and an
// f16 zero-point z (in code units, not necessarily an integer); value = (q - z) * s.
//
// Decoding computes q * s - z * s: both products are exact in F32 (f16 times f16, f16 times a
// code below 8), so the value is rounded once, the same as (q - z) * s wherever q - z is exact, and
// it equals the engine's integer view (q, scale s, offset -z * s) bit for bit.
//
// LB3, 28 bytes per group: s, z (little-endian f16), then 24 bytes of 3-bit codes. Every 8 codes
// fill 3 bytes read as one little-endian 24-bit word; code i of the 8 sits in bits 3i .. 3i + 2.
// LB2, 20 bytes per group: s, z, then 16 bytes of 2-bit codes, 4 per byte, code i in bits 2i, 2i + 1.
// Both keep codes in value order (byte k of LB2 holds values 4k .. 4k + 3), so a kernel can unpack
// a group with shifts and masks and no shuffles.
//
// The quantizer starts from the group's min/max, tries ranges shrunk at either end, and re-fits
// (s, z) by least squares for the codes of the best few, keeping what has the least
// (importance-weighted, when given) squared error after f16 rounding.
#pragma once

#include "mixq/formats/calibration.h"

#include <cstdint>

namespace mixq::lowbit {

inline constexpr int kGroup = 64;

struct BlockLB3 {
  uint16_t s;
  uint16_t z;
  uint8_t qs[kGroup * 3 / 8];
};
static_assert(sizeof(BlockLB3) == 28);

struct BlockLB2 {
  uint16_t s;
  uint16_t z;
  uint8_t qs[kGroup / 4];
};
static_assert(sizeof(BlockLB2) == 20);

// 8 codes (each < 8) into 3 bytes, and back.
inline void pack8x3(const uint8_t* q, uint8_t* out) {
  uint32_t word = 0;
  for (int i = 0; i < 8; ++i) word |= static_cast<uint32_t>(q[i] & 7u) << (3 * i);
  out[0] = static_cast<uint8_t>(word);
  out[1] = static_cast<uint8_t>(word >> 8);
  out[2] = static_cast<uint8_t>(word >> 16);
}
inline void unpack8x3(const uint8_t* in, uint8_t* q) {
  const uint32_t word = in[0] | (static_cast<uint32_t>(in[1]) << 8) | (static_cast<uint32_t>(in[2]) << 16);
  for (int i = 0; i < 8; ++i) q[i] = static_cast<uint8_t>((word >> (3 * i)) & 7u);
}

// 4 codes (each < 4) into one byte, and back.
inline uint8_t pack4x2(const uint8_t* q) {
  return static_cast<uint8_t>((q[0] & 3u) | ((q[1] & 3u) << 2) | ((q[2] & 3u) << 4) | ((q[3] & 3u) << 6));
}
inline void unpack4x2(uint8_t byte, uint8_t* q) {
  for (int i = 0; i < 4; ++i) q[i] = static_cast<uint8_t>((byte >> (2 * i)) & 3u);
}

void quantize_row_lb3(const float* x, void* dst, int64_t n, const float* importance);
void dequantize_row_lb3(const void* src, float* y, int64_t n);
void quantize_row_lb2(const float* x, void* dst, int64_t n, const float* importance);
void dequantize_row_lb2(const void* src, float* y, int64_t n);
// The engine's integer views (type_table.h, UnpackRowFn): codes 0..7 / 0..3, scale s, offset -z * s.
void unpack_row_lb3(const void* src, int8_t* q, float* scale, float* offset, int64_t n);
void unpack_row_lb2(const void* src, int8_t* q, float* scale, float* offset, int64_t n);
// With a --calib range choice (formats/calibration.h).
void quantize_row_lb3_calib(const float* x, void* dst, int64_t n, const float* importance, const Calibration& c);
// With a --calib range choice (formats/calibration.h).
void quantize_row_lb2_calib(const float* x, void* dst, int64_t n, const float* importance, const Calibration& c);

}  // namespace mixq::lowbit
