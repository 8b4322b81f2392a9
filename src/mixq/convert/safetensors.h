// Hugging Face model directories (LlamaForCausalLM-style): config.json, model.safetensors or
// sharded model-*.safetensors with model.safetensors.index.json, and tokenizer.json (BPE).
// Converted to a GGUF llama.cpp loads: its tensor names, its q/k row order, its tokenizer keys.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "mixq/formats/type_table.h"
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

// Parses and validates one .safetensors file (header length, JSON, dtypes, shapes against byte
// ranges, ranges inside the file and not overlapping). Throws std::runtime_error.
std::vector<SafetensorsTensor> read_safetensors(const MappedFile& file, const std::string& label);

size_t convert_safetensors_dir(const std::filesystem::path& dir, const std::filesystem::path& out,
                               std::optional<TypeId> outtype);

}  // namespace mixq
