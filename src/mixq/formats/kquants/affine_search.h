// The search shared by the affine k-quants (Q2_K, Q4_K, Q5_K).
//
// All three decode sub-block j of a super-block as  y = (d * sc[j]) * code - (dmin * m[j])  with
// integer codes in [0, code_max], small unsigned integers sc[j], m[j] in [0, scale_max] and two fp16
// super-scales d, dmin. They differ only in sub-block size, code range, scale range and packing, so
// one search fills an AffineSuperBlock and each type's file only packs it into GGML's bytes.
#pragma once

#include <cstdint>

#include "mixq/formats/kquants/kquants.h"

namespace mixq::kq {

struct AffineShape {
  int sub_size;   // values per sub-block: 16 or 32
  int code_max;   // largest code: 3, 15 or 31
  int scale_max;  // largest sub-block scale / minimum integer: 15 or 63
};

inline constexpr int kMaxSubBlocks = kSuperBlock / 16;

struct AffineSuperBlock {
  uint16_t d;     // fp16 bits of the super-scale for the sub-block scales
  uint16_t dmin;  // fp16 bits of the super-scale for the sub-block minimums
  uint8_t sc[kMaxSubBlocks];
  uint8_t m[kMaxSubBlocks];
  uint8_t codes[kSuperBlock];
};

// Quantizes 256 values. `importance` (256 weights, may be null) selects the objective:
// sum_i importance[i] * (x[i] - y[i])^2, or the plain squared error when null.
void quantize_affine_super_block(const float* x, const float* importance, const AffineShape& shape,
                                 AffineSuperBlock& out);

// Q4_K and Q5_K store their eight 6-bit scales and minimums in 12 bytes: bytes 0-3 hold the low
// six bits of scales 0-3, bytes 4-7 those of minimums 0-3, bytes 8-11 the low nibbles of scale and
// minimum 4-7, and the top two bits of bytes 0-7 carry the high bits of scales/minimums 4-7.
void pack_scale_min_k4(const uint8_t* sc, const uint8_t* m, uint8_t* packed);

inline void unpack_scale_min_k4(int j, const uint8_t* packed, uint8_t& sc, uint8_t& m) {
  if (j < 4) {
    sc = packed[j] & 63;
    m = packed[j + 4] & 63;
  } else {
    sc = static_cast<uint8_t>((packed[j + 4] & 0xF) | ((packed[j - 4] >> 6) << 4));
    m = static_cast<uint8_t>((packed[j + 4] >> 4) | ((packed[j] >> 6) << 4));
  }
}

}  // namespace mixq::kq
