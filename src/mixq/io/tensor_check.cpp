#include "mixq/io/tensor_check.h"

#include <cmath>
#include <vector>

#include <fmt/format.h>

namespace mixq {

std::optional<std::string> find_non_finite_tensor(const GgufFile& file) {
  std::vector<float> row;
  for (const auto& t : file.tensors()) {
    if (!t.type->can_dequantize() || t.data == nullptr) continue;
    const int64_t n = t.row_length(), rows = t.n_rows();
    if (n <= 0 || !t.type->fits_row(n)) continue;
    const size_t row_bytes = t.type->row_bytes(n);
    row.resize(static_cast<size_t>(n));
    for (int64_t r = 0; r < rows; ++r) {
      dequantize_rows(t.type->id, t.data + static_cast<size_t>(r) * row_bytes, row.data(), 1, n);
      for (int64_t i = 0; i < n; ++i) {
        if (!std::isfinite(row[static_cast<size_t>(i)])) {
          return fmt::format("tensor '{}' ({}) holds {} (element {} of {})", t.name, t.type->name,
                             std::isnan(row[static_cast<size_t>(i)]) ? "NaN" : "infinity", r * n + i, t.n_elements());
        }
      }
    }
  }
  return std::nullopt;
}

}  // namespace mixq
