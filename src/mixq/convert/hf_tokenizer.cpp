#include "mixq/convert/hf_tokenizer.h"

#include <algorithm>
#include <cctype>
#include <map>

#include "mixq/io/gguf.h"

namespace mixq::hf {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

// llama.cpp's token types.
enum TokenType : int32_t { kNormal = 1, kUnknown = 2, kControl = 3, kUserDefined = 4, kUnused = 5, kByte = 6 };

// llama.cpp's name for a byte-level BPE pre-tokenizer, recognized from tokenizer.json's
// pre_tokenizer (llama.cpp itself hashes a tokenization of a test text, which needs the
// tokenizer; these are the structures behind the names it gives the common ones).
std::optional<std::string> gpt2_pre_name(const json& tok) {
  const json pre = tok.value("pre_tokenizer", json());
  auto byte_level = [](const json& p, bool use_regex) {
    return p.is_object() && p.value("type", "") == "ByteLevel" && p.value("use_regex", true) == use_regex;
  };
  if (byte_level(pre, true)) return "gpt2";
  if (!pre.is_object() || pre.value("type", "") != "Sequence") return std::nullopt;
  const json parts = pre.value("pretokenizers", json::array());
  if (!parts.is_array() || parts.size() != 2 || !parts[0].is_object() || !parts[1].is_object()) return std::nullopt;
  // Digits one by one, then GPT-2's pattern: llama.cpp's "smollm" (same rules as "starcoder").
  if (parts[0].value("type", "") == "Digits" && parts[0].value("individual_digits", false) && byte_level(parts[1], true)) {
    return "smollm";
  }
  static const std::string kLlama3Pattern =
      "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|"
      "\\s+(?!\\S)|\\s+";
  const json split = parts[0];
  if (split.value("type", "") == "Split" && split.contains("pattern") && split["pattern"].is_object() &&
      split["pattern"].value("Regex", "") == kLlama3Pattern && byte_level(parts[1], false)) {
    return "llama-bpe";
  }
  return std::nullopt;
}


bool is_byte_token(const std::string& t) {
  return t.size() == 6 && t.starts_with("<0x") && t[5] == '>' && std::isxdigit(static_cast<unsigned char>(t[3])) &&
         std::isxdigit(static_cast<unsigned char>(t[4]));
}

// tokenizer_config.json names special tokens by their text, plain or as {"content": text}.
std::optional<uint32_t> named_token(const json& tc, const char* key, const Vocab& v) {
  if (!tc.is_object() || !tc.contains(key)) return std::nullopt;
  const json& t = tc[key];
  const json text = t.is_object() ? t.value("content", json()) : t;
  if (!text.is_string()) return std::nullopt;
  const auto it = std::find(v.tokens.begin(), v.tokens.end(), text.get<std::string>());
  if (it == v.tokens.end()) return std::nullopt;
  return static_cast<uint32_t>(it - v.tokens.begin());
}

}  // namespace

