// mixq's presets against llama-quantize's own per-tensor choices (--dry-run output of llama.cpp
// commit 82bb48500a9a) on stories260K and the synthetic syn-a / syn-b models.
#include <fstream>
#include <sstream>

#include <fmt/format.h>

#include "mixq/policy/policy.h"
#include "mixq/policy/presets.h"
#include "test_support.h"

namespace mixq {
namespace {

struct Expected {
  std::string name;
  std::vector<int64_t> shape;
  std::string type;
};

// Shapes and hyperparameters from reference-figures/README.md.
ModelInfo model_for(const std::string& model, const std::vector<TensorDesc>& tensors) {
  if (model == "syn-a") return model_info_from_tensors(tensors, "llama", 16, 4, 1, 0);
  if (model == "syn-b") return model_info_from_tensors(tensors, "llama", 32, 4, 4, 0);
  return model_info_from_tensors(tensors, "llama", 5, 8, 4, 0);
}

TEST(PolicyTypemaps, PresetsChooseLlamaCppTypes) {
  MIXQ_REQUIRE_SHARED("reference-figures/typemaps");
  int files = 0, compared = 0, failed_upstream = 0;
  for (const auto& entry : std::filesystem::directory_iterator(test::shared_data_dir() / "reference-figures/typemaps")) {
    const std::string stem = entry.path().stem().string();  // e.g. syn-a-Q4_K_M
    const auto dash = stem.rfind('-');
    const std::string model = stem.substr(0, dash), mix = stem.substr(dash + 1);
    std::ifstream f(entry.path());
    std::string line;
    std::getline(f, line);
    if (line.find("failed") != std::string::npos) {  // llama.cpp refused this mix on this model
      ++failed_upstream;
      continue;
    }
    std::getline(f, line);  // column names
    std::vector<Expected> expected;
    std::vector<TensorDesc> tensors;
    while (std::getline(f, line)) {
      std::istringstream ss(line);
      Expected e;
      std::string dims;
      ss >> e.name >> dims >> e.type;
      const auto x = dims.find('x');
      const int64_t ne0 = std::stoll(dims.substr(0, x)), ne1 = std::stoll(dims.substr(x + 1));
      // Norms are 1-D in the model; the dry run prints them as ne0 x 1.
      e.shape = e.name.find("norm") != std::string::npos ? std::vector<int64_t>{ne0} : std::vector<int64_t>{ne0, ne1};
      tensors.push_back({e.name, e.shape, TypeId::F32});
      expected.push_back(e);
    }
    const auto preset = find_preset(mix);
    ASSERT_TRUE(preset) << mix;
    PolicyOptions opts;
    opts.default_type = preset->default_type;
    opts.preset_rules = preset->rules;
    const auto plans = plan_types(tensors, model_for(model, tensors), opts);
    ASSERT_EQ(plans.size(), expected.size());
    for (size_t i = 0; i < plans.size(); ++i) {
      EXPECT_EQ(type_traits(plans[i].type).name, expected[i].type)
          << stem << " " << expected[i].name << " (mixq: " << plans[i].reason << " " << plans[i].fallback << ")";
      ++compared;
    }
    ++files;
  }
  fmt::print("compared {} tensor types in {} type maps ({} mixes llama.cpp refused)\n", compared, files,
             failed_upstream);
  EXPECT_GT(files, 40);
}

}  // namespace
}  // namespace mixq
