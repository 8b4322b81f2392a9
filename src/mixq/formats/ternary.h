// GGML's ternary types TQ1_0 and TQ2_0 (BitNet b1.58 / TriLM weights): super-blocks of 256
// values in {-1, 0, +1} times one f16 scale.
//
// TQ2_0 stores each trit in 2 bits (code = trit + 1). TQ1_0 packs 5 trits per byte as a base-3
// number with the first trit most significant, stored as ceil(number * 256 / 243) so that trit n is
// recovered with a multiply and a shift: ((byte * 3^n) mod 256) * 3 >> 8. Its 48 qs bytes hold the
// first 240 values (32 bytes x 5 trits, then 16 bytes x 5 trits), the 4 qh bytes the last 16 (4
// trits each, padded with a zero fifth trit).
#pragma once

#include <cstdint>

namespace mixq::ternary {

inline constexpr int kBlock = 256;

struct BlockTQ1_0 {
  uint8_t qs[(kBlock - 4 * kBlock / 64) / 5];  // 48 bytes, 5 trits each
  uint8_t qh[kBlock / 64];                      // 4 bytes, 4 trits each
  uint16_t d;
};
static_assert(sizeof(BlockTQ1_0) == 54);

struct BlockTQ2_0 {
  uint8_t qs[kBlock / 4];  // 2 bits per value: byte j of each 32-byte half holds values j + 32 n
  uint16_t d;
};
static_assert(sizeof(BlockTQ2_0) == 66);

void quantize_row_tq1_0(const float* x, void* dst, int64_t n, const float* importance);
void dequantize_row_tq1_0(const void* src, float* y, int64_t n);
void quantize_row_tq2_0(const float* x, void* dst, int64_t n, const float* importance);
void dequantize_row_tq2_0(const void* src, float* y, int64_t n);
// Integer views (type_table.h, UnpackRowFn).
void unpack_row_tq1_0(const void* src, int8_t* q, float* scale, float* offset, int64_t n);
void unpack_row_tq2_0(const void* src, int8_t* q, float* scale, float* offset, int64_t n);

}  // namespace mixq::ternary
