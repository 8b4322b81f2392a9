#include "mixq/engine/repack.h"

#include <cstring>
#include <stdexcept>
#include <vector>

#include <fmt/format.h>

#include "mixq/formats/iq4.h"
#include "mixq/formats/legacy.h"

namespace mixq::kernels {
namespace {

struct BlockQ5_0x4 {
  uint16_t d[4];
  uint64_t lo, hi;
  uint8_t qs[64];
};
static_assert(sizeof(BlockQ5_0x4) == 4 * sizeof(legacy::BlockQ5_0));
struct BlockQ8_0x4 {
  uint16_t d[4];
  uint8_t qs[128];
};
static_assert(sizeof(BlockQ8_0x4) == 4 * sizeof(legacy::BlockQ8_0));
struct BlockIQ4NLx4 {
  uint16_t d[4];
  uint8_t qs[64];
};
static_assert(sizeof(BlockIQ4NLx4) == 4 * sizeof(iq4::BlockIQ4NL));

// Interleaves one block (the file's block b of rows[0..3]) into x, or (kBack) the reverse.
template <bool kBack>
void block_q5_0(legacy::BlockQ5_0* const rows[4], BlockQ5_0x4& x) {
  if constexpr (!kBack) x.lo = x.hi = 0;
  for (int r = 0; r < 4; ++r) {
    legacy::BlockQ5_0& b = *rows[r];
    if constexpr (kBack) {
      b.d = x.d[r];
      std::memcpy(b.qs, x.qs + 16 * r, 16);
      const uint32_t qh = static_cast<uint32_t>((x.lo >> (16 * r)) & 0xffff) | static_cast<uint32_t>((x.hi >> (16 * r)) & 0xffff) << 16;
      std::memcpy(b.qh, &qh, 4);
    } else {
      x.d[r] = b.d;
      std::memcpy(x.qs + 16 * r, b.qs, 16);
      uint32_t qh;
      std::memcpy(&qh, b.qh, 4);
      x.lo |= static_cast<uint64_t>(qh & 0xffff) << (16 * r);
      x.hi |= static_cast<uint64_t>(qh >> 16) << (16 * r);
    }
  }
}
template <bool kBack>
void block_q8_0(legacy::BlockQ8_0* const rows[4], BlockQ8_0x4& x) {
  for (int r = 0; r < 4; ++r) {
    legacy::BlockQ8_0& b = *rows[r];
    if constexpr (kBack) {
      b.d = x.d[r];
    } else {
      x.d[r] = b.d;
    }
    for (int i = 0; i < 32; ++i) {
      uint8_t& u = x.qs[64 * (i / 16) + 16 * r + i % 16];
      if constexpr (kBack) {
        b.qs[i] = static_cast<int8_t>(u - 128);
      } else {
        u = static_cast<uint8_t>(b.qs[i] + 128);
      }
    }
  }
}
template <bool kBack>
void block_iq4_nl(iq4::BlockIQ4NL* const rows[4], BlockIQ4NLx4& x) {
  for (int r = 0; r < 4; ++r) {
    iq4::BlockIQ4NL& b = *rows[r];
    if constexpr (kBack) {
      b.d = x.d[r];
      std::memcpy(b.qs, x.qs + 16 * r, 16);
    } else {
      x.d[r] = b.d;
      std::memcpy(x.qs + 16 * r, b.qs, 16);
    }
  }
}

// One group of four rows (rows: each row's blocks, file layout) to or from its interleaved blocks.
template <bool kBack, class Block, class Block4>
void group(Block* const rows[4], Block4* x, int64_t nb, void (*one)(Block* const[4], Block4&)) {
  for (int64_t b = 0; b < nb; ++b) {
    Block* blk[4] = {rows[0] + b, rows[1] + b, rows[2] + b, rows[3] + b};
    one(blk, x[b]);
  }
}

template <class Block, class Block4, bool kBack>
void convert(const void* src, int64_t n_rows, int64_t n, void* dst, int64_t only_row,
             void (*one)(Block* const[4], Block4&)) {
  const int64_t nb = n / 32, groups = n_rows / kRepackRows;
  const size_t row_bytes = static_cast<size_t>(nb) * sizeof(Block);
  const auto* s = static_cast<const uint8_t*>(src);
  auto* d = static_cast<uint8_t*>(dst);
  if constexpr (kBack) {
    // src: packed; dst: one row (only_row) in the file's layout.
    const int64_t g = only_row / kRepackRows;
    if (g >= groups) {
      std::memcpy(d, s + static_cast<size_t>(only_row) * row_bytes, row_bytes);
      return;
    }
    std::vector<Block> tmp(static_cast<size_t>(3 * nb));
    Block* rows[4];
    for (int r = 0, k = 0; r < 4; ++r) rows[r] = r == only_row % kRepackRows ? static_cast<Block*>(dst) : tmp.data() + nb * k++;
    auto* x = reinterpret_cast<Block4*>(const_cast<uint8_t*>(s) + static_cast<size_t>(g) * kRepackRows * row_bytes);
    group<true>(rows, x, nb, one);
  } else {
    for (int64_t g = 0; g < groups; ++g) {
      Block* rows[4];
      for (int r = 0; r < 4; ++r) rows[r] = reinterpret_cast<Block*>(const_cast<uint8_t*>(s) + static_cast<size_t>(4 * g + r) * row_bytes);
      group<false>(rows, reinterpret_cast<Block4*>(d + static_cast<size_t>(4 * g) * row_bytes), nb, one);
    }
    const size_t done = static_cast<size_t>(groups) * kRepackRows * row_bytes;
    std::memcpy(d + done, s + done, static_cast<size_t>(n_rows - groups * kRepackRows) * row_bytes);
  }
}

template <bool kBack>
void dispatch(TypeId id, const void* src, int64_t n_rows, int64_t n, void* dst, int64_t only_row) {
  if (n % 32 != 0) throw std::invalid_argument(fmt::format("repack: rows of {} values do not fill blocks of 32", n));
  switch (id) {
    case TypeId::Q5_0:
      return convert<legacy::BlockQ5_0, BlockQ5_0x4, kBack>(src, n_rows, n, dst, only_row, block_q5_0<kBack>);
    case TypeId::Q8_0:
      return convert<legacy::BlockQ8_0, BlockQ8_0x4, kBack>(src, n_rows, n, dst, only_row, block_q8_0<kBack>);
    case TypeId::IQ4_NL:
      return convert<iq4::BlockIQ4NL, BlockIQ4NLx4, kBack>(src, n_rows, n, dst, only_row, block_iq4_nl<kBack>);
    default:
      throw std::invalid_argument(fmt::format("repack: type {} has no interleaved layout", type_traits(id).name));
  }
}

}  // namespace

bool has_repacked_layout(TypeId id) { return id == TypeId::Q5_0 || id == TypeId::Q8_0 || id == TypeId::IQ4_NL; }

void repack_rows(TypeId id, const void* src, int64_t n_rows, int64_t n, void* dst) {
  dispatch<false>(id, src, n_rows, n, dst, 0);
}

void unpacked_row(TypeId id, const void* packed, int64_t n_rows, int64_t n, int64_t r, void* out) {
  if (r < 0 || r >= n_rows) throw std::out_of_range("unpacked_row: row out of range");
  dispatch<true>(id, packed, n_rows, n, out, r);
}

}  // namespace mixq::kernels
