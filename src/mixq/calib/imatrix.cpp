#include "mixq/calib/imatrix.h"

#include <cstring>
#include <stdexcept>

#include <fmt/format.h>

#include "mixq/io/byte_cursor.h"
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
    std::vector<float> means(sums.size());
    for (int64_t i = 0; i < n; ++i) {
      const float c = cnt[static_cast<size_t>(i / per)];
      means[static_cast<size_t>(i)] = c > 0 ? sums[static_cast<size_t>(i)] / c : 0.0f;
    }
    m.weights[base] = std::move(means);
    m.sums[base] = ImatrixSums{std::move(sums), std::move(cnt)};
  }
  return m;
}

// Legacy llama-imatrix .dat: i32 entry count; per entry i32 name length, name, i32 ncall,
// i32 nval, f32 values[nval] (already divided by the call count, then scaled by ncall); then
// optionally i32 chunk count and the dataset name.
ImportanceMatrix load_dat_imatrix(const std::filesystem::path& path) {
  const MappedFile file(path);
  ByteCursor in(file.bytes(), path.string() + ": not a valid legacy imatrix file");
  ImportanceMatrix m;
  m.source = path.string();
  const auto n_entries = in.read<int32_t>("the entry count");
  if (n_entries < 0 || static_cast<uint64_t>(n_entries) > in.remaining() / 12) in.fail("bad entry count");
  for (int32_t e = 0; e < n_entries; ++e) {
    const auto len = in.read<int32_t>("a name length");
    if (len <= 0) in.fail("bad name length");
    std::string name = in.take_string(static_cast<size_t>(len), "a tensor name");
    const auto ncall = in.read<int32_t>("a call count");
    const auto nval = in.read<int32_t>("a value count");
    if (nval <= 0) in.fail("bad value count for " + name);
    const auto raw = in.take(static_cast<size_t>(nval) * 4, "the values");
    std::vector<float> values(static_cast<size_t>(nval));
    std::memcpy(values.data(), raw.data(), raw.size());
    if (ncall > 0) {
      for (auto& v : values) v /= static_cast<float>(ncall);
    }
    m.weights[name] = std::move(values);
  }
  // Optional trailer: chunk count and dataset name.
  if (in.remaining() >= 4) {
    m.chunk_count = in.read<int32_t>();
    if (in.remaining() >= 4) {
      const auto len = in.read<int32_t>();
      if (len > 0 && static_cast<size_t>(len) <= in.remaining()) m.datasets.push_back(in.take_string(static_cast<size_t>(len), "the dataset name"));
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
