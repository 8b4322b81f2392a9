#include "mixq/convert/safetensors.h"

#include <algorithm>
#include <cstring>
#include <fstream>
#include <map>
#include <stdexcept>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "mixq/io/gguf.h"

namespace mixq {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

size_t dtype_size(const std::string& dtype) {
  if (dtype == "F32" || dtype == "I32" || dtype == "U32") return 4;
  if (dtype == "F16" || dtype == "BF16" || dtype == "I16" || dtype == "U16") return 2;
  if (dtype == "F64" || dtype == "I64" || dtype == "U64") return 8;
  if (dtype == "I8" || dtype == "U8" || dtype == "BOOL" || dtype == "F8_E4M3" || dtype == "F8_E5M2") return 1;
  return 0;
}

json read_json(const fs::path& p) {
  std::ifstream f(p);
  if (!f) throw std::runtime_error(fmt::format("cannot read '{}'", p.string()));
  try {
    return json::parse(f);
  } catch (const json::parse_error& e) {
    throw std::runtime_error(fmt::format("'{}' is not valid JSON: {}", p.string(), e.what()));
  }
}

template <typename T>
T config_value(const json& c, const char* key, const fs::path& where) {
  if (!c.contains(key) || c[key].is_null()) {
    throw std::runtime_error(fmt::format("'{}' lacks \"{}\"", where.string(), key));
  }
  return c[key].get<T>();
}

// Hugging Face names -> llama.cpp's GGUF names.
std::optional<std::string> gguf_name(const std::string& hf) {
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
  if (hf.rfind(kPrefix, 0) != 0) return std::nullopt;
  const auto dot = hf.find('.', kPrefix.size());
  if (dot == std::string::npos) return std::nullopt;
  const std::string layer = hf.substr(kPrefix.size(), dot - kPrefix.size());
  const std::string rest = hf.substr(dot + 1);
  for (const auto& [from, to] : kLayer) {
    if (rest == from) return "blk." + layer + "." + to;
  }
  return std::nullopt;
}

}  // namespace

