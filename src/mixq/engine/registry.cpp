#include "mixq/engine/registry.h"

#include <cstdlib>
#include <functional>
#include <stdexcept>
#include <string_view>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "mixq/engine/kernels.h"
#include "mixq/engine/llama_model.h"
#include "mixq/engine/rwkv_model.h"

namespace mixq {

namespace {

struct Architecture {
  const char* name;
  std::function<std::unique_ptr<Model>(const GgufFile&)> load;
};

const std::vector<Architecture>& architectures() {
  static const std::vector<Architecture> table = {
      {"llama", [](const GgufFile& f) { return std::make_unique<LlamaModel>(f); }},
      {"rwkv4", [](const GgufFile& f) { return std::make_unique<RwkvModel>(f); }},
      {"rwkv5", [](const GgufFile& f) { return std::make_unique<RwkvModel>(f); }},
      {"rwkv6", [](const GgufFile& f) { return std::make_unique<RwkvModel>(f); }},
      {"rwkv7", [](const GgufFile& f) { return std::make_unique<RwkvModel>(f); }},
  };
  return table;
}

}  // namespace

std::vector<std::string> supported_architectures() {
  std::vector<std::string> out;
  for (const auto& a : architectures()) out.emplace_back(a.name);
  return out;
}

bool interleave_by_default() {
  const char* repack = std::getenv("MIXQ_REPACK");
  return repack == nullptr || std::string_view(repack) != "0";
}

std::unique_ptr<Model> load_model(const GgufFile& file, bool interleave) {
  const GgufValue* arch = file.find("general.architecture");
  if (!arch || arch->type() != GgufValueType::STRING) {
    throw std::runtime_error(fmt::format("{}: no general.architecture key", file.label()));
  }
  const std::string name = arch->as_string();
  for (const auto& a : architectures()) {
    if (name != a.name) continue;
    std::unique_ptr<Model> model = a.load(file);
    if (interleave) model->repack_for_decode(kernels::best_kernels());
    return model;
  }
  throw std::runtime_error(fmt::format("{}: architecture '{}' is not supported (supported: {})", file.label(), name,
                                       fmt::join(supported_architectures(), ", ")));
}

}  // namespace mixq
