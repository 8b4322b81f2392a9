#include "mixq/convert/safetensors.h"

#include <algorithm>
#include <cctype>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>
#include <stdexcept>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "mixq/io/gguf.h"
#include "mixq/util/json_file.h"

namespace mixq {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

// llama.cpp's token types.
enum TokenType : int32_t { kNormal = 1, kUnknown = 2, kControl = 3, kUserDefined = 4, kUnused = 5, kByte = 6 };

size_t dtype_size(const std::string& dtype) {
  if (dtype == "F32" || dtype == "I32" || dtype == "U32") return 4;
  if (dtype == "F16" || dtype == "BF16" || dtype == "I16" || dtype == "U16") return 2;
  if (dtype == "F64" || dtype == "I64" || dtype == "U64") return 8;
  if (dtype == "I8" || dtype == "U8" || dtype == "BOOL" || dtype == "F8_E4M3" || dtype == "F8_E5M2") return 1;
  return 0;
}

std::optional<TypeId> float_type(const std::string& dtype) {
  if (dtype == "F32") return TypeId::F32;
  if (dtype == "F16") return TypeId::F16;
  if (dtype == "BF16") return TypeId::BF16;
  return std::nullopt;
}

json read_json(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  if (!f || fs::is_directory(p)) throw std::runtime_error(fmt::format("cannot read '{}'", p.string()));
  std::stringstream ss;
  ss << f.rdbuf();
  return parse_json_text<json>(ss.str(), fmt::format("'{}'", p.string()));
}

// config.json values, with errors that name the file and the key.
class ConfigJson {
 public:
  explicit ConfigJson(const fs::path& path) : path_(path), j_(read_json(path)) {
    if (!j_.is_object()) fail("is not a JSON object");
  }
  [[noreturn]] void fail(const std::string& what) const {
    throw std::runtime_error(fmt::format("'{}' {}", path_.string(), what));
  }
  bool has(const char* key) const { return j_.contains(key) && !j_[key].is_null(); }
  const json& operator[](const char* key) const { return j_[key]; }
  int64_t positive(const char* key) const {
    if (!has(key)) fail(fmt::format("lacks \"{}\"", key));
    return positive_value(key);
  }
  int64_t positive_or(const char* key, int64_t fallback) const { return has(key) ? positive_value(key) : fallback; }
  double number_or(const char* key, double fallback) const {
    if (!has(key)) return fallback;
    if (!j_[key].is_number()) fail(fmt::format("has a non-numeric \"{}\"", key));
    return j_[key].get<double>();
  }
  // A token id: an integer, or a list whose first entry is one (several eos ids).
  std::optional<uint32_t> token_id(const char* key) const {
    if (!has(key)) return std::nullopt;
    const json& v = j_[key].is_array() && !j_[key].empty() ? j_[key][0] : j_[key];
    if (!v.is_number_unsigned()) fail(fmt::format("has a \"{}\" that is not a token id", key));
    return v.get<uint32_t>();
  }

