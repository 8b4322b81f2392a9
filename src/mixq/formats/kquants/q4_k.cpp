// Q4_K: 8 sub-blocks of 32 with 6-bit scales and minimums, 4-bit codes.
#include <cstring>

#include "mixq/formats/half.h"
#include "mixq/formats/kquants/affine_search.h"
#include "mixq/formats/kquants/kquants.h"

namespace mixq::kq {

void quantize_row_q4_k(const float* x, void* dst, int64_t n, const float* importance) {
  constexpr AffineShape kShape{32, 15, 63};
  auto* out = static_cast<unsigned char*>(dst);
  for (int64_t i = 0; i < n / kSuperBlock; ++i) {
    AffineSuperBlock q;
    quantize_affine_super_block(x + i * kSuperBlock, importance ? importance + i * kSuperBlock : nullptr, kShape,
                                q);
    BlockQ4K b;
    b.d = q.d;
    b.dmin = q.dmin;
    pack_scale_min_k4(q.sc, q.m, b.scales);
    // Each 32 bytes hold two sub-blocks: the earlier one in the low nibbles.
    for (int j = 0; j < kSuperBlock; j += 64) {
      for (int l = 0; l < 32; ++l) {
        b.qs[j / 2 + l] = static_cast<uint8_t>(q.codes[j + l] | (q.codes[j + 32 + l] << 4));
      }
    }
    std::memcpy(out + i * sizeof(BlockQ4K), &b, sizeof(b));
  }
}

void dequantize_row_q4_k(const void* src, float* y, int64_t n) {
  dequantize_via_view<BlockQ4K, true>(unpack_row_q4_k, src, y, n);
}


void unpack_row_q4_k(const void* src, int8_t* qo, float* scale, float* offset, int64_t n) {
  const auto* in = static_cast<const unsigned char*>(src);
  for (int64_t i = 0; i < n / kSuperBlock; ++i) {
    BlockQ4K b;
    std::memcpy(&b, in + i * sizeof(BlockQ4K), sizeof(b));
    const float d = fp16_to_fp32(b.d), dmin = fp16_to_fp32(b.dmin);
    for (int j = 0; j < 8; ++j) {
      uint8_t sc, m;
      unpack_scale_min_k4(j, b.scales, sc, m);
      scale[0] = scale[1] = d * sc;
      offset[0] = offset[1] = -(dmin * m);
      scale += 2, offset += 2;
      const uint8_t* q = b.qs + (j / 2) * 32;
      for (int l = 0; l < 32; ++l) qo[l] = static_cast<int8_t>(j % 2 ? q[l] >> 4 : q[l] & 0xF);
      qo += 32;
    }
  }
}

}  // namespace mixq::kq
