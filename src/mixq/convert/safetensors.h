// The .safetensors container: an 8-byte header length, a JSON header (dtype, shape, byte range
// per tensor), the data. Hugging Face model directories are converted by hf_convert.h.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "mixq/io/mapped_file.h"

namespace mixq {

// One tensor of a .safetensors file, as a view into its mapping.
struct SafetensorsTensor {
  std::string name;
  std::string dtype;            // "F32", "F16", "BF16", ...
  std::vector<int64_t> shape;   // as stored (row-major, outermost first)
  const uint8_t* data = nullptr;
  size_t nbytes = 0;
};

// Bytes of one element of a safetensors dtype ("F32" 4, "BF16" 2, ...); 0 for an unknown dtype.
size_t dtype_size(const std::string& dtype);

// Parses and validates one .safetensors file (header length, JSON, dtypes, shapes against byte
// ranges, ranges inside the file and not overlapping). Throws std::runtime_error.
std::vector<SafetensorsTensor> read_safetensors(const MappedFile& file, const std::string& label);

}  // namespace mixq
