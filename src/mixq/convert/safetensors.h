// Hugging Face model directories (LlamaForCausalLM / MistralForCausalLM): config.json,
// model.safetensors or sharded model-*.safetensors with model.safetensors.index.json, and
// tokenizer.json (BPE; SentencePiece-converted ones with byte fallback become llama.cpp's "llama"
// vocabulary, byte-level ones its "gpt2" vocabulary). Converted to a GGUF llama.cpp loads: its
// tensor names, its q/k row order, its tokenizer keys.
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

// Writes `out` (temp file + rename). outtype: nullopt keeps each matrix's stored type; 1-D
// tensors are always F32. Conditions that still give a loadable file but may not behave as the
// original (an unrecognized pre-tokenizer) are appended to `warnings`. Returns the tensor count.
size_t convert_safetensors_dir(const std::filesystem::path& dir, const std::filesystem::path& out,
                               std::optional<TypeId> outtype, std::vector<std::string>& warnings);

}  // namespace mixq
