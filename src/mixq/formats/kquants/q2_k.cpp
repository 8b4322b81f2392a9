// Q2_K: 16 sub-blocks of 16 with 4-bit scales and minimums (one byte each: scale in the low nibble),
// 2-bit codes. Each 32 bytes of qs cover 128 values: byte l holds values l, l+32, l+64, l+96 of
// that half at bit offsets 0, 2, 4, 6.
#include <cstring>

#include "mixq/formats/half.h"
#include "mixq/formats/kquants/affine_search.h"
#include "mixq/formats/kquants/kquants.h"

namespace mixq::kq {

void quantize_row_q2_k(const float* x, void* dst, int64_t n, const float* importance) {
  constexpr AffineShape kShape{16, 3, 15};
  auto* out = static_cast<unsigned char*>(dst);
  for (int64_t i = 0; i < n / kSuperBlock; ++i) {
    AffineSuperBlock q;
    quantize_affine_super_block(x + i * kSuperBlock, importance ? importance + i * kSuperBlock : nullptr, kShape,
                                q);
    BlockQ2K b;
    b.d = q.d;
    b.dmin = q.dmin;
    for (int j = 0; j < kSuperBlock / 16; ++j) b.scales[j] = static_cast<uint8_t>(q.sc[j] | (q.m[j] << 4));
    for (int half = 0; half < 2; ++half) {
      const uint8_t* c = q.codes + half * 128;
      for (int l = 0; l < 32; ++l) {
        b.qs[half * 32 + l] = static_cast<uint8_t>(c[l] | (c[l + 32] << 2) | (c[l + 64] << 4) | (c[l + 96] << 6));
      }
    }
    std::memcpy(out + i * sizeof(BlockQ2K), &b, sizeof(b));
  }
}

void dequantize_row_q2_k(const void* src, float* y, int64_t n) {
  dequantize_via_view<BlockQ2K, true>(unpack_row_q2_k, src, y, n);
}


void unpack_row_q2_k(const void* src, int8_t* qo, float* scale, float* offset, int64_t n) {
  const auto* in = static_cast<const unsigned char*>(src);
  for (int64_t i = 0; i < n / kSuperBlock; ++i) {
    BlockQ2K b;
    std::memcpy(&b, in + i * sizeof(BlockQ2K), sizeof(b));
    const float d = fp16_to_fp32(b.d), dmin = fp16_to_fp32(b.dmin);
    for (int j = 0; j < kSuperBlock / 16; ++j, qo += 16) {
      *scale++ = d * (b.scales[j] & 0xF);
      *offset++ = -(dmin * (b.scales[j] >> 4));
      const uint8_t* q = b.qs + (j / 8) * 32 + (j % 2) * 16;
      const int shift = 2 * ((j / 2) % 4);
      for (int l = 0; l < 16; ++l) qo[l] = static_cast<int8_t>((q[l] >> shift) & 3);
    }
  }
}

}  // namespace mixq::kq
