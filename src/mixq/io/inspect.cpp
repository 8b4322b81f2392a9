#include "mixq/io/inspect.h"

#include <algorithm>
#include <map>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "mixq/formats/outliers.h"

namespace mixq {

namespace {

std::string shape_string(const GgufTensor& t) { return fmt::format("{}", fmt::join(t.shape, " x ")); }

nlohmann::ordered_json value_json(const GgufValue& v) {
  switch (v.type()) {
    case GgufValueType::STRING: return v.as_string();
    case GgufValueType::BOOL: return v.as_bool();
    case GgufValueType::FLOAT32: case GgufValueType::FLOAT64: return v.as_float();
    case GgufValueType::UINT64: return v.as_uint();
    case GgufValueType::ARRAY: {
      auto arr = nlohmann::ordered_json::array();
      for (const auto& e : v.as_array()) arr.push_back(value_json(e));
      return arr;
    }
    default: return v.as_int();
  }
}

std::string extension_warning(const GgufFile& f) {
  const auto ext = f.extension_types_used();
  const auto outliers = std::count_if(f.tensors().begin(), f.tensors().end(),
                                      [](const GgufTensor& t) { return t.name.ends_with(kOutlierColsSuffix); });
  std::vector<std::string> what;
  if (!ext.empty()) {
    std::string names;
    for (const auto& n : ext) names += (names.empty() ? "" : ", ") + n;
    what.push_back(fmt::format("mixq-only types ({})", names));
  }
  if (outliers > 0) {
    what.push_back(fmt::format("outlier columns in f16 beside {} tensors (quantize --outliers)", outliers));
  }
  if (what.empty()) return {};
  return fmt::format("this file uses {}: it runs only in mixq; llama.cpp and other GGML tools cannot load it "
                     "(requantize to GGML types without --outliers for them)",
                     what.size() == 1 ? what[0] : what[0] + " and " + what[1]);
}

}  // namespace

std::string inspect_text(const GgufFile& f, const InspectOptions& opts) {
  std::string out = fmt::format("file: {}\nGGUF version {}, {} bytes, alignment {}, data at byte {}\n", f.label(),
                                f.version(), f.file_size(), f.alignment(), f.data_offset());
  if (opts.show_metadata) {
    out += fmt::format("\nmetadata ({} keys):\n", f.metadata().size());
    size_t width = 0;
    for (const auto& kv : f.metadata()) width = std::max(width, kv.key.size());
    for (const auto& kv : f.metadata()) {
      out += fmt::format("  {:<{}}  {:<4} {}\n", kv.key, width, gguf_value_type_name(kv.value.type()),
                         kv.value.to_string(opts.max_array_elems));
    }
  }
  int64_t params = 0;
  uint64_t bytes = 0;
  std::map<std::string, std::pair<int, uint64_t>> per_type;
  size_t name_w = 4;
  for (const auto& t : f.tensors()) name_w = std::max(name_w, t.name.size());
  if (opts.show_tensors) {
    out += fmt::format("\ntensors ({}):\n  {:<{}}  {:<22} {:<8} {:>12} {:>7}\n", f.tensors().size(), "name", name_w,
                       "shape", "type", "bytes", "bpw");
  }
  for (const auto& t : f.tensors()) {
    params += t.n_elements();
    bytes += t.nbytes;
    auto& pt = per_type[t.type->name];
    pt.first++;
    pt.second += t.nbytes;
    if (opts.show_tensors) {
      out += fmt::format("  {:<{}}  {:<22} {:<8} {:>12} {:>7.3f}\n", t.name, name_w, shape_string(t), t.type->name,
                         t.nbytes, 8.0 * t.nbytes / t.n_elements());
    }
  }
  out += fmt::format("\ntotal: {} tensors, {} parameters, {} bytes of tensor data, {:.4f} bits per weight\n",
                     f.tensors().size(), params, bytes, params ? 8.0 * bytes / params : 0.0);
  for (const auto& [name, v] : per_type) out += fmt::format("  {:<8} {:>4} tensors {:>12} bytes\n", name, v.first, v.second);
  if (const std::string w = extension_warning(f); !w.empty()) out += "\nwarning: " + w + "\n";
  return out;
}

nlohmann::ordered_json inspect_json(const GgufFile& f) {
  nlohmann::ordered_json j;
  j["file"] = f.label();
  j["version"] = f.version();
  j["file_size"] = f.file_size();
  j["alignment"] = f.alignment();
  j["data_offset"] = f.data_offset();
  auto meta = nlohmann::ordered_json::object();
  auto meta_types = nlohmann::ordered_json::object();
  for (const auto& kv : f.metadata()) {
    meta[kv.key] = value_json(kv.value);
    std::string type = gguf_value_type_name(kv.value.type());
    if (kv.value.type() == GgufValueType::ARRAY) type += std::string("[") + gguf_value_type_name(kv.value.elem_type()) + "]";
    meta_types[kv.key] = type;
  }
  j["metadata"] = meta;
  j["metadata_types"] = meta_types;
  auto tensors = nlohmann::ordered_json::array();
  int64_t params = 0;
  uint64_t bytes = 0;
  for (const auto& t : f.tensors()) {
    params += t.n_elements();
    bytes += t.nbytes;
    tensors.push_back({{"name", t.name},
                       {"shape", t.shape},
                       {"type", t.type->name},
                       {"type_id", static_cast<uint32_t>(t.type->id)},
                       {"offset", t.offset},
                       {"bytes", t.nbytes},
                       {"bits_per_weight", 8.0 * t.nbytes / t.n_elements()}});
  }
  j["tensors"] = tensors;
  j["totals"] = {{"tensors", f.tensors().size()},
                 {"parameters", params},
                 {"bytes", bytes},
                 {"bits_per_weight", params ? 8.0 * bytes / params : 0.0}};
  j["extension_types"] = f.extension_types_used();
  if (const std::string w = extension_warning(f); !w.empty()) j["warning"] = w;
  return j;
}

}  // namespace mixq
