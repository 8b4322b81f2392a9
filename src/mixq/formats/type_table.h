// The type table: one row per weight type (GGML's and mixq's own).
//
// Every caller goes through this table; nobody switches on a TypeId to find a block size or a
// codec. Adding a type means writing its codec in the family file that owns it
// (formats/float.cpp, legacy.cpp, kquants.cpp, iq4.cpp, nf4.cpp, int8.cpp, lowbit.cpp) and adding
// one row to kTypeTable in type_table.cpp.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>

namespace mixq {

// GGML's numeric type ids (ggml.h) are kept as-is so GGUF files interchange byte for byte.
// mixq's own formats live at kFirstExtensionTypeId and above, far outside GGML's range; a GGUF
// holding one records it in metadata (mixq.extension_types) and runs only in mixq.
enum class TypeId : uint32_t {
  F32 = 0, F16 = 1, Q4_0 = 2, Q4_1 = 3, Q5_0 = 6, Q5_1 = 7, Q8_0 = 8, Q8_1 = 9,
  Q2_K = 10, Q3_K = 11, Q4_K = 12, Q5_K = 13, Q6_K = 14, Q8_K = 15,
  IQ2_XXS = 16, IQ2_XS = 17, IQ3_XXS = 18, IQ1_S = 19, IQ4_NL = 20, IQ3_S = 21, IQ2_S = 22,
  IQ4_XS = 23, I8 = 24, I16 = 25, I32 = 26, I64 = 27, F64 = 28, IQ1_M = 29, BF16 = 30,
  TQ1_0 = 34, TQ2_0 = 35, MXFP4 = 39,
  // mixq extension formats
  NF4 = 1024,      // blocks of 64: f16 absmax, 16-level NormalFloat codes (bitsandbytes' NF4)
  I8_ROW = 1025,   // symmetric INT8, one f32 scale per row (= per output channel)
  I8_MM = 1026,    // asymmetric INT8, blocks of 64 with f16 scale and f16 minimum
  LB3 = 1027,      // 3-bit codes packed 8 per 3 bytes, groups of 64 with f16 scale and zero-point
  LB2 = 1028,      // 2-bit codes packed 4 per byte, groups of 64 with f16 scale and zero-point
};

inline constexpr uint32_t kFirstExtensionTypeId = 1024;

// Quantize one row of n values. `importance` (may be null) holds n per-column weights: the
// quantizer then minimizes sum_i importance[i] * (x[i] - q[i])^2 instead of the plain squared error.
using QuantizeRowFn = void (*)(const float* x, void* dst, int64_t n, const float* importance);
// Dequantize one row of n values.
using DequantizeRowFn = void (*)(const void* src, float* y, int64_t n);

// What the inference engine pairs a weight type with (ggml's "vec_dot_type"): activations are
// rounded to F16/BF16 for the half types, quantized to 8-bit blocks (Q8_0: 32 values with an f16
// scale; Q8_1: the same plus the block's f16-rounded d * sum of codes, which the affine types Q4_1
// and Q5_1 multiply by their minimum; Q8_K: 256 values with an f32 scale) for the integer types,
// and kept F32 otherwise.
enum class ActFormat : uint8_t { F32, F16, BF16, Q8_0, Q8_1, Q8_K };
inline constexpr int kActFormats = 6;

// The integer view of a row, for the engine's int8 dot kernels: code q[i] (int8) with one scale and
// one offset per 16 values, value[i] == scale[i / 16] * q[i] + offset[i / 16] exactly as the
// dequantizer computes it. scale and offset hold ceil(n / 16) entries.
using UnpackRowFn = void (*)(const void* src, int8_t* q, float* scale, float* offset, int64_t n);

struct Calibration;  // formats/calibration.h
// Quantize one row with a chosen scale calibration (mixq quantize --calib), for the formats that
// offer one.
using CalibQuantizeRowFn = void (*)(const float* x, void* dst, int64_t n, const float* importance,
                                    const Calibration& calibration);

struct TypeTraits {
  TypeId id;
  const char* name;           // canonical name as ggml prints it ("q4_K", "bf16"), or mixq's ("nf4")
  const char* family;         // source file family: float, legacy, kquants, iq4, nf4, int8, lowbit, ...
  int64_t block_size;         // values per block
  size_t block_bytes;         // bytes per block
  size_t row_header_bytes;    // bytes stored once per row before its blocks (per-row scale types)
  bool quantized;             // false for plain float/integer storage types
  QuantizeRowFn quantize_row;      // null: mixq can read this type but not produce it
  DequantizeRowFn dequantize_row;  // null: mixq can size this type but not decode it
  const char* description;
  ActFormat act_format = ActFormat::F32;  // the engine's activation format for this weight type
  UnpackRowFn unpack_row = nullptr;       // null: the engine dequantizes rows to F32 instead
  CalibQuantizeRowFn quantize_row_calib = nullptr;  // null: --calib does not apply (own search only)
  bool weight = true;          // false: an activation format (Q8_1, Q8_K), never a stored weight type
  int llama_ftype = -1;        // llama.cpp's general.file_type for a model mostly of this type, or -1
  // The next type up in precision (presets' "one step more precise"), or none at the top.
  std::optional<TypeId> more_precise;
  // What llama-quantize substitutes when rows do not fill this type's blocks, or none.
  std::optional<TypeId> llamacpp_fallback;
  // Every block is quantized on its own: without importance weights, quantize_row over k
  // consecutive rows of n values (one call, k * n values) writes the same bytes as k calls of n,
  // so a caller may hand it many rows at once (the AVX-512 legacy search takes 16 blocks at a
  // time; rows of 576 values leave 2 of their 18 blocks to the slower path otherwise).
  bool block_local = false;

  bool is_extension() const { return static_cast<uint32_t>(id) >= kFirstExtensionTypeId; }
  bool can_quantize() const { return quantize_row != nullptr; }
  bool can_dequantize() const { return dequantize_row != nullptr; }
  // Whether a row of n values can be stored in this type (n must fill whole blocks).
  bool fits_row(int64_t n) const { return n > 0 && n % block_size == 0; }
  // Bytes of one row of n values; n must satisfy fits_row.
  size_t row_bytes(int64_t n) const {
    return row_header_bytes + static_cast<size_t>(n / block_size) * block_bytes;
  }
  // Bits per weight for a row of n values (includes the row header).
  double bits_per_weight(int64_t n) const { return 8.0 * static_cast<double>(row_bytes(n)) / n; }
};

class TypeError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Every row of the table, in id order.
std::span<const TypeTraits> all_types();
// The row for a numeric id, or null when the id is unknown.
const TypeTraits* find_type(uint32_t id);
// The row for a name, case-insensitive ("Q4_K", "q4_k", "NF4"), or null.
const TypeTraits* find_type(std::string_view name);
// The row for an id known to exist.
const TypeTraits& type_traits(TypeId id);
// Like find_type(name) but throws TypeError listing the known names.
const TypeTraits& require_type(std::string_view name);

// Whole-tensor helpers: nrows rows of n_per_row values, contiguous.
// Throw TypeError when the type has no codec or the row length does not fill whole blocks.
void quantize_rows(TypeId type, const float* src, void* dst, int64_t nrows, int64_t n_per_row,
                   const float* importance = nullptr);
void dequantize_rows(TypeId type, const void* src, float* dst, int64_t nrows, int64_t n_per_row);

}  // namespace mixq
