// Hugging Face tokenizer.json (+ tokenizer_config.json) to llama.cpp's GGUF vocabulary keys:
// SentencePiece-converted BPE with byte fallback becomes llama.cpp's "llama" vocabulary, byte-level
// BPE its "gpt2" vocabulary with the pre-tokenizer name llama.cpp would give it.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "mixq/convert/hf_config.h"

namespace mixq {
class GgufWriter;
}

namespace mixq::hf {

struct Vocab {
  std::string model;  // llama.cpp's tokenizer.ggml.model: "llama" or "gpt2"
  std::string pre;
  std::vector<std::string> tokens;
  std::vector<float> scores;  // "llama" only
  std::vector<int32_t> types;
  std::vector<std::string> merges;  // "gpt2" only
  std::optional<uint32_t> unk_id;
};

// Reads dir/tokenizer.json for a model of n_vocab tokens (the embedding's rows); conditions that
// still give a usable file are appended to `warnings`.
Vocab read_tokenizer(const std::filesystem::path& dir, int64_t n_vocab, std::vector<std::string>& warnings);

// Writes the tokenizer.ggml.* keys (special ids from config and dir/tokenizer_config.json).
void write_tokenizer(GgufWriter& w, const Vocab& v, const ConfigJson& config, const std::filesystem::path& dir);

}  // namespace mixq::hf
