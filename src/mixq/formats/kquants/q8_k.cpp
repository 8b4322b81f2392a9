// Q8_K: the activation type of the k-quant dot products: an f32 scale, 256 int8 codes and the sum
// of every 16 codes (bsums), which lets a dot product fold in the weights' minimums cheaply.
#include <cstring>
#include <algorithm>
#include <cmath>
#include <iterator>

#include "mixq/formats/kquants/kquants.h"

namespace mixq::kq {

// Activations are quantized on the fly, once per matrix product: one pass, absmax scale.
void quantize_row_q8_k(const float* x, void* dst, int64_t n, const float*) {
  auto* out = static_cast<BlockQ8K*>(dst);
  for (int64_t b = 0; b < n / kSuperBlock; ++b) {
    const float* xb = x + b * kSuperBlock;
    float amax = 0, extreme = 0;
    for (int i = 0; i < kSuperBlock; ++i) {
      if (std::fabs(xb[i]) > amax) {
        amax = std::fabs(xb[i]);
        extreme = xb[i];
      }
    }
    BlockQ8K& blk = out[b];
    if (amax == 0) {
      blk.d = 0;
      std::fill(std::begin(blk.qs), std::end(blk.qs), 0);
      std::fill(std::begin(blk.bsums), std::end(blk.bsums), 0);
      continue;
    }
    // As ggml: the extreme value maps to -127 (so d may be negative); 128 would overflow int8.
    const float iscale = -127.0f / extreme;
    for (int i = 0; i < kSuperBlock; ++i) {
      // ggml's nearest_int: round half to even (the default rounding mode), capped at 127.
      blk.qs[i] = static_cast<int8_t>(std::min(127.0f, std::nearbyint(iscale * xb[i])));
    }
    for (int j = 0; j < kSuperBlock / 16; ++j) {
      int sum = 0;
      for (int i = 0; i < 16; ++i) sum += blk.qs[j * 16 + i];
      blk.bsums[j] = static_cast<int16_t>(sum);
    }
    blk.d = 1.0f / iscale;
  }
}

void dequantize_row_q8_k(const void* src, float* y, int64_t n) {
  const auto* in = static_cast<const BlockQ8K*>(src);
  for (int64_t b = 0; b < n / kSuperBlock; ++b) {
    for (int i = 0; i < kSuperBlock; ++i) y[b * kSuperBlock + i] = in[b].d * static_cast<float>(in[b].qs[i]);
  }
}


void unpack_row_q8_k(const void* src, int8_t* q, float* scale, float* offset, int64_t n) {
  const auto* in = static_cast<const BlockQ8K*>(src);
  for (int64_t b = 0; b < n / kSuperBlock; ++b) {
    std::memcpy(q + b * kSuperBlock, in[b].qs, kSuperBlock);
    for (int g = 0; g < 16; ++g) {
      scale[b * 16 + g] = in[b].d;
      offset[b * 16 + g] = 0.0f;
    }
  }
}

}  // namespace mixq::kq
