// Byte-shuffle and shift tables that spread mixq's LB3 / LB2 codes (formats/lowbit.h) to one byte
// per code in value order, shared by the AVX-512 and AVX2 in-place decode kernels.
//
// Both formats store their codes as one little-endian bit stream (code i at bits kBits * i ..), so
// a code starts at bit offset sh of some byte and runs into the next byte when sh + kBits > 8.
// A 128-bit lane makes 16 codes from 16 loaded bytes; its 16-bit element m holds code 2m in its
// low byte and code 2m + 1 in its high byte. Two byte shuffles (even, odd) gather, per element,
// the byte holding the code's first bit (and the next one where the code runs into it, else zero)
// into a 16-bit word; the even code is then shifted right by sh into bits 0 .., the odd one left by
// 8 - sh into bits 8 .., and masks keep the code bits. With no 16-bit variable shifts (AVX2) a
// left shift by k is a multiplication by 1 << k, and the even code's right shift by sh is a left
// shift by 8 - sh followed by a right shift by 8.
//
// The loaded bytes: LB2's 16 code bytes in every lane. LB3's 24 code bytes do not fit a lane, so
// lanes 0 and 1 load bytes 0 .. 15 and lanes 2 and 3 bytes 8 .. 23 (AVX2: two 256-bit halves of 32
// codes, each one 16-byte load in both of its lanes); lane L's codes 16L .. start at byte
// 6L - (L < 2 ? 0 : 8) of what it loaded.
#pragma once

#include <cstdint>

namespace mixq::kernels::lowbit_simd {

struct Tables {
  alignas(64) uint8_t even[64];     // shuffle control, 16 bytes per lane
  alignas(64) uint8_t odd[64];
  alignas(64) uint16_t even_down[32];  // right shift of each element's even code
  alignas(64) uint16_t odd_up[32];     // left shift of each element's odd code
  alignas(64) uint16_t even_mul[32];   // 1 << (8 - even_down): the AVX2 form
  alignas(64) uint16_t odd_mul[32];    // 1 << odd_up
};

// kBits = 3 (LB3) or 2 (LB2).
template <int kBits>
constexpr Tables make_tables() {
  Tables t{};
  for (int lane = 0; lane < 4; ++lane) {
    const int start = kBits == 3 ? 6 * lane - (lane < 2 ? 0 : 8) : 0;  // byte of code 16 * lane
    for (int p = 0; p < 16; ++p) {
      const int bit = 8 * start + kBits * (kBits == 3 ? p : 16 * lane + p);
      const int byte = bit / 8, sh = bit % 8;
      const bool spans = sh + kBits > 8;
      uint8_t* ctl = p % 2 == 0 ? t.even : t.odd;
      ctl[16 * lane + (p & ~1)] = static_cast<uint8_t>(byte);
      ctl[16 * lane + (p & ~1) + 1] = static_cast<uint8_t>(spans ? byte + 1 : 0x80);  // 0x80: a zero byte
      const int m = 8 * lane + p / 2;
      if (p % 2 == 0) {
        t.even_down[m] = static_cast<uint16_t>(sh);
        t.even_mul[m] = static_cast<uint16_t>(1u << (8 - sh));
      } else {
        t.odd_up[m] = static_cast<uint16_t>(8 - sh);
        t.odd_mul[m] = static_cast<uint16_t>(1u << (8 - sh));
      }
    }
  }
  return t;
}

inline constexpr Tables kLB3 = make_tables<3>();
inline constexpr Tables kLB2 = make_tables<2>();

// The masks that keep a code's bits: even codes in bits 0 .., odd ones in bits 8 ...
template <int kBits>
inline constexpr uint16_t kEvenMask = (1u << kBits) - 1;
template <int kBits>
inline constexpr uint16_t kOddMask = ((1u << kBits) - 1) << 8;

}  // namespace mixq::kernels::lowbit_simd
