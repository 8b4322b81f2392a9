// Q3_K: 16 sub-blocks of 16 values, codes -4..3 stored as 2 low bits (qs) plus a high-bit mask
// (hmask, set when code >= 0), 6-bit signed sub-block scales (stored + 32) packed into 12 bytes,
// and an fp16 super-scale: y = (d * (scale - 32)) * code.
#include <cstring>

#include "mixq/formats/half.h"
#include "mixq/formats/kquants/kquants.h"
#include "mixq/formats/kquants/symmetric_search.h"

namespace mixq::kq {

namespace {

constexpr SymmetricShape kQ3Shape{-4, 3, 31};

// 16 six-bit values in 12 bytes: the low nibbles of values 0-7 and 8-15 share bytes 0-7, and the
// top two bits of value j sit in byte 8 + j % 4 at bit 2 * (j / 4).
void pack_scales(const uint8_t* s6, uint8_t* packed) {
  std::memset(packed, 0, 12);
  for (int j = 0; j < 16; ++j) {
    if (j < 8) {
      packed[j] = s6[j] & 0xF;
    } else {
      packed[j - 8] |= static_cast<uint8_t>((s6[j] & 0xF) << 4);
    }
    packed[8 + j % 4] |= static_cast<uint8_t>((s6[j] >> 4) << (2 * (j / 4)));
  }
}

void unpack_scales(const uint8_t* packed, int* s6) {
  for (int j = 0; j < 16; ++j) {
    const int low = j < 8 ? packed[j] & 0xF : packed[j - 8] >> 4;
    const int high = (packed[8 + j % 4] >> (2 * (j / 4))) & 3;
    s6[j] = low | (high << 4);
  }
}

}  // namespace

void quantize_row_q3_k(const float* x, void* dst, int64_t n, const float* importance) {
  auto* out = static_cast<BlockQ3K*>(dst);
  SymmetricSuperBlock sb;
  for (int64_t b = 0; b < n / kSuperBlock; ++b) {
    quantize_symmetric_super_block(x + b * kSuperBlock, importance ? importance + b * kSuperBlock : nullptr,
                                   kQ3Shape, sb);
    BlockQ3K& blk = out[b];
    blk.d = sb.d;
    uint8_t s6[16];
    for (int j = 0; j < 16; ++j) s6[j] = static_cast<uint8_t>(sb.sc[j] + 32);
    pack_scales(s6, blk.scales);
    // Value i: its 2 low bits in qs[32 * (i / 128) + i % 32] at bit 2 * ((i % 128) / 32); its
    // high bit in hmask[i % 32] at bit i / 32.
    std::memset(blk.hmask, 0, sizeof blk.hmask);
    std::memset(blk.qs, 0, sizeof blk.qs);
    for (int i = 0; i < kSuperBlock; ++i) {
      const int u = sb.codes[i] + 4;  // 0..7
      if (u > 3) blk.hmask[i % 32] |= static_cast<uint8_t>(1u << (i / 32));
      blk.qs[32 * (i / 128) + i % 32] |= static_cast<uint8_t>((u & 3) << (2 * ((i % 128) / 32)));
    }
  }
}

void dequantize_row_q3_k(const void* src, float* y, int64_t n) {
  dequantize_via_view<BlockQ3K, false>(unpack_row_q3_k, src, y, n);
}


void unpack_row_q3_k(const void* src, int8_t* q, float* scale, float* offset, int64_t n) {
  const auto* in = static_cast<const BlockQ3K*>(src);
  for (int64_t b = 0; b < n / kSuperBlock; ++b) {
    const float d = fp16_to_fp32(in[b].d);
    int s6[16];
    unpack_scales(in[b].scales, s6);
    for (int i = 0; i < kSuperBlock; ++i) {
      const int low = (in[b].qs[32 * (i / 128) + i % 32] >> (2 * ((i % 128) / 32))) & 3;
      q[b * kSuperBlock + i] = static_cast<int8_t>(low - ((in[b].hmask[i % 32] >> (i / 32)) & 1 ? 0 : 4));
    }
    for (int g = 0; g < 16; ++g) {
      scale[b * 16 + g] = d * static_cast<float>(s6[g] - 32);
      offset[b * 16 + g] = 0.0f;
    }
  }
}

}  // namespace mixq::kq
