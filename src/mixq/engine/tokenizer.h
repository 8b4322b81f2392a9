// Tokenizers built from GGUF metadata (tokenizer.ggml.*).
//
// SentencePiece-style ("llama"): the text gets a leading space (tokenizer.ggml.add_space_prefix,
// default true), spaces become U+2581, then adjacent pieces are merged greedily by the score of
// the merged token (highest first, leftmost on ties); pieces that never form a token fall back to
// byte tokens <0xXX>. Control and user-defined tokens written literally in the text are kept whole.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "mixq/io/gguf.h"

namespace mixq {

class Tokenizer {
 public:
  // Throws std::runtime_error when the metadata lacks a vocabulary or names an unsupported model.
  static Tokenizer from_gguf(const GgufFile& f);

  std::vector<int32_t> encode(std::string_view text, bool add_bos) const;
  std::string decode_token(int32_t id) const;
  std::string decode(const std::vector<int32_t>& ids) const;

  int32_t bos() const { return bos_; }
  int32_t eos() const { return eos_; }
  size_t size() const { return tokens_.size(); }
  const std::string& model() const { return model_; }

 private:
  void encode_spm_fragment(std::string_view text, std::vector<int32_t>& out) const;
  int32_t find(std::string_view piece) const;

  std::string model_;
  std::vector<std::string> tokens_;
  std::vector<float> scores_;
  std::vector<int32_t> types_;
  std::unordered_map<std::string, int32_t> ids_;
  std::vector<int32_t> specials_;  // control / user-defined tokens, longest first
  int32_t byte_tokens_[256];
  int32_t bos_ = -1, eos_ = -1, unk_ = -1;
  bool add_space_prefix_ = true;
};

}  // namespace mixq
