#include "mixq/engine/repack.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <vector>

#include <fmt/format.h>

#include "mixq/formats/iq4.h"
#include "mixq/formats/legacy.h"
#include "mixq/io/mapped_file.h"

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
  // Code c stored as c + 128, the same byte as c ^ 0x80: two runs of 16 bytes per row, which
  // compile to vector moves (prefill unpacks every row of a product).
  for (int r = 0; r < 4; ++r) {
    legacy::BlockQ8_0& b = *rows[r];
    if constexpr (kBack) {
      b.d = x.d[r];
    } else {
      x.d[r] = b.d;
    }
    for (int h = 0; h < 2; ++h) {
      uint8_t* u = x.qs + 64 * h + 16 * r;
      auto* q = reinterpret_cast<uint8_t*>(b.qs) + 16 * h;
      uint64_t v[2];
      std::memcpy(v, kBack ? u : q, 16);
      v[0] ^= 0x8080808080808080ull;
      v[1] ^= 0x8080808080808080ull;
      std::memcpy(kBack ? q : u, v, 16);
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

// Whole groups of four rows to (kBack: from) their interleaved blocks. Packing: src holds n_groups
// groups of four rows in the file's layout, dst (not overlapping) their interleaved blocks.
// Unpacking: src holds interleaved groups, dst the rows in the file's layout.
template <class Block, class Block4, bool kBack, void (*one)(Block* const[4], Block4&)>
void groups(const uint8_t* src, int64_t n_groups, int64_t nb, uint8_t* dst) {
  const size_t row_bytes = static_cast<size_t>(nb) * sizeof(Block);
  for (int64_t g = 0; g < n_groups; ++g) {
    uint8_t* rows_at = const_cast<uint8_t*>(kBack ? dst : src) + static_cast<size_t>(4 * g) * row_bytes;
    auto* x = reinterpret_cast<Block4*>(const_cast<uint8_t*>(kBack ? src : dst) + static_cast<size_t>(4 * g) * row_bytes);
    for (int64_t b = 0; b < nb; ++b) {
      Block* blk[4];
      for (int r = 0; r < 4; ++r) blk[r] = reinterpret_cast<Block*>(rows_at + static_cast<size_t>(r) * row_bytes) + b;
      one(blk, x[b]);
    }
  }
}

// The three operations on one type: pack (src -> dst), pack in place (data), unpack rows [r0, r1).
template <class Block, class Block4, void (*to)(Block* const[4], Block4&), void (*back)(Block* const[4], Block4&)>
struct Converter {
  void pack(const uint8_t* src, int64_t n_rows, int64_t nb, uint8_t* dst) const {
    const int64_t n_groups = n_rows / kRepackRows;
    groups<Block, Block4, false, to>(src, n_groups, nb, dst);
    const size_t row_bytes = static_cast<size_t>(nb) * sizeof(Block), done = static_cast<size_t>(n_groups) * kRepackRows * row_bytes;
    std::memcpy(dst + done, src + done, static_cast<size_t>(n_rows - n_groups * kRepackRows) * row_bytes);
  }
  void pack_in_place(uint8_t* data, int64_t n_rows, int64_t nb, ThreadPool* pool) const {
    const size_t group_bytes = static_cast<size_t>(nb) * sizeof(Block) * kRepackRows;
    const int64_t n_groups = n_rows / kRepackRows;
    // Runs of about 1 MB: one group of scratch per run is the only memory the repack takes.
    const int64_t per_run = std::max<int64_t>(1, static_cast<int64_t>((size_t{1} << 20) / group_bytes));
    const int64_t runs = (n_groups + per_run - 1) / per_run;
    const auto run = [&](int64_t k) {
      const int64_t g0 = k * per_run, g1 = std::min(n_groups, g0 + per_run);
      populate_for_writing(data + static_cast<size_t>(g0) * group_bytes, static_cast<size_t>(g1 - g0) * group_bytes);
      thread_local std::vector<uint8_t> scratch;
      scratch.resize(group_bytes);
      for (int64_t g = g0; g < g1; ++g) {
        uint8_t* at = data + static_cast<size_t>(g) * group_bytes;
        std::memcpy(scratch.data(), at, group_bytes);
        groups<Block, Block4, false, to>(scratch.data(), 1, nb, at);
      }
    };
    if (pool != nullptr && runs > 1) {
      pool->parallel_for(runs, run);
    } else {
      for (int64_t k = 0; k < runs; ++k) run(k);
    }
  }
  void unpack(const uint8_t* packed, int64_t n_rows, int64_t nb, int64_t r0, int64_t r1, uint8_t* out) const {
    const size_t row_bytes = static_cast<size_t>(nb) * sizeof(Block);
    const int64_t grouped = n_rows / kRepackRows * kRepackRows;
    std::vector<uint8_t> tmp;
    for (int64_t r = r0; r < r1;) {
      uint8_t* o = out + static_cast<size_t>(r - r0) * row_bytes;
      if (r >= grouped) {  // past the last group: the file's layout
        std::memcpy(o, packed + static_cast<size_t>(r) * row_bytes, static_cast<size_t>(r1 - r) * row_bytes);
        return;
      }
      const int64_t g = r / kRepackRows, g0 = g * kRepackRows;
      const uint8_t* src = packed + static_cast<size_t>(g0) * row_bytes;
      if (r == g0 && r + kRepackRows <= r1) {
        // Whole groups straight to out.
        const int64_t n_groups = (std::min(r1, grouped) - r) / kRepackRows;
        groups<Block, Block4, true, back>(src, n_groups, nb, o);
        r += n_groups * kRepackRows;
        continue;
      }
      tmp.resize(kRepackRows * row_bytes);
      groups<Block, Block4, true, back>(src, 1, nb, tmp.data());
      const int64_t stop = std::min(r1, g0 + kRepackRows);
      std::memcpy(o, tmp.data() + static_cast<size_t>(r - g0) * row_bytes, static_cast<size_t>(stop - r) * row_bytes);
      r = stop;
    }
  }
};

template <class F>
void dispatch(TypeId id, int64_t n, F&& f) {
  if (n % 32 != 0) throw std::invalid_argument(fmt::format("repack: rows of {} values do not fill blocks of 32", n));
  switch (id) {
    case TypeId::Q5_0:
      return f(Converter<legacy::BlockQ5_0, BlockQ5_0x4, block_q5_0<false>, block_q5_0<true>>{});
    case TypeId::Q8_0:
      return f(Converter<legacy::BlockQ8_0, BlockQ8_0x4, block_q8_0<false>, block_q8_0<true>>{});
    case TypeId::IQ4_NL:
      return f(Converter<iq4::BlockIQ4NL, BlockIQ4NLx4, block_iq4_nl<false>, block_iq4_nl<true>>{});
    default:
      throw std::invalid_argument(fmt::format("repack: type {} has no interleaved layout", type_traits(id).name));
  }
}

}  // namespace

bool has_repacked_layout(TypeId id) { return id == TypeId::Q5_0 || id == TypeId::Q8_0 || id == TypeId::IQ4_NL; }

void repack_rows(TypeId id, const void* src, int64_t n_rows, int64_t n, void* dst) {
  dispatch(id, n, [&](const auto& c) { c.pack(static_cast<const uint8_t*>(src), n_rows, n / 32, static_cast<uint8_t*>(dst)); });
}

void repack_rows_in_place(TypeId id, void* data, int64_t n_rows, int64_t n, ThreadPool* pool) {
  dispatch(id, n, [&](const auto& c) { c.pack_in_place(static_cast<uint8_t*>(data), n_rows, n / 32, pool); });
}

void unpack_rows(TypeId id, const void* packed, int64_t n_rows, int64_t n, int64_t r0, int64_t r1, void* out) {
  if (r0 < 0 || r1 > n_rows || r0 > r1) throw std::out_of_range("unpack_rows: rows out of range");
  dispatch(id, n, [&](const auto& c) { c.unpack(static_cast<const uint8_t*>(packed), n_rows, n / 32, r0, r1, static_cast<uint8_t*>(out)); });
}

void unpacked_row(TypeId id, const void* packed, int64_t n_rows, int64_t n, int64_t r, void* out) {
  if (r < 0 || r >= n_rows) throw std::out_of_range("unpacked_row: row out of range");
  unpack_rows(id, packed, n_rows, n, r, r + 1, out);
}

bool interleaved(const GgufTensor& t) { return tensor_layout(t) == kInterleavedLayout; }

bool interleave_in_place(const GgufFile& file, const GgufTensor& t, ThreadPool* pool) {
  if (t.shape.size() != 2 || !has_repacked_layout(t.type->id) || t.row_length() % 32 != 0) return false;
  return file.rewrite_tensor(t, kInterleavedLayout, [&](uint8_t* data) {
    repack_rows_in_place(t.type->id, data, t.n_rows(), t.row_length(), pool);
  });
}

const uint8_t* file_layout_rows(const GgufTensor& t, int64_t r0, int64_t r1, std::vector<uint8_t>& buf) {
  const size_t row_bytes = t.type->row_bytes(t.row_length());
  if (!interleaved(t)) return t.data + static_cast<size_t>(r0) * row_bytes;
  buf.resize(static_cast<size_t>(r1 - r0) * row_bytes);
  unpack_rows(t.type->id, t.data, t.n_rows(), t.row_length(), r0, r1, buf.data());
  return buf.data();
}

void dequantize_tensor(const GgufTensor& t, float* out) {
  const int64_t n = t.row_length(), rows = t.n_rows();
  if (!interleaved(t)) {
    dequantize_rows(t.type->id, t.data, out, rows, n);
    return;
  }
  std::vector<uint8_t> buf;
  constexpr int64_t kRows = 64;  // a few rows at a time: no copy of the whole tensor
  for (int64_t r0 = 0; r0 < rows; r0 += kRows) {
    const int64_t r1 = std::min(rows, r0 + kRows);
    dequantize_rows(t.type->id, file_layout_rows(t, r0, r1, buf), out + static_cast<size_t>(r0) * static_cast<size_t>(n), r1 - r0, n);
  }
}

}  // namespace mixq::kernels
