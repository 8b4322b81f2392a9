#include "mixq/formats/outliers.h"

#include <algorithm>
#include <numeric>

namespace mixq {

bool is_outlier_tensor(std::string_view name) {
  return name.ends_with(kOutlierColsSuffix) || name.ends_with(kOutlierValsSuffix);
}

std::vector<int32_t> select_outlier_columns(const float* x, int64_t rows, int64_t n, const float* importance, int k) {
  k = static_cast<int>(std::min<int64_t>(std::max(k, 0), n));
  if (k == 0) return {};
  std::vector<double> peak(static_cast<size_t>(n), 0.0);
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = x + r * n;
    for (int64_t j = 0; j < n; ++j) {
      peak[static_cast<size_t>(j)] = std::max(peak[static_cast<size_t>(j)], static_cast<double>(row[j]) * row[j]);
    }
  }
  if (importance != nullptr) {
    for (int64_t j = 0; j < n; ++j) peak[static_cast<size_t>(j)] *= importance[j];
  }
  std::vector<int32_t> order(static_cast<size_t>(n));
  std::iota(order.begin(), order.end(), 0);
  // Largest score first; ties to the lower index, so the choice is deterministic.
  std::partial_sort(order.begin(), order.begin() + k, order.end(), [&](int32_t a, int32_t b) {
    const double pa = peak[static_cast<size_t>(a)], pb = peak[static_cast<size_t>(b)];
    return pa != pb ? pa > pb : a < b;
  });
  order.resize(static_cast<size_t>(k));
  std::sort(order.begin(), order.end());
  return order;
}

}  // namespace mixq
