// Matrix-product kernels of the inference engine.
//
// A weight type reaches the kernels through two columns of the type table (formats/type_table.h):
// its activation format (ggml's vec_dot_type) and, for the integer types, an integer view
// (UnpackRowFn: int8 codes with one scale and one offset per 16 values). So one pair of kernels
// serves every integer type:
//
//   dot = sum over 16-groups g of  dx[g] * (scale[g] * sum_i q[i] a[i]  +  offset[g] * sum_i a[i])
//
// where a[i] are the activation's int8 codes and dx[g] its block scale (Q8_0: per 32 values, an
// f16; Q8_K: per 256 values, an f32), quantized exactly as ggml quantizes activations. The integer
// sums are exact; only the F32 accumulation order differs between kernels. mixq's LB3 and LB2 take
// Q8_0 activations too (codes 0..7 / 0..3, offset -z * s). Types without an integer view (F32,
// F16, BF16, NF4, I8_MM, ...) are dequantized to F32 and take the F32 kernel, with the activation
// rounded to F16/BF16 first for the half types, as ggml does.
//
// Prefill (many tokens) of the integer types takes a third shape where a set has it: 16 rows'
// integer views repacked into a panel (PackedPanel, KernelSet::panel_int8), so one vector
// instruction serves 16 rows and each activation load serves them all.
//
// Kernel sets: "scalar" (the reference, plain C++), "avx2" (AVX2 + FMA + F16C) and "avx512"
// (AVX-512 F/BW/VL + VNNI matrix products), chosen at run time by CPU detection (MIXQ_KERNELS=NAME
// forces one the CPU runs, e.g. MIXQ_KERNELS=scalar the reference). Tests check every set against the
// scalar one and against a double-precision dot of the dequantized operands.
#pragma once

#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "mixq/formats/type_table.h"

namespace mixq::kernels {

// Activations of n_tokens rows of n values, prepared for one activation format.
// One token's activation row in an integer format (PreparedActs::row): codes, per-16 dx and dsum,
// and per-4 negated code sums (a VNNI lane's share: a kernel that feeds codes + c as unsigned
// bytes starts the lane at c * nsum4 to keep the exact signed sum).
struct ActRow {
  const int8_t* q;
  const float* dx;
  const float* dsum;
  const int32_t* nsum4;
};

struct PreparedActs {
  ActFormat format = ActFormat::F32;
  int64_t n = 0;         // values per row
  int64_t n_pad = 0;     // n rounded up to 32 (integer formats pad with zero codes)
  int n_tokens = 0;
  std::vector<float> f;        // F32/F16/BF16: n_pad floats per token (already rounded)
  std::vector<int8_t> q;       // integer formats: n_pad codes per token
  std::vector<float> dx;       // per 16 values: the block scale
  std::vector<float> dsum;     // per 16 values: block scale * sum of the 16 codes
  std::vector<uint8_t> qu;     // integer formats: the codes + 128 as unsigned bytes (panel kernels)
  std::vector<int32_t> nsum4;  // integer formats: minus the sum of each 4 consecutive codes

