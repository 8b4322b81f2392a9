// K-quants (Q2_K .. Q6_K, Q8_K): super-blocks of 256 values, GGML's exact byte layouts.
//
// The layouts are fixed by GGML (ggml-common.h) and must not change: llama.cpp and the gguf
// Python package read these bytes. Each type's quantizer, dequantizer and (later) reference dot
// live in this folder: affine types (scale + minimum: Q2_K, Q4_K, Q5_K) share affine_search,
// symmetric types (Q3_K, Q6_K) share symmetric_search.
#pragma once

#include <cstdint>

namespace mixq::kq {

inline constexpr int kSuperBlock = 256;   // values per super-block
inline constexpr int kScaleBytes = 12;    // packed 6-bit scales and minimums of Q4_K / Q5_K

struct BlockQ2K {
  uint8_t scales[kSuperBlock / 16];  // per 16 values: low nibble scale, high nibble minimum
  uint8_t qs[kSuperBlock / 4];       // 2-bit codes
  uint16_t d;                        // f16 super-scale for the scales
  uint16_t dmin;                     // f16 super-scale for the minimums
};
static_assert(sizeof(BlockQ2K) == 84);

struct BlockQ3K {
  uint8_t hmask[kSuperBlock / 8];  // high bit of each 3-bit code
  uint8_t qs[kSuperBlock / 4];     // low 2 bits of each code
  uint8_t scales[12];              // 16 signed 6-bit scales, packed
  uint16_t d;                      // f16 super-scale
};
static_assert(sizeof(BlockQ3K) == 110);

struct BlockQ4K {
  uint16_t d;                      // f16 super-scale for the scales
  uint16_t dmin;                   // f16 super-scale for the minimums
  uint8_t scales[kScaleBytes];     // 8 scales and 8 minimums, 6 bits each
  uint8_t qs[kSuperBlock / 2];     // 4-bit codes
};
static_assert(sizeof(BlockQ4K) == 144);

struct BlockQ5K {
  uint16_t d;
  uint16_t dmin;
  uint8_t scales[kScaleBytes];
  uint8_t qh[kSuperBlock / 8];     // fifth bit of each code
  uint8_t qs[kSuperBlock / 2];     // low 4 bits of each code
};
static_assert(sizeof(BlockQ5K) == 176);

struct BlockQ6K {
  uint8_t ql[kSuperBlock / 2];     // low 4 bits of each code
  uint8_t qh[kSuperBlock / 4];     // high 2 bits of each code
  int8_t scales[kSuperBlock / 16]; // 8-bit scale per 16 values
  uint16_t d;                      // f16 super-scale
};
static_assert(sizeof(BlockQ6K) == 210);

struct BlockQ8K {
  float d;
  int8_t qs[kSuperBlock];
  int16_t bsums[kSuperBlock / 16];
};
static_assert(sizeof(BlockQ8K) == 292);

void quantize_row_q2_k(const float* x, void* dst, int64_t n, const float* importance);
void dequantize_row_q2_k(const void* src, float* y, int64_t n);
void quantize_row_q3_k(const float* x, void* dst, int64_t n, const float* importance);
void dequantize_row_q3_k(const void* src, float* y, int64_t n);
void quantize_row_q4_k(const float* x, void* dst, int64_t n, const float* importance);
void dequantize_row_q4_k(const void* src, float* y, int64_t n);
void quantize_row_q5_k(const float* x, void* dst, int64_t n, const float* importance);
void dequantize_row_q5_k(const void* src, float* y, int64_t n);
void quantize_row_q6_k(const float* x, void* dst, int64_t n, const float* importance);
void dequantize_row_q6_k(const void* src, float* y, int64_t n);

// Integer views (type_table.h, UnpackRowFn): codes as int8, one scale and offset per 16 values.
// The dequantizers are written on top of them (dequantize_via_view), so the two cannot disagree.
void unpack_row_q2_k(const void* src, int8_t* q, float* scale, float* offset, int64_t n);
void unpack_row_q3_k(const void* src, int8_t* q, float* scale, float* offset, int64_t n);
void unpack_row_q4_k(const void* src, int8_t* q, float* scale, float* offset, int64_t n);
void unpack_row_q5_k(const void* src, int8_t* q, float* scale, float* offset, int64_t n);
void unpack_row_q6_k(const void* src, int8_t* q, float* scale, float* offset, int64_t n);
void unpack_row_q8_k(const void* src, int8_t* q, float* scale, float* offset, int64_t n);

// value = scale * code (+ offset for the affine types), one super-block at a time: ggml's
// operations, in ggml's order (the files that instantiate this build with -ffp-contract=off).
template <class Block, bool kAffine>
void dequantize_via_view(void (*unpack)(const void*, int8_t*, float*, float*, int64_t), const void* src, float* y,
                         int64_t n) {
  int8_t q[kSuperBlock];
  float scale[kSuperBlock / 16], offset[kSuperBlock / 16];
  const auto* in = static_cast<const unsigned char*>(src);
  for (int64_t b = 0; b < n / kSuperBlock; ++b, y += kSuperBlock) {
    unpack(in + b * sizeof(Block), q, scale, offset, kSuperBlock);
    for (int i = 0; i < kSuperBlock; ++i) {
      const float v = scale[i / 16] * static_cast<float>(q[i]);
      y[i] = kAffine ? v + offset[i / 16] : v;
    }
  }
}
void quantize_row_q8_k(const float* x, void* dst, int64_t n, const float* importance);
void dequantize_row_q8_k(const void* src, float* y, int64_t n);

}  // namespace mixq::kq
