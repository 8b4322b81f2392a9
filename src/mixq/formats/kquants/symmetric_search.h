// The search shared by the symmetric k-quants (Q3_K, Q6_K).
//
// Both decode sub-block j (16 values) of a super-block as  y = (d * sc[j]) * code  with signed
// integer codes in [code_lo, code_hi], signed integer sub-block scales sc[j] in
// [-scale_max, scale_max] and one fp16 super-scale d. They differ only in code range, scale range
// and packing, so one search fills a SymmetricSuperBlock and each type's file packs GGML's bytes.
#pragma once

#include <cstdint>

#include "mixq/formats/kquants/kquants.h"

namespace mixq::kq {

struct SymmetricShape {
  int code_lo, code_hi;  // Q3_K: -4..3, Q6_K: -32..31
  int scale_max;         // Q3_K: 31 (6-bit signed), Q6_K: 127 (int8)
};

inline constexpr int kSymSub = 16;
inline constexpr int kSymSubBlocks = kSuperBlock / kSymSub;

struct SymmetricSuperBlock {
  uint16_t d;                  // fp16 bits of the super-scale
  int8_t sc[kSymSubBlocks];    // signed sub-block scales
  int8_t codes[kSuperBlock];   // signed codes
};

// Quantizes 256 values. `importance` (256 weights, may be null) selects the objective:
// sum_i importance[i] * (x[i] - y[i])^2, or the plain squared error when null. The error is
// measured with the decoder's own float arithmetic, (d * sc) * code.
void quantize_symmetric_super_block(const float* x, const float* importance, const SymmetricShape& shape,
                                    SymmetricSuperBlock& out);

}  // namespace mixq::kq
