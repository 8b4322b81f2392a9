// Outlier columns: a few input columns of a quantized matrix kept in 16-bit beside it (mixq only).
//
// A weight matrix W (rows x n, GGUF shape [n, rows]) quantized with K outlier columns is stored as
// three tensors:
//   NAME                 the quantized matrix, its K outlier columns set to 0 before quantizing
//                        (their importance weight 0 too), so they no longer widen block scales
//   NAME.outlier_cols    I32 [K]: the column indices, ascending, distinct, each < n
//   NAME.outlier_vals    F16 [K, rows]: row r holds W[r, cols[0..K)], the exact values rounded to F16
// and the file carries `mixq.outlier_columns` (u32, the largest K). The product the engine computes
// is  y = dequant(NAME) . x'  +  vals . x[cols],  where x' is x with the outlier entries zeroed, so
// whatever NAME's quantizer left in those columns is never read (and the outlier activations do not
// widen the 8-bit activation blocks either). llama.cpp does not load such files (it refuses tensors
// it does not expect); `mixq inspect` says so.
//
// Choice of columns: the K columns with the largest importance-weighted magnitude
// w_j * max_r W[r, j]^2 (w_j = the importance matrix's mean squared activation of input j, or 1):
// the values that set their blocks' scales, scaled by how much their input matters.
// Reading the companions of a file: io/outlier_columns.h.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "mixq/formats/type_table.h"

namespace mixq {

inline constexpr std::string_view kOutlierColsSuffix = ".outlier_cols";
inline constexpr std::string_view kOutlierValsSuffix = ".outlier_vals";
inline constexpr std::string_view kOutlierColumnsKey = "mixq.outlier_columns";

inline std::string outlier_cols_name(std::string_view tensor) { return std::string(tensor) + std::string(kOutlierColsSuffix); }
inline std::string outlier_vals_name(std::string_view tensor) { return std::string(tensor) + std::string(kOutlierValsSuffix); }
// True for the two companion tensors (NAME.outlier_cols / NAME.outlier_vals).
bool is_outlier_tensor(std::string_view name);

// Data bytes of the companions of a matrix with `rows` rows and k outlier columns.
inline uint64_t outlier_cols_bytes(int k) { return 4 * static_cast<uint64_t>(k); }
inline uint64_t outlier_vals_bytes(int k, int64_t rows) { return 2 * static_cast<uint64_t>(k) * static_cast<uint64_t>(rows); }
inline uint64_t outlier_bytes(int k, int64_t rows) { return outlier_cols_bytes(k) + outlier_vals_bytes(k, rows); }

// Whether a tensor of this shape, stored in `type`, can keep k outlier columns: a 2-D matrix
// quantized to a block type, with rows longer than k.
inline bool can_keep_outlier_columns(const std::vector<int64_t>& shape, const TypeTraits& type, int k) {
  return k > 0 && shape.size() == 2 && type.quantized && shape[0] > k;
}

// The K columns of x (rows x n, row-major F32) with the largest w_j * max_r x[r, j]^2, ascending.
// importance: n weights or null (all 1). K is capped at n.
std::vector<int32_t> select_outlier_columns(const float* x, int64_t rows, int64_t n, const float* importance, int k);

}  // namespace mixq
