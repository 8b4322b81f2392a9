#include "mixq/convert/safetensors.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "mixq/util/json_file.h"

namespace mixq {

using json = nlohmann::json;

size_t dtype_size(const std::string& dtype) {
  if (dtype == "F32" || dtype == "I32" || dtype == "U32") return 4;
  if (dtype == "F16" || dtype == "BF16" || dtype == "I16" || dtype == "U16") return 2;
  if (dtype == "F64" || dtype == "I64" || dtype == "U64") return 8;
  if (dtype == "I8" || dtype == "U8" || dtype == "BOOL" || dtype == "F8_E4M3" || dtype == "F8_E5M2") return 1;
  return 0;
}

std::vector<SafetensorsTensor> read_safetensors(const MappedFile& file, const std::string& label) {
  const auto b = file.bytes();
  auto fail = [&](const std::string& what) -> void {
    throw std::runtime_error(fmt::format("{}: not a valid safetensors file: {}", label, what));
  };
  if (b.size() < 8) fail("shorter than its 8-byte header length");
  uint64_t n;
  std::memcpy(&n, b.data(), 8);
  if (n > b.size() - 8) fail(fmt::format("header length {} runs past the end of the file ({} bytes)", n, b.size()));
  json header;
  try {
    header = parse_json_text<json>(
        std::string_view(reinterpret_cast<const char*>(b.data()) + 8, static_cast<size_t>(n)), "its text");
  } catch (const std::runtime_error& e) {
    fail(std::string("header is not JSON: ") + e.what());
  }
  if (!header.is_object()) fail("header is not a JSON object");
  const size_t data_start = 8 + static_cast<size_t>(n), data_size = b.size() - data_start;
  std::vector<SafetensorsTensor> out;
  for (const auto& [name, info] : header.items()) {
    if (name == "__metadata__") continue;
    if (!info.is_object() || !info.contains("dtype") || !info.contains("shape") || !info.contains("data_offsets") ||
        !info["dtype"].is_string() || !info["shape"].is_array()) {
      fail(fmt::format("entry '{}' lacks a dtype string, a shape list or data_offsets", name));
    }
    SafetensorsTensor t;
    t.name = name;
    t.dtype = info["dtype"].get<std::string>();
    const size_t elem = dtype_size(t.dtype);
    if (!elem) fail(fmt::format("tensor '{}' has unknown dtype {}", name, t.dtype));
    uint64_t count = 1;
    for (const auto& d : info["shape"]) {
      if (!d.is_number_unsigned()) fail(fmt::format("tensor '{}' has a bad dimension {}", name, d.dump()));
      const auto v = d.get<uint64_t>();
      if (v != 0 && count > (uint64_t{1} << 48) / v) fail(fmt::format("tensor '{}' is too large", name));
      count *= v;
      t.shape.push_back(static_cast<int64_t>(v));
    }
    const auto& off = info["data_offsets"];
    if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() || !off[1].is_number_unsigned()) {
      fail(fmt::format("tensor '{}' has bad data_offsets", name));
    }
    const auto begin = off[0].get<uint64_t>(), end = off[1].get<uint64_t>();
    if (begin > end || end > data_size) {
      fail(fmt::format("tensor '{}' data [{}, {}) lies outside the file's {} data bytes", name, begin, end, data_size));
    }
    if (end - begin != count * elem) {
      fail(fmt::format("tensor '{}' holds {} bytes, its shape and dtype need {}", name, end - begin, count * elem));
    }
    t.data = b.data() + data_start + begin;
    t.nbytes = static_cast<size_t>(end - begin);
    out.push_back(std::move(t));
  }
  std::vector<const SafetensorsTensor*> sorted;
  for (const auto& t : out) sorted.push_back(&t);
  std::sort(sorted.begin(), sorted.end(), [](auto* a, auto* c) { return a->data < c->data; });
  for (size_t i = 1; i < sorted.size(); ++i) {
    if (sorted[i - 1]->data + sorted[i - 1]->nbytes > sorted[i]->data) {
      fail(fmt::format("tensors '{}' and '{}' overlap", sorted[i - 1]->name, sorted[i]->name));
    }
  }
  return out;
}

}  // namespace mixq