  const float* f_row(int t) const { return f.data() + static_cast<size_t>(t) * static_cast<size_t>(n_pad); }
  const int8_t* q_row(int t) const { return q.data() + static_cast<size_t>(t) * static_cast<size_t>(n_pad); }
  const uint8_t* qu_row(int t) const { return qu.data() + static_cast<size_t>(t) * static_cast<size_t>(n_pad); }
  const float* dx_row(int t) const { return dx.data() + static_cast<size_t>(t) * static_cast<size_t>(n_pad / 16); }
  const float* dsum_row(int t) const { return dsum.data() + static_cast<size_t>(t) * static_cast<size_t>(n_pad / 16); }
  const int32_t* nsum4_row(int t) const { return nsum4.data() + static_cast<size_t>(t) * static_cast<size_t>(n_pad / 4); }
  ActRow row(int t) const { return {q_row(t), dx_row(t), dsum_row(t), nsum4_row(t)}; }
};

// Quantizes / rounds rows of activations (x: n_tokens x n, row-major) as ggml does for `format`.
void prepare_activations(ActFormat format, const float* x, int n_tokens, int64_t n, PreparedActs& out);

// Vector versions of prepare_activations' full-block quantizers, bit for bit with the scalar ones
// (activations_avx2.cpp): a Q8_0 block of 32 (codes, the unrounded d, the two 16-value code sums)
// and a Q8_K block of 256 (codes, d, sixteen code sums). false: the scalar code must do the block
// (a non-finite value, an overflowing reciprocal). Used wherever the CPU has AVX2.
struct ActBlockQuantizers {
  bool (*q8_0)(const float* x, int8_t* q, float* d, int32_t sums[2]);
  bool (*q8_k)(const float* x, int8_t* q, float* d, int32_t sums[16]);
};
const ActBlockQuantizers* avx2_act_block_quantizers();

// One weight row prepared for the kernels: its integer view, or its F32 values.
struct PreparedRow {
  bool integer = false;
  bool has_offset = false;
  std::vector<int8_t> q;        // n_pad codes (zero past n)
  std::vector<float> scale, offset;  // n_pad / 16 each
  std::vector<float> f;         // n_pad floats (zero past n) when !integer
};
void prepare_row(const TypeTraits& type, const void* row, int64_t n, PreparedRow& out);

// In-place decode (kernels_rowdot_avx512.cpp, kernels_rowdot_avx2.cpp): dot(weight row as stored
// in the file, activation row) straight from the type's block layout, without the integer view.
// row: n values of one weight type (n fills whole blocks); a, dx, dsum: one activation row in the
// type's activation format, as prepare_activations lays it out (PreparedActs::q_row etc.). The
// integer sums are the ones the reference (prepare_row + dot_int8) forms; only the F32 summation
// order differs. The decode path of matmul (a few tokens) uses them; prefill keeps the unpacked
// rows (repacked into panels where the set has a panel kernel), which pay for themselves over many
// tokens.
using RowDotFn = float (*)(const void* row, int64_t n, const ActRow& a);
// Rows of n_groups consecutive four-row groups, interleaved as engine/repack.h lays them out
// (starting at `groups`), against one activation row: y[4 g + r] = dot(row r of group g, a), the
// reference's integer sums in another F32 order.
using RowDot4Fn = void (*)(const void* groups, int64_t n, int64_t n_groups, const ActRow& a, float* y);
// Prefill (many tokens): kPanelRows weight rows' integer views repacked into one panel, so that one
// 4-byte slice of a token's activation codes, broadcast, meets the same 4 codes of all 16 rows in
// one 64-byte vector (VNNI: 16 int32 lanes, one per row). Layout: value i of row r at byte
// (i / 4) * 64 + 4 * r + i % 4 of q. Per group of `group` values (32 where every row's scale and
// offset agree over both 16-halves of each 32 and the activation's dx does too, as for every
// activation format; else 16), 16 floats each of scale and offset and 16 int32 of bias =
// -128 * (the row's code sum over the group): the kernels multiply the activation codes + 128
// (PreparedActs::qu, unsigned as VNNI wants them) and start each group's sum at the bias, so the
// group's integer sum is exactly the reference's. Rows past `rows` are zero.
inline constexpr int kPanelRows = 16;
struct PackedPanel {
  int rows = 0;
  int group = 16;
  int64_t n_pad = 0;
  bool has_offset = false;
  std::vector<int8_t> q;
  std::vector<float> scale, offset;
  std::vector<int32_t> bias;
};
// Packs rows[0 .. n_rows) (n_rows <= kPanelRows; integer views of the same n_pad).
void pack_panel(const PreparedRow* const rows[], int n_rows, PackedPanel& out);
// Panel kernel: np (1 or 2) panels against nt (1 to 4) activation rows t0 ..: row r of panel p times
// activation t0 + j goes to y[j * ldy + kPanelRows * p + r] for r < panels[p]->rows. The same
// integer sums as dot_int8 per 16-group; only the F32 summation order differs.
using PanelFn = void (*)(const PackedPanel* const panels[2], int np, const PreparedActs& a, int t0, int nt, float* y,
                         int64_t ldy);

// Slots of a row_dot table: GGML's type ids below kGgmlRowDotSlots, then mixq's extension ids
// (kFirstExtensionTypeId ..) after them.
inline constexpr uint32_t kGgmlRowDotSlots = 40;
inline constexpr uint32_t kExtensionRowDotSlots = 8;
inline constexpr uint32_t kRowDotSlots = kGgmlRowDotSlots + kExtensionRowDotSlots;
// The slot of a type id in a row_dot table, or kRowDotSlots where it has none.
constexpr uint32_t row_dot_slot(TypeId id) {
  const auto i = static_cast<uint32_t>(id);
  if (i < kGgmlRowDotSlots) return i;
  if (i >= kFirstExtensionTypeId && i - kFirstExtensionTypeId < kExtensionRowDotSlots) {
    return kGgmlRowDotSlots + (i - kFirstExtensionTypeId);
  }
  return kRowDotSlots;
}

struct KernelSet {
  const char* name;
  // Integer kernel over n_pad values (a multiple of 32).
  float (*dot_int8)(int64_t n_pad, const int8_t* q, const float* scale, const float* offset, bool has_offset,
                    const int8_t* a, const float* dx, const float* dsum);
  // F32 kernel over n_pad values (a multiple of 32).
  float (*dot_f32)(int64_t n_pad, const float* w, const float* x);
  // Four rows against nt (1 or 2) activation rows: out[j * 4 + r] = dot(row r, activation j), the
  // same sums as the single-row kernels, each load shared by every product it feeds. offset[r] may
  // be null (a row without offsets).
  void (*dot_int8_x4)(int64_t n_pad, const int8_t* const q[4], const float* const scale[4],
                      const float* const offset[4], const int8_t* const a[2], const float* const dx[2],
                      const float* const dsum[2], int nt, float* out);
  void (*dot_f32_x4)(int64_t n_pad, const float* const w[4], const float* const x[2], int nt, float* out);
  // Four rows against nt (any number of) activation rows x + j * ldx: y[j * ldy + r] = exactly
  // dot_f32_x4's value of (w[r], x + j * ldx). The prefill shape of the F32 product: a set may
  // keep many products in registers at once and reduce them together, but not reorder any sum.
  void (*dot_f32_tile)(int64_t n_pad, const float* const w[4], const float* x, int64_t ldx, int nt, float* y,
                       int64_t ldy);
  // x[i] = exp(x[i] - m) for i < n (x[i] <= m); returns the sum in double (softmax tiles).
  double (*exp_sum)(float* x, int64_t n, float m);
  // Attention scores of one query against kAttnTile cached positions: s[p] = sum_i q[i] * kt[i][p]
  // (kt: hd rows of `stride` floats, the K cache transposed), each an FMA chain in dimension order.
  void (*attn_scores)(const float* q, const float* kt, int64_t stride, int hd, float* s);
  // out[i] += sum_p w[p] * v[p][i] for p < n (v rows `stride` floats apart), position order.
  void (*attn_accumulate)(const float* w, int n, const float* v, int64_t stride, int hd, float* out);
  // One query head against `len` cached positions the way llama.cpp's CPU flash attention computes
  // it for F16 caches (ggml's one-chunk path): Q rounded to F16, scores scaled, an online softmax
  // position by position whose V accumulator is rounded to F16 after every update, divided by the
  // sum at the end. scratch holds 2 * (len + 8) floats; kt rows are readable up to len rounded
  // up to 8.
  void (*attn_f16)(const float* q, const float* kt, int64_t kstride, const float* v, int64_t vstride, int hd,
                   int len, float scale, float* scratch, float* out);
  // attn_f16 for four queries of the same head (scratch: 8 * (max len + 8) floats).
  void (*attn_f16_x4)(const float* const q[4], const float* kt, int64_t kstride, const float* v, int64_t vstride,
                      int hd, const int len[4], float scale, float* scratch, float* const out[4]);
  // Tiled F32 attention (AttentionMode::kTiled) of nq (1 .. kAttnQueries) queries of one head:
  // out[j] = attention of q[j] over positions [0, len[j]) (kt: the transposed K cache, rows of
  // kstride floats readable up to the largest len rounded up to kAttnTile; v: rows vstride apart).
  // Per query exactly attn_tiled_reference over this set's tile kernels; a set may interleave the
  // queries (shared K and V loads, independent accumulation chains) but not reorder any sum.
  void (*attn_tiled)(const float* const q[], int nq, const float* kt, int64_t kstride, const float* v,
                     int64_t vstride, int hd, const int len[], float scale, float* const out[]);
  // In-place decode kernels by type id (kRowDotSlots entries, null where a type has no fast path),
  // or null for a set without any (the scalar reference).
  const RowDotFn* row_dot;
  // The prefill panel kernel (PanelFn), or null (matmul then runs dot_int8_x4 on the integer views).
  PanelFn panel_int8 = nullptr;
  // Four-row interleaved decode kernels by type id (engine/repack.h: the layouts; kRowDotSlots
  // entries, null where a type has none), or null for a set without any.
  const RowDot4Fn* row_dot4 = nullptr;
};

// The in-place decode kernel of set k for a weight type, or null.
inline RowDotFn row_dot_for(const KernelSet& k, TypeId id) {
  const uint32_t i = row_dot_slot(id);
  return k.row_dot != nullptr && i < kRowDotSlots ? k.row_dot[i] : nullptr;
}
// The four-row interleaved decode kernel of set k for a weight type (engine/repack.h), or null.
inline RowDot4Fn row_dot4_for(const KernelSet& k, TypeId id) {
  const uint32_t i = row_dot_slot(id);
  return k.row_dot4 != nullptr && i < kRowDotSlots ? k.row_dot4[i] : nullptr;
}
inline constexpr int kAttnTile = 64;
// Queries one attn_tiled call takes at most.
inline constexpr int kAttnQueries = 8;

// The tiled attention of one query with set k's tile kernels (attn_scores, exp_sum,
// attn_accumulate): tiles of kAttnTile positions, scores scaled, an online softmax with the
// running maximum (accumulator and sum rescaled by std::exp(old - new) on a new tile maximum),
// each tile's exponentials summed in double and added to the F32 sum, V accumulated in position
// order, divided by the sum at the end. The definition every attn_tiled reproduces per query.
void attn_tiled_reference(const KernelSet& k, const float* q, const float* kt, int64_t kstride, const float* v,
                          int64_t vstride, int hd, int len, float scale, float* out);

// The kernel sets this CPU can run, the reference first.
std::span<const KernelSet* const> available_kernel_sets();
const KernelSet& scalar_kernels();
// The fastest set this CPU runs (or the one MIXQ_KERNELS names).
const KernelSet& best_kernels();

// dot(weight row, activation row t) with a kernel set.
inline float dot(const KernelSet& k, const PreparedRow& w, const PreparedActs& a, int t) {
  if (w.integer) {
    return k.dot_int8(a.n_pad, w.q.data(), w.scale.data(), w.offset.data(), w.has_offset, a.q_row(t), a.dx_row(t),
                      a.dsum_row(t));
  }
  return k.dot_f32(a.n_pad, w.f.data(), a.f_row(t));
}

// out[j * 4 + r] = dot(rows[r], activation row t + j) for 4 rows of the same kind, nt (1 or 2)
// tokens.
void dot4(const KernelSet& k, const PreparedRow* const rows[4], const PreparedActs& a, int t, int nt, float* out);

// AVX2 kernels (kernels_avx2.cpp); null where the build or the CPU has no AVX2 + FMA + F16C.
const KernelSet* avx2_kernels();
// AVX-512 kernels (kernels_avx512.cpp: F + BW + VL + VNNI matrix products, the AVX2 attention);
// null where the build or the CPU lacks them.
const KernelSet* avx512_kernels();
// The in-place decode tables of those sets (kRowDotSlots entries each); only the sets above call
// them, after their CPU checks.
const RowDotFn* avx2_row_dot_table();
const RowDotFn* avx512_row_dot_table();
// The AVX-512 VNNI panel kernel (kernels_panel_avx512.cpp); only avx512_kernels() calls it.
PanelFn avx512_panel_kernel();

}  // namespace mixq::kernels
