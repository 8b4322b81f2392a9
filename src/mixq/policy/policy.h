// Precision policy: which type each tensor gets. Rules are data, evaluated in a documented order:
//
//   1. tensors that are never quantized (1-D, norms, not a "*weight", SSM conv/A/D...) keep
//      their stored type (F32 stays F32);
//   1b. a plan (mixq plan, --plan) for the tensors it lists;
//   2. --output-tensor-type / --token-embedding-type (as in llama-quantize, they beat everything);
//   3. --tensor-type REGEX=TYPE rules, first match wins;
//   4. --config rules (pattern maps, per-layer lists), first match wins;
//   5. --layers SPEC[/COMPONENT]=TYPE rules, first match wins;
//   6. the preset's rules (llama.cpp's mixes, boundary, ssm maps), first match wins;
//   7. the default type.
//   Then, when the chosen type cannot hold the tensor's rows, a fallback (llama.cpp's table, then
//   the nearest wider type that fits) with the reason recorded.
#pragma once

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "mixq/formats/type_table.h"
#include "mixq/policy/tensor_names.h"

namespace re2 {
class RE2;
}

namespace mixq {

class PolicyError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Which layers a rule covers. Fractions follow llama.cpp's integer arithmetic on n_layers.
struct LayerSpec {
  enum class Kind {
    Any,          // every tensor, with or without a layer
    First,        // layer < a
    Last,         // layer >= n - a
    Range,        // a <= layer <= b
    Every,        // layer % a == 0
    FirstFrac,    // layer < n / a
    MoreBits,     // llama.cpp's use_more_bits: i < n/8 || i >= 7n/8 || (i - n/8) % 3 == 2
  };
  Kind kind = Kind::Any;
  int a = 0, b = 0;

  bool matches(std::optional<int> layer, int n_layers) const;
  std::string to_string() const;
  // "first:2", "last:2", "3-7", "5", "every:3", "all"
  static LayerSpec parse(const std::string& spec);
};

// What the policy knows of the model (from GGUF metadata, or inferred from tensor names).
struct ModelInfo {
  std::string arch;
  int n_layers = 0;
  int n_head = 0, n_head_kv = 0;
  int n_expert = 0;
  bool has_output = true;
  int n_gqa() const { return n_head > 0 && n_head_kv > 0 ? n_head / n_head_kv : 1; }
};

struct TensorDesc {
  std::string name;
  std::vector<int64_t> shape;  // shape[0] = row length
  TypeId stored_type = TypeId::F32;
};

// One rule: a condition on the tensor and the type it then gets.
struct Rule {
  // Condition (every set part must hold).
  std::string regex;                       // RE2, searched in the name (--tensor-type)
  std::shared_ptr<const re2::RE2> compiled;  // the regex, compiled once
  std::string glob;                        // '*' wildcard over the whole name or its alias (--config)
  std::vector<Component> components;       // any of these (empty: any component)
  bool head = false;                       // only the head (output.weight, or tied token_embd)
  LayerSpec layers;
  int min_gqa = 0;                         // n_head / n_head_kv >= min_gqa
  int n_expert = -1;                       // model's expert count equals this
  std::optional<bool> with_imatrix;        // only with / without an importance matrix
  std::optional<TypeId> default_is_not;    // the policy's default type differs from this
  bool default_misfits_row = false;        // the default type cannot hold this tensor's rows
  // Result.
  TypeId type = TypeId::F32;
  std::string origin;                      // shown in reports: "--tensor-type ffn_down=q8_0"
  mutable int hits = 0;                    // how many tensors it decided (warn on zero)
};

// The decision for one tensor.
struct TensorPlan {
  TensorDesc tensor;
  bool quantize = false;         // false: copied in its stored type
  TypeId requested = TypeId::F32;
  TypeId type = TypeId::F32;     // final type after fallback
  std::string reason;            // which rule decided it
  std::string fallback;          // why the requested type was replaced, if it was
  uint64_t bytes = 0;
  // Outlier columns kept in F16 beside the tensor (quantize --outliers; formats/outliers.h), and
  // the bytes of its two companion tensors. Filled by quantize_model, not by the rules.
  int outliers = 0;
  uint64_t outlier_bytes = 0;
};

struct PolicyOptions {
  TypeId default_type = TypeId::Q4_K;
  std::string preset;                      // canonical preset name, empty for none
  std::vector<Rule> tensor_type_rules;     // --tensor-type, in order
  std::vector<Rule> config_rules;          // --config
  std::vector<Rule> layer_rules;           // --layers
  std::vector<Rule> preset_rules;          // filled from the preset
  std::optional<TypeId> output_tensor_type;
  std::optional<TypeId> token_embedding_type;
  bool pure = false;                 // no preset or fallback-free mixing: every tensor the default
  bool leave_output_tensor = false;  // output.weight keeps its stored type
  bool allow_requantize = false;
  bool has_imatrix = false;
  bool compat_llamacpp = false;      // refuse types llama.cpp cannot load
  // A bit-allocation plan (mixq plan): tensor name -> type. It decides every tensor it lists,
  // before any rule; the rules and the default decide the others.
  std::map<std::string, TypeId> plan;
  std::string plan_label;            // the plan's target ("bytes 304320"), recorded in metadata
};

// Parses a type name as users write it: GGML / mixq names (case-insensitive) plus aliases
// (int8 -> i8_row, fp16 -> f16, fp32 -> f32). Throws PolicyError listing the known names.
TypeId parse_type_name(const std::string& name);

// "REGEX=TYPE" -> a rule (the regex is compiled to check it). Throws PolicyError.
Rule parse_tensor_type_rule(const std::string& text);
// "SPEC[/COMPONENT]=TYPE" -> a rule. Throws PolicyError.
Rule parse_layer_rule(const std::string& text);
// A policy file (JSON): {"default": T, "preset": P, "rules": {PATTERN: T} or [{"match", "type"}],
// "<N>bit_layers" / "<type>_layers": [layer indices], "layers": {SPEC: T}}. Fills opts.
void apply_policy_config(const nlohmann::ordered_json& config, PolicyOptions& opts, const std::string& origin);

// Completes a model description: what metadata did not give (n_layers = 0, ...) is inferred from
// the tensor names (blk.N.) and shapes.
ModelInfo model_info_from_tensors(const std::vector<TensorDesc>& tensors, const std::string& arch,
                                  int n_layers, int n_head, int n_head_kv, int n_expert);

// Decides every tensor. Throws PolicyError for impossible requests (an extension type with
// --compat llama.cpp, quantized input without --allow-requantize).
std::vector<TensorPlan> plan_types(const std::vector<TensorDesc>& tensors, const ModelInfo& model,
                                   const PolicyOptions& opts);

// Whether llama.cpp would quantize this tensor at all (names and shapes it leaves alone).
bool is_quantizable(const TensorDesc& t, const ModelInfo& model);

// The next more precise type (q2_K -> q3_K -> q4_K -> q5_K -> q6_K -> q8_0 -> f16, ...).
TypeId one_step_more_precise(TypeId t);

}  // namespace mixq
