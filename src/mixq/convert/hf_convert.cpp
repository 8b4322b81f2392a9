// The Hugging Face directory -> GGUF driver: shards, names, q/k row order, output types; the
// config and tokenizer come from hf_config / hf_tokenizer, the tensors from the safetensors reader.
#include "mixq/convert/hf_convert.h"

#include <algorithm>
#include <cstring>
#include <map>
#include <stdexcept>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "mixq/convert/hf_config.h"
#include "mixq/convert/hf_tokenizer.h"
#include "mixq/convert/safetensors.h"
#include "mixq/io/gguf.h"

namespace mixq {

namespace fs = std::filesystem;
using json = nlohmann::json;
using hf::ConfigJson;
using hf::Hparams;
using hf::Vocab;
using hf::read_hparams;
using hf::read_json;
using hf::read_tokenizer;
using hf::write_tokenizer;

namespace {

std::optional<TypeId> float_type(const std::string& dtype) {
  if (dtype == "F32") return TypeId::F32;
  if (dtype == "F16") return TypeId::F16;
  if (dtype == "BF16") return TypeId::BF16;
  return std::nullopt;
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

// llama.cpp's llama_ftype numbering: ALL_F32 = 0, MOSTLY_F16 = 1, MOSTLY_BF16 = 32.
uint32_t file_type_of(TypeId t) { return t == TypeId::F32 ? 0 : t == TypeId::F16 ? 1 : 32; }

}  // namespace

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
