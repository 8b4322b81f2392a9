#include "mixq/formats/float.h"

#include <cstring>

#include "mixq/formats/half.h"

namespace mixq::fl {

// Importance weights do not matter to these types: each value is rounded on its own.
void quantize_row_f32(const float* x, void* dst, int64_t n, const float*) {
  std::memcpy(dst, x, static_cast<size_t>(n) * sizeof(float));
}
void dequantize_row_f32(const void* src, float* y, int64_t n) {
  std::memcpy(y, src, static_cast<size_t>(n) * sizeof(float));
}

void quantize_row_f16(const float* x, void* dst, int64_t n, const float*) {
  auto* out = static_cast<uint16_t*>(dst);
  for (int64_t i = 0; i < n; ++i) out[i] = fp32_to_fp16(x[i]);
}
void dequantize_row_f16(const void* src, float* y, int64_t n) {
  const auto* in = static_cast<const uint16_t*>(src);
  for (int64_t i = 0; i < n; ++i) y[i] = fp16_to_fp32(in[i]);
}

void quantize_row_bf16(const float* x, void* dst, int64_t n, const float*) {
  auto* out = static_cast<uint16_t*>(dst);
  for (int64_t i = 0; i < n; ++i) out[i] = fp32_to_bf16(x[i]);
}
void dequantize_row_bf16(const void* src, float* y, int64_t n) {
  const auto* in = static_cast<const uint16_t*>(src);
  for (int64_t i = 0; i < n; ++i) y[i] = bf16_to_fp32(in[i]);
}

// Reading through memcpy: tensor data is only guaranteed aligned to general.alignment.
template <typename T>
static void widen(const void* src, float* y, int64_t n) {
  const auto* bytes = static_cast<const unsigned char*>(src);
  for (int64_t i = 0; i < n; ++i) {
    T v;
    std::memcpy(&v, bytes + i * sizeof(T), sizeof(T));
    y[i] = static_cast<float>(v);
  }
}
void dequantize_row_f64(const void* src, float* y, int64_t n) { widen<double>(src, y, n); }
void dequantize_row_i8(const void* src, float* y, int64_t n) { widen<int8_t>(src, y, n); }
void dequantize_row_i16(const void* src, float* y, int64_t n) { widen<int16_t>(src, y, n); }
void dequantize_row_i32(const void* src, float* y, int64_t n) { widen<int32_t>(src, y, n); }

}  // namespace mixq::fl
