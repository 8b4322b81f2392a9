// Q6_K: 16 sub-blocks of 16 values, codes -32..31 stored as 4 low bits (ql) and 2 high bits (qh),
// int8 sub-block scales and an fp16 super-scale: y = (d * scale) * code.
#include <cstring>

#include "mixq/formats/half.h"
#include "mixq/formats/kquants/kquants.h"
#include "mixq/formats/kquants/symmetric_search.h"

namespace mixq::kq {

namespace {
constexpr SymmetricShape kQ6Shape{-32, 31, 127};
}

void quantize_row_q6_k(const float* x, void* dst, int64_t n, const float* importance) {
  auto* out = static_cast<BlockQ6K*>(dst);
  SymmetricSuperBlock sb;
  for (int64_t b = 0; b < n / kSuperBlock; ++b) {
    const float* xb = x + b * kSuperBlock;
    quantize_symmetric_super_block(xb, importance ? importance + b * kSuperBlock : nullptr, kQ6Shape, sb);
    BlockQ6K& blk = out[b];
    blk.d = sb.d;
    std::memcpy(blk.scales, sb.sc, sizeof blk.scales);
    // GGML's order: within each half of 128 values, ql[l] holds values l and l+64 (low nibbles),
    // ql[l+32] values l+32 and l+96; qh[l] holds the high bits of l, l+32, l+64, l+96.
    for (int h = 0; h < 2; ++h) {
      const int8_t* c = sb.codes + 128 * h;
      uint8_t* ql = blk.ql + 64 * h;
      uint8_t* qh = blk.qh + 32 * h;
      for (int l = 0; l < 32; ++l) {
        const auto u = [&](int i) { return static_cast<uint8_t>(c[i] + 32); };
        ql[l] = static_cast<uint8_t>((u(l) & 0xF) | ((u(l + 64) & 0xF) << 4));
        ql[l + 32] = static_cast<uint8_t>((u(l + 32) & 0xF) | ((u(l + 96) & 0xF) << 4));
        qh[l] = static_cast<uint8_t>((u(l) >> 4) | ((u(l + 32) >> 4) << 2) | ((u(l + 64) >> 4) << 4) |
                                     ((u(l + 96) >> 4) << 6));
      }
    }
  }
}

void dequantize_row_q6_k(const void* src, float* y, int64_t n) {
  dequantize_via_view<BlockQ6K, false>(unpack_row_q6_k, src, y, n);
}


void unpack_row_q6_k(const void* src, int8_t* q, float* scale, float* offset, int64_t n) {
  const auto* in = static_cast<const BlockQ6K*>(src);
  for (int64_t b = 0; b < n / kSuperBlock; ++b) {
    const float d = fp16_to_fp32(in[b].d);
    for (int h = 0; h < 2; ++h) {
      const uint8_t* ql = in[b].ql + 64 * h;
      const uint8_t* qh = in[b].qh + 32 * h;
      int8_t* out = q + b * kSuperBlock + 128 * h;
      for (int l = 0; l < 32; ++l) {
        out[l] = static_cast<int8_t>(((ql[l] & 0xF) | ((qh[l] & 3) << 4)) - 32);
        out[l + 32] = static_cast<int8_t>(((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32);
        out[l + 64] = static_cast<int8_t>(((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32);
        out[l + 96] = static_cast<int8_t>(((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32);
      }
    }
    for (int g = 0; g < 16; ++g) {
      scale[b * 16 + g] = d * static_cast<float>(in[b].scales[g]);
      offset[b * 16 + g] = 0.0f;
    }
  }
}

}  // namespace mixq::kq
