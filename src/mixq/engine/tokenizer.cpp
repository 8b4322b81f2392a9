#include "mixq/engine/tokenizer.h"

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <queue>
#include <stdexcept>

#include <fmt/format.h>

#include "mixq/engine/unicode.h"
#include "mixq/io/rwkv_vocab.h"

namespace mixq {

namespace {

constexpr int32_t kTypeControl = 3, kTypeUserDefined = 4, kTypeByte = 6;
const std::string kSpaceMark = "\xe2\x96\x81";  // U+2581, SentencePiece's visible space
constexpr const char* kSupportedPre = "gpt-2, default, smollm";

size_t utf8_length(unsigned char lead) {
  if (lead < 0x80) return 1;
  if ((lead >> 5) == 0x6) return 2;
  if ((lead >> 4) == 0xE) return 3;
  if ((lead >> 3) == 0x1E) return 4;
  return 1;  // a stray continuation byte: its own piece (it will fall back to a byte token)
}

uint64_t pair_key(int32_t left, int32_t right) {
  return static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32 | static_cast<uint32_t>(right);
}

// The byte a SentencePiece byte token stands for: exactly "<0x" + two hex digits + ">", else -1.
int parse_byte_token(std::string_view t) {
  if (t.size() != 6 || t.substr(0, 3) != "<0x" || t[5] != '>') return -1;
  auto hex = [](char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  const int hi = hex(t[3]), lo = hex(t[4]);
  return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
}

// An array key whose elements all have one of the wanted types; null when absent.
const std::vector<GgufValue>* typed_array(const GgufFile& f, const char* key, bool (*ok)(const GgufValue&),
                                          const char* expected) {
  const GgufValue* v = f.find(key);
  if (v == nullptr) return nullptr;
  if (v->type() != GgufValueType::ARRAY) {
    throw std::runtime_error(fmt::format("{}: {} is a {}, expected an array of {}", f.label(), key,
                                         gguf_value_type_name(v->type()), expected));
  }
  const auto& a = v->as_array();
  for (size_t i = 0; i < a.size(); ++i) {
    if (!ok(a[i])) {
      throw std::runtime_error(fmt::format("{}: {}[{}] is a {}, expected {}", f.label(), key, i,
                                           gguf_value_type_name(a[i].type()), expected));
    }
  }
  return &a;
}

bool is_string(const GgufValue& v) { return v.type() == GgufValueType::STRING; }
bool is_number(const GgufValue& v) { return v.is_integer() || v.is_float(); }
bool is_int(const GgufValue& v) { return v.is_integer(); }

}  // namespace

Tokenizer Tokenizer::from_gguf(const GgufFile& f) {
  Tokenizer t;
  const GgufValue* model = f.find("tokenizer.ggml.model");
  const GgufValue* tokens = f.find("tokenizer.ggml.tokens");
  if (!model || !tokens) {
    throw std::runtime_error(fmt::format("{}: no tokenizer in the metadata (tokenizer.ggml.model / .tokens)", f.label()));
  }
  if (model->type() != GgufValueType::STRING) {
    throw std::runtime_error(fmt::format("{}: tokenizer.ggml.model is a {}, expected a string (llama or gpt2)", f.label(),
                                         gguf_value_type_name(model->type())));
  }
  t.model_ = model->as_string();
  const bool spm = t.model_ == "llama";
  t.rwkv_ = t.model_ == "rwkv";
  if (!spm && !t.rwkv_ && t.model_ != "gpt2") {
    throw std::runtime_error(fmt::format("{}: tokenizer model '{}' is not supported yet (supported: llama, gpt2, rwkv)",
                                         f.label(), t.model_));
  }
  if (!spm && !t.rwkv_) {
    // llama.cpp's names for the pre-tokenizers implemented here (see encode_bpe_fragment).
    const GgufValue* pre = f.find("tokenizer.ggml.pre");
    if (pre != nullptr && pre->type() != GgufValueType::STRING) {
      throw std::runtime_error(fmt::format("{}: tokenizer.ggml.pre is a {}, expected a string", f.label(),
                                           gguf_value_type_name(pre->type())));
    }
    t.pre_ = pre ? pre->as_string() : "";
    if (t.pre_ == "gpt-2") {
      t.pre_kind_ = Pre::kGpt2;
    } else if (t.pre_ == "default" || t.pre_.empty()) {
      t.pre_kind_ = Pre::kDefault;
    } else if (t.pre_ == "smollm") {
      t.pre_kind_ = Pre::kSmollm;
    } else {
      throw std::runtime_error(fmt::format("{}: pre-tokenizer '{}' (tokenizer.ggml.pre) is not supported yet "
                                           "(supported: {})",
                                           f.label(), t.pre_, kSupportedPre));
    }
  }
  for (const auto& v : *typed_array(f, "tokenizer.ggml.tokens", is_string, "strings")) t.tokens_.push_back(v.as_string());
  if (t.rwkv_) {
    for (size_t i = 0; i < t.tokens_.size(); ++i) {
      try {
        t.tokens_[i] = rwkv_unescape_token(t.tokens_[i]);
      } catch (const std::invalid_argument& e) {
        throw std::runtime_error(fmt::format("{}: tokenizer.ggml.tokens[{}]: {}", f.label(), i, e.what()));
      }
      t.rwkv_max_len_ = std::max(t.rwkv_max_len_, t.tokens_[i].size());
    }
  }
  const size_t n = t.tokens_.size();
  if (n == 0) throw std::runtime_error(fmt::format("{}: tokenizer.ggml.tokens is empty, expected a vocabulary", f.label()));
  if (n > static_cast<size_t>(INT32_MAX)) {
    throw std::runtime_error(fmt::format("{}: tokenizer.ggml.tokens lists {} tokens, more than a token id can index",
                                         f.label(), n));
  }
  // Per-token arrays: one entry per token, or absent (scores 0, every token normal).
  auto same_length = [&](const char* key, size_t size) {
    if (size != n) {
      throw std::runtime_error(fmt::format("{}: {} has {} entries, but tokenizer.ggml.tokens has {}: expected one per "
                                           "token",
                                           f.label(), key, size, n));
    }
  };
  t.scores_.assign(n, 0.0f);
  t.types_.assign(n, 1);
  if (const auto* a = typed_array(f, "tokenizer.ggml.scores", is_number, "numbers")) {
    same_length("tokenizer.ggml.scores", a->size());
    for (size_t i = 0; i < n; ++i) {
      t.scores_[i] = static_cast<float>((*a)[i].as_float());
      if (std::isnan(t.scores_[i])) {
        throw std::runtime_error(fmt::format("{}: tokenizer.ggml.scores[{}] is NaN, expected a number", f.label(), i));
      }
    }
  }
  if (const auto* a = typed_array(f, "tokenizer.ggml.token_type", is_int, "integers")) {
    same_length("tokenizer.ggml.token_type", a->size());
    for (size_t i = 0; i < n; ++i) {
      const int64_t ty = (*a)[i].type() == GgufValueType::UINT64 && (*a)[i].as_uint() > INT32_MAX ? -1 : (*a)[i].as_int();
      t.types_[i] = ty < INT32_MIN || ty > INT32_MAX ? -1 : static_cast<int32_t>(ty);
    }
  }
  // Special token ids: in range, or "none" (-1; 0xFFFFFFFF as a u32). A default outside a small
  // vocabulary means none.
  auto id_key = [&](const char* key, int32_t fallback) -> int32_t {
    const GgufValue* v = f.find(key);
    if (v == nullptr) return fallback >= 0 && static_cast<size_t>(fallback) < n ? fallback : -1;
    if (!v->is_integer()) {
      throw std::runtime_error(
          fmt::format("{}: {} is a {}, expected a token id", f.label(), key, gguf_value_type_name(v->type())));
    }
    const uint64_t u = v->type() == GgufValueType::UINT64 ? v->as_uint() : static_cast<uint64_t>(v->as_int());
    if (u == UINT64_MAX || u == UINT32_MAX) return -1;
    if (u >= n) {
      throw std::runtime_error(fmt::format("{}: {} is {}, but the vocabulary has {} tokens: expected an id from 0 to {}",
                                           f.label(), key, v->to_string(), n, n - 1));
    }
    return static_cast<int32_t>(u);
  };
  t.bos_ = id_key("tokenizer.ggml.bos_token_id", spm ? 1 : -1);
  t.eos_ = id_key("tokenizer.ggml.eos_token_id", spm ? 2 : -1);
  t.unk_ = id_key("tokenizer.ggml.unknown_token_id", spm ? 0 : -1);
  t.pad_ = id_key("tokenizer.ggml.padding_token_id", -1);
  auto bool_key = [&](const char* key, bool fallback) {
    const GgufValue* v = f.find(key);
    return v && v->type() == GgufValueType::BOOL ? v->as_bool() : fallback;
  };
  t.add_bos_ = bool_key("tokenizer.ggml.add_bos_token", spm);
  t.add_space_prefix_ = bool_key("tokenizer.ggml.add_space_prefix", spm);
  for (size_t i = 0; i < n; ++i) {
    const auto id = static_cast<int32_t>(i);
    t.ids_.emplace(t.tokens_[i], id);
    if ((t.types_[i] == kTypeControl || t.types_[i] == kTypeUserDefined) && !t.tokens_[i].empty()) {
      t.specials_.push_back(id);
    }
  }
  std::stable_sort(t.specials_.begin(), t.specials_.end(),
                   [&](int32_t a, int32_t b) { return t.tokens_[a].size() > t.tokens_[b].size(); });
  std::fill(std::begin(t.byte_tokens_), std::end(t.byte_tokens_), -1);
  if (t.rwkv_) {
    for (int b = 0; b < 256; ++b) t.byte_tokens_[b] = t.find(std::string(1, static_cast<char>(b)));
    return t;
  }
  if (spm) {
    for (size_t i = 0; i < n; ++i) {
      if (t.types_[i] != kTypeByte) continue;
      const int byte = parse_byte_token(t.tokens_[i]);
      if (byte < 0) {
        throw std::runtime_error(fmt::format("{}: token {} '{}' is a byte token (tokenizer.ggml.token_type {}), but "
                                             "byte tokens are spelled <0xHH> with two hex digits",
                                             f.label(), i, t.tokens_[i], kTypeByte));
      }
      t.byte_tokens_[byte] = static_cast<int32_t>(i);
    }
    return t;
  }
  for (int b = 0; b < 256; ++b) t.byte_tokens_[b] = t.find(unicode::byte_piece(static_cast<uint8_t>(b)));
  const GgufValue* merges = f.find("tokenizer.ggml.merges");
  if (!merges) throw std::runtime_error(fmt::format("{}: a gpt2 tokenizer without tokenizer.ggml.merges", f.label()));
  const auto& list = *typed_array(f, "tokenizer.ggml.merges", is_string, "strings (\"left right\")");
  t.merges_.reserve(list.size());
  for (size_t rank = 0; rank < list.size(); ++rank) {
    const std::string& m = list[rank].as_string();
    const size_t space = m.find(' ', 1);
    if (space == std::string::npos) continue;
    const int32_t left = t.find(std::string_view(m).substr(0, space));
    const int32_t right = t.find(std::string_view(m).substr(space + 1));
    const int32_t merged = t.find(m.substr(0, space) + m.substr(space + 1));
    // A merge whose parts or result are not tokens could never produce a token: skip it.
    if (left < 0 || right < 0 || merged < 0) continue;
    t.merges_.emplace(pair_key(left, right), Merge{static_cast<int32_t>(rank), merged});  // first rank wins
  }
  return t;
}

int32_t Tokenizer::find(std::string_view piece) const {
  auto it = ids_.find(std::string(piece));
  return it == ids_.end() ? -1 : it->second;
}

void Tokenizer::encode_spm_fragment(std::string_view text, std::vector<int32_t>& out) const {
  struct Symbol {
    size_t start, len;
    int prev, next;
  };
  std::vector<Symbol> sym;
  for (size_t at = 0; at < text.size();) {
    const size_t len = std::min(utf8_length(static_cast<unsigned char>(text[at])), text.size() - at);
    const int index = static_cast<int>(sym.size());
    sym.push_back({at, len, index - 1, at + len == text.size() ? -1 : index + 1});
    at += len;
  }
  struct Bigram {
    int left, right;
    float score;
    size_t size;
  };
  // Highest score first; on ties the leftmost pair.
  auto worse = [](const Bigram& a, const Bigram& b) {
    return a.score < b.score || (a.score == b.score && a.left > b.left);
  };
  std::priority_queue<Bigram, std::vector<Bigram>, decltype(worse)> queue(worse);
  // How a merged piece was made, to split it back when it is not itself a token.
  std::unordered_map<std::string, std::pair<int, int>> made_from;
  auto try_pair = [&](int l, int r) {
    if (l < 0 || r < 0) return;
    const std::string_view piece = text.substr(sym[l].start, sym[l].len + sym[r].len);
    const int32_t id = find(piece);
    if (id < 0) return;
    queue.push({l, r, scores_[static_cast<size_t>(id)], piece.size()});
    made_from[std::string(piece)] = {l, r};
  };
  for (int i = 1; i < static_cast<int>(sym.size()); ++i) try_pair(i - 1, i);
  while (!queue.empty()) {
    const Bigram b = queue.top();
    queue.pop();
    Symbol& l = sym[b.left];
    Symbol& r = sym[b.right];
    if (l.len == 0 || r.len == 0 || l.len + r.len != b.size) continue;  // stale: a side was merged
    l.len += r.len;
    r.len = 0;
    l.next = r.next;
    if (r.next >= 0) sym[r.next].prev = b.left;
    try_pair(l.prev, b.left);
    try_pair(b.left, l.next);
  }
  // A piece that is not a token is split back into its parts, down to bytes.
  auto emit = [&](auto&& self, int i) -> void {
    const std::string_view piece = text.substr(sym[i].start, sym[i].len);
    if (const int32_t id = find(piece); id >= 0) {
      out.push_back(id);
      return;
    }
    if (auto it = made_from.find(std::string(piece)); it != made_from.end()) {
      self(self, it->second.first);
      self(self, it->second.second);
      return;
    }
    // A byte without a byte token becomes the unknown token, or is dropped when there is none.
    for (unsigned char c : piece) {
      if (const int32_t id = byte_tokens_[c] >= 0 ? byte_tokens_[c] : unk_; id >= 0) out.push_back(id);
    }
  };
  if (sym.empty()) return;
  for (int i = 0; i != -1; i = sym[i].next) emit(emit, i);
}

// Pre-tokenizes a fragment (text between special tokens) into words, with llama.cpp's regex lists
// (src/llama-vocab.cpp, llm_tokenizer_bpe), each pass cutting the pieces of the one before:
//   gpt-2:   the GPT-2 pattern
//   smollm:  \p{N}  (every digit alone), then the GPT-2 pattern
//   default: [\p{P}\$\+<=>\^~\|]+, then the GPT-2 pattern, then \p{N}+, then [0-9][0-9][0-9]
void Tokenizer::encode_bpe_fragment(std::string_view text, std::vector<int32_t>& out) const {
  using unicode::CodePoint;
  using unicode::CodePointClass;
  const std::vector<CodePoint> cps = unicode::decode_utf8(text);
  if (cps.empty()) return;
  std::vector<unicode::Piece> pieces{{0, static_cast<uint32_t>(cps.size())}};
  auto number = [](const CodePoint& c) { return c.cls == CodePointClass::kNumber; };
  switch (pre_kind_) {
    case Pre::kSmollm:
      pieces = unicode::isolate(cps, pieces, number, /*runs=*/false);
      pieces = unicode::split_gpt2(cps, pieces);
      break;
    case Pre::kDefault: {
      auto punct = [](const CodePoint& c) {
        if (c.cls == CodePointClass::kPunctuation) return true;
        switch (c.value) {
          case '$': case '+': case '<': case '=': case '>': case '^': case '~': case '|': return true;
          default: return false;
        }
      };
      pieces = unicode::isolate(cps, pieces, punct, /*runs=*/true);
      pieces = unicode::split_gpt2(cps, pieces);
      pieces = unicode::isolate(cps, pieces, number, /*runs=*/true);
      pieces = unicode::split_digit_triples(cps, pieces);
      break;
    }
    case Pre::kGpt2:
    case Pre::kNone:  // not a BPE vocabulary: never called
      pieces = unicode::split_gpt2(cps, pieces);
      break;
  }
  for (const auto& p : pieces) {
    const size_t begin = cps[p.begin].offset;
    const size_t end = cps[p.end - 1].offset + cps[p.end - 1].size;
    encode_bpe_word(text.substr(begin, end - begin), out);
  }
}

void Tokenizer::encode_bpe_word(std::string_view word, std::vector<int32_t>& out) const {
  // One symbol per byte (its letter of the byte alphabet), in a doubly linked list.
  struct Symbol {
    int32_t id;  // -1: the byte has no token (never merges, and is dropped)
    int prev, next;
    bool gone;  // merged into its left neighbour
  };
  std::vector<Symbol> sym(word.size());
  for (size_t i = 0; i < word.size(); ++i) {
    sym[i] = {byte_tokens_[static_cast<unsigned char>(word[i])], static_cast<int>(i) - 1,
              i + 1 == word.size() ? -1 : static_cast<int>(i) + 1, false};
  }
  struct Candidate {
    int32_t rank, merged;
    int left, right;
    int32_t left_id, right_id;  // what the two symbols were when queued, to spot stale entries
  };
  // Lowest rank first; on ties the leftmost pair.
  auto worse = [](const Candidate& a, const Candidate& b) {
    return a.rank > b.rank || (a.rank == b.rank && a.left > b.left);
  };
  std::priority_queue<Candidate, std::vector<Candidate>, decltype(worse)> queue(worse);
  auto try_pair = [&](int l, int r) {
    if (l < 0 || r < 0 || sym[l].id < 0 || sym[r].id < 0) return;
    const auto it = merges_.find(pair_key(sym[l].id, sym[r].id));
    if (it != merges_.end()) queue.push({it->second.rank, it->second.id, l, r, sym[l].id, sym[r].id});
  };
  for (int i = 1; i < static_cast<int>(sym.size()); ++i) try_pair(i - 1, i);
  while (!queue.empty()) {
    const Candidate c = queue.top();
    queue.pop();
    Symbol& l = sym[c.left];
    Symbol& r = sym[c.right];
    // Stale when either side has merged since (a symbol's id only changes by growing).
    if (l.gone || r.gone || l.next != c.right || l.id != c.left_id || r.id != c.right_id) continue;
    l.id = c.merged;
    r.gone = true;
    l.next = r.next;
    if (r.next >= 0) sym[r.next].prev = c.left;
    try_pair(l.prev, c.left);
    try_pair(c.left, l.next);
  }
  // A byte whose letter is not in the vocabulary is dropped, as llama.cpp and HF tokenizers do
  // (SmolLM2's vocabulary lacks 21 of them, e.g. 0x04 and 0xC0): the unknown token there is
  // <|endoftext|>, which must not appear in the middle of a text.
  for (int i = sym.empty() ? -1 : 0; i != -1; i = sym[i].next) {
    if (sym[i].id >= 0) out.push_back(sym[i].id);
  }
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_bos) const {
  std::vector<int32_t> out;
  if (add_bos && add_bos_ && bos_ >= 0) out.push_back(bos_);
  const bool bpe = pre_kind_ != Pre::kNone;
  bool after_special = true;  // SentencePiece adds a space before text that starts a sequence
  auto plain = [&](std::string_view fragment) {
    if (fragment.empty()) return;
    if (rwkv_) {
      encode_rwkv_fragment(fragment, out);
    } else if (bpe) {
      encode_bpe_fragment(fragment, out);
    } else {
      std::string s = add_space_prefix_ && after_special ? " " : "";
      s += fragment;
      std::string escaped;
      for (char c : s) escaped += c == ' ' ? kSpaceMark : std::string(1, c);
      encode_spm_fragment(escaped, out);
    }
    after_special = false;
  };
  // Where each special token next occurs at or after `at` (searched again only once passed).
  std::vector<size_t> next(specials_.size());
  for (size_t k = 0; k < specials_.size(); ++k) next[k] = text.find(tokens_[static_cast<size_t>(specials_[k])]);
  size_t at = 0;
  while (at < text.size()) {
    // The earliest special token in the rest of the text (longest first at the same position).
    size_t best_pos = std::string_view::npos;
    int32_t best_id = -1;
    for (size_t k = 0; k < specials_.size(); ++k) {
      const std::string& s = tokens_[static_cast<size_t>(specials_[k])];
      if (next[k] != std::string_view::npos && next[k] < at) next[k] = text.find(s, at);
      if (next[k] < best_pos) {
        best_pos = next[k];
        best_id = specials_[k];
      }
    }
    if (best_id < 0) break;
    plain(text.substr(at, best_pos - at));
    out.push_back(best_id);
    after_special = true;
    at = best_pos + tokens_[static_cast<size_t>(best_id)].size();
  }
  plain(text.substr(at));
  return out;
}

std::string Tokenizer::decode_token(int32_t id) const {
  if (id < 0 || static_cast<size_t>(id) >= tokens_.size()) return {};
  const std::string& t = tokens_[static_cast<size_t>(id)];
  const int32_t type = types_[static_cast<size_t>(id)];
  if (type == kTypeControl) return {};
  if (rwkv_) return t;
  if (pre_kind_ != Pre::kNone) {
    if (type == kTypeUserDefined) return t;  // stored as plain text, not in the byte alphabet
    std::string s;
    for (const auto& c : unicode::decode_utf8(t)) {
      const int b = c.size > 1 || c.value < 0x80 ? unicode::code_point_to_byte(c.value) : -1;
      if (b >= 0) {
        s += static_cast<char>(b);
      } else {
        s.append(t, c.offset, c.size);  // not a letter of the byte alphabet: keep it as written
      }
    }
    return s;
  }
  if (type == kTypeByte) {
    if (const int byte = parse_byte_token(t); byte >= 0) return std::string(1, static_cast<char>(byte));
  }
  std::string s;
  for (size_t i = 0; i < t.size();) {
    if (t.compare(i, kSpaceMark.size(), kSpaceMark) == 0) {
      s += ' ';
      i += kSpaceMark.size();
    } else {
      s += t[i++];
    }
  }
  return s;
}

// Longest token first at each position, as llama.cpp's RWKV tokenizer (and RWKV's own
// TRIE_TOKENIZER) do; a byte no token starts with becomes unk (or is dropped without one).
void Tokenizer::encode_rwkv_fragment(std::string_view text, std::vector<int32_t>& out) const {
  for (size_t at = 0; at < text.size();) {
    size_t len = std::min(rwkv_max_len_, text.size() - at);
    int32_t id = -1;
    for (; len > 0; --len) {
      if ((id = find(text.substr(at, len))) >= 0) break;
    }
    if (id >= 0) {
      out.push_back(id);
      at += len;
      continue;
    }
    if (unk_ >= 0) out.push_back(unk_);
    ++at;
  }
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids) const {
  std::string s;
  for (int32_t id : ids) s += decode_token(id);
  return s;
}

}  // namespace mixq
