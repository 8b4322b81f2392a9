// Presets: named rule lists. llama.cpp's mixes reproduce the per-tensor types llama-quantize
// chooses for LLaMA-family models (llama_tensor_get_type), written as data; `boundary` and the
// SSM maps are mixq's.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "mixq/policy/policy.h"

namespace mixq {

struct Preset {
  std::string name;          // canonical, upper-case for llama.cpp's mixes ("Q4_K_M")
  TypeId default_type;
  std::vector<Rule> rules;   // first match wins
  uint32_t llama_ftype;      // llama.cpp's general.file_type for the mix (or the closest)
  std::string description;
};

// The preset of that name (case-insensitive; "boundary:q5_k" picks boundary's base type), or
// nullopt when the name is not a preset.
std::optional<Preset> find_preset(const std::string& name);
std::vector<std::string> preset_names();

}  // namespace mixq
