// The outlier columns stored beside a quantized matrix in a GGUF file (layout and meaning:
// formats/outliers.h), read and validated for the engine.
#pragma once

#include <cstdint>
#include <vector>

#include "mixq/formats/outliers.h"
#include "mixq/io/gguf.h"

namespace mixq {

// A matrix's outlier columns as the engine uses them.
struct OutlierColumns {
  std::vector<int32_t> cols;   // ascending
  std::vector<float> vals;     // rows x K, row-major (the F16 values widened)
  int k() const { return static_cast<int>(cols.size()); }
};

// The outlier columns stored beside tensor t in f, or an empty set when it has none. Throws
// GgufError naming the tensor when the companion tensors are malformed (one without the other,
// wrong types or shapes, columns out of range, not ascending or repeated).
OutlierColumns load_outlier_columns(const GgufFile& f, const GgufTensor& t);

// Whether f stores outlier columns beside any tensor.
bool has_outlier_columns(const GgufFile& f);

}  // namespace mixq
