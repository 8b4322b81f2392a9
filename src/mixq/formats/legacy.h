// GGML's legacy block quants (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1): blocks of 32 values.
//
// The layouts are fixed by GGML (ggml-common.h): llama.cpp and the gguf Python package read these
// bytes, so no field may move. Scales are IEEE halves stored as raw uint16_t. Codes are split in
// halves: byte j of qs holds value j in its low nibble and value j + 16 in its high nibble, and
// the fifth bit of Q5 codes sits in qh (bit j for value j), a little-endian 32-bit mask.
#pragma once

#include <cstdint>

namespace mixq::legacy {

inline constexpr int kBlock = 32;  // values per block

struct BlockQ4_0 {
  uint16_t d;                // f16 scale: value = d * (code - 8)
  uint8_t qs[kBlock / 2];
};
static_assert(sizeof(BlockQ4_0) == 18);

struct BlockQ4_1 {
  uint16_t d;                // f16 scale
  uint16_t m;                // f16 offset: value = d * code + m
  uint8_t qs[kBlock / 2];
};
static_assert(sizeof(BlockQ4_1) == 20);

struct BlockQ5_0 {
  uint16_t d;                // value = d * (code - 16)
  uint8_t qh[4];
  uint8_t qs[kBlock / 2];
};
static_assert(sizeof(BlockQ5_0) == 22);

struct BlockQ5_1 {
  uint16_t d;
  uint16_t m;                // value = d * code + m
  uint8_t qh[4];
  uint8_t qs[kBlock / 2];
};
static_assert(sizeof(BlockQ5_1) == 24);

struct BlockQ8_0 {
  uint16_t d;                // value = d * code
  int8_t qs[kBlock];
};
static_assert(sizeof(BlockQ8_0) == 34);

struct BlockQ8_1 {
  uint16_t d;                // value = d * code
  uint16_t s;                // d * sum of the codes, so a dot with an affine type needs no pass over them
  int8_t qs[kBlock];
};
static_assert(sizeof(BlockQ8_1) == 36);

void quantize_row_q4_0(const float* x, void* dst, int64_t n, const float* importance);
void dequantize_row_q4_0(const void* src, float* y, int64_t n);
void quantize_row_q4_1(const float* x, void* dst, int64_t n, const float* importance);
void dequantize_row_q4_1(const void* src, float* y, int64_t n);
void quantize_row_q5_0(const float* x, void* dst, int64_t n, const float* importance);
void dequantize_row_q5_0(const void* src, float* y, int64_t n);
void quantize_row_q5_1(const float* x, void* dst, int64_t n, const float* importance);
void dequantize_row_q5_1(const void* src, float* y, int64_t n);
void quantize_row_q8_0(const float* x, void* dst, int64_t n, const float* importance);
void dequantize_row_q8_0(const void* src, float* y, int64_t n);
void quantize_row_q8_1(const float* x, void* dst, int64_t n, const float* importance);
void dequantize_row_q8_1(const void* src, float* y, int64_t n);

// Integer views (type_table.h, UnpackRowFn): codes as int8, one scale and offset per 16 values.
void unpack_row_q4_0(const void* src, int8_t* q, float* scale, float* offset, int64_t n);
void unpack_row_q4_1(const void* src, int8_t* q, float* scale, float* offset, int64_t n);
void unpack_row_q5_0(const void* src, int8_t* q, float* scale, float* offset, int64_t n);
void unpack_row_q5_1(const void* src, int8_t* q, float* scale, float* offset, int64_t n);
void unpack_row_q8_0(const void* src, int8_t* q, float* scale, float* offset, int64_t n);

}  // namespace mixq::legacy
