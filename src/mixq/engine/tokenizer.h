// Tokenizers built from GGUF metadata (tokenizer.ggml.*).
//
// SentencePiece-style ("llama"): the text gets a leading space (tokenizer.ggml.add_space_prefix,
// default true), spaces become U+2581, then adjacent pieces are merged greedily by the score of
// the merged token (highest first, leftmost on ties); pieces that never form a token fall back to
// byte tokens <0xXX>.
//
// GPT-2 byte-level BPE ("gpt2"): a pre-tokenizer (tokenizer.ggml.pre, see unicode.h) cuts the text
// into words; each byte of a word becomes one symbol of GPT-2's 256-character byte alphabet (the
// token for that byte); then the adjacent pair with the lowest merge rank (tokenizer.ggml.merges,
// "left right", rank = index; leftmost on ties) is merged, again and again, with a priority queue
// and a hash map from (left id, right id) to (rank, merged id): O(n log n) per word. A byte whose
// letter is not a token is dropped (llama.cpp and HF tokenizers do the same). Decoding maps the
// alphabet back to bytes; invalid UTF-8 in the input survives the round trip byte for byte.
//
// RWKV ("rwkv", llama.cpp's name for RWKV vocabularies): every token is a byte string, stored
// escaped (io/rwkv_vocab.h); text is cut greedily into the longest token at each position, with
// no BOS. A 256-token byte-level vocabulary (id = byte value) is the special case rwkv.cpp's
// tiny models use.
//
// All: control and user-defined tokens written literally in the text are kept whole. BOS is added
// when the caller asks for it and the vocabulary wants it (tokenizer.ggml.add_bos_token; when absent
// true for "llama", false for "gpt2", as in llama.cpp).
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
  // Throws std::runtime_error when the metadata lacks a vocabulary or names an unsupported model
  // or pre-tokenizer.
  static Tokenizer from_gguf(const GgufFile& f);

  // add_bos: prepend BOS if the vocabulary adds one (see add_bos_token()).
  std::vector<int32_t> encode(std::string_view text, bool add_bos) const;
  std::string decode_token(int32_t id) const;
  std::string decode(const std::vector<int32_t>& ids) const;

  int32_t bos() const { return bos_; }
  int32_t eos() const { return eos_; }
  int32_t unk() const { return unk_; }
  int32_t pad() const { return pad_; }
  bool add_bos_token() const { return add_bos_; }
  size_t size() const { return tokens_.size(); }
  const std::string& model() const { return model_; }
  const std::string& pre() const { return pre_; }  // "gpt2" models only: the pre-tokenizer's name

 private:
  enum class Pre { kNone, kGpt2, kDefault, kSmollm };
  struct Merge {
    int32_t rank, id;
  };

  void encode_spm_fragment(std::string_view text, std::vector<int32_t>& out) const;
  void encode_bpe_fragment(std::string_view text, std::vector<int32_t>& out) const;
  void encode_bpe_word(std::string_view word, std::vector<int32_t>& out) const;
  void encode_rwkv_fragment(std::string_view text, std::vector<int32_t>& out) const;
  int32_t find(std::string_view piece) const;

  std::string model_;
  std::string pre_;
  Pre pre_kind_ = Pre::kNone;
  std::vector<std::string> tokens_;
  std::vector<float> scores_;
  std::vector<int32_t> types_;
  std::unordered_map<std::string, int32_t> ids_;
  std::unordered_map<uint64_t, Merge> merges_;  // key: left id << 32 | right id
  std::vector<int32_t> specials_;  // control / user-defined tokens, longest first
  int32_t byte_tokens_[256];       // the token of each byte: <0xXX> (llama) or its alphabet letter (gpt2)
  int32_t bos_ = -1, eos_ = -1, unk_ = -1, pad_ = -1;
  bool add_bos_ = true;
  bool add_space_prefix_ = true;
  bool rwkv_ = false;          // "rwkv": tokens_ hold the unescaped bytes
  size_t rwkv_max_len_ = 0;    // the longest token, in bytes
};

}  // namespace mixq
