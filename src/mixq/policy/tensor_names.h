// What a tensor is, from its name: its layer index and its component (attention q/k/v/o, FFN
// gate/up/down, embeddings, head, norms, SSM and RWKV parts). Works on GGUF names as llama.cpp
// writes them (blk.N.attn_q.weight), so rules need nothing but the tensor list.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace mixq {

enum class Component {
  AttnQ, AttnK, AttnV, AttnOut, AttnQkv, FfnGate, FfnUp, FfnDown, Embed, Output, Norm,
  SsmIn, SsmConv, SsmX, SsmDt, SsmA, SsmD, SsmOut, TimeMix, ChannelMix,
  // RWKV's matrices (TimeMix / ChannelMix: its other time- and channel-mixing tensors).
  TimeMixReceptance, TimeMixKey, TimeMixValue, TimeMixGate, TimeMixOutput,
  ChannelMixReceptance, ChannelMixKey, ChannelMixValue,
  Other,
};

// Component names as users write them in rules.
const char* component_name(Component c);

// A group name a rule may use for several components: "attn" (q, k, v, o, qkv), "ffn" (gate, up,
// down), "ssm" (all SSM parts), "embed", "output" ("head"), "norm", "time_mix", "channel_mix"
// (RWKV: every time- / channel-mixing tensor), "receptance", "key", "value", "gate" (RWKV: that
// matrix in both mixes), or one component's own name ("attn_v", "ffn_down", "ssm_in",
// "time_mix_key", "channel_mix_value", ...). Throws std::invalid_argument
// for unknown names, listing the known ones.
std::vector<Component> parse_component_group(std::string_view group);

struct TensorRole {
  std::optional<int> layer;  // blk.N / layers.N / blocks.N
  Component component = Component::Other;
  // The "head": output.weight, or token_embd.weight when the model ties its embeddings and has
  // no separate output tensor (llama.cpp gives that tensor the head's type).
  bool is_head = false;
};

// has_output: whether the model has a separate output.weight.
TensorRole classify_tensor(std::string_view name, bool has_output);

// The layer index in a name ("blk.12.attn_q.weight" -> 12), if any.
std::optional<int> layer_of(std::string_view name);

// Framework-style aliases of the name, so precision maps written against Hugging Face names
// ("layers.3.self_attn.q_proj", "layers.*.mixer.in_proj", "layers.*.ssm.in_proj") match GGUF
// names. Empty when the tensor is not a known component.
std::vector<std::string> aliases_of(std::string_view name);

}  // namespace mixq
