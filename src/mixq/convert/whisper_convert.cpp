#include "mixq/convert/whisper_convert.h"

#include <cstring>
#include <fstream>
#include <functional>
#include <map>
#include <stdexcept>

#include <fmt/format.h>
#include <re2/re2.h>
#include <nlohmann/json.hpp>

#include "mixq/convert/ctranslate2.h"
#include "mixq/convert/safetensors.h"
#include "mixq/convert/whisper_mel.h"
#include "mixq/formats/half.h"
#include "mixq/io/whisper_file.h"
#include "mixq/util/json_file.h"

namespace mixq {

namespace fs = std::filesystem;

const char* whisper_source_name(WhisperSourceKind k) {
  switch (k) {
    case WhisperSourceKind::WhisperCpp: return "whisper.cpp";
    case WhisperSourceKind::CTranslate2: return "CTranslate2 Whisper";
    case WhisperSourceKind::HuggingFace: return "Hugging Face Whisper";
  }
  return "?";
}

namespace {

// A CTranslate2 model.bin whose spec is WhisperSpec (version >= 2 files name their spec).
bool is_ct2_whisper_bin(const fs::path& p) {
  std::error_code ec;
  if (!fs::is_regular_file(p, ec)) return false;
  std::ifstream f(p, std::ios::binary);
  char head[4 + 2 + 12] = {};
  if (!f.read(head, sizeof head)) return false;
  uint32_t version;
  uint16_t len;
  std::memcpy(&version, head, 4);
  std::memcpy(&len, head + 4, 2);
  return version >= 2 && version <= 6 && len == 12 && std::memcmp(head + 6, "WhisperSpec", 12) == 0;
}

bool is_hf_whisper_dir(const fs::path& dir) {
  std::error_code ec;
  if (!fs::is_regular_file(dir / "config.json", ec)) return false;
  try {
    const auto j = read_json_file(dir / "config.json", "config.json");
    return j.is_object() && j.value("model_type", std::string()) == "whisper";
  } catch (const std::exception&) {
    return false;
  }
}

// GPT-2's byte-level alphabet: bytes that are printable Latin-1 characters stand for themselves,
// the other 68 map in order to U+0100 onwards.
const std::map<char32_t, uint8_t>& gpt2_byte_decoder() {
  static const std::map<char32_t, uint8_t> m = [] {
    std::map<char32_t, uint8_t> d;
    auto printable = [](int b) { return (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF); };
    int extra = 0;
    for (int b = 0; b < 256; ++b) {
      const char32_t c = printable(b) ? static_cast<char32_t>(b) : static_cast<char32_t>(256 + extra++);
      d[c] = static_cast<uint8_t>(b);
    }
    return d;
  }();
  return m;
}

// The token strings in id order up to and including <|endoftext|>.
std::vector<std::string> vocab_through_eot(const std::map<int64_t, std::string>& by_id, const std::string& origin) {
  int64_t eot = -1;
  for (const auto& [id, tok] : by_id) {
    if (tok == "<|endoftext|>") {
      eot = id;
      break;
    }
  }
  if (eot < 0) throw std::runtime_error(fmt::format("{}: the vocabulary has no <|endoftext|> token", origin));
  std::vector<std::string> out;
  for (int64_t id = 0; id <= eot; ++id) {
    const auto it = by_id.find(id);
    if (it == by_id.end()) throw std::runtime_error(fmt::format("{}: the vocabulary has no token {}", origin, id));
    // <|endoftext|> is written as spelled (as whisper.cpp's files hold it); the others as bytes.
    out.push_back(id == eot ? it->second : gpt2_token_bytes(it->second));
  }
  return out;
}

std::map<int64_t, std::string> read_tokenizer_json(const fs::path& p) {
  const auto j = read_json_file(p, "tokenizer.json");
  std::map<int64_t, std::string> by_id;
  try {
    for (const auto& [tok, id] : j.at("model").at("vocab").items()) by_id[id.get<int64_t>()] = tok;
    if (j.contains("added_tokens")) {
      for (const auto& a : j["added_tokens"]) by_id[a.at("id").get<int64_t>()] = a.at("content").get<std::string>();
    }
  } catch (const nlohmann::json::exception& e) {
    throw std::runtime_error(fmt::format("{}: not a BPE tokenizer.json: {}", p.string(), e.what()));
  }
  return by_id;
}

std::vector<std::string> read_vocabulary(const fs::path& dir) {
  std::map<int64_t, std::string> by_id;
  fs::path used;
  if (fs::exists(dir / "vocabulary.json")) {
    used = dir / "vocabulary.json";
    const auto j = read_json_file(used, "vocabulary.json");
    if (!j.is_array()) throw std::runtime_error(fmt::format("{}: expected a JSON list of tokens", used.string()));
    for (size_t i = 0; i < j.size(); ++i) by_id[static_cast<int64_t>(i)] = j[i].get<std::string>();
  } else if (fs::exists(dir / "vocabulary.txt")) {
    used = dir / "vocabulary.txt";
    std::ifstream f(used, std::ios::binary);
    std::string line;
    int64_t id = 0;
    while (std::getline(f, line)) by_id[id++] = line;
  } else if (fs::exists(dir / "tokenizer.json")) {
    used = dir / "tokenizer.json";
    by_id = read_tokenizer_json(used);
  } else if (fs::exists(dir / "vocab.json")) {
    used = dir / "vocab.json";
    const auto j = read_json_file(used, "vocab.json");
    for (const auto& [tok, id] : j.items()) by_id[id.get<int64_t>()] = tok;
    if (fs::exists(dir / "added_tokens.json")) {
      const auto added = read_json_file(dir / "added_tokens.json", "added_tokens.json");
      for (const auto& [tok, id] : added.items()) by_id[id.get<int64_t>()] = tok;
    }
  } else {
    throw std::runtime_error(fmt::format("'{}' has no vocabulary: expected vocabulary.txt, vocabulary.json, "
                                         "tokenizer.json or vocab.json",
                                         dir.string()));
  }
  return vocab_through_eot(by_id, used.string());
}

// A source model: hparams, vocabulary, and each tensor's values by whisper.cpp name, in the
// row-major layout of the spec's shape.
struct Source {
  WhisperHparams hp;
  std::vector<std::string> vocab;
  std::optional<WhisperMelFilters> filters;  // a whisper.cpp input brings its own
  std::function<std::vector<float>(const WhisperTensorSpec&)> values;
  std::vector<std::string> warnings;
};

std::vector<float> rows_of(const std::vector<float>& v, int64_t row_len, int64_t first, int64_t count) {
  return {v.begin() + first * row_len, v.begin() + (first + count) * row_len};
}

struct Ct2Source {
  Ct2Model m;
  std::vector<float> get(const std::string& name) const {
    const Ct2Variable& v = m.get(name);
    if (v.dtype == Ct2Dtype::I8) {
      // int8 weights: value = q / scale, one scale per output row.
      const std::string scale_name = name + "_scale";
      const Ct2Variable& s = m.get(scale_name);
      const auto q = m.to_float(v), sc = m.to_float(s);
      const int64_t rows = v.shape.at(0), row = v.elements() / rows;
      if (static_cast<int64_t>(sc.size()) != rows) {
        throw std::runtime_error(fmt::format("{}: '{}' has {} scales for {} rows", m.path().string(), scale_name,
                                             sc.size(), rows));
      }
      std::vector<float> out(q.size());
      for (int64_t r = 0; r < rows; ++r) {
        for (int64_t c = 0; c < row; ++c) out[r * row + c] = q[r * row + c] / sc[r];
      }
      return out;
    }
    if (v.dtype != Ct2Dtype::F32 && v.dtype != Ct2Dtype::F16 && v.dtype != Ct2Dtype::BF16) {
      throw std::runtime_error(fmt::format("{}: variable '{}' is not a float tensor", m.path().string(), name));
    }
    return m.to_float(v);
  }
  int scalar(const std::string& name) const {
    const auto v = m.to_float(m.get(name));
    if (v.size() != 1) throw std::runtime_error(fmt::format("{}: '{}' is not a scalar", m.path().string(), name));
    return static_cast<int>(v[0]);
  }
};

// whisper.cpp name -> (CTranslate2 variable, first row, row count); count 0 = the whole variable.
struct Ct2Piece {
  std::string var;
  int part = -1;  // -1 whole; else which of the equal row blocks (q/k/v or k/v)
  int parts = 1;
};

Ct2Piece ct2_piece_for(const std::string& name) {
  static const re2::RE2 block(R"((encoder|decoder)\.blocks\.(\d+)\.(.*))");
  std::string part, layer, rest;
  if (re2::RE2::FullMatch(name, block, &part, &layer, &rest)) {
    const std::string base = fmt::format("{}/layer_{}/", part, layer);
    auto linear = [&](const std::string& mod, const std::string& lin, int part, int parts, const std::string& what) {
      return Ct2Piece{base + mod + "/" + lin + "/" + what, part, parts};
    };
    const std::string what = rest.ends_with(".weight") ? "weight" : "bias";
    if (rest.starts_with("attn.") || rest.starts_with("cross_attn.")) {
      const bool cross = rest.starts_with("cross_attn.");
      const std::string mod = cross ? "attention" : "self_attention";
      const std::string proj = rest.substr(rest.find('.') + 1, rest.rfind('.') - rest.find('.') - 1);
      if (!cross) {
        if (proj == "query") return linear(mod, "linear_0", 0, 3, what);
        if (proj == "key") return linear(mod, "linear_0", 1, 3, what);
        if (proj == "value") return linear(mod, "linear_0", 2, 3, what);
        if (proj == "out") return linear(mod, "linear_1", -1, 1, what);
      } else {
        if (proj == "query") return linear(mod, "linear_0", -1, 1, what);
        if (proj == "key") return linear(mod, "linear_1", 0, 2, what);
        if (proj == "value") return linear(mod, "linear_1", 1, 2, what);
        if (proj == "out") return linear(mod, "linear_2", -1, 1, what);
      }
    }
    const std::string ln = what == "weight" ? "gamma" : "beta";
    if (rest.starts_with("attn_ln.")) return {base + "self_attention/layer_norm/" + ln};
    if (rest.starts_with("cross_attn_ln.")) return {base + "attention/layer_norm/" + ln};
    if (rest.starts_with("mlp_ln.")) return {base + "ffn/layer_norm/" + ln};
    if (rest.starts_with("mlp.0.")) return {base + "ffn/linear_0/" + what};
    if (rest.starts_with("mlp.2.")) return {base + "ffn/linear_1/" + what};
  }
  static const std::map<std::string, std::string> fixed = {
      {"encoder.positional_embedding", "encoder/position_encodings/encodings"},
      {"encoder.conv1.weight", "encoder/conv1/weight"},
      {"encoder.conv1.bias", "encoder/conv1/bias"},
      {"encoder.conv2.weight", "encoder/conv2/weight"},
      {"encoder.conv2.bias", "encoder/conv2/bias"},
      {"encoder.ln_post.weight", "encoder/layer_norm/gamma"},
      {"encoder.ln_post.bias", "encoder/layer_norm/beta"},
      {"decoder.positional_embedding", "decoder/position_encodings/encodings"},
      {"decoder.token_embedding.weight", "decoder/embeddings/weight"},
      {"decoder.ln.weight", "decoder/layer_norm/gamma"},
      {"decoder.ln.bias", "decoder/layer_norm/beta"},
  };
  if (auto it = fixed.find(name); it != fixed.end()) return {it->second};
  throw std::logic_error("no CTranslate2 variable for " + name);
}

Source ctranslate2_source(const fs::path& dir, const fs::path& bin) {
  auto ct = std::make_shared<Ct2Source>(Ct2Source{Ct2Model::open(bin)});
  const Ct2Model& m = ct->m;
  if (m.spec != "WhisperSpec") {
    throw std::runtime_error(fmt::format("{}: a CTranslate2 '{}' model, not Whisper", bin.string(), m.spec));
  }
  auto shape = [&](const std::string& n) { return m.get(n).shape; };
  auto layers = [&](const char* part) {
    int n = 0;
    while (m.find(fmt::format("{}/layer_{}/ffn/linear_0/weight", part, n))) ++n;
    return n;
  };
  Source s;
  WhisperHparams& hp = s.hp;
  const auto emb = shape("decoder/embeddings/weight"), epos = shape("encoder/position_encodings/encodings"),
             dpos = shape("decoder/position_encodings/encodings"), conv1 = shape("encoder/conv1/weight");
  if (emb.size() != 2 || epos.size() != 2 || dpos.size() != 2 || conv1.size() != 3) {
    throw std::runtime_error(fmt::format("{}: unexpected embedding or convolution shapes", bin.string()));
  }
  hp.n_vocab = static_cast<int32_t>(emb[0]);
  hp.n_audio_ctx = static_cast<int32_t>(epos[0]);
  hp.n_audio_state = static_cast<int32_t>(epos[1]);
  hp.n_audio_head = ct->scalar("encoder/num_heads");
  hp.n_audio_layer = layers("encoder");
  hp.n_text_ctx = static_cast<int32_t>(dpos[0]);
  hp.n_text_state = static_cast<int32_t>(dpos[1]);
  hp.n_text_head = ct->scalar("decoder/num_heads");
  hp.n_text_layer = layers("decoder");
  hp.n_mels = static_cast<int32_t>(conv1[1]);
  s.vocab = read_vocabulary(dir);
  s.values = [ct, path = bin.string()](const WhisperTensorSpec& spec) {
    const Ct2Piece p = ct2_piece_for(spec.name);
    std::vector<float> v = ct->get(p.var);
    if (p.part >= 0) {
      const Ct2Variable& var = ct->m.get(p.var);
      const int64_t rows = var.shape.at(0), row = var.elements() / rows;
      if (rows % p.parts != 0) throw std::runtime_error(fmt::format("{}: '{}' does not split in {}", path, p.var, p.parts));
      v = rows_of(v, row, p.part * rows / p.parts, rows / p.parts);
    }
    return v;
  };
  return s;
}

struct HfSource {
  std::string dir;
  std::vector<MappedFile> files;
  std::map<std::string, SafetensorsTensor> tensors;  // name without a leading "model."
  std::vector<float> get(const std::string& name) const {
    const auto it = tensors.find(name);
    if (it == tensors.end()) {
      throw std::runtime_error(fmt::format("{}: the Hugging Face Whisper model has no tensor '{}'", dir, name));
    }
    const SafetensorsTensor& t = it->second;
    int64_t n = 1;
    for (auto d : t.shape) n *= d;
    std::vector<float> out(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) {
      uint16_t h;
      if (t.dtype == "F32") {
        std::memcpy(&out[i], t.data + 4 * i, 4);
      } else if (t.dtype == "F16") {
        std::memcpy(&h, t.data + 2 * i, 2);
        out[i] = fp16_to_fp32(h);
      } else if (t.dtype == "BF16") {
        std::memcpy(&h, t.data + 2 * i, 2);
        out[i] = bf16_to_fp32(h);
      } else {
        throw std::runtime_error(fmt::format("{}: tensor '{}' has dtype {}: expected F32, F16 or BF16", dir, name,
                                             t.dtype));
      }
    }
    return out;
  }
};

std::string hf_name_for(const std::string& name) {
  static const std::vector<std::pair<std::string, std::string>> parts = {
      {".attn_ln.", ".self_attn_layer_norm."}, {".cross_attn_ln.", ".encoder_attn_layer_norm."},
      {".mlp_ln.", ".final_layer_norm."},      {".cross_attn.", ".encoder_attn."},
      {".attn.", ".self_attn."},                {".mlp.0.", ".fc1."},
      {".mlp.2.", ".fc2."},                     {".query.", ".q_proj."},
      {".key.", ".k_proj."},                    {".value.", ".v_proj."},
      {".out.", ".out_proj."},                  {".blocks.", ".layers."},
  };
  static const std::map<std::string, std::string> fixed = {
      {"encoder.positional_embedding", "encoder.embed_positions.weight"},
      {"encoder.ln_post.weight", "encoder.layer_norm.weight"},
      {"encoder.ln_post.bias", "encoder.layer_norm.bias"},
      {"decoder.positional_embedding", "decoder.embed_positions.weight"},
      {"decoder.token_embedding.weight", "decoder.embed_tokens.weight"},
      {"decoder.ln.weight", "decoder.layer_norm.weight"},
      {"decoder.ln.bias", "decoder.layer_norm.bias"},
  };
  if (auto it = fixed.find(name); it != fixed.end()) return it->second;
  std::string s = name;
  for (const auto& [from, to] : parts) {
    if (auto at = s.find(from); at != std::string::npos) s.replace(at, from.size(), to);
  }
  return s;
}

Source huggingface_source(const fs::path& dir) {
  const auto cfg = read_json_file(dir / "config.json", "config.json");
  auto hf = std::make_shared<HfSource>();
  hf->dir = dir.string();
  std::vector<fs::path> shards;
  if (fs::exists(dir / "model.safetensors")) {
    shards.push_back(dir / "model.safetensors");
  } else if (fs::exists(dir / "model.safetensors.index.json")) {
    const auto idx = read_json_file(dir / "model.safetensors.index.json", "model.safetensors.index.json");
    std::vector<std::string> names;
    for (const auto& [t, file] : idx.at("weight_map").items()) {
      const auto f = file.get<std::string>();
      if (std::find(names.begin(), names.end(), f) == names.end()) names.push_back(f);
    }
    for (const auto& n : names) shards.push_back(dir / n);
  } else {
    throw std::runtime_error(fmt::format("'{}' has no model.safetensors (or index)", dir.string()));
  }
  for (const auto& p : shards) {
    hf->files.emplace_back(p);
  }
  for (size_t i = 0; i < shards.size(); ++i) {
    for (auto& t : read_safetensors(hf->files[i], shards[i].string())) {
      std::string n = t.name.starts_with("model.") ? t.name.substr(6) : t.name;
      hf->tensors[n] = std::move(t);
    }
  }
  Source s;
  auto get_int = [&](const char* key) {
    if (!cfg.contains(key) || !cfg[key].is_number_integer()) {
      throw std::runtime_error(fmt::format("{}: config.json lacks the integer '{}'", dir.string(), key));
    }
    return cfg[key].get<int32_t>();
  };
  WhisperHparams& hp = s.hp;
  hp.n_vocab = get_int("vocab_size");
  hp.n_audio_ctx = get_int("max_source_positions");
  hp.n_audio_state = get_int("d_model");
  hp.n_audio_head = get_int("encoder_attention_heads");
  hp.n_audio_layer = get_int("encoder_layers");
  hp.n_text_ctx = get_int("max_target_positions");
  hp.n_text_state = get_int("d_model");
  hp.n_text_head = get_int("decoder_attention_heads");
  hp.n_text_layer = get_int("decoder_layers");
  hp.n_mels = get_int("num_mel_bins");
  s.vocab = read_vocabulary(dir);
  s.values = [hf](const WhisperTensorSpec& spec) { return hf->get(hf_name_for(spec.name)); };
  return s;
}

Source whisper_cpp_source(const fs::path& input) {
  auto f = std::make_shared<WhisperFile>(WhisperFile::open(input, {.allow_mixed_weights = true}));
  if (f->tensors.empty()) {
    throw std::runtime_error(fmt::format("{}: the file holds no tensors (a header-only test file)", input.string()));
  }
  Source s;
  s.hp = f->hparams;
  s.vocab = f->vocab;
  s.filters = f->filters;
  s.values = [f](const WhisperTensorSpec& spec) {
    const WhisperTensor* t = f->find(spec.name);
    std::vector<uint8_t> bytes(t->data.begin(), t->data.end());  // the file packs tensors unaligned
    std::vector<float> v(static_cast<size_t>(t->elements()));
    dequantize_rows(t->type, bytes.data(), v.data(), t->rows(), t->ne[0]);
    return v;
  };
  return s;
}

}  // namespace

std::string gpt2_token_bytes(const std::string& spelled) {
  const auto& dec = gpt2_byte_decoder();
  std::string out;
  for (size_t i = 0; i < spelled.size();) {
    const auto c0 = static_cast<uint8_t>(spelled[i]);
    char32_t cp;
    size_t n;
    if (c0 < 0x80) {
      cp = c0;
      n = 1;
    } else if ((c0 & 0xE0) == 0xC0) {
      cp = c0 & 0x1F;
      n = 2;
    } else if ((c0 & 0xF0) == 0xE0) {
      cp = c0 & 0x0F;
      n = 3;
    } else {
      throw std::runtime_error(fmt::format("token '{}' is not in GPT-2's byte alphabet", spelled));
    }
    if (i + n > spelled.size()) throw std::runtime_error(fmt::format("token '{}' is not valid UTF-8", spelled));
    for (size_t k = 1; k < n; ++k) {
      const auto c = static_cast<uint8_t>(spelled[i + k]);
      if ((c & 0xC0) != 0x80) throw std::runtime_error(fmt::format("token '{}' is not valid UTF-8", spelled));
      cp = (cp << 6) | (c & 0x3F);
    }
    const auto it = dec.find(cp);
    if (it == dec.end()) throw std::runtime_error(fmt::format("token '{}' is not in GPT-2's byte alphabet", spelled));
    out.push_back(static_cast<char>(it->second));
    i += n;
  }
  return out;
}

std::optional<WhisperSourceKind> detect_whisper_source(const fs::path& input) {
  std::error_code ec;
  if (fs::is_directory(input, ec)) {
    if (is_ct2_whisper_bin(input / "model.bin")) return WhisperSourceKind::CTranslate2;
    if (is_hf_whisper_dir(input)) return WhisperSourceKind::HuggingFace;
    return std::nullopt;
  }
  if (is_whisper_file(input)) return WhisperSourceKind::WhisperCpp;
  if (is_ct2_whisper_bin(input)) return WhisperSourceKind::CTranslate2;
  return std::nullopt;
}

WhisperConvertResult convert_whisper(const fs::path& input, const fs::path& output, std::optional<TypeId> outtype) {
  const TypeId wtype = outtype.value_or(TypeId::F16);
  if (wtype != TypeId::F16 && wtype != TypeId::F32) {
    throw TypeError(fmt::format("--outtype {}: a Whisper model converts to f16 or f32 (then mixq quantize)",
                                type_traits(wtype).name));
  }
  const auto kind = detect_whisper_source(input);
  if (!kind) throw std::runtime_error(fmt::format("'{}' is not a Whisper model mixq can read", input.string()));
  Source s;
  switch (*kind) {
    case WhisperSourceKind::WhisperCpp: s = whisper_cpp_source(input); break;
    case WhisperSourceKind::CTranslate2: {
      const bool dir = fs::is_directory(input);
      s = ctranslate2_source(dir ? input : input.parent_path(), dir ? input / "model.bin" : input);
      break;
    }
    case WhisperSourceKind::HuggingFace: s = huggingface_source(input); break;
  }
  s.hp.ftype = whisper_ftype_for(wtype);
  const WhisperMelFilters filters = s.filters ? *s.filters : whisper_mel_filters(s.hp.n_mels);
  const auto specs = whisper_tensor_specs(s.hp);
  WhisperWriter w(output, s.hp, filters, s.vocab);
  std::vector<uint8_t> bytes;
  for (const auto& spec : specs) {
    std::vector<float> v = s.values(spec);
    int64_t n = 1;
    for (auto d : spec.ne) n *= d;
    if (static_cast<int64_t>(v.size()) != n) {
      throw std::runtime_error(fmt::format("{}: tensor '{}' has {} values, the hparams give {}", input.string(),
                                           spec.name, v.size(), n));
    }
    const TypeId to = whisper_stored_type(spec.role, wtype);
    bytes.resize(whisper_tensor_bytes(to, spec.ne));
    quantize_rows(to, v.data(), bytes.data(), n / spec.ne[0], spec.ne[0]);
    w.add_tensor(spec.name, spec.ne, to, bytes);
  }
  w.finish();
  WhisperConvertResult r;
  r.source = *kind;
  r.tensors = specs.size();
  r.bytes_written = w.bytes_written();
  r.warnings = std::move(s.warnings);
  return r;
}

}  // namespace mixq
