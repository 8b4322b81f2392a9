#include "mixq/io/outlier_columns.h"

#include <algorithm>
#include <cstring>

#include <fmt/format.h>

namespace mixq {

bool has_outlier_columns(const GgufFile& f) {
  return std::any_of(f.tensors().begin(), f.tensors().end(), [](const GgufTensor& t) { return is_outlier_tensor(t.name); });
}

OutlierColumns load_outlier_columns(const GgufFile& f, const GgufTensor& t) {
  const GgufTensor* cols = f.find_tensor(outlier_cols_name(t.name));
  const GgufTensor* vals = f.find_tensor(outlier_vals_name(t.name));
  OutlierColumns out;
  if (cols == nullptr && vals == nullptr) return out;
  auto bad = [&](const std::string& what) {
    return GgufError(fmt::format("outlier columns of tensor '{}': {} (the file is damaged or was not written by mixq "
                                 "quantize --outliers; re-quantize it)",
                                 t.name, what));
  };
  if (cols == nullptr || vals == nullptr) {
    throw bad(fmt::format("'{}' is missing", cols == nullptr ? outlier_cols_name(t.name) : outlier_vals_name(t.name)));
  }
  if (t.shape.size() != 2) throw bad("only 2-D matrices can have them");
  const int64_t n = t.row_length(), rows = t.n_rows();
  if (cols->type->id != TypeId::I32 || cols->shape.size() != 1 || cols->shape[0] < 1 || cols->shape[0] > n) {
    throw bad(fmt::format("'{}' must be I32 of shape [K] with 1 <= K <= {}", cols->name, n));
  }
  const int64_t k = cols->shape[0];
  if (vals->shape != std::vector<int64_t>{k, rows} || !vals->type->can_dequantize() ||
      vals->type->row_bytes(k) * static_cast<size_t>(rows) != vals->nbytes) {
    throw bad(fmt::format("'{}' must be a float tensor of shape [{}, {}]", vals->name, k, rows));
  }
  out.cols.resize(static_cast<size_t>(k));
  std::memcpy(out.cols.data(), cols->data, static_cast<size_t>(k) * sizeof(int32_t));
  for (int64_t i = 0; i < k; ++i) {
    const int32_t c = out.cols[static_cast<size_t>(i)];
    if (c < 0 || c >= n) throw bad(fmt::format("column {} is outside 0 .. {}", c, n - 1));
    if (i > 0 && c <= out.cols[static_cast<size_t>(i - 1)]) throw bad("the columns are not ascending and distinct");
  }
  out.vals.resize(static_cast<size_t>(k * rows));
  const size_t row_bytes = vals->type->row_bytes(k);
  for (int64_t r = 0; r < rows; ++r) {
    vals->type->dequantize_row(vals->data + static_cast<size_t>(r) * row_bytes, out.vals.data() + r * k, k);
  }
  return out;
}

}  // namespace mixq
