// llama2.c checkpoints ("v0": 7 int32 header fields, then F32 tensors) and their tokenizer.bin,
// converted to a GGUF laid out as llama.cpp's convert-llama2c-to-ggml lays it out.
#pragma once

#include <filesystem>
#include <optional>

#include "mixq/formats/type_table.h"

namespace mixq {

struct Llama2cConfig {
  int dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len;
  bool shared_classifier;  // vocab_size > 0 in the file: the head reuses the embedding
};

// Reads and checks the header. Throws std::runtime_error naming the file and the problem.
Llama2cConfig read_llama2c_config(const std::filesystem::path& checkpoint);

// Writes `out` (temp file + rename). outtype F16/BF16 stores the matrices in that type; 1-D
// tensors stay F32. Returns the number of tensors written.
size_t convert_llama2c(const std::filesystem::path& checkpoint, const std::filesystem::path& tokenizer,
                       const std::filesystem::path& out, std::optional<TypeId> outtype);

}  // namespace mixq
