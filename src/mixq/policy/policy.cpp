#include "mixq/policy/policy.h"

#include <algorithm>
#include <cctype>
#include <map>

#include <fmt/format.h>
#include <re2/re2.h>

#include "mixq/policy/presets.h"

namespace mixq {

namespace {

std::string lower(std::string s) {
  for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

int parse_int(const std::string& s, const std::string& context) {
  try {
    size_t used = 0;
    const int v = std::stoi(s, &used);
    if (used != s.size() || v < 0) throw std::invalid_argument(s);
    return v;
  } catch (const std::exception&) {
    throw PolicyError(fmt::format("{}: '{}' is not a non-negative integer", context, s));
  }
}

// '*' matches any run of characters (dots included); everything else literally.
bool glob_match(std::string_view pattern, std::string_view text) {
  size_t p = 0, t = 0, star = std::string_view::npos, mark = 0;
  while (t < text.size()) {
    if (p < pattern.size() && pattern[p] == '*') {
      star = p++;
      mark = t;
    } else if (p < pattern.size() && pattern[p] == text[t]) {
      ++p;
      ++t;
    } else if (star != std::string_view::npos) {
      p = star + 1;
      t = ++mark;
    } else {
      return false;
    }
  }
  while (p < pattern.size() && pattern[p] == '*') ++p;
  return p == pattern.size();
}

bool glob_matches_tensor(const std::string& glob, const std::string& name) {
  if (glob_match(glob, name)) return true;
  constexpr std::string_view kSuffix = ".weight";
  if (name.size() > kSuffix.size() && name.ends_with(kSuffix) &&
      glob_match(glob, std::string_view(name).substr(0, name.size() - kSuffix.size()))) {
    return true;
  }
  for (const auto& alias : aliases_of(name)) {
    if (glob_match(glob, alias)) return true;
  }
  return false;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Type names and layer specs

TypeId parse_type_name(const std::string& name) {
  static const std::map<std::string, std::string> kAliases = {
      {"int8", "i8_row"}, {"i8", "i8_row"}, {"fp16", "f16"}, {"half", "f16"}, {"fp32", "f32"},
      {"float", "f32"},   {"float32", "f32"}, {"float16", "f16"}, {"bfloat16", "bf16"}, {"int4", "nf4"},
  };
  std::string n = lower(name);
  if (auto it = kAliases.find(n); it != kAliases.end()) n = it->second;
  const TypeTraits* t = find_type(n);
  if (t && !t->weight) {
    throw PolicyError(fmt::format("type '{}' is an activation type, not a weight type", name));
  }
  if (!t || !t->can_quantize()) {
    std::string known;
    for (const auto& row : all_types()) {
      if (row.can_quantize() && row.weight) known += (known.empty() ? "" : ", ") + std::string(row.name);
    }
    throw PolicyError(fmt::format("unknown type '{}'{}; types mixq can write: {} (aliases: int8, fp16, fp32)", name,
                                  t ? " (mixq can read it but not write it)" : "", known));
  }
  return t->id;
}

bool LayerSpec::matches(std::optional<int> layer, int n) const {
  if (kind == Kind::Any) return true;
  if (!layer) return false;
  const int i = *layer;
  switch (kind) {
    case Kind::Any: return true;
    case Kind::First: return i < a;
    case Kind::Last: return i >= n - a;
    case Kind::Range: return i >= a && i <= b;
    case Kind::Every: return a > 0 && i % a == 0;
    case Kind::FirstFrac: return i < n / a;
    case Kind::MoreBits: return i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2;
  }
  return false;
}

std::string LayerSpec::to_string() const {
  switch (kind) {
    case Kind::Any: return "all";
    case Kind::First: return fmt::format("first:{}", a);
    case Kind::Last: return fmt::format("last:{}", a);
    case Kind::Range: return a == b ? std::to_string(a) : fmt::format("{}-{}", a, b);
    case Kind::Every: return fmt::format("every:{}", a);
    case Kind::FirstFrac: return fmt::format("first 1/{}", a);
    case Kind::MoreBits: return "use_more_bits";
  }
  return "?";
}

LayerSpec LayerSpec::parse(const std::string& spec) {
  const std::string ctx = "layer spec '" + spec + "'";
  const std::string s = lower(spec);
  if (s == "all" || s == "*") return {};
  if (s.rfind("first:", 0) == 0) return {Kind::First, parse_int(s.substr(6), ctx)};
  if (s.rfind("last:", 0) == 0) return {Kind::Last, parse_int(s.substr(5), ctx)};
  if (s.rfind("every:", 0) == 0) {
    const int n = parse_int(s.substr(6), ctx);
    if (n == 0) throw PolicyError(ctx + ": every:0 is meaningless");
    return {Kind::Every, n};
  }
  if (const auto dash = s.find('-'); dash != std::string::npos) {
    const int a = parse_int(s.substr(0, dash), ctx), b = parse_int(s.substr(dash + 1), ctx);
    if (b < a) throw PolicyError(ctx + ": the range is empty");
    return {Kind::Range, a, b};
  }
  if (!s.empty() && std::all_of(s.begin(), s.end(), ::isdigit)) {
    const int a = parse_int(s, ctx);
    return {Kind::Range, a, a};
  }
  throw PolicyError(ctx + ": expected first:N, last:N, A-B, N, every:N or all");
}

// ---------------------------------------------------------------------------------------------
// Rule parsing

static std::pair<std::string, std::string> split_assignment(const std::string& text, const char* what) {
  const auto eq = text.rfind('=');
  if (eq == std::string::npos || eq == 0 || eq + 1 == text.size()) {
    throw PolicyError(fmt::format("{} '{}': expected PATTERN=TYPE", what, text));
  }
  return {text.substr(0, eq), text.substr(eq + 1)};
}

Rule parse_tensor_type_rule(const std::string& text) {
  auto [pattern, type] = split_assignment(text, "--tensor-type");
  auto re = std::make_shared<const RE2>(pattern, RE2::Quiet);
  if (!re->ok()) throw PolicyError(fmt::format("--tensor-type '{}': bad regex: {}", text, re->error()));
  Rule r;
  r.regex = pattern;
  r.compiled = std::move(re);
  r.type = parse_type_name(type);
  r.origin = "--tensor-type " + text;
  return r;
}

Rule parse_layer_rule(const std::string& text) {
  auto [spec, type] = split_assignment(text, "--layers");
  Rule r;
  const auto slash = spec.find('/');
  r.layers = LayerSpec::parse(spec.substr(0, slash));
  if (slash != std::string::npos) {
    try {
      r.components = parse_component_group(spec.substr(slash + 1));
    } catch (const std::invalid_argument& e) {
      throw PolicyError(fmt::format("--layers '{}': {}", text, e.what()));
    }
  }
  if (r.layers.kind == LayerSpec::Kind::Any && r.components.empty()) {
    throw PolicyError(fmt::format("--layers '{}': give a layer range or a component", text));
  }
  r.type = parse_type_name(type);
  r.origin = "--layers " + text;
  return r;
}

void apply_policy_config(const nlohmann::ordered_json& config, PolicyOptions& opts, const std::string& origin) {
  if (!config.is_object()) throw PolicyError(origin + ": the policy must be a JSON object");
  auto type_of = [&](const nlohmann::ordered_json& v, const std::string& key) {
    if (!v.is_string()) throw PolicyError(fmt::format("{}: '{}' must name a type", origin, key));
    try {
      return parse_type_name(v.get<std::string>());
    } catch (const PolicyError& e) {
      throw PolicyError(fmt::format("{}: '{}': {}", origin, key, e.what()));
    }
  };
  auto add_glob = [&](const std::string& pattern, const nlohmann::ordered_json& type) {
    Rule r;
    r.glob = pattern;
    r.type = type_of(type, pattern);
    r.origin = fmt::format("{}: {}", origin, pattern);
    opts.config_rules.push_back(r);
  };
  for (const auto& [key, value] : config.items()) {
    if (key == "default") {
      opts.default_type = type_of(value, key);
    } else if (key == "preset") {
      if (!value.is_string() || !find_preset(value.get<std::string>())) {
        throw PolicyError(fmt::format("{}: 'preset' must name a preset", origin));
      }
      opts.preset = value.get<std::string>();
    } else if (key == "rules") {
      if (value.is_object()) {
        for (const auto& [pattern, type] : value.items()) add_glob(pattern, type);
      } else if (value.is_array()) {
        for (const auto& rule : value) {
          if (!rule.is_object() || !rule.contains("match") || !rule.contains("type") || !rule["match"].is_string()) {
            throw PolicyError(origin + ": each rule needs \"match\" and \"type\"");
          }
          add_glob(rule["match"].get<std::string>(), rule["type"]);
        }
      } else {
        throw PolicyError(origin + ": 'rules' must be an object or an array");
      }
    } else if (key == "layers") {
      if (!value.is_object()) throw PolicyError(origin + ": 'layers' must map SPEC[/COMPONENT] to a type");
      for (const auto& [spec, type] : value.items()) {
        if (!type.is_string()) throw PolicyError(fmt::format("{}: layers '{}' must name a type", origin, spec));
        Rule r = parse_layer_rule(spec + "=" + type.get<std::string>());
        r.origin = fmt::format("{}: layers {}", origin, spec);
        opts.config_rules.push_back(r);
      }
    } else if (key.ends_with("_layers")) {
      // "4bit_layers": [0, 1] or "q6_k_layers": [...]
      const std::string head = key.substr(0, key.size() - 7);
      static const std::map<std::string, TypeId> kBits = {
          {"2bit", TypeId::Q2_K}, {"3bit", TypeId::Q3_K}, {"4bit", TypeId::Q4_K}, {"5bit", TypeId::Q5_K},
          {"6bit", TypeId::Q6_K}, {"8bit", TypeId::Q8_0}, {"16bit", TypeId::F16}, {"32bit", TypeId::F32}};
      TypeId type;
      if (auto it = kBits.find(lower(head)); it != kBits.end()) {
        type = it->second;
      } else {
        type = type_of(nlohmann::ordered_json(head), key);
      }
      if (!value.is_array()) throw PolicyError(fmt::format("{}: '{}' must be a list of layer indices", origin, key));
      for (const auto& layer : value) {
        if (!layer.is_number_integer() || layer.get<int>() < 0) {
          throw PolicyError(fmt::format("{}: '{}' holds a non-layer value {}", origin, key, layer.dump()));
        }
        Rule r;
        r.layers = {LayerSpec::Kind::Range, layer.get<int>(), layer.get<int>()};
        r.type = type;
        r.origin = fmt::format("{}: {} {}", origin, key, layer.get<int>());
        opts.config_rules.push_back(r);
      }
    } else {
      throw PolicyError(fmt::format("{}: unknown key '{}' (known: default, preset, rules, layers, <N>bit_layers, "
                                    "<type>_layers)",
                                    origin, key));
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Model description and quantizability

ModelInfo model_info_from_tensors(const std::vector<TensorDesc>& tensors, const std::string& arch, int n_layers,
                                  int n_head, int n_head_kv, int n_expert) {
  ModelInfo m;
  m.arch = arch;
  m.n_head = n_head;
  m.n_head_kv = n_head_kv;
  m.n_expert = n_expert;
  m.has_output = std::any_of(tensors.begin(), tensors.end(), [](auto& t) { return t.name == "output.weight"; });
  int max_layer = -1;
  for (const auto& t : tensors) max_layer = std::max(max_layer, layer_of(t.name).value_or(-1));
  m.n_layers = n_layers > 0 ? n_layers : max_layer + 1;
  return m;
}

bool is_quantizable(const TensorDesc& t, const ModelInfo&) {
  // As llama-quantize: only matrices whose name ends in "weight", minus the ones models need
  // precise (positional tables, SSM convolution and state parameters, RWKV mixing vectors).
  // Dimensions as ggml_n_dims counts them: trailing unit axes ([n, 1, 1]: a vector) do not count.
  size_t dims = t.shape.size();
  while (dims > 1 && t.shape[dims - 1] == 1) --dims;
  if (dims < 2) return false;
  if (!t.name.ends_with("weight")) return false;
  static constexpr std::string_view kNever[] = {
      "pos_embd", "token_types", "ssm_conv1d", "shortconv.conv", "time_mix_first", "time_mix_w0", "time_mix_w1",
      "time_mix_w2", "time_mix_decay_w1", "time_mix_decay_w2", "time_mix_lerp_fused", "attn_rel_b", "norm",
      // RWKV-7's other low-rank matrices, as llama-quantize keeps them
      "time_mix_a1", "time_mix_a2", "time_mix_v1", "time_mix_v2", "time_mix_g1", "time_mix_g2",
  };
  for (auto s : kNever) {
    if (t.name.find(s) != std::string::npos) return false;
  }
  return true;
}

TypeId one_step_more_precise(TypeId t) { return type_traits(t).more_precise.value_or(t); }

// ---------------------------------------------------------------------------------------------
// Planning

namespace {

struct Context {
  const ModelInfo& model;
  const PolicyOptions& opts;
};

bool rule_matches(const Rule& r, const TensorDesc& t, const TensorRole& role, const Context& ctx) {
  if (!r.components.empty() &&
      std::find(r.components.begin(), r.components.end(), role.component) == r.components.end()) {
    return false;
  }
  if (r.head && !role.is_head) return false;
  if (!r.layers.matches(role.layer, ctx.model.n_layers)) return false;
  if (r.min_gqa > 0 && ctx.model.n_gqa() < r.min_gqa) return false;
  if (r.n_expert >= 0 && ctx.model.n_expert != r.n_expert) return false;
  if (r.with_imatrix && *r.with_imatrix != ctx.opts.has_imatrix) return false;
  if (r.default_is_not && ctx.opts.default_type == *r.default_is_not) return false;
  if (r.default_misfits_row && type_traits(ctx.opts.default_type).fits_row(t.shape[0])) return false;
  if (!r.glob.empty() && !glob_matches_tensor(r.glob, t.name)) return false;
  if (r.compiled && !RE2::PartialMatch(t.name, *r.compiled)) return false;
  return true;
}

const Rule* first_match(const std::vector<Rule>& rules, const TensorDesc& t, const TensorRole& role,
                        const Context& ctx) {
  for (const auto& r : rules) {
    if (rule_matches(r, t, role, ctx)) return &r;
  }
  return nullptr;
}

// Replaces a type that cannot hold the rows: llama.cpp's table first (so llama.cpp's files are
// reproduced), then the narrowest type at least as precise that fits. Extension types are only
// offered when the requested type was one.
TypeId fallback_for(TypeId requested, int64_t row, bool compat, std::string& why) {
  const TypeTraits& req = type_traits(requested);
  TypeId t = requested;
  if (auto fb = req.llamacpp_fallback) {
    t = *fb;
    if (type_traits(t).fits_row(row)) {
      why = fmt::format("rows of {} do not fill {} blocks of {}; llama.cpp's fallback {}", row, req.name,
                        req.block_size, type_traits(t).name);
      return t;
    }
  }
  const double want_bpw = 8.0 * static_cast<double>(req.block_bytes) / static_cast<double>(req.block_size);
  const TypeTraits* best = nullptr;
  for (const auto& c : all_types()) {
    if (!c.can_quantize() || !c.fits_row(row) || (c.is_extension() && (compat || !req.is_extension()))) continue;
    if (!c.weight || c.id == TypeId::BF16) continue;  // BF16: never offered as a narrower fallback
    const double bpw = c.bits_per_weight(row);
    if (bpw + 1e-9 < want_bpw) continue;
    if (!best || bpw < best->bits_per_weight(row)) best = &c;
  }
  if (!best) best = &type_traits(TypeId::F16);
  why = fmt::format("rows of {} do not fill {} blocks of {}; nearest type that fits: {}", row, req.name,
                    req.block_size, best->name);
  return best->id;
}

}  // namespace

std::vector<TensorPlan> plan_types(const std::vector<TensorDesc>& tensors, const ModelInfo& model,
                                   const PolicyOptions& opts) {
  const Context ctx{model, opts};
  auto check_compat = [&](TypeId t, const std::string& origin) {
    if (opts.compat_llamacpp && type_traits(t).is_extension()) {
      throw PolicyError(fmt::format("{} asks for {}, which llama.cpp cannot load (--compat llama.cpp); use a GGML "
                                    "type such as q8_0 or q4_K",
                                    origin, type_traits(t).name));
    }
  };
  check_compat(opts.default_type, "the default type");
  for (const auto* list : {&opts.tensor_type_rules, &opts.config_rules, &opts.layer_rules, &opts.preset_rules}) {
    for (const auto& r : *list) check_compat(r.type, r.origin);
  }
  if (opts.output_tensor_type) check_compat(*opts.output_tensor_type, "--output-tensor-type");
  if (opts.token_embedding_type) check_compat(*opts.token_embedding_type, "--token-embedding-type");
  for (const auto& [name, type] : opts.plan) check_compat(type, fmt::format("the plan (tensor '{}')", name));

  std::vector<TensorPlan> plans;
  plans.reserve(tensors.size());
  for (const auto& t : tensors) {
    TensorPlan p;
    p.tensor = t;
    const TensorRole role = classify_tensor(t.name, model.has_output);
    const TypeTraits& stored = type_traits(t.stored_type);
    p.quantize = is_quantizable(t, model) && !(opts.leave_output_tensor && t.name == "output.weight");
    if (!p.quantize) {
      p.type = p.requested = t.stored_type;
      p.reason = t.shape.size() < 2 ? "1-D: kept" : "not quantized (kept as stored)";
      if (opts.leave_output_tensor && t.name == "output.weight") p.reason = "--leave-output-tensor";
    } else {
      if (stored.quantized && !opts.allow_requantize) {
        throw PolicyError(fmt::format("tensor '{}' is already quantized ({}); requantizing loses quality twice: "
                                      "start from an F32/F16/BF16 model, or pass --allow-requantize",
                                      t.name, stored.name));
      }
      p.requested = opts.default_type;
      p.reason = "default type";
      const Rule* rule = nullptr;
      if (const auto it = opts.plan.find(t.name); it != opts.plan.end()) {
        p.requested = it->second;
        p.reason = "plan";
      } else if (opts.output_tensor_type && t.name == "output.weight") {
        p.requested = *opts.output_tensor_type;
        p.reason = "--output-tensor-type";
      } else if (opts.token_embedding_type && t.name == "token_embd.weight") {
        p.requested = *opts.token_embedding_type;
        p.reason = "--token-embedding-type";
      } else if ((rule = first_match(opts.tensor_type_rules, t, role, ctx)) ||
                 (rule = first_match(opts.config_rules, t, role, ctx)) ||
                 (rule = first_match(opts.layer_rules, t, role, ctx)) ||
                 (!opts.pure && (rule = first_match(opts.preset_rules, t, role, ctx)))) {
        p.requested = rule->type;
        p.reason = rule->origin;
        ++rule->hits;
      }
      p.type = p.requested;
      if (!type_traits(p.type).fits_row(t.shape[0])) {
        p.type = fallback_for(p.requested, t.shape[0], opts.compat_llamacpp, p.fallback);
      }
      if (!type_traits(p.type).can_quantize()) {
        throw PolicyError(fmt::format("tensor '{}': mixq has no quantizer for {} ({})", t.name,
                                      type_traits(p.type).name, p.reason));
      }
    }
    int64_t rows = 1;
    for (size_t d = 1; d < t.shape.size(); ++d) rows *= t.shape[d];
    p.bytes = static_cast<uint64_t>(rows) * type_traits(p.type).row_bytes(t.shape[0]);
    plans.push_back(std::move(p));
  }
  for (const auto& entry : opts.plan) {
    const std::string& name = entry.first;  // (clang 14 cannot capture a structured binding)
    const auto it = std::find_if(plans.begin(), plans.end(), [&](const TensorPlan& p) { return p.tensor.name == name; });
    if (it == plans.end() || !it->quantize) {
      throw PolicyError(fmt::format("the plan lists '{}', which this model {}: was the plan made for another model?",
                                    name, it == plans.end() ? "does not have" : "does not quantize"));
    }
  }
  return plans;
}

}  // namespace mixq
