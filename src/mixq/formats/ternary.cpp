#include "mixq/formats/ternary.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <bit>
#include <functional>

#include "mixq/formats/block_weights.h"
#include "mixq/formats/half.h"

namespace mixq::ternary {
namespace {

constexpr std::array<uint8_t, 5> kPow3 = {1, 3, 9, 27, 81};

// Exact minimizer of sum w (x - d t)^2 over d and t in {-1, 0, 1}^256. For a fixed d the best
// trits are sign(x) where |x| > d/2 and 0 elsewhere, whatever the weights, so the nonzero set is
// always the k largest magnitudes for some k; scanning k over the sorted magnitudes with the
// least-squares d for each set finds the optimum. (ggml takes d = absmax, which rounds most values
// of a Gaussian block to zero.) Writes codes t + 1 and returns d rounded to f16.
float fit_ternary(const float* x, const float* w, uint8_t* codes) {
  // Sort keys: the bits of |x| (ordered like the magnitudes, being non-negative floats) above
  // the index.
  std::array<uint64_t, kBlock> order;
  for (int i = 0; i < kBlock; ++i) {
    order[i] = static_cast<uint64_t>(std::bit_cast<uint32_t>(std::fabs(x[i]))) << 32 | static_cast<uint64_t>(i);
  }
  std::sort(order.begin(), order.end(), std::greater<>());
  double s = 0, sw = 0, best_gain = 0, best_d = 0;
  for (const uint64_t key : order) {
    const auto i = static_cast<uint32_t>(key);
    s += static_cast<double>(w[i]) * std::fabs(x[i]);
    sw += w[i];
    if (sw > 0 && s * s / sw > best_gain) {
      best_gain = s * s / sw;
      best_d = s / sw;
    }
  }
  const float d = round_fp16(static_cast<float>(best_d));
  for (int i = 0; i < kBlock; ++i) {
    codes[i] = d > 0 && std::fabs(x[i]) > 0.5f * d ? (x[i] > 0 ? 2 : 0) : 1;
  }
  return d;
}

// The base-3 number is stored rounded up to byte precision: byte = ceil(q * 256 / 243).
uint8_t pack_trits(int q) { return static_cast<uint8_t>((q * 256 + 242) / 243); }

inline float trit_value(uint8_t byte, int n, float d) {
  const auto q = static_cast<uint8_t>(byte * kPow3[n]);
  const int code = (q * 3) >> 8;
  return static_cast<float>(code - 1) * d;
}

}  // namespace

void quantize_row_tq1_0(const float* x, void* dst, int64_t n, const float* importance) {
  auto* out = static_cast<BlockTQ1_0*>(dst);
  float w[kBlock];
  uint8_t c[kBlock];
  for (int64_t b = 0; b < n / kBlock; ++b) {
    block_weights(importance, b * kBlock, kBlock, w);
    out[b].d = fp32_to_fp16(fit_ternary(x + b * kBlock, w, c));
    for (int m = 0; m < 32; ++m) {
      int q = 0;
      for (int k = 0; k < 5; ++k) q = q * 3 + c[k * 32 + m];
      out[b].qs[m] = pack_trits(q);
    }
    for (int m = 0; m < 16; ++m) {
      int q = 0;
      for (int k = 0; k < 5; ++k) q = q * 3 + c[160 + k * 16 + m];
      out[b].qs[32 + m] = pack_trits(q);
    }
    for (int j = 0; j < 4; ++j) {
      int q = 0;
      for (int k = 0; k < 4; ++k) q = q * 3 + c[240 + k * 4 + j];
      out[b].qh[j] = pack_trits(q * 3);  // the unused fifth trit is the least significant
    }
  }
}

void dequantize_row_tq1_0(const void* src, float* y, int64_t n) {
  const auto* in = static_cast<const BlockTQ1_0*>(src);
  for (int64_t b = 0; b < n / kBlock; ++b) {
    const float d = fp16_to_fp32(in[b].d);
    for (int k = 0; k < 5; ++k) {
      for (int m = 0; m < 32; ++m) *y++ = trit_value(in[b].qs[m], k, d);
    }
    for (int k = 0; k < 5; ++k) {
      for (int m = 0; m < 16; ++m) *y++ = trit_value(in[b].qs[32 + m], k, d);
    }
    for (int k = 0; k < 4; ++k) {
      for (int j = 0; j < 4; ++j) *y++ = trit_value(in[b].qh[j], k, d);
    }
  }
}

void quantize_row_tq2_0(const float* x, void* dst, int64_t n, const float* importance) {
  auto* out = static_cast<BlockTQ2_0*>(dst);
  float w[kBlock];
  uint8_t c[kBlock];
  for (int64_t b = 0; b < n / kBlock; ++b) {
    block_weights(importance, b * kBlock, kBlock, w);
    out[b].d = fp32_to_fp16(fit_ternary(x + b * kBlock, w, c));
    for (int half = 0; half < 2; ++half) {
      for (int m = 0; m < 32; ++m) {
        int q = 0;
        for (int k = 0; k < 4; ++k) q |= c[half * 128 + k * 32 + m] << (2 * k);
        out[b].qs[half * 32 + m] = static_cast<uint8_t>(q);
      }
    }
  }
}

void dequantize_row_tq2_0(const void* src, float* y, int64_t n) {
  const auto* in = static_cast<const BlockTQ2_0*>(src);
  for (int64_t b = 0; b < n / kBlock; ++b) {
    const float d = fp16_to_fp32(in[b].d);
    for (int half = 0; half < 2; ++half) {
      for (int k = 0; k < 4; ++k) {
        for (int m = 0; m < 32; ++m) {
          const int code = (in[b].qs[half * 32 + m] >> (2 * k)) & 3;
          *y++ = static_cast<float>(code - 1) * d;
        }
      }
    }
  }
}


// Integer views: every value is trit * d, so decoding a copy of the block with d = 1 yields the
// trits exactly; the block's own d becomes the scale.
namespace {
template <class Block>
void unpack_ternary(const void* src, int8_t* q, float* scale, float* offset, int64_t n,
                    void (*dequantize)(const void*, float*, int64_t)) {
  const auto* in = static_cast<const Block*>(src);
  float trits[kBlock];
  for (int64_t b = 0; b < n / kBlock; ++b) {
    Block unit = in[b];
    unit.d = fp32_to_fp16(1.0f);
    dequantize(&unit, trits, kBlock);
    for (int i = 0; i < kBlock; ++i) q[b * kBlock + i] = static_cast<int8_t>(trits[i]);
    for (int g = 0; g < kBlock / 16; ++g) {
      scale[b * (kBlock / 16) + g] = fp16_to_fp32(in[b].d);
      offset[b * (kBlock / 16) + g] = 0.0f;
    }
  }
}
}  // namespace

void unpack_row_tq1_0(const void* src, int8_t* q, float* s, float* o, int64_t n) { unpack_ternary<BlockTQ1_0>(src, q, s, o, n, dequantize_row_tq1_0); }
void unpack_row_tq2_0(const void* src, int8_t* q, float* s, float* o, int64_t n) { unpack_ternary<BlockTQ2_0>(src, q, s, o, n, dequantize_row_tq2_0); }

}  // namespace mixq::ternary
