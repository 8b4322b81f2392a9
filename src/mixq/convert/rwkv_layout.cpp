#include "mixq/convert/rwkv_layout.h"

#include <algorithm>
#include <stdexcept>
#include <vector>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "mixq/convert/rwkv6_layout.h"

namespace mixq {

namespace {

struct Rename {
  const char* rwkvcpp;
  const char* llamacpp;
};

constexpr Rename kGlobal[] = {
    {"emb.weight", "token_embd.weight"},         {"blocks.0.ln0.weight", "token_embd_norm.weight"},
    {"blocks.0.ln0.bias", "token_embd_norm.bias"}, {"ln_out.weight", "output_norm.weight"},
    {"ln_out.bias", "output_norm.bias"},         {"head.weight", "output.weight"},
};

// After "blocks.N." / "blk.N.".
constexpr Rename kBlock[] = {
    {"ln1.weight", "attn_norm.weight"},
    {"ln1.bias", "attn_norm.bias"},
    {"ln2.weight", "attn_norm_2.weight"},
    {"ln2.bias", "attn_norm_2.bias"},
    {"att.x_rwkvag", "time_mix_lerp_fused.weight"},
    {"att.w0", "time_mix_w0.weight"},
    {"att.w1", "time_mix_w1.weight"},
    {"att.w2", "time_mix_w2.weight"},
    {"att.a0", "time_mix_a0.weight"},
    {"att.a1", "time_mix_a1.weight"},
    {"att.a2", "time_mix_a2.weight"},
    {"att.v0", "time_mix_v0.weight"},
    {"att.v1", "time_mix_v1.weight"},
    {"att.v2", "time_mix_v2.weight"},
    {"att.g1", "time_mix_g1.weight"},
    {"att.g2", "time_mix_g2.weight"},
    {"att.k_k", "time_mix_k_k.weight"},
    {"att.k_a", "time_mix_k_a.weight"},
    {"att.r_k", "time_mix_r_k.weight"},
    {"att.receptance.weight", "time_mix_receptance.weight"},
    {"att.key.weight", "time_mix_key.weight"},
    {"att.value.weight", "time_mix_value.weight"},
    {"att.output.weight", "time_mix_output.weight"},
    {"att.gate.weight", "time_mix_gate.weight"},  // RWKV-5.2 / 6 (rwkv6 layout)
    {"att.ln_x.weight", "time_mix_ln.weight"},
    {"att.ln_x.bias", "time_mix_ln.bias"},
    {"ffn.x_k", "channel_mix_lerp_k.weight"},
    {"ffn.key.weight", "channel_mix_key.weight"},
    {"ffn.value.weight", "channel_mix_value.weight"},
    {"ffn.receptance.weight", "channel_mix_receptance.weight"},  // RWKV-5.2 / 6 (rwkv6 layout)
};

// Splits "PREFIX<N>.rest" into N and rest.
bool split_block(std::string_view name, std::string_view prefix, int& block, std::string_view& rest) {
  if (name.substr(0, prefix.size()) != prefix) return false;
  size_t i = prefix.size(), digits = 0;
  block = 0;
  while (i < name.size() && name[i] >= '0' && name[i] <= '9' && digits < 9) {
    block = block * 10 + (name[i++] - '0');
    ++digits;
  }
  if (digits == 0 || i >= name.size() || name[i] != '.') return false;
  rest = name.substr(i + 1);
  return true;
}

// A tensor's name in the other layout, or "" when it has no counterpart.
std::string counterpart(std::string_view name, RwkvLayout from) {
  const bool to_llama = from == RwkvLayout::RwkvCpp;
  for (const Rename& r : kGlobal) {
    if (name == (to_llama ? r.rwkvcpp : r.llamacpp)) return to_llama ? r.llamacpp : r.rwkvcpp;
  }
  int block = 0;
  std::string_view rest;
  if (!split_block(name, to_llama ? "blocks." : "blk.", block, rest)) return "";
  for (const Rename& r : kBlock) {
    if (rest == (to_llama ? r.rwkvcpp : r.llamacpp)) {
      return fmt::format("{}{}.{}", to_llama ? "blk." : "blocks.", block, to_llama ? r.llamacpp : r.rwkvcpp);
    }
  }
  return "";
}

// The shape a tensor takes in `to`'s layout (same elements, same order).
std::vector<int64_t> shape_in(std::string_view rwkvcpp_name, std::vector<int64_t> shape, int64_t n_embd,
                              int64_t head_size, RwkvLayout to) {
  const auto is = [&](std::string_view suffix) { return rwkvcpp_name.ends_with(suffix); };
  const bool vector = is(".att.w0") || is(".att.a0") || is(".att.v0") || is(".att.k_k") || is(".att.k_a");
  if (to == RwkvLayout::LlamaCpp) {
    if (vector || is(".att.r_k")) return {n_embd};
    if (is(".att.x_rwkvag")) return {n_embd, 1, 1, 6};
    if (is(".ffn.x_k")) return {n_embd, 1, 1};
    return shape;
  }
  if (vector || is(".ffn.x_k")) return {n_embd, 1, 1};
  if (is(".att.r_k")) return {head_size, n_embd / head_size};
  if (is(".att.x_rwkvag")) return {n_embd, 1, 6};
  return shape;
}

int64_t int_key(const GgufFile& f, const std::string& key) {
  const GgufValue* v = f.find(key);
  if (!v || !v->is_integer()) throw std::runtime_error(fmt::format("{}: missing metadata key {}", f.label(), key));
  return v->as_int();
}

}  // namespace

std::optional<RwkvLayout> parse_rwkv_layout(std::string_view name) {
  if (name == "rwkv.cpp") return RwkvLayout::RwkvCpp;
  if (name == "llama.cpp") return RwkvLayout::LlamaCpp;
  return std::nullopt;
}

const char* rwkv_layout_name(RwkvLayout l) { return l == RwkvLayout::LlamaCpp ? "llama.cpp" : "rwkv.cpp"; }

RwkvLayout rwkv_layout_of(const GgufFile& f) {
  return f.find_tensor("token_embd.weight") ? RwkvLayout::LlamaCpp : RwkvLayout::RwkvCpp;
}

std::string rwkv7_tensor_name(std::string_view rwkvcpp_name, RwkvLayout layout) {
  if (layout == RwkvLayout::RwkvCpp) return std::string(rwkvcpp_name);
  std::string n = counterpart(rwkvcpp_name, RwkvLayout::RwkvCpp);
  return n.empty() ? std::string(rwkvcpp_name) : n;
}

size_t convert_rwkv_layout(const GgufFile& in, const std::filesystem::path& out, RwkvLayout to) {
  const GgufValue* arch = in.find("general.architecture");
  const std::string a = arch && arch->type() == GgufValueType::STRING ? arch->as_string() : "";
  if (a == "rwkv5" && to == RwkvLayout::LlamaCpp) return convert_rwkv5_to_rwkv6(in, out);
  if (a != "rwkv7") {
    throw std::runtime_error(fmt::format("{}: --layout converts RWKV-7 files (general.architecture rwkv7) either way and "
                                         "RWKV-5.2 files (rwkv5) into llama.cpp's rwkv6, not '{}'{}",
                                         in.label(), a, a == "rwkv5" ? " into rwkv.cpp's layout (it is in it already)" : ""));
  }
  const RwkvLayout from = rwkv_layout_of(in);
  const int64_t n_embd = int_key(in, "rwkv7.embedding_length"), n_layer = int_key(in, "rwkv7.block_count");
  const auto rwkvcpp_name = [&](const std::string& name) {
    if (from == RwkvLayout::RwkvCpp) return name;
    const std::string n = counterpart(name, RwkvLayout::LlamaCpp);
    return n.empty() ? name : n;
  };
  const auto find = [&](const std::string& rwkvcpp) -> const GgufTensor* {
    const GgufTensor* t = in.find_tensor(rwkv7_tensor_name(rwkvcpp, from));
    if (!t) throw std::runtime_error(fmt::format("{}: missing tensor {}", in.label(), rwkv7_tensor_name(rwkvcpp, from)));
    return t;
  };
  // The head size: rwkv.cpp's r_k shows it, llama.cpp's files record it.
  const GgufTensor* r_k = find("blocks.0.att.r_k");
  int64_t head_size = r_k->shape.size() == 2 ? r_k->shape[0] : 0;
  if (const GgufValue* v = in.find("rwkv7.wkv.head_size"); v && v->is_integer()) head_size = v->as_int();
  if (head_size <= 0 || n_embd % head_size != 0) {
    throw std::runtime_error(fmt::format("{}: no head size (rwkv7.wkv.head_size, or blocks.0.att.r_k's shape)", in.label()));
  }
  const int64_t d_w = find("blocks.0.att.w1")->shape.at(1), d_a = find("blocks.0.att.a1")->shape.at(1),
                d_g = find("blocks.0.att.g1")->shape.at(1);
  const int64_t d_v = n_layer > 1 ? find("blocks.1.att.v1")->shape.at(1) : d_a;

  GgufWriter w(out);
  w.copy_metadata(in);
  const std::vector<std::string> llama_keys = {
      "rwkv7.wkv.head_size", "rwkv7.attention.decay_lora_rank", "rwkv7.attention.iclr_lora_rank",
      "rwkv7.attention.value_residual_mix_lora_rank", "rwkv7.attention.gate_lora_rank",
      "rwkv7.attention.layer_norm_epsilon", "rwkv7.token_shift_count", "rwkv7.context_length"};
  if (to == RwkvLayout::LlamaCpp) {
    w.set("rwkv7.wkv.head_size", GgufValue::u32(static_cast<uint32_t>(head_size)));
    w.set("rwkv7.attention.decay_lora_rank", GgufValue::u32(static_cast<uint32_t>(d_w)));
    w.set("rwkv7.attention.iclr_lora_rank", GgufValue::u32(static_cast<uint32_t>(d_a)));
    w.set("rwkv7.attention.value_residual_mix_lora_rank", GgufValue::u32(static_cast<uint32_t>(d_v)));
    w.set("rwkv7.attention.gate_lora_rank", GgufValue::u32(static_cast<uint32_t>(d_g)));
    w.set("rwkv7.attention.layer_norm_epsilon", GgufValue::f32(1e-5f));
    w.set("rwkv7.token_shift_count", GgufValue::u32(2));  // att and ffn shift, as llama.cpp's rwkv7 graph asserts
    w.set("rwkv7.context_length", GgufValue::u32(1048576));  // recurrent: no bound; llama.cpp wants a number
  } else {
    for (const auto& k : llama_keys) w.remove(k);
  }
  struct Out {
    const GgufTensor* src;  // null: zeros
    std::string name;
    std::vector<int64_t> shape;
    TypeId type;
  };
  std::vector<Out> outs;
  const std::vector<std::string> unused_v = {"blocks.0.att.v0", "blocks.0.att.v1", "blocks.0.att.v2"};
  for (const GgufTensor& t : in.tensors()) {
    const std::string rc = rwkvcpp_name(t.name);
    if (to == RwkvLayout::RwkvCpp && from == RwkvLayout::LlamaCpp &&
        std::find(unused_v.begin(), unused_v.end(), rc) != unused_v.end()) {
      continue;  // llama.cpp's unused block-0 value LoRA
    }
    const std::string name = rwkv7_tensor_name(rc, to);
    const std::vector<int64_t> shape = shape_in(rc, t.shape, n_embd, head_size, to);
    if (shape[0] != t.shape[0] && !t.type->fits_row(shape[0])) {
      throw std::runtime_error(fmt::format("{}: tensor {} is {}: its rows cannot be reshaped to [{}]", in.label(), t.name,
                                           t.type->name, fmt::join(shape, ", ")));
    }
    outs.push_back({&t, name, shape, t.type->id});
  }
  if (to == RwkvLayout::LlamaCpp && !in.find_tensor(rwkv7_tensor_name("blocks.0.att.v1", to))) {
    outs.push_back({nullptr, rwkv7_tensor_name("blocks.0.att.v0", to), {n_embd}, TypeId::F32});
    outs.push_back({nullptr, rwkv7_tensor_name("blocks.0.att.v1", to), {n_embd, d_a}, TypeId::F32});
    outs.push_back({nullptr, rwkv7_tensor_name("blocks.0.att.v2", to), {d_a, n_embd}, TypeId::F32});
  }
  for (const Out& o : outs) w.add_tensor(o.name, o.shape, o.type);
  for (const Out& o : outs) {
    if (o.src) {
      w.write_tensor_data(o.src->bytes());
      in.drop_pages(*o.src);
    } else {
      int64_t n = 1;
      for (int64_t d : o.shape) n *= d;
      w.write_tensor_data(std::vector<uint8_t>(static_cast<size_t>(n) * sizeof(float), 0));
    }
  }
  w.finish();
  return outs.size();
}

}  // namespace mixq
