// Plain storage types: F32, F16, BF16, F64 and the integer types I8..I64.
#pragma once

#include <cstdint>

namespace mixq::fl {

void quantize_row_f32(const float* x, void* dst, int64_t n, const float* importance);
void dequantize_row_f32(const void* src, float* y, int64_t n);
void quantize_row_f16(const float* x, void* dst, int64_t n, const float* importance);
void dequantize_row_f16(const void* src, float* y, int64_t n);
void quantize_row_bf16(const float* x, void* dst, int64_t n, const float* importance);
void dequantize_row_bf16(const void* src, float* y, int64_t n);
void dequantize_row_f64(const void* src, float* y, int64_t n);
void dequantize_row_i8(const void* src, float* y, int64_t n);
void dequantize_row_i16(const void* src, float* y, int64_t n);
void dequantize_row_i32(const void* src, float* y, int64_t n);

}  // namespace mixq::fl
