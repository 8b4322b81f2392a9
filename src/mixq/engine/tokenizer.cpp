#include "mixq/engine/tokenizer.h"

#include <algorithm>
#include <queue>
#include <stdexcept>

#include <fmt/format.h>

namespace mixq {

namespace {

constexpr int32_t kTypeControl = 3, kTypeUserDefined = 4, kTypeByte = 6;
const std::string kSpaceMark = "\xe2\x96\x81";  // U+2581, SentencePiece's visible space

size_t utf8_length(unsigned char lead) {
  if (lead < 0x80) return 1;
  if ((lead >> 5) == 0x6) return 2;
  if ((lead >> 4) == 0xE) return 3;
  if ((lead >> 3) == 0x1E) return 4;
  return 1;  // a stray continuation byte: its own piece (it will fall back to a byte token)
}

}  // namespace

Tokenizer Tokenizer::from_gguf(const GgufFile& f) {
  Tokenizer t;
  const GgufValue* model = f.find("tokenizer.ggml.model");
  const GgufValue* tokens = f.find("tokenizer.ggml.tokens");
  if (!model || !tokens) {
    throw std::runtime_error(fmt::format("{}: no tokenizer in the metadata (tokenizer.ggml.model / .tokens)", f.label()));
  }
  t.model_ = model->as_string();
  if (t.model_ != "llama") {
    throw std::runtime_error(fmt::format("{}: tokenizer model '{}' is not supported yet (supported: llama)", f.label(),
                                         t.model_));
  }
  for (const auto& v : tokens->as_array()) t.tokens_.push_back(v.as_string());
  const size_t n = t.tokens_.size();
  t.scores_.assign(n, 0.0f);
  t.types_.assign(n, 1);
  if (const GgufValue* s = f.find("tokenizer.ggml.scores")) {
    const auto& a = s->as_array();
    for (size_t i = 0; i < n && i < a.size(); ++i) t.scores_[i] = static_cast<float>(a[i].as_float());
  }
  if (const GgufValue* ty = f.find("tokenizer.ggml.token_type")) {
    const auto& a = ty->as_array();
    for (size_t i = 0; i < n && i < a.size(); ++i) t.types_[i] = static_cast<int32_t>(a[i].as_int());
  }
  auto id_key = [&](const char* key, int32_t fallback) {
    const GgufValue* v = f.find(key);
    return v && v->is_integer() ? static_cast<int32_t>(v->as_int()) : fallback;
  };
  t.bos_ = id_key("tokenizer.ggml.bos_token_id", 1);
  t.eos_ = id_key("tokenizer.ggml.eos_token_id", 2);
  t.unk_ = id_key("tokenizer.ggml.unknown_token_id", 0);
  if (const GgufValue* v = f.find("tokenizer.ggml.add_space_prefix"); v && v->type() == GgufValueType::BOOL) {
    t.add_space_prefix_ = v->as_bool();
  }
  std::fill(std::begin(t.byte_tokens_), std::end(t.byte_tokens_), -1);
  for (size_t i = 0; i < n; ++i) {
    const auto id = static_cast<int32_t>(i);
    t.ids_.emplace(t.tokens_[i], id);
    if (t.types_[i] == kTypeByte && t.tokens_[i].size() == 6) {
      t.byte_tokens_[std::stoi(t.tokens_[i].substr(3, 2), nullptr, 16)] = id;
    }
    if ((t.types_[i] == kTypeControl || t.types_[i] == kTypeUserDefined) && !t.tokens_[i].empty()) {
      t.specials_.push_back(id);
    }
  }
  std::stable_sort(t.specials_.begin(), t.specials_.end(),
                   [&](int32_t a, int32_t b) { return t.tokens_[a].size() > t.tokens_[b].size(); });
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
    for (unsigned char c : piece) out.push_back(byte_tokens_[c] >= 0 ? byte_tokens_[c] : unk_);
  };
  if (sym.empty()) return;
  for (int i = 0; i != -1; i = sym[i].next) emit(emit, i);
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_bos) const {
  std::vector<int32_t> out;
  if (add_bos && bos_ >= 0) out.push_back(bos_);
  bool after_special = true;  // SentencePiece adds a space before text that starts a sequence
  size_t at = 0;
  auto plain = [&](std::string_view fragment) {
    if (fragment.empty()) return;
    std::string s = add_space_prefix_ && after_special ? " " : "";
    s += fragment;
    std::string escaped;
    for (char c : s) escaped += c == ' ' ? kSpaceMark : std::string(1, c);
    encode_spm_fragment(escaped, out);
    after_special = false;
  };
  while (at < text.size()) {
    // The earliest special token in the rest of the text (longest first at the same position).
    size_t best_pos = std::string_view::npos;
    int32_t best_id = -1;
    for (int32_t id : specials_) {
      const size_t p = text.find(tokens_[static_cast<size_t>(id)], at);
      if (p < best_pos) {
        best_pos = p;
        best_id = id;
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
  if (types_[static_cast<size_t>(id)] == kTypeByte && t.size() == 6) {
    return std::string(1, static_cast<char>(std::stoi(t.substr(3, 2), nullptr, 16)));
  }
  if (types_[static_cast<size_t>(id)] == kTypeControl) return {};
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

std::string Tokenizer::decode(const std::vector<int32_t>& ids) const {
  std::string s;
  for (int32_t id : ids) s += decode_token(id);
  return s;
}

}  // namespace mixq
