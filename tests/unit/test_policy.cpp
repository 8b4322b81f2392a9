// Every rule kind of the precision policy, their precedence, fallbacks and bad input.
#include <gtest/gtest.h>

#include "mixq/policy/policy.h"
#include "mixq/policy/presets.h"

namespace mixq {
namespace {

std::vector<TensorDesc> llama_tensors(int n_layers, int64_t e = 256, int64_t ff = 512, bool output = true) {
  std::vector<TensorDesc> t = {{"token_embd.weight", {e, 512}}, {"output_norm.weight", {e}}};
  if (output) t.push_back({"output.weight", {e, 512}});
  for (int l = 0; l < n_layers; ++l) {
    const std::string b = "blk." + std::to_string(l) + ".";
    for (const char* n : {"attn_q", "attn_k", "attn_v", "attn_output"}) t.push_back({b + n + ".weight", {e, e}});
    t.push_back({b + "attn_norm.weight", {e}});
    t.push_back({b + "ffn_gate.weight", {e, ff}});
    t.push_back({b + "ffn_up.weight", {e, ff}});
    t.push_back({b + "ffn_down.weight", {ff, e}});
  }
  return t;
}

ModelInfo info(const std::vector<TensorDesc>& t) { return model_info_from_tensors(t, "llama", 0, 4, 4, 0); }

std::string type_of(const std::vector<TensorPlan>& plans, const std::string& name) {
  for (const auto& p : plans) {
    if (p.tensor.name == name) return type_traits(p.type).name;
  }
  return "<missing>";
}

PolicyOptions with_default(TypeId t) {
  PolicyOptions o;
  o.default_type = t;
  return o;
}

TEST(Policy, TensorTypeFirstMatchWins) {
  const auto t = llama_tensors(2);
  auto o = with_default(TypeId::Q4_K);
  o.tensor_type_rules = {parse_tensor_type_rule("ffn_.*=q8_0"), parse_tensor_type_rule("ffn_down=q6_k")};
  const auto plans = plan_types(t, info(t), o);
  EXPECT_EQ(type_of(plans, "blk.0.ffn_down.weight"), "q8_0");
  EXPECT_EQ(type_of(plans, "blk.1.ffn_up.weight"), "q8_0");
  EXPECT_EQ(type_of(plans, "blk.1.attn_q.weight"), "q4_K");
  EXPECT_EQ(o.tensor_type_rules[0].hits, 6);
  EXPECT_EQ(o.tensor_type_rules[1].hits, 0);
}

TEST(Policy, RegexIsASearchNotAFullMatch) {
  const auto t = llama_tensors(1);
  auto o = with_default(TypeId::Q4_K);
  o.tensor_type_rules = {parse_tensor_type_rule("attn_v=q8_0"), parse_tensor_type_rule("^blk\\.0\\.attn_q\\.weight$=q5_k")};
  const auto plans = plan_types(t, info(t), o);
  EXPECT_EQ(type_of(plans, "blk.0.attn_v.weight"), "q8_0");
  EXPECT_EQ(type_of(plans, "blk.0.attn_q.weight"), "q5_K");
}

TEST(Policy, PrecedenceTensorTypeConfigLayersPresetDefault) {
  const auto t = llama_tensors(8);
  const std::string name = "blk.0.attn_v.weight";  // Q4_K_M's use_more_bits rule gives it q6_K
  auto preset = find_preset("q4_k_m");
  ASSERT_TRUE(preset);
  PolicyOptions o = with_default(preset->default_type);
  o.preset_rules = preset->rules;
  EXPECT_EQ(type_of(plan_types(t, info(t), o), name), "q6_K");  // preset beats default
  o.layer_rules = {parse_layer_rule("first:1=q5_k")};
  EXPECT_EQ(type_of(plan_types(t, info(t), o), name), "q5_K");  // layers beat preset
  apply_policy_config(nlohmann::ordered_json::parse(R"({"rules": {"blk.*.attn_v.weight": "q8_0"}})"), o, "test.json");
  EXPECT_EQ(type_of(plan_types(t, info(t), o), name), "q8_0");  // config beats layers
  o.tensor_type_rules = {parse_tensor_type_rule("attn_v=q2_k")};
  EXPECT_EQ(type_of(plan_types(t, info(t), o), name), "q2_K");  // --tensor-type beats config
  o.tensor_type_rules.clear();
  o.config_rules.clear();
  o.layer_rules.clear();
  o.pure = true;
  EXPECT_EQ(type_of(plan_types(t, info(t), o), name), "q4_K");  // --pure drops the preset
}

TEST(Policy, OutputAndTokenEmbeddingTypesOverrideRules) {
  const auto t = llama_tensors(1);
  auto o = with_default(TypeId::Q4_K);
  o.tensor_type_rules = {parse_tensor_type_rule(".*=q5_k")};
  o.output_tensor_type = TypeId::Q8_0;
  o.token_embedding_type = TypeId::Q6_K;
  const auto plans = plan_types(t, info(t), o);
  EXPECT_EQ(type_of(plans, "output.weight"), "q8_0");
  EXPECT_EQ(type_of(plans, "token_embd.weight"), "q6_K");
  EXPECT_EQ(type_of(plans, "blk.0.attn_q.weight"), "q5_K");
}

TEST(Policy, LayerSpecs) {
  const auto t = llama_tensors(10);
  const ModelInfo m = info(t);
  EXPECT_EQ(m.n_layers, 10);
  auto o = with_default(TypeId::Q4_K);
  o.layer_rules = {parse_layer_rule("first:2=q8_0"), parse_layer_rule("last:2=q6_k"), parse_layer_rule("3-5=q5_k"),
                   parse_layer_rule("every:3=q2_k")};
  const auto plans = plan_types(t, m, o);
  const char* expect[10] = {"q8_0", "q8_0", "q4_K", "q5_K", "q5_K", "q5_K", "q2_K", "q4_K", "q6_K", "q6_K"};
  for (int l = 0; l < 10; ++l) EXPECT_EQ(type_of(plans, "blk." + std::to_string(l) + ".ffn_up.weight"), expect[l]) << l;
  EXPECT_EQ(type_of(plans, "token_embd.weight"), "q4_K");  // layer rules need a layer
}

TEST(Policy, LayerRuleWithComponent) {
  const auto t = llama_tensors(4);
  auto o = with_default(TypeId::Q4_K);
  o.layer_rules = {parse_layer_rule("first:2/attn=q6_k"), parse_layer_rule("all/ffn_down=q5_k")};
  const auto plans = plan_types(t, info(t), o);
  EXPECT_EQ(type_of(plans, "blk.1.attn_output.weight"), "q6_K");
  EXPECT_EQ(type_of(plans, "blk.1.attn_k.weight"), "q6_K");
  EXPECT_EQ(type_of(plans, "blk.1.ffn_gate.weight"), "q4_K");
  EXPECT_EQ(type_of(plans, "blk.2.attn_q.weight"), "q4_K");
  EXPECT_EQ(type_of(plans, "blk.3.ffn_down.weight"), "q5_K");
}

TEST(Policy, ConfigPatternMapsAndPerLayerLists) {
  std::vector<TensorDesc> t = {{"blk.0.ssm_in.weight", {256, 512}}, {"blk.1.ssm_in.weight", {256, 512}},
                               {"blk.0.ssm_out.weight", {256, 256}}, {"blk.1.ssm_out.weight", {256, 256}},
                               {"blk.2.ssm_out.weight", {256, 256}}};
  auto o = with_default(TypeId::Q4_K);
  apply_policy_config(nlohmann::ordered_json::parse(R"({
      "rules": {"layers.*.ssm.in_proj": "int8"},
      "8bit_layers": [0], "q6_k_layers": [2]})"),
                      o, "p.json");
  const auto plans = plan_types(t, model_info_from_tensors(t, "mamba", 0, 0, 0, 0), o);
  EXPECT_EQ(type_of(plans, "blk.0.ssm_in.weight"), "i8_row");  // HF-style alias matched
  EXPECT_EQ(type_of(plans, "blk.1.ssm_in.weight"), "i8_row");
  EXPECT_EQ(type_of(plans, "blk.0.ssm_out.weight"), "q8_0");
  EXPECT_EQ(type_of(plans, "blk.1.ssm_out.weight"), "q4_K");
  EXPECT_EQ(type_of(plans, "blk.2.ssm_out.weight"), "q6_K");
}

TEST(Policy, OneDimensionalAndNormsStayAsStored) {
  const auto t = llama_tensors(1);
  auto o = with_default(TypeId::Q8_0);
  o.tensor_type_rules = {parse_tensor_type_rule(".*=q4_0")};
  const auto plans = plan_types(t, info(t), o);
  EXPECT_EQ(type_of(plans, "output_norm.weight"), "f32");
  EXPECT_EQ(type_of(plans, "blk.0.attn_norm.weight"), "f32");
}

TEST(Policy, FallbacksFollowLlamaCppThenNearestWiderType) {
  std::vector<TensorDesc> t = {{"blk.0.ffn_down.weight", {172, 64}}, {"blk.0.attn_q.weight", {64, 64}}};
  auto o = with_default(TypeId::Q8_0);
  auto plans = plan_types(t, model_info_from_tensors(t, "", 0, 0, 0, 0), o);
  EXPECT_EQ(type_of(plans, "blk.0.ffn_down.weight"), "f16");  // llama.cpp aborts here
  EXPECT_NE(plans[0].fallback.find("172"), std::string::npos);
  EXPECT_EQ(type_of(plans, "blk.0.attn_q.weight"), "q8_0");
  o.default_type = TypeId::Q4_K;
  plans = plan_types(t, model_info_from_tensors(t, "", 0, 0, 0, 0), o);
  EXPECT_EQ(type_of(plans, "blk.0.attn_q.weight"), "q5_0");
  EXPECT_NE(plans[1].fallback.find("llama.cpp"), std::string::npos);
  // An extension type may fall back to another extension type; a GGML type never does.
  o.default_type = TypeId::NF4;
  plans = plan_types(t, model_info_from_tensors(t, "", 0, 0, 0, 0), o);
  EXPECT_EQ(type_of(plans, "blk.0.ffn_down.weight"), "i8_row");
  EXPECT_EQ(type_of(plans, "blk.0.attn_q.weight"), "nf4");
}

TEST(Policy, CompatLlamaCppRefusesExtensionTypes) {
  const auto t = llama_tensors(1);
  auto o = with_default(TypeId::Q4_K);
  o.compat_llamacpp = true;
  o.tensor_type_rules = {parse_tensor_type_rule("ffn=nf4")};
  EXPECT_THROW(plan_types(t, info(t), o), PolicyError);
  o.tensor_type_rules = {parse_tensor_type_rule("ffn=q8_0")};
  EXPECT_NO_THROW(plan_types(t, info(t), o));
}

TEST(Policy, QuantizedInputNeedsAllowRequantize) {
  std::vector<TensorDesc> t = {{"blk.0.attn_q.weight", {256, 256}, TypeId::Q8_0}};
  auto o = with_default(TypeId::Q4_K);
  try {
    plan_types(t, model_info_from_tensors(t, "", 0, 0, 0, 0), o);
    FAIL() << "expected a PolicyError";
  } catch (const PolicyError& e) {
    EXPECT_NE(std::string(e.what()).find("--allow-requantize"), std::string::npos);
  }
  o.allow_requantize = true;
  EXPECT_EQ(type_of(plan_types(t, model_info_from_tensors(t, "", 0, 0, 0, 0), o), "blk.0.attn_q.weight"), "q4_K");
}

TEST(Policy, LayerCountInferredFromNamesWithoutMetadata) {
  const auto t = llama_tensors(6);
  const ModelInfo m = model_info_from_tensors(t, "", 0, 0, 0, 0);
  EXPECT_EQ(m.n_layers, 6);
  auto o = with_default(TypeId::Q4_K);
  o.layer_rules = {parse_layer_rule("last:1=q8_0")};
  const auto plans = plan_types(t, m, o);
  EXPECT_EQ(type_of(plans, "blk.5.attn_q.weight"), "q8_0");
  EXPECT_EQ(type_of(plans, "blk.4.attn_q.weight"), "q4_K");
}

TEST(Policy, TiedEmbeddingIsTheHead) {
  const auto t = llama_tensors(8, 256, 512, /*output=*/false);
  auto preset = find_preset("Q4_K_M");
  PolicyOptions o = with_default(preset->default_type);
  o.preset_rules = preset->rules;
  const auto plans = plan_types(t, model_info_from_tensors(t, "llama", 8, 4, 4, 0), o);
  EXPECT_EQ(type_of(plans, "token_embd.weight"), "q6_K");
}

TEST(Policy, BoundaryPresetRaisesFirstAndLastTwoLayers) {
  const auto t = llama_tensors(8);
  auto preset = find_preset("boundary:q4_k");
  ASSERT_TRUE(preset);
  PolicyOptions o = with_default(preset->default_type);
  o.preset_rules = preset->rules;
  const auto plans = plan_types(t, info(t), o);
  for (int l : {0, 1, 6, 7}) EXPECT_EQ(type_of(plans, "blk." + std::to_string(l) + ".ffn_up.weight"), "q5_K") << l;
  for (int l : {2, 5}) EXPECT_EQ(type_of(plans, "blk." + std::to_string(l) + ".ffn_up.weight"), "q4_K") << l;
  EXPECT_EQ(type_of(plans, "output.weight"), "q5_K");
}

TEST(Policy, SsmPresetsKeepStatePartsPrecise) {
  std::vector<TensorDesc> t = {{"token_embd.weight", {256, 512}}, {"output.weight", {256, 512}},
                               {"blk.0.ssm_in.weight", {256, 1024}}, {"blk.0.ssm_x.weight", {512, 48}},
                               {"blk.0.ssm_dt.weight", {16, 512}},    {"blk.0.ssm_out.weight", {512, 256}},
                               {"blk.0.ssm_conv1d.weight", {4, 512}}, {"blk.0.ssm_a", {16, 512}}};
  for (const char* name : {"ssm-conservative", "ssm-aggressive"}) {
    auto preset = find_preset(name);
    ASSERT_TRUE(preset);
    PolicyOptions o = with_default(preset->default_type);
    o.preset_rules = preset->rules;
    const auto plans = plan_types(t, model_info_from_tensors(t, "mamba", 1, 0, 0, 0), o);
    EXPECT_EQ(type_of(plans, "token_embd.weight"), "i8_row") << name;
    EXPECT_EQ(type_of(plans, "output.weight"), "i8_row") << name;
    EXPECT_EQ(type_of(plans, "blk.0.ssm_dt.weight"), "f16") << name;
    EXPECT_EQ(type_of(plans, "blk.0.ssm_conv1d.weight"), "f32") << name;  // never quantized
    EXPECT_EQ(type_of(plans, "blk.0.ssm_a"), "f32") << name;
    EXPECT_EQ(type_of(plans, "blk.0.ssm_in.weight"), std::string(name) == "ssm-aggressive" ? "q4_K" : "q8_0");
  }
}

TEST(Policy, BadInputGivesClearErrors) {
  auto message = [](auto fn) {
    try {
      fn();
    } catch (const PolicyError& e) {
      return std::string(e.what());
    }
    return std::string("<no error>");
  };
  EXPECT_NE(message([] { parse_type_name("q9_k"); }).find("types mixq can write"), std::string::npos);
  EXPECT_NE(message([] { parse_type_name("iq2_xxs"); }).find("can read it but not write it"), std::string::npos);
  EXPECT_NE(message([] { parse_tensor_type_rule("attn_(v=q8_0"); }).find("bad regex"), std::string::npos);
  EXPECT_NE(message([] { parse_tensor_type_rule("attn_v"); }).find("PATTERN=TYPE"), std::string::npos);
  EXPECT_NE(message([] { parse_layer_rule("first:x=q8_0"); }).find("not a non-negative integer"), std::string::npos);
  EXPECT_NE(message([] { parse_layer_rule("7-3=q8_0"); }).find("empty"), std::string::npos);
  EXPECT_NE(message([] { parse_layer_rule("first:2/mlp=q8_0"); }).find("unknown component"), std::string::npos);
  PolicyOptions o;
  EXPECT_NE(message([&] { apply_policy_config(nlohmann::ordered_json::parse(R"({"rulez": {}})"), o, "p.json"); })
                .find("unknown key 'rulez'"),
            std::string::npos);
  EXPECT_NE(message([&] { apply_policy_config(nlohmann::ordered_json::parse(R"({"4bit_layers": ["a"]})"), o, "p.json"); })
                .find("non-layer value"),
            std::string::npos);
}

TEST(Policy, PresetNamesAreCaseInsensitiveWithLlamaCppAliases) {
  EXPECT_EQ(find_preset("q4_k_m")->name, "Q4_K_M");
  EXPECT_EQ(find_preset("Q4_K")->name, "Q4_K_M");  // llama-quantize's alias
  EXPECT_EQ(find_preset("q3_k")->name, "Q3_K_M");
  EXPECT_FALSE(find_preset("nf4"));
  EXPECT_EQ(parse_type_name("NF4"), TypeId::NF4);
  EXPECT_EQ(parse_type_name("Q4_k"), TypeId::Q4_K);
}

}  // namespace
}  // namespace mixq