Vocab read_tokenizer(const fs::path& dir, int64_t n_vocab, std::vector<std::string>& warnings) {
  const fs::path path = dir / "tokenizer.json";
  if (!fs::exists(path)) {
    throw std::runtime_error(fmt::format("'{}' has no tokenizer.json (a GGUF needs its vocabulary)", dir.string()));
  }
  const json tok = read_json(path);
  auto fail = [&](const std::string& what) -> void {
    throw std::runtime_error(fmt::format("'{}': {}", path.string(), what));
  };
  if (!tok.is_object() || !tok.contains("model") || !tok["model"].is_object()) fail("no \"model\" object");
  const json& model = tok["model"];
  if (model.value("type", "") != "BPE") fail(fmt::format("a {} tokenizer: mixq converts BPE tokenizers", model.value("type", "?")));
  if (!model.contains("vocab") || !model["vocab"].is_object()) fail("the model has no \"vocab\" object");

  Vocab v;
  // SentencePiece models converted to tokenizer.json keep their byte fallback; byte-level BPE
  // (GPT-2 style) has none.
  const bool sentencepiece = model.value("byte_fallback", false);
  v.model = sentencepiece ? "llama" : "gpt2";
  v.tokens.assign(static_cast<size_t>(n_vocab), {});
  v.types.assign(static_cast<size_t>(n_vocab), kUnused);
  auto place = [&](const std::string& text, const json& id, int32_t type) {
    if (!id.is_number_unsigned() || id.get<uint64_t>() >= static_cast<uint64_t>(n_vocab)) {
      fail(fmt::format("token '{}' has id {}, outside the model's vocab_size {}", text, id.dump(), n_vocab));
    }
    v.tokens[id.get<size_t>()] = text;
    v.types[id.get<size_t>()] = type;
  };
  for (const auto& [text, id] : model["vocab"].items()) place(text, id, is_byte_token(text) && sentencepiece ? kByte : kNormal);
  for (const auto& added : tok.value("added_tokens", json::array())) {
    if (!added.is_object() || !added.contains("content") || !added["content"].is_string()) fail("a malformed added token");
    place(added["content"].get<std::string>(), added.value("id", json()), added.value("special", false) ? kControl : kUserDefined);
  }
  if (model.contains("unk_token") && model["unk_token"].is_string()) {
    const auto it = std::find(v.tokens.begin(), v.tokens.end(), model["unk_token"].get<std::string>());
    if (it != v.tokens.end()) {
      v.unk_id = static_cast<uint32_t>(it - v.tokens.begin());
      v.types[*v.unk_id] = kUnknown;
    }
  }
  // Ids the tokenizer does not use but the embedding has rows for, named as llama.cpp names them.
  for (size_t i = 0; i < v.tokens.size(); ++i) {
    if (v.types[i] == kUnused) v.tokens[i] = fmt::format("[PAD{}]", i);
  }
  if (sentencepiece) {
    v.pre = "default";
    // SentencePiece BPE scores a piece by minus its merge rank, and pieces are numbered in that
    // order after the control and byte pieces: so the score is minus the distance from the first
    // normal piece (exact for llama2.c's and Llama 2's vocabularies except Llama 2's 16
    // user-defined runs of spaces, scored -1e9 there).
    const auto first = std::find(v.types.begin(), v.types.end(), kNormal) - v.types.begin();
    v.scores.resize(v.tokens.size());
    for (size_t i = 0; i < v.tokens.size(); ++i) {
      v.scores[i] = v.types[i] == kNormal ? -static_cast<float>(static_cast<int64_t>(i) - first) : 0.0f;
    }
  } else {
    for (const auto& m : model.value("merges", json::array())) {
      if (m.is_string()) {
        v.merges.push_back(m.get<std::string>());
      } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
        v.merges.push_back(m[0].get<std::string>() + " " + m[1].get<std::string>());
      } else {
        fail("a merge that is neither \"a b\" nor [\"a\", \"b\"]");
      }
    }
    if (auto pre = gpt2_pre_name(tok)) {
      v.pre = *pre;
    } else {
      v.pre = "default";
      warnings.push_back(fmt::format("{}: pre-tokenizer {} not recognized; wrote tokenizer.ggml.pre \"default\", which "
                                     "llama.cpp may split differently from the original",
                                     path.string(), tok.value("pre_tokenizer", json()).dump()));
    }
  }
  return v;
}

void write_tokenizer(GgufWriter& w, const Vocab& v, const ConfigJson& config, const fs::path& dir) {
  w.set("tokenizer.ggml.model", GgufValue::string(v.model));
  w.set("tokenizer.ggml.pre", GgufValue::string(v.pre));
  w.set("tokenizer.ggml.tokens", GgufValue::string_array(v.tokens));
  if (!v.scores.empty()) {
    std::vector<GgufValue> scores;
    for (float s : v.scores) scores.push_back(GgufValue::f32(s));
    w.set("tokenizer.ggml.scores", GgufValue::array(GgufValueType::FLOAT32, std::move(scores)));
  }
  std::vector<GgufValue> types;
  for (int32_t t : v.types) types.push_back(GgufValue::i32(t));
  w.set("tokenizer.ggml.token_type", GgufValue::array(GgufValueType::INT32, std::move(types)));
  if (!v.merges.empty()) w.set("tokenizer.ggml.merges", GgufValue::string_array(v.merges));
  // tokenizer_config.json holds the special tokens' texts, whether BOS/EOS are added, and the
  // chat template; config.json's ids win where both name a token.
  const json tc = fs::exists(dir / "tokenizer_config.json") ? read_json(dir / "tokenizer_config.json") : json::object();
  auto set_id = [&](const char* gguf_key, std::optional<uint32_t> id) {
    if (!id) return;
    if (*id >= v.tokens.size()) config.fail(fmt::format("names token {} for {}, outside the vocabulary", *id, gguf_key));
    w.set(fmt::format("tokenizer.ggml.{}", gguf_key), GgufValue::u32(*id));
  };
  auto either = [](std::optional<uint32_t> a, std::optional<uint32_t> b) { return a ? a : b; };
  set_id("bos_token_id", either(config.token_id("bos_token_id"), named_token(tc, "bos_token", v)));
  set_id("eos_token_id", either(config.token_id("eos_token_id"), named_token(tc, "eos_token", v)));
  set_id("unknown_token_id", either(v.unk_id, named_token(tc, "unk_token", v)));
  set_id("padding_token_id", either(config.token_id("pad_token_id"), named_token(tc, "pad_token", v)));
  if (!tc.is_object()) return;
  for (const char* key : {"add_bos_token", "add_eos_token"}) {
    if (tc.contains(key) && tc[key].is_boolean()) {
      w.set(fmt::format("tokenizer.ggml.{}", key), GgufValue::boolean(tc[key].get<bool>()));
    }
  }
  if (tc.contains("chat_template") && tc["chat_template"].is_string()) {
    w.set("tokenizer.chat_template", GgufValue::string(tc["chat_template"].get<std::string>()));
  }
}

}  // namespace mixq::hf
