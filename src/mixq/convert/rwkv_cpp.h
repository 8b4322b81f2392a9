// rwkv.cpp's legacy model files: u32 magic "ggmf", version 100/101, n_vocab, n_embed, n_layer,
// data type; then per tensor: i32 n_dims, i32 name length, i32 type, dims (ne0 first), name, data.
// Converted to GGUF with every tensor's name and bytes kept (quantized tensors stay quantized,
// bit for bit); rwkv.cpp's type numbers 0, 1, 2, 3, 7, 8, 9 are GGML's F32, F16, Q4_0, Q4_1,
// Q5_0, Q5_1, Q8_0. Metadata: general.architecture "rwkv4" / "rwkv5" / "rwkv6" / "rwkv7" (from
// the tensors each generation introduced), <arch>.block_count, .embedding_length, .vocab_size,
// .feed_forward_length, .wkv.head_size (RWKV-5/6), and mixq.source.{format, file_version,
// data_type}; for a 256-token (byte-level) vocabulary, tokenizer.ggml.model "rwkv" with one token
// per byte (id = byte value, no BOS). Names are not mapped to llama.cpp's RWKV names: its graphs want fused tensors
// (`mixq convert --layout llama.cpp` does that for RWKV-7 and RWKV-5.2: convert/rwkv_layout.h).
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