 private:
  int64_t positive_value(const char* key) const {
    const json& v = j_[key];
    if (!v.is_number_integer() || v.get<int64_t>() <= 0 || v.get<int64_t>() > (int64_t{1} << 31)) {
      fail(fmt::format("has \"{}\": {}, not a positive integer", key, v.dump()));
    }
    return v.get<int64_t>();
  }
  fs::path path_;
  json j_;
};

struct Hparams {
  int64_t n_embd, n_ff, n_layer, n_head, n_head_kv, head_dim, n_vocab, n_ctx;
  double rope_theta, rms_eps;
  bool explicit_head_dim;  // config.json sets head_dim (Mistral-style), possibly != n_embd / n_head
  bool tied;               // the output head reuses the token embedding
};

Hparams read_hparams(const ConfigJson& c) {
  if (c.has("architectures")) {
    const json& a = c["architectures"];
    const bool supported = a.is_array() && std::any_of(a.begin(), a.end(), [](const json& x) {
      return x == "LlamaForCausalLM" || x == "MistralForCausalLM";
    });
    if (!supported) c.fail(fmt::format("names architectures {}: mixq converts LlamaForCausalLM and MistralForCausalLM", a.dump()));
  }
  Hparams h{};
  h.n_embd = c.positive("hidden_size");
  h.n_ff = c.positive("intermediate_size");
  h.n_layer = c.positive("num_hidden_layers");
  h.n_head = c.positive("num_attention_heads");
  h.n_head_kv = c.positive_or("num_key_value_heads", h.n_head);
  h.n_vocab = c.positive("vocab_size");
  h.n_ctx = c.positive_or("max_position_embeddings", 2048);
  h.explicit_head_dim = c.has("head_dim");
  h.head_dim = c.positive_or("head_dim", h.n_embd / h.n_head);
  h.rope_theta = c.number_or("rope_theta", 10000.0);
  h.rms_eps = c.number_or("rms_norm_eps", 1e-6);
  h.tied = c.has("tie_word_embeddings") && c["tie_word_embeddings"].is_boolean() && c["tie_word_embeddings"].get<bool>();
  if (h.n_head % h.n_head_kv != 0) c.fail(fmt::format("has {} heads, not a multiple of {} kv heads", h.n_head, h.n_head_kv));
  if (!h.explicit_head_dim && h.n_embd % h.n_head != 0) {
    c.fail(fmt::format("has hidden_size {} not divisible by {} heads", h.n_embd, h.n_head));
  }
  // q and k rows are reordered in rotary pairs.
  if (h.head_dim % 2 != 0) c.fail(fmt::format("has an odd head size {}", h.head_dim));
  if (c.has("rope_scaling")) {
    const json& s = c["rope_scaling"];
    const std::string type = s.is_object() ? s.value("rope_type", s.value("type", "")) : "";
    if (type != "linear" || !s.contains("factor") || !s["factor"].is_number()) {
      c.fail(fmt::format("has rope_scaling {}: mixq converts only linear scaling", s.dump()));
    }
  }
  return h;
}

// Hugging Face names -> llama.cpp's GGUF names. nullopt: a tensor llama.cpp does not store.
std::optional<std::string> gguf_name(const std::string& hf, const fs::path& where) {
  static const std::pair<const char*, const char*> kLayer[] = {
      {"self_attn.q_proj.weight", "attn_q.weight"},     {"self_attn.k_proj.weight", "attn_k.weight"},
      {"self_attn.v_proj.weight", "attn_v.weight"},     {"self_attn.o_proj.weight", "attn_output.weight"},
      {"mlp.gate_proj.weight", "ffn_gate.weight"},      {"mlp.up_proj.weight", "ffn_up.weight"},
      {"mlp.down_proj.weight", "ffn_down.weight"},      {"input_layernorm.weight", "attn_norm.weight"},
      {"post_attention_layernorm.weight", "ffn_norm.weight"},
  };
  if (hf == "model.embed_tokens.weight") return "token_embd.weight";
  if (hf == "model.norm.weight") return "output_norm.weight";
  if (hf == "lm_head.weight") return "output.weight";
  constexpr std::string_view kPrefix = "model.layers.";
  if (hf.starts_with(kPrefix)) {
    const auto dot = hf.find('.', kPrefix.size());
    const std::string layer = hf.substr(kPrefix.size(), dot - kPrefix.size());
    const bool numeric = !layer.empty() && std::all_of(layer.begin(), layer.end(), [](unsigned char ch) { return std::isdigit(ch); });
    if (numeric && dot != std::string::npos) {
      const std::string rest = hf.substr(dot + 1);
      // Older exports store the rotary frequencies, which llama.cpp recomputes.
      if (rest == "self_attn.rotary_emb.inv_freq") return std::nullopt;
      for (const auto& [from, to] : kLayer) {
        if (rest == from) return "blk." + layer + "." + to;
      }
    }
  }
  throw std::runtime_error(fmt::format("'{}': tensor '{}' is not part of a LlamaForCausalLM model (no GGUF name for it)",
                                       where.string(), hf));
}

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

struct Vocab {
  std::string model;  // llama.cpp's tokenizer.ggml.model: "llama" or "gpt2"
  std::string pre;
  std::vector<std::string> tokens;
  std::vector<float> scores;  // "llama" only
  std::vector<int32_t> types;
  std::vector<std::string> merges;  // "gpt2" only
  std::optional<uint32_t> unk_id;
};

bool is_byte_token(const std::string& t) {
  return t.size() == 6 && t.starts_with("<0x") && t[5] == '>' && std::isxdigit(static_cast<unsigned char>(t[3])) &&
         std::isxdigit(static_cast<unsigned char>(t[4]));
}

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

// llama.cpp's llama_ftype numbering: ALL_F32 = 0, MOSTLY_F16 = 1, MOSTLY_BF16 = 32.
uint32_t file_type_of(TypeId t) { return t == TypeId::F32 ? 0 : t == TypeId::F16 ? 1 : 32; }

}  // namespace