std::vector<SafetensorsTensor> read_safetensors(const MappedFile& file, const std::string& label) {
  const auto b = file.bytes();
  auto fail = [&](const std::string& what) {
    throw std::runtime_error(fmt::format("{}: not a valid safetensors file: {}", label, what));
  };
  if (b.size() < 8) fail("shorter than its 8-byte header length");
  uint64_t n;
  std::memcpy(&n, b.data(), 8);
  if (n > b.size() - 8) fail(fmt::format("header length {} runs past the end of the file", n));
  json header;
  try {
    header = json::parse(b.begin() + 8, b.begin() + 8 + static_cast<std::ptrdiff_t>(n));
  } catch (const json::parse_error& e) {
    fail(std::string("header is not JSON: ") + e.what());
  }
  if (!header.is_object()) fail("header is not a JSON object");
  const size_t data_start = 8 + static_cast<size_t>(n), data_size = b.size() - data_start;
  std::vector<SafetensorsTensor> out;
  for (const auto& [name, info] : header.items()) {
    if (name == "__metadata__") continue;
    if (!info.is_object() || !info.contains("dtype") || !info.contains("shape") || !info.contains("data_offsets")) {
      fail(fmt::format("entry '{}' lacks dtype, shape or data_offsets", name));
    }
    SafetensorsTensor t;
    t.name = name;
    t.dtype = info["dtype"].get<std::string>();
    const size_t elem = dtype_size(t.dtype);
    if (!elem) fail(fmt::format("tensor '{}' has unknown dtype {}", name, t.dtype));
    uint64_t count = 1;
    for (const auto& d : info["shape"]) {
      if (!d.is_number_unsigned()) fail(fmt::format("tensor '{}' has a bad dimension", name));
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
    if (begin > end || end > data_size) fail(fmt::format("tensor '{}' data lies outside the file", name));
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

size_t convert_safetensors_dir(const fs::path& dir, const fs::path& out, std::optional<TypeId> outtype) {
  const json config = read_json(dir / "config.json");
  const fs::path cfg = dir / "config.json";
  const auto n_embd = config_value<int64_t>(config, "hidden_size", cfg);
  const auto n_ff = config_value<int64_t>(config, "intermediate_size", cfg);
  const auto n_layer = config_value<int64_t>(config, "num_hidden_layers", cfg);
  const auto n_head = config_value<int64_t>(config, "num_attention_heads", cfg);
  const int64_t n_head_kv = config.value("num_key_value_heads", n_head);
  const auto vocab_size = config_value<int64_t>(config, "vocab_size", cfg);
  if (n_head <= 0 || n_head_kv <= 0 || n_embd % n_head != 0) {
    throw std::runtime_error(fmt::format("'{}': inconsistent head counts", cfg.string()));
  }

  // Shards: the index's weight map, or the single model.safetensors.
  std::vector<fs::path> shards;
  if (fs::exists(dir / "model.safetensors.index.json")) {
    const json index = read_json(dir / "model.safetensors.index.json");
    if (!index.contains("weight_map") || !index["weight_map"].is_object()) {
      throw std::runtime_error("model.safetensors.index.json lacks a weight_map");
    }
    for (const auto& [name, file] : index["weight_map"].items()) {
      const fs::path p = dir / file.get<std::string>();
      if (std::find(shards.begin(), shards.end(), p) == shards.end()) shards.push_back(p);
    }
  } else if (fs::exists(dir / "model.safetensors")) {
    shards.push_back(dir / "model.safetensors");
  } else {
    throw std::runtime_error(fmt::format("'{}' has no model.safetensors or model.safetensors.index.json",
                                         dir.string()));
  }
  std::vector<MappedFile> maps;
  std::map<std::string, SafetensorsTensor> by_gguf_name;
  for (const auto& shard : shards) {
    maps.emplace_back(shard);
    for (auto& t : read_safetensors(maps.back(), shard.string())) {
      if (auto name = gguf_name(t.name)) by_gguf_name[*name] = std::move(t);
    }
  }

  GgufWriter w(out);
  w.set("general.architecture", GgufValue::string("llama"));
  w.set("general.name", GgufValue::string(dir.filename().string()));
  w.set("llama.block_count", GgufValue::u32(static_cast<uint32_t>(n_layer)));
  w.set("llama.context_length", GgufValue::u32(config.value("max_position_embeddings", 2048u)));
  w.set("llama.embedding_length", GgufValue::u32(static_cast<uint32_t>(n_embd)));
  w.set("llama.feed_forward_length", GgufValue::u32(static_cast<uint32_t>(n_ff)));
  w.set("llama.attention.head_count", GgufValue::u32(static_cast<uint32_t>(n_head)));
  w.set("llama.attention.head_count_kv", GgufValue::u32(static_cast<uint32_t>(n_head_kv)));
  w.set("llama.rope.freq_base", GgufValue::f32(config.value("rope_theta", 10000.0f)));
  w.set("llama.attention.layer_norm_rms_epsilon", GgufValue::f32(config.value("rms_norm_eps", 1e-5f)));
  w.set("llama.vocab_size", GgufValue::u32(static_cast<uint32_t>(vocab_size)));
  w.set("llama.rope.dimension_count", GgufValue::u32(static_cast<uint32_t>(n_embd / n_head)));

  // tokenizer.json (BPE) -> llama.cpp's "gpt2" tokenizer keys.
  if (fs::exists(dir / "tokenizer.json")) {
    const json tok = read_json(dir / "tokenizer.json");
    if (!tok.contains("model") || tok["model"].value("type", "") != "BPE") {
      throw std::runtime_error("tokenizer.json: only BPE tokenizers are supported");
    }
    std::vector<std::string> tokens(static_cast<size_t>(vocab_size));
    std::vector<GgufValue> types(static_cast<size_t>(vocab_size), GgufValue::i32(1));
    for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = fmt::format("[PAD{}]", i);
    for (const auto& [text, id] : tok["model"]["vocab"].items()) {
      const auto i = id.get<int64_t>();
      if (i >= 0 && i < vocab_size) tokens[static_cast<size_t>(i)] = text;
    }
    for (const auto& added : tok.value("added_tokens", json::array())) {
      const auto i = added.value("id", int64_t{-1});
      if (i < 0 || i >= vocab_size) continue;
      tokens[static_cast<size_t>(i)] = added.value("content", "");
      types[static_cast<size_t>(i)] = GgufValue::i32(added.value("special", false) ? 3 : 4);  // CONTROL / USER_DEFINED
    }
    std::vector<std::string> merges;
    for (const auto& m : tok["model"].value("merges", json::array())) {
      merges.push_back(m.is_string() ? m.get<std::string>() : m[0].get<std::string>() + " " + m[1].get<std::string>());
    }
    w.set("tokenizer.ggml.model", GgufValue::string("gpt2"));
    w.set("tokenizer.ggml.pre", GgufValue::string("default"));
    w.set("tokenizer.ggml.tokens", GgufValue::string_array(tokens));
    w.set("tokenizer.ggml.token_type", GgufValue::array(GgufValueType::INT32, std::move(types)));
    w.set("tokenizer.ggml.merges", GgufValue::string_array(merges));
  }
  if (config.contains("bos_token_id") && config["bos_token_id"].is_number_integer()) {
    w.set("tokenizer.ggml.bos_token_id", GgufValue::u32(config["bos_token_id"].get<uint32_t>()));
  }
  if (config.contains("eos_token_id") && config["eos_token_id"].is_number_integer()) {
    w.set("tokenizer.ggml.eos_token_id", GgufValue::u32(config["eos_token_id"].get<uint32_t>()));
  }

  struct Planned {
    std::string name;
    const SafetensorsTensor* src;
    TypeId type;
    int64_t permute_heads;  // q/k: heads whose rows are reordered; 0 = none
  };
  std::vector<std::string> order = {"token_embd.weight", "output_norm.weight", "output.weight"};
  for (int64_t l = 0; l < n_layer; ++l) {
    for (const char* part : {"attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate",
                             "ffn_up", "ffn_down"}) {
      order.push_back(fmt::format("blk.{}.{}.weight", l, part));
    }
  }
  std::vector<Planned> plan;
  for (const auto& name : order) {
    auto it = by_gguf_name.find(name);
    if (it == by_gguf_name.end()) {
      if (name == "output.weight") continue;  // tied embeddings
      throw std::runtime_error(fmt::format("'{}' lacks the tensor for {}", dir.string(), name));
    }
    const SafetensorsTensor& t = it->second;
    const TypeId stored = t.dtype == "F32" ? TypeId::F32 : t.dtype == "F16" ? TypeId::F16
                        : t.dtype == "BF16" ? TypeId::BF16 : throw std::runtime_error(fmt::format(
                              "tensor '{}' has dtype {}: only F32, F16 and BF16 are converted", t.name, t.dtype));
    TypeId type = t.shape.size() < 2 ? TypeId::F32 : outtype.value_or(stored);
    const int64_t heads = name.find("attn_q.") != std::string::npos ? n_head
                        : name.find("attn_k.") != std::string::npos ? n_head_kv : 0;
    plan.push_back({name, &t, type, heads});
    std::vector<int64_t> shape(t.shape.rbegin(), t.shape.rend());  // GGUF lists ne0 (the row) first
    w.add_tensor(name, shape, type);
  }
  std::vector<float> values, permuted;
  std::vector<uint8_t> bytes;
  for (const auto& p : plan) {
    const SafetensorsTensor& t = *p.src;
    const int64_t row = t.shape.back();
    const int64_t rows = static_cast<int64_t>(t.nbytes / dtype_size(t.dtype)) / row;
    const TypeId stored = t.dtype == "F32" ? TypeId::F32 : t.dtype == "F16" ? TypeId::F16 : TypeId::BF16;
    values.resize(static_cast<size_t>(row * rows));
    bytes.assign(t.data, t.data + t.nbytes);  // safetensors data need not be aligned
    dequantize_rows(stored, bytes.data(), values.data(), rows, row);
    if (p.permute_heads > 0) {
      // Hugging Face keeps each head's rotary pairs as two halves; llama.cpp interleaves them:
      // GGUF row h*hd + 2i + j is HF row h*hd + j*hd/2 + i.
      const int64_t hd = rows / p.permute_heads, half = hd / 2;
      permuted.resize(values.size());
      for (int64_t h = 0; h < p.permute_heads; ++h) {
        for (int64_t i = 0; i < half; ++i) {
          for (int64_t j = 0; j < 2; ++j) {
            std::copy_n(values.begin() + (h * hd + j * half + i) * row, row, permuted.begin() + (h * hd + 2 * i + j) * row);
          }
        }
      }
      values.swap(permuted);
    }
    bytes.resize(type_traits(p.type).row_bytes(row) * static_cast<size_t>(rows));
    quantize_rows(p.type, values.data(), bytes.data(), rows, row);
    w.write_tensor_data(bytes);
  }
  w.finish();
  return plan.size();
}

}  // namespace mixq
