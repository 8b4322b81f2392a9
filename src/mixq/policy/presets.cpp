#include "mixq/policy/presets.h"

#include <algorithm>
#include <cctype>

#include <fmt/format.h>

namespace mixq {

namespace {

using K = LayerSpec::Kind;

// A small builder so each preset reads as a list of "when ... -> type" lines.
class When {
 public:
  explicit When(std::string origin) { r_.origin = std::move(origin); }
  When& is(Component c) { r_.components.push_back(c); return *this; }
  When& head() { r_.head = true; return *this; }
  When& layers(K kind, int a = 0, int b = 0) { r_.layers = {kind, a, b}; return *this; }
  When& gqa_at_least(int g) { r_.min_gqa = g; return *this; }
  When& experts(int n) { r_.n_expert = n; return *this; }
  When& imatrix(bool with) { r_.with_imatrix = with; return *this; }
  When& default_is_not(TypeId t) { r_.default_is_not = t; return *this; }
  When& default_misfits() { r_.default_misfits_row = true; return *this; }
  Rule to(TypeId t) { r_.type = t; return r_; }

 private:
  Rule r_;
};

// llama.cpp's mixes (llama-quant.cpp, llama_tensor_get_type) for non-Falcon, non-IQ2/IQ3 files.
// Each branch of its if/else chain is a rule here, in the same order, so "first match wins"
// reproduces its choices.
std::vector<Rule> llama_mix_rules(const std::string& mix) {
  const std::string o = "preset " + mix + ": ";
  std::vector<Rule> r;
  // The head (output.weight, or the tied token embedding).
  r.push_back(When(o + "head rows do not fill the default type's blocks").head().default_misfits().to(TypeId::Q8_0));
  r.push_back(When(o + "head").head().default_is_not(TypeId::Q8_0).to(TypeId::Q6_K));
  // attn_v: 8-expert models first (llama.cpp applies this after the chain and it overrides it).
  r.push_back(When(o + "attn_v of an 8-expert model").is(Component::AttnV).experts(8).to(TypeId::Q8_0));
  r.push_back(When(o + "attn_k of an 8-expert model").is(Component::AttnK).experts(8).to(TypeId::Q8_0));
  auto attn_v = [&](const std::string& why) { return When(o + "attn_v " + why).is(Component::AttnV); };
  auto ffn_down = [&](const std::string& why) { return When(o + "ffn_down " + why).is(Component::FfnDown); };
  auto attn_out = [&](const std::string& why) { return When(o + "attn_output " + why).is(Component::AttnOut); };
  const bool k_mix_8x = mix == "Q2_K" || mix == "Q3_K_S" || mix == "Q3_K_M" || mix == "IQ4_NL" || mix == "Q4_K_S" ||
                        mix == "Q4_K_M" || mix == "IQ4_XS";
  if (k_mix_8x) r.push_back(attn_out("of an 8-expert model").experts(8).to(TypeId::Q5_K));

  if (mix == "Q2_K") {
    r.push_back(attn_v("with GQA >= 4").gqa_at_least(4).to(TypeId::Q4_K));
    r.push_back(attn_v("").to(TypeId::Q3_K));
    r.push_back(ffn_down("").to(TypeId::Q3_K));
    r.push_back(attn_out("").to(TypeId::Q3_K));
  } else if (mix == "Q2_K_S") {
    r.push_back(attn_v("with GQA >= 4").gqa_at_least(4).to(TypeId::Q4_K));
    r.push_back(ffn_down("in the first 1/8 of layers").layers(K::FirstFrac, 8).to(TypeId::Q4_K));
  } else if (mix == "Q3_K_M") {
    r.push_back(attn_v("in the first 2 layers").layers(K::First, 2).to(TypeId::Q5_K));
    r.push_back(attn_v("").to(TypeId::Q4_K));
    r.push_back(ffn_down("in the first 1/16 of layers").layers(K::FirstFrac, 16).to(TypeId::Q5_K));
    r.push_back(ffn_down("").to(TypeId::Q4_K));
    r.push_back(attn_out("").to(TypeId::Q4_K));
  } else if (mix == "Q3_K_L") {
    r.push_back(attn_v("").to(TypeId::Q5_K));
    r.push_back(ffn_down("").to(TypeId::Q5_K));
    r.push_back(attn_out("").to(TypeId::Q5_K));
  } else if (mix == "Q4_K_S") {
    r.push_back(attn_v("in the first 4 layers").layers(K::First, 4).to(TypeId::Q5_K));
    r.push_back(ffn_down("in the first 1/8 of layers").layers(K::FirstFrac, 8).to(TypeId::Q5_K));
  } else if (mix == "Q4_K_M" || mix == "Q5_K_M") {
    r.push_back(attn_v("in use_more_bits layers").layers(K::MoreBits).to(TypeId::Q6_K));
    r.push_back(ffn_down("in use_more_bits layers").layers(K::MoreBits).to(TypeId::Q6_K));
  } else if (mix == "IQ4_NL" || mix == "IQ4_XS") {
    r.push_back(attn_v("with GQA >= 4").gqa_at_least(4).to(TypeId::Q5_K));
    r.push_back(ffn_down("in the first 1/8 of layers without imatrix").layers(K::FirstFrac, 8).imatrix(false)
                    .to(TypeId::Q5_K));
  } else if (mix == "Q4_0" || mix == "Q5_0") {
    // Guards the first ffn_down layers, only with an importance matrix (as llama.cpp does).
    r.push_back(ffn_down("in the first 1/8 of layers with imatrix").layers(K::FirstFrac, 8).imatrix(true)
                    .to(mix == "Q4_0" ? TypeId::Q4_1 : TypeId::Q5_1));
  }
  return r;
}

struct MixRow {
  const char* name;
  TypeId default_type;
  uint32_t ftype;
  const char* description;
};

// llama.cpp's LLAMA_FTYPE_MOSTLY_* numbers go into general.file_type.
constexpr MixRow kLlamaMixes[] = {
    {"Q4_0", TypeId::Q4_0, 2, "llama.cpp Q4_0 mix"},
    {"Q4_1", TypeId::Q4_1, 3, "llama.cpp Q4_1 mix"},
    {"Q8_0", TypeId::Q8_0, 7, "llama.cpp Q8_0 mix"},
    {"Q5_0", TypeId::Q5_0, 8, "llama.cpp Q5_0 mix"},
    {"Q5_1", TypeId::Q5_1, 9, "llama.cpp Q5_1 mix"},
    {"Q2_K", TypeId::Q2_K, 10, "llama.cpp Q2_K mix"},
    {"Q3_K_S", TypeId::Q3_K, 11, "llama.cpp Q3_K_S mix"},
    {"Q3_K_M", TypeId::Q3_K, 12, "llama.cpp Q3_K_M mix"},
    {"Q3_K_L", TypeId::Q3_K, 13, "llama.cpp Q3_K_L mix"},
    {"Q4_K_S", TypeId::Q4_K, 14, "llama.cpp Q4_K_S mix"},
    {"Q4_K_M", TypeId::Q4_K, 15, "llama.cpp Q4_K_M mix"},
    {"Q5_K_S", TypeId::Q5_K, 16, "llama.cpp Q5_K_S mix"},
    {"Q5_K_M", TypeId::Q5_K, 17, "llama.cpp Q5_K_M mix"},
    {"Q6_K", TypeId::Q6_K, 18, "llama.cpp Q6_K mix"},
    {"Q2_K_S", TypeId::Q2_K, 21, "llama.cpp Q2_K_S mix"},
    {"IQ4_NL", TypeId::IQ4_NL, 25, "llama.cpp IQ4_NL mix"},
    {"IQ4_XS", TypeId::IQ4_XS, 30, "llama.cpp IQ4_XS mix"},
};

std::string upper(std::string s) {
  for (auto& c : s) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return s;
}

// boundary[:TYPE[:EDGE]]: every quantizable tensor TYPE (default q4_K), the first and last two
// layers and the head EDGE (default: one step more precise than TYPE), e.g. "boundary:q4_k:q6_k"
// or "boundary:nf4:i8_row". The embedding is not a layer: it gets TYPE.
Preset boundary_preset(TypeId base, std::optional<TypeId> edge = std::nullopt) {
  const TypeId up = edge ? *edge : one_step_more_precise(base);
  Preset p{edge ? fmt::format("boundary:{}:{}", type_traits(base).name, type_traits(*edge).name)
                : fmt::format("boundary:{}", type_traits(base).name),
           base, {}, 15,
           edge ? fmt::format("first and last two layers and the head {}, the rest {}", type_traits(up).name,
                              type_traits(base).name)
                : "first and last two layers one step more precise than the base type"};
  p.rules.push_back(When("preset boundary: head").head().to(up));
  p.rules.push_back(When("preset boundary: first 2 layers").layers(K::First, 2).to(up));
  p.rules.push_back(When("preset boundary: last 2 layers").layers(K::Last, 2).to(up));
  return p;
}

// SSM maps: embeddings and head INT8, the SSM state parts (conv1d, dt, A, D) 16-bit; the large
// projections at 8 bits (conservative) or 4 bits (aggressive).
Preset ssm_preset(bool aggressive) {
  Preset p{aggressive ? "ssm-aggressive" : "ssm-conservative", aggressive ? TypeId::Q4_K : TypeId::Q8_0, {},
           aggressive ? 15u : 7u,
           aggressive ? "SSM: 4-bit projections, INT8 embeddings/head, 16-bit state parts"
                      : "SSM: 8-bit projections, INT8 embeddings/head, 16-bit state parts"};
  const std::string o = std::string("preset ") + p.name + ": ";
  p.rules.push_back(When(o + "head INT8").head().to(TypeId::I8_ROW));
  p.rules.push_back(When(o + "embeddings INT8").is(Component::Embed).to(TypeId::I8_ROW));
  for (Component c : {Component::SsmConv, Component::SsmDt, Component::SsmA, Component::SsmD}) {
    p.rules.push_back(When(o + "SSM state part 16-bit").is(c).to(TypeId::F16));
  }
  p.rules.push_back(When(o + "SSM x_proj 8-bit").is(Component::SsmX).to(TypeId::Q8_0));
  const TypeId proj = aggressive ? TypeId::Q4_K : TypeId::Q8_0;
  p.rules.push_back(When(o + "SSM in/out projections").is(Component::SsmIn).is(Component::SsmOut).to(proj));
  return p;
}

}  // namespace

std::optional<Preset> find_preset(const std::string& name) {
  std::string n = upper(name);
  // llama-quantize's aliases.
  if (n == "Q3_K") n = "Q3_K_M";
  if (n == "Q4_K") n = "Q4_K_M";
  if (n == "Q5_K") n = "Q5_K_M";
  for (const auto& m : kLlamaMixes) {
    if (n == m.name) return Preset{m.name, m.default_type, llama_mix_rules(m.name), m.ftype, m.description};
  }
  if (n == "BOUNDARY") return boundary_preset(TypeId::Q4_K);
  if (n.rfind("BOUNDARY:", 0) == 0) {
    const std::string types = name.substr(9);
    const size_t colon = types.find(':');
    if (colon == std::string::npos) return boundary_preset(parse_type_name(types));
    return boundary_preset(parse_type_name(types.substr(0, colon)), parse_type_name(types.substr(colon + 1)));
  }
  if (n == "SSM-CONSERVATIVE" || n == "CONSERVATIVE") return ssm_preset(false);
  if (n == "SSM-AGGRESSIVE" || n == "AGGRESSIVE") return ssm_preset(true);
  return std::nullopt;
}

std::vector<std::string> preset_names() {
  std::vector<std::string> names;
  for (const auto& m : kLlamaMixes) names.push_back(m.name);
  names.insert(names.end(), {"boundary[:TYPE[:EDGE]]", "ssm-conservative", "ssm-aggressive"});
  return names;
}

}  // namespace mixq