std::vector<SafetensorsTensor> read_safetensors(const MappedFile& file, const std::string& label) {
  const auto b = file.bytes();
  auto fail = [&](const std::string& what) -> void {
    throw std::runtime_error(fmt::format("{}: not a valid safetensors file: {}", label, what));
  };
  if (b.size() < 8) fail("shorter than its 8-byte header length");
  uint64_t n;
  std::memcpy(&n, b.data(), 8);
  if (n > b.size() - 8) fail(fmt::format("header length {} runs past the end of the file ({} bytes)", n, b.size()));
  json header;
  try {
    header = parse_json_text<json>(
        std::string_view(reinterpret_cast<const char*>(b.data()) + 8, static_cast<size_t>(n)), "its text");
  } catch (const std::runtime_error& e) {
    fail(std::string("header is not JSON: ") + e.what());
  }
  if (!header.is_object()) fail("header is not a JSON object");
  const size_t data_start = 8 + static_cast<size_t>(n), data_size = b.size() - data_start;
  std::vector<SafetensorsTensor> out;
  for (const auto& [name, info] : header.items()) {
    if (name == "__metadata__") continue;
    if (!info.is_object() || !info.contains("dtype") || !info.contains("shape") || !info.contains("data_offsets") ||
        !info["dtype"].is_string() || !info["shape"].is_array()) {
      fail(fmt::format("entry '{}' lacks a dtype string, a shape list or data_offsets", name));
    }
    SafetensorsTensor t;
    t.name = name;
    t.dtype = info["dtype"].get<std::string>();
    const size_t elem = dtype_size(t.dtype);
    if (!elem) fail(fmt::format("tensor '{}' has unknown dtype {}", name, t.dtype));
    uint64_t count = 1;
    for (const auto& d : info["shape"]) {
      if (!d.is_number_unsigned()) fail(fmt::format("tensor '{}' has a bad dimension {}", name, d.dump()));
      const auto v = d.get<uint64_t>();
      if (v != 0 && count > (uint64_t{1} << 48) / v) fail(fmt::format("tensor '{}' is too large", name));
      count *= v;
      t.shape.push_back(static_cast<int64_t>(v));
    }
    const auto& off = info["data_offsets"];
    if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() || !off[1].is_number_unsigned()) {
      fail(fmt::format("tensor '{}' has bad data_offsets", name));
    }
    const auto begin = off[0].get<uint64_t>(), end = off[1].get<uint64_t>();
    if (begin > end || end > data_size) {
      fail(fmt::format("tensor '{}' data [{}, {}) lies outside the file's {} data bytes", name, begin, end, data_size));
    }
    if (end - begin != count * elem) {
      fail(fmt::format("tensor '{}' holds {} bytes, its shape and dtype need {}", name, end - begin, count * elem));
    }
    t.data = b.data() + data_start + begin;
    t.nbytes = static_cast<size_t>(end - begin);
    out.push_back(std::move(t));
  }
  std::vector<const SafetensorsTensor*> sorted;
  for (const auto& t : out) sorted.push_back(&t);
  std::sort(sorted.begin(), sorted.end(), [](auto* a, auto* c) { return a->data < c->data; });
  for (size_t i = 1; i < sorted.size(); ++i) {
    if (sorted[i - 1]->data + sorted[i - 1]->nbytes > sorted[i]->data) {
      fail(fmt::format("tensors '{}' and '{}' overlap", sorted[i - 1]->name, sorted[i]->name));
    }
  }
  return out;
}

