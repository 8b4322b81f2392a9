// rwkv.cpp's legacy model files: u32 magic "ggmf", version 100/101, n_vocab, n_embed, n_layer,
// data type; then per tensor: i32 n_dims, i32 name length, i32 type, dims (ne0 first), name, data.
// Converted to GGUF with every tensor's name and bytes kept (quantized tensors stay quantized,
// bit for bit) and the hyperparameters as metadata.
#pragma once

#include <filesystem>
#include <optional>

#include "mixq/formats/type_table.h"

namespace mixq {

inline constexpr uint32_t kRwkvCppMagic = 0x67676d66;

// Returns the number of tensors written; throws std::runtime_error for malformed files.
size_t convert_rwkv_cpp(const std::filesystem::path& input, const std::filesystem::path& out,
                        std::optional<TypeId> outtype);

}  // namespace mixq
