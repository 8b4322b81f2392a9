// Hugging Face model directories (LlamaForCausalLM / MistralForCausalLM): config.json
// (hf_config.h), model.safetensors or sharded model-*.safetensors with model.safetensors.index.json
// (safetensors.h), and tokenizer.json (hf_tokenizer.h). Converted to a GGUF llama.cpp loads: its
// tensor names, its q/k row order, its tokenizer keys.
#pragma once

#include <cstddef>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "mixq/formats/type_table.h"

namespace mixq {

// Writes `out` (temp file + rename). outtype: nullopt keeps each matrix's stored type; 1-D
// tensors are always F32. Conditions that still give a loadable file but may not behave as the
// original (an unrecognized pre-tokenizer) are appended to `warnings`. Returns the tensor count.
size_t convert_safetensors_dir(const std::filesystem::path& dir, const std::filesystem::path& out,
                               std::optional<TypeId> outtype, std::vector<std::string>& warnings);

}  // namespace mixq
