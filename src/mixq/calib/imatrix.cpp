#include "mixq/calib/imatrix.h"

#include <cstring>
#include <stdexcept>

#include <fmt/format.h>

#include "mixq/io/gguf.h"

namespace mixq {

const std::vector<float>* ImportanceMatrix::find(const std::string& tensor) const {
  auto it = weights.find(tensor);
  return it == weights.end() ? nullptr : &it->second;
}

namespace {

ImportanceMatrix load_gguf_imatrix(const std::filesystem::path& path) {
  const GgufFile f = GgufFile::open(path);
  ImportanceMatrix m;
  m.source = path.string();
  if (const auto* t = f.find("general.type"); !t || t->type() != GgufValueType::STRING || t->as_string() != "imatrix") {
    throw std::runtime_error(fmt::format("{}: a GGUF file but not an importance matrix (general.type is not "
                                         "\"imatrix\")",
                                         path.string()));
  }
  if (const auto* d = f.find("imatrix.datasets"); d && d->type() == GgufValueType::ARRAY) {
    for (const auto& s : d->as_array()) {
      if (s.type() == GgufValueType::STRING) m.datasets.push_back(s.as_string());
    }
  }
  if (const auto* c = f.find("imatrix.chunk_count"); c && c->is_integer()) m.chunk_count = c->as_int();
  if (const auto* c = f.find("imatrix.chunk_size"); c && c->is_integer()) m.chunk_size = c->as_int();
  constexpr std::string_view kSum = ".in_sum2", kCounts = ".counts";
  for (const auto& t : f.tensors()) {
    if (!t.name.ends_with(kSum)) continue;
    const std::string base = t.name.substr(0, t.name.size() - kSum.size());
    const GgufTensor* counts = f.find_tensor(base + std::string(kCounts));
    if (!counts || t.type->id != TypeId::F32 || counts->type->id != TypeId::F32) {
      throw std::runtime_error(fmt::format("{}: '{}' lacks an F32 '{}{}' tensor", path.string(), t.name, base, kCounts));
    }
    // One count per expert (matrix): columns of expert e are divided by counts[e].
    const int64_t n_mat = counts->n_elements();
    const int64_t n = t.n_elements();
    if (n_mat <= 0 || n % n_mat != 0) {
      throw std::runtime_error(fmt::format("{}: '{}' has {} values for {} counts", path.string(), t.name, n, n_mat));
    }
    std::vector<float> sums(static_cast<size_t>(n)), cnt(static_cast<size_t>(n_mat));
    std::memcpy(sums.data(), t.data, sums.size() * sizeof(float));
    std::memcpy(cnt.data(), counts->data, cnt.size() * sizeof(float));
    const int64_t per = n / n_mat;
    for (int64_t i = 0; i < n; ++i) {
      const float c = cnt[static_cast<size_t>(i / per)];
      sums[static_cast<size_t>(i)] = c > 0 ? sums[static_cast<size_t>(i)] / c : 0.0f;
    }
    m.weights[base] = std::move(sums);
  }
  return m;
}

// Legacy llama-imatrix .dat: i32 entry count; per entry i32 name length, name, i32 ncall,
// i32 nval, f32 values[nval] (already divided by the call count, then scaled by ncall); then
// optionally i32 chunk count and the dataset name.
ImportanceMatrix load_dat_imatrix(const std::filesystem::path& path) {
  const MappedFile file(path);
  const auto b = file.bytes();
  size_t pos = 0;
  auto fail = [&](const std::string& what) {
    throw std::runtime_error(fmt::format("{}: not a valid legacy imatrix file: {} (at byte {})", path.string(), what, pos));
  };
  auto read_i32 = [&]() {
    if (b.size() - pos < 4) fail("truncated");
    int32_t v;
    std::memcpy(&v, b.data() + pos, 4);
    pos += 4;
    return v;
  };
  ImportanceMatrix m;
  m.source = path.string();
  const int32_t n_entries = read_i32();
  if (n_entries < 0 || static_cast<uint64_t>(n_entries) > b.size() / 12) fail("bad entry count");
  for (int32_t e = 0; e < n_entries; ++e) {
    const int32_t len = read_i32();
    if (len <= 0 || static_cast<size_t>(len) > b.size() - pos) fail("bad name length");
    std::string name(reinterpret_cast<const char*>(b.data() + pos), static_cast<size_t>(len));
    pos += static_cast<size_t>(len);
    const int32_t ncall = read_i32();
    const int32_t nval = read_i32();
    if (nval <= 0 || static_cast<uint64_t>(nval) * 4 > b.size() - pos) fail("bad value count for " + name);
    std::vector<float> values(static_cast<size_t>(nval));
    std::memcpy(values.data(), b.data() + pos, values.size() * 4);
    pos += values.size() * 4;
    if (ncall > 0) {
      for (auto& v : values) v /= static_cast<float>(ncall);
    }
    m.weights[name] = std::move(values);
  }
  if (b.size() - pos >= 4) {
    m.chunk_count = read_i32();
    if (b.size() - pos >= 4) {
      const int32_t len = read_i32();
      if (len > 0 && static_cast<size_t>(len) <= b.size() - pos) {
        m.datasets.emplace_back(reinterpret_cast<const char*>(b.data() + pos), static_cast<size_t>(len));
      }
    }
  }
  return m;
}

}  // namespace

ImportanceMatrix load_imatrix(const std::filesystem::path& path) {
  const MappedFile probe(path);
  if (probe.size() >= 4 && std::memcmp(probe.bytes().data(), "GGUF", 4) == 0) return load_gguf_imatrix(path);
  return load_dat_imatrix(path);
}

}  // namespace mixq
