// GGUF -> GGUF conversion between storage types: keep every type, dequantize everything to F32,
// or store the float tensors as F16 / BF16. Quantizing to block types is `mixq quantize`'s job.
#pragma once

#include <filesystem>
#include <optional>

#include "mixq/formats/type_table.h"
#include "mixq/io/gguf.h"

namespace mixq {

struct ConvertStats {
  size_t tensors = 0;
  size_t converted = 0;
  uint64_t bytes_written = 0;
};

// outtype: nullopt keeps every tensor's type (a faithful rewrite); F32 dequantizes every tensor;
// F16 / BF16 convert float tensors of two or more dimensions and leave the rest as they are
// (1-D norms and biases stay F32, as llama.cpp's converters do).
ConvertStats convert_gguf(const GgufFile& in, const std::filesystem::path& out, std::optional<TypeId> outtype);

}  // namespace mixq