size_t convert_safetensors_dir(const fs::path& dir, const fs::path& out, std::optional<TypeId> outtype,
                               std::vector<std::string>& warnings) {
  const ConfigJson config(dir / "config.json");
  const Hparams h = read_hparams(config);

  // Shards: the index's weight map, or the single model.safetensors.
  std::vector<fs::path> shards;
  if (fs::exists(dir / "model.safetensors.index.json")) {
    const json index = read_json(dir / "model.safetensors.index.json");
    if (!index.is_object() || !index.contains("weight_map") || !index["weight_map"].is_object()) {
      throw std::runtime_error(fmt::format("'{}' lacks a weight_map", (dir / "model.safetensors.index.json").string()));
    }
    for (const auto& [name, file] : index["weight_map"].items()) {
      if (!file.is_string()) throw std::runtime_error(fmt::format("weight_map entry '{}' is not a file name", name));
      // A model directory is a unit: an index naming files elsewhere (../, /etc/...) would make
      // the converter read whatever the index's author chose.
      const fs::path rel = fs::path(file.get<std::string>()).lexically_normal();
      if (rel.empty() || rel.is_absolute() || rel.has_root_name() || *rel.begin() == "..") {
        throw std::runtime_error(fmt::format("'{}': weight_map entry '{}' names '{}', outside the model directory; "
                                             "shards must be files in '{}'",
                                             (dir / "model.safetensors.index.json").string(), name,
                                             file.get<std::string>(), dir.string()));
      }
      const fs::path p = dir / rel;
      if (std::find(shards.begin(), shards.end(), p) == shards.end()) shards.push_back(p);
    }
  } else if (fs::exists(dir / "model.safetensors")) {
    shards.push_back(dir / "model.safetensors");
  } else {
    throw std::runtime_error(fmt::format("'{}' has no model.safetensors or model.safetensors.index.json", dir.string()));
  }
  struct Source {
    SafetensorsTensor t;
    size_t shard;
  };
  std::vector<MappedFile> maps;
  std::map<std::string, Source> by_gguf_name;
  for (const auto& shard : shards) {
    maps.emplace_back(shard);
    for (auto& t : read_safetensors(maps.back(), shard.string())) {
      const auto name = gguf_name(t.name, shard);
      if (!name) continue;
      if (by_gguf_name.contains(*name)) {
        throw std::runtime_error(fmt::format("'{}': tensor '{}' appears twice", dir.string(), t.name));
      }
      by_gguf_name[*name] = {std::move(t), maps.size() - 1};
    }
  }

  // The expected-tensor list below grows with num_hidden_layers: check the number against the
  // weights first, so an absurd config.json is an error rather than an allocation of everything.
  if (h.n_layer > 0 &&
      (static_cast<uint64_t>(h.n_layer) > by_gguf_name.size() ||
       !by_gguf_name.contains(fmt::format("blk.{}.attn_norm.weight", h.n_layer - 1)))) {
    throw std::runtime_error(fmt::format("'{}' has \"num_hidden_layers\": {}, but the weights in '{}' hold no layer {} "
                                         "(model.layers.{}.input_layernorm.weight): fix config.json or the weights",
                                         (dir / "config.json").string(), h.n_layer, dir.string(), h.n_layer - 1,
                                         h.n_layer - 1));
  }
  struct Planned {
    std::string name;
    const Source* src;
    TypeId stored, type;
    int64_t permute_heads;  // q/k: heads whose rows are reordered; 0 = none
  };
  const int64_t q_rows = h.n_head * h.head_dim, kv_rows = h.n_head_kv * h.head_dim;
  std::vector<std::pair<std::string, std::vector<int64_t>>> expected = {
      {"token_embd.weight", {h.n_vocab, h.n_embd}}, {"output_norm.weight", {h.n_embd}},
      {"output.weight", {h.n_vocab, h.n_embd}}};
  for (int64_t l = 0; l < h.n_layer; ++l) {
    auto blk = [l](const char* part) { return fmt::format("blk.{}.{}.weight", l, part); };
    expected.insert(expected.end(), {{blk("attn_norm"), {h.n_embd}},         {blk("attn_q"), {q_rows, h.n_embd}},
                                     {blk("attn_k"), {kv_rows, h.n_embd}},   {blk("attn_v"), {kv_rows, h.n_embd}},
                                     {blk("attn_output"), {h.n_embd, q_rows}}, {blk("ffn_norm"), {h.n_embd}},
                                     {blk("ffn_gate"), {h.n_ff, h.n_embd}},  {blk("ffn_up"), {h.n_ff, h.n_embd}},
                                     {blk("ffn_down"), {h.n_embd, h.n_ff}}});
  }
  std::vector<Planned> plan;
  std::optional<TypeId> common_type;
  bool mixed = false;
  for (const auto& [name, shape] : expected) {
    const auto it = by_gguf_name.find(name);
    if (it == by_gguf_name.end()) {
      // llama.cpp uses the token embedding as the output head when output.weight is absent.
      if (name == "output.weight" && h.tied) continue;
      throw std::runtime_error(fmt::format("'{}' lacks the tensor for {}{}", dir.string(), name,
                                           name == "output.weight" ? " (lm_head.weight; tie_word_embeddings is not set)"
                                                                   : ""));
    }
    const SafetensorsTensor& t = it->second.t;
    if (t.shape != shape) {
      throw std::runtime_error(fmt::format("'{}': tensor '{}' has shape [{}], config.json implies [{}]", dir.string(),
                                           t.name, fmt::join(t.shape, ", "), fmt::join(shape, ", ")));
    }
    const auto stored = float_type(t.dtype);
    if (!stored) {
      throw std::runtime_error(
          fmt::format("tensor '{}' has dtype {}: mixq converts F32, F16 and BF16 tensors", t.name, t.dtype));
    }
    const TypeId type = t.shape.size() < 2 ? TypeId::F32 : outtype.value_or(*stored);
    if (t.shape.size() >= 2) {
      mixed |= common_type && *common_type != type;
      common_type = type;
    }
    const int64_t heads = name.ends_with("attn_q.weight") ? h.n_head : name.ends_with("attn_k.weight") ? h.n_head_kv : 0;
    plan.push_back({name, &it->second, *stored, type, heads});
  }

  GgufWriter w(out);
  // Keys in the order llama.cpp's convert_hf_to_gguf writes them.
  w.set("general.architecture", GgufValue::string("llama"));
  w.set("general.name", GgufValue::string(fs::absolute(dir).lexically_normal().filename().string()));
  w.set("llama.block_count", GgufValue::u32(static_cast<uint32_t>(h.n_layer)));
  w.set("llama.context_length", GgufValue::u32(static_cast<uint32_t>(h.n_ctx)));
  w.set("llama.embedding_length", GgufValue::u32(static_cast<uint32_t>(h.n_embd)));
  w.set("llama.feed_forward_length", GgufValue::u32(static_cast<uint32_t>(h.n_ff)));
  w.set("llama.attention.head_count", GgufValue::u32(static_cast<uint32_t>(h.n_head)));
  w.set("llama.attention.head_count_kv", GgufValue::u32(static_cast<uint32_t>(h.n_head_kv)));
  w.set("llama.rope.freq_base", GgufValue::f32(static_cast<float>(h.rope_theta)));
  w.set("llama.attention.layer_norm_rms_epsilon", GgufValue::f32(static_cast<float>(h.rms_eps)));
  if (h.explicit_head_dim) {
    w.set("llama.attention.key_length", GgufValue::u32(static_cast<uint32_t>(h.head_dim)));
    w.set("llama.attention.value_length", GgufValue::u32(static_cast<uint32_t>(h.head_dim)));
  }
  if (common_type && !mixed) w.set("general.file_type", GgufValue::u32(file_type_of(*common_type)));
  w.set("llama.vocab_size", GgufValue::u32(static_cast<uint32_t>(h.n_vocab)));
  w.set("llama.rope.dimension_count", GgufValue::u32(static_cast<uint32_t>(h.head_dim)));
  if (config.has("rope_scaling")) {
    w.set("llama.rope.scaling.type", GgufValue::string("linear"));
    w.set("llama.rope.scaling.factor", GgufValue::f32(config["rope_scaling"]["factor"].get<float>()));
  }
  write_tokenizer(w, read_tokenizer(dir, h.n_vocab, warnings), config, dir);

  for (const auto& p : plan) {
    w.add_tensor(p.name, std::vector<int64_t>(p.src->t.shape.rbegin(), p.src->t.shape.rend()), p.type);
  }
  // One tensor at a time: peak memory is the largest tensor, not the model.
  std::vector<float> values, permuted;
  std::vector<uint8_t> bytes;
  for (const auto& p : plan) {
    const SafetensorsTensor& t = p.src->t;
    if (p.permute_heads == 0 && p.type == p.stored) {
      w.write_tensor_data({t.data, t.nbytes});
    } else {
      const int64_t row = t.shape.back(), rows = static_cast<int64_t>(t.nbytes / dtype_size(t.dtype)) / row;
      values.resize(static_cast<size_t>(row * rows));
      bytes.assign(t.data, t.data + t.nbytes);  // safetensors data need not be aligned for its type
      dequantize_rows(p.stored, bytes.data(), values.data(), rows, row);
      if (p.permute_heads > 0) {
        // Hugging Face keeps each head's rotary pairs as two halves; llama.cpp interleaves them
        // (convert_hf_to_gguf's permute): GGUF row h*hd + 2i + j is HF row h*hd + j*hd/2 + i.
        const int64_t hd = rows / p.permute_heads, half = hd / 2;
        permuted.resize(values.size());
        for (int64_t head = 0; head < p.permute_heads; ++head) {
          for (int64_t i = 0; i < half; ++i) {
            for (int64_t j = 0; j < 2; ++j) {
              std::copy_n(values.begin() + (head * hd + j * half + i) * row, row,
                          permuted.begin() + (head * hd + 2 * i + j) * row);
            }
          }
        }
        values.swap(permuted);
      }
      bytes.resize(type_traits(p.type).row_bytes(row) * static_cast<size_t>(rows));
      quantize_rows(p.type, values.data(), bytes.data(), rows, row);
      w.write_tensor_data(bytes);
    }
    maps[p.src->shard].drop_pages(t.data, t.nbytes);
  }
  w.finish();
  return plan.size();
}

}  // namespace mixq
