#include "mixq/policy/tensor_names.h"

#include <algorithm>
#include <charconv>
#include <stdexcept>

namespace mixq {

namespace {

struct ComponentRow {
  Component component;
  const char* name;         // as rules name it
  const char* gguf_marker;  // substring of the GGUF tensor name (after "blk.N.")
  const char* alias;        // Hugging Face-style path after "layers.N."
  const char* alt_alias;    // a second spelling ("ssm.in_proj" for Mamba's "mixer.in_proj"), or null
  const char* group;        // the group it belongs to
  const char* role = nullptr;  // a second group across groups (RWKV's "key" in both mixes)
};

// Order matters where markers overlap: the first row whose marker is found wins.
constexpr ComponentRow kComponents[] = {
    {Component::AttnQkv, "attn_qkv", "attn_qkv", "self_attn.qkv_proj", nullptr, "attn"},
    {Component::AttnQ, "attn_q", "attn_q.", "self_attn.q_proj", nullptr, "attn"},
    {Component::AttnK, "attn_k", "attn_k.", "self_attn.k_proj", nullptr, "attn"},
    {Component::AttnV, "attn_v", "attn_v.", "self_attn.v_proj", nullptr, "attn"},
    {Component::AttnOut, "attn_output", "attn_output", "self_attn.o_proj", nullptr, "attn"},
    {Component::Norm, "norm", "norm", "norm", nullptr, "norm"},
    {Component::FfnGate, "ffn_gate", "ffn_gate", "mlp.gate_proj", nullptr, "ffn"},
    {Component::FfnUp, "ffn_up", "ffn_up", "mlp.up_proj", nullptr, "ffn"},
    {Component::FfnDown, "ffn_down", "ffn_down", "mlp.down_proj", nullptr, "ffn"},
    {Component::SsmIn, "ssm_in", "ssm_in", "mixer.in_proj", "ssm.in_proj", "ssm"},
    {Component::SsmConv, "ssm_conv1d", "ssm_conv1d", "mixer.conv1d", "ssm.conv1d", "ssm"},
    {Component::SsmX, "ssm_x", "ssm_x", "mixer.x_proj", "ssm.x_proj", "ssm"},
    {Component::SsmDt, "ssm_dt", "ssm_dt", "mixer.dt_proj", "ssm.dt_proj", "ssm"},
    {Component::SsmA, "ssm_a", "ssm_a", "mixer.A_log", "ssm.A_log", "ssm"},
    {Component::SsmD, "ssm_d", "ssm_d", "mixer.D", "ssm.D", "ssm"},
    {Component::SsmOut, "ssm_out", "ssm_out", "mixer.out_proj", "ssm.out_proj", "ssm"},
    // RWKV matrices: llama.cpp's names, then rwkv.cpp's (kept as they are by `mixq convert`).
    {Component::TimeMixReceptance, "time_mix_receptance", "time_mix_receptance", "attention.receptance", nullptr, "time_mix", "receptance"},
    {Component::TimeMixKey, "time_mix_key", "time_mix_key", "attention.key", nullptr, "time_mix", "key"},
    {Component::TimeMixValue, "time_mix_value", "time_mix_value", "attention.value", nullptr, "time_mix", "value"},
    {Component::TimeMixGate, "time_mix_gate", "time_mix_gate", "attention.gate", nullptr, "time_mix", "gate"},
    {Component::TimeMixOutput, "time_mix_output", "time_mix_output", "attention.output", nullptr, "time_mix"},
    {Component::ChannelMixReceptance, "channel_mix_receptance", "channel_mix_receptance", "feed_forward.receptance", nullptr, "channel_mix", "receptance"},
    {Component::ChannelMixKey, "channel_mix_key", "channel_mix_key", "feed_forward.key", nullptr, "channel_mix", "key"},
    {Component::ChannelMixValue, "channel_mix_value", "channel_mix_value", "feed_forward.value", nullptr, "channel_mix", "value"},
    {Component::TimeMixReceptance, "time_mix_receptance", ".att.receptance.", "attention.receptance", nullptr, "time_mix", "receptance"},
    {Component::TimeMixKey, "time_mix_key", ".att.key.", "attention.key", nullptr, "time_mix", "key"},
    {Component::TimeMixValue, "time_mix_value", ".att.value.", "attention.value", nullptr, "time_mix", "value"},
    {Component::TimeMixGate, "time_mix_gate", ".att.gate.", "attention.gate", nullptr, "time_mix", "gate"},
    {Component::TimeMixOutput, "time_mix_output", ".att.output.", "attention.output", nullptr, "time_mix"},
    {Component::ChannelMixReceptance, "channel_mix_receptance", ".ffn.receptance.", "feed_forward.receptance", nullptr, "channel_mix", "receptance"},
    {Component::ChannelMixKey, "channel_mix_key", ".ffn.key.", "feed_forward.key", nullptr, "channel_mix", "key"},
    {Component::ChannelMixValue, "channel_mix_value", ".ffn.value.", "feed_forward.value", nullptr, "channel_mix", "value"},
    // The rest of time mixing, among them the low-rank matrices RWKV-6 (time_mix_w1/w2: token
    // shift, time_mix_decay_w1/w2: decay) and RWKV-7 (time_mix_w1/a1/v1/g1, ...) multiply by.
    {Component::TimeMix, "time_mix", "time_mix", "attention", nullptr, "time_mix"},
    {Component::ChannelMix, "channel_mix", "channel_mix", "feed_forward", nullptr, "channel_mix"},
    // rwkv.cpp names, kept as they are by `mixq convert`
    {Component::TimeMix, "time_mix", ".att.", "attention", nullptr, "time_mix"},
    {Component::ChannelMix, "channel_mix", ".ffn.", "feed_forward", nullptr, "channel_mix"},
};

bool starts_with_layer_prefix(std::string_view name, std::string_view prefix, int& layer, size_t& rest) {
  if (name.substr(0, prefix.size()) != prefix) return false;
  const char* begin = name.data() + prefix.size();
  const char* end = name.data() + name.size();
  int v = 0;
  auto [p, ec] = std::from_chars(begin, end, v);
  if (ec != std::errc() || p == begin || p == end || *p != '.') return false;
  layer = v;
  rest = static_cast<size_t>(p - name.data()) + 1;
  return true;
}

}  // namespace

const char* component_name(Component c) {
  if (c == Component::Embed) return "embed";
  if (c == Component::Output) return "output";
  if (c == Component::Other) return "other";
  for (const auto& row : kComponents) {
    if (row.component == c) return row.name;
  }
  return "other";
}

std::vector<Component> parse_component_group(std::string_view group) {
  if (group == "embed" || group == "token_embd") return {Component::Embed};
  if (group == "output" || group == "head") return {Component::Output};
  std::vector<Component> out;
  for (const auto& row : kComponents) {
    if ((group == row.group || group == row.name || (row.role && group == row.role)) &&
        std::find(out.begin(), out.end(), row.component) == out.end()) {
      out.push_back(row.component);
    }
  }
  if (group == "attn_o") out.push_back(Component::AttnOut);
  if (out.empty()) {
    throw std::invalid_argument(
        "unknown component '" + std::string(group) +
        "'; known: attn, attn_q, attn_k, attn_v, attn_o, attn_qkv, ffn, ffn_gate, ffn_up, ffn_down, embed, output, "
        "norm, ssm, ssm_in, ssm_conv1d, ssm_x, ssm_dt, ssm_a, ssm_d, ssm_out, time_mix, channel_mix, receptance, key, "
        "value, gate, time_mix_{receptance,key,value,gate,output}, channel_mix_{receptance,key,value}");
  }
  return out;
}

std::optional<int> layer_of(std::string_view name) {
  int layer = 0;
  size_t rest = 0;
  for (std::string_view prefix : {"blk.", "layers.", "blocks.", "model.layers.", "backbone.layers."}) {
    if (starts_with_layer_prefix(name, prefix, layer, rest)) return layer;
  }
  return std::nullopt;
}

TensorRole classify_tensor(std::string_view name, bool has_output) {
  TensorRole role;
  role.layer = layer_of(name);
  if (name == "token_embd.weight" || name == "emb.weight" || name == "per_layer_token_embd.weight") {
    role.component = Component::Embed;
    role.is_head = !has_output && name == "token_embd.weight";
    return role;
  }
  if (name == "output.weight" || name == "head.weight") {
    role.component = Component::Output;
    role.is_head = true;
    return role;
  }
  for (const auto& row : kComponents) {
    if (name.find(row.gguf_marker) != std::string_view::npos) {
      role.component = row.component;
      return role;
    }
  }
  return role;
}

std::vector<std::string> aliases_of(std::string_view name) {
  const auto layer = layer_of(name);
  const TensorRole role = classify_tensor(name, true);
  if (role.component == Component::Embed) return {"embed_tokens", "embeddings"};
  if (role.component == Component::Output) return {"lm_head"};
  if (!layer || role.component == Component::Other) return {};
  for (const auto& row : kComponents) {
    if (row.component != role.component) continue;
    const std::string prefix = "layers." + std::to_string(*layer) + ".";
    std::vector<std::string> out = {prefix + row.alias};
    if (row.alt_alias) out.push_back(prefix + row.alt_alias);
    return out;
  }
  return {};
}

}  // namespace mixq
