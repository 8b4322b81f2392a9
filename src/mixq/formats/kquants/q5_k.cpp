// Q5_K: 8 sub-blocks of 32 with 6-bit scales and minimums, 5-bit codes stored as a low nibble plus
// one high bit in qh (bit 2k for the earlier, 2k+1 for the later sub-block of pair k).
#include <cstring>

#include "mixq/formats/half.h"
#include "mixq/formats/kquants/affine_search.h"
#include "mixq/formats/kquants/kquants.h"

namespace mixq::kq {

void quantize_row_q5_k(const float* x, void* dst, int64_t n, const float* importance) {
  constexpr AffineShape kShape{32, 31, 63};
  auto* out = static_cast<unsigned char*>(dst);
  for (int64_t i = 0; i < n / kSuperBlock; ++i) {
    AffineSuperBlock q;
    quantize_affine_super_block(x + i * kSuperBlock, importance ? importance + i * kSuperBlock : nullptr, kShape,
                                q);
    BlockQ5K b;
    b.d = q.d;
    b.dmin = q.dmin;
    pack_scale_min_k4(q.sc, q.m, b.scales);
    std::memset(b.qh, 0, sizeof(b.qh));
    for (int pair = 0; pair < 4; ++pair) {
      const uint8_t* lo = q.codes + pair * 64;
      const uint8_t* hi = lo + 32;
      for (int l = 0; l < 32; ++l) {
        b.qs[pair * 32 + l] = static_cast<uint8_t>((lo[l] & 0xF) | ((hi[l] & 0xF) << 4));
        b.qh[l] |= static_cast<uint8_t>(((lo[l] >> 4) << (2 * pair)) | ((hi[l] >> 4) << (2 * pair + 1)));
      }
    }
    std::memcpy(out + i * sizeof(BlockQ5K), &b, sizeof(b));
  }
}

void dequantize_row_q5_k(const void* src, float* y, int64_t n) {
  dequantize_via_view<BlockQ5K, true>(unpack_row_q5_k, src, y, n);
}


void unpack_row_q5_k(const void* src, int8_t* qo, float* scale, float* offset, int64_t n) {
  const auto* in = static_cast<const unsigned char*>(src);
  for (int64_t i = 0; i < n / kSuperBlock; ++i) {
    BlockQ5K b;
    std::memcpy(&b, in + i * sizeof(BlockQ5K), sizeof(b));
    const float d = fp16_to_fp32(b.d), dmin = fp16_to_fp32(b.dmin);
    for (int j = 0; j < 8; ++j) {
      uint8_t sc, m;
      unpack_scale_min_k4(j, b.scales, sc, m);
      scale[0] = scale[1] = d * sc;
      offset[0] = offset[1] = -(dmin * m);
      scale += 2, offset += 2;
      const uint8_t* ql = b.qs + (j / 2) * 32;
      for (int l = 0; l < 32; ++l) {
        const int low = j % 2 ? ql[l] >> 4 : ql[l] & 0xF;
        qo[l] = static_cast<int8_t>(low | (((b.qh[l] >> j) & 1) << 4));
      }
      qo += 32;
    }
  }
}

}  // namespace mixq::kq
