#include "mixq/calib/imatrix_collect.h"

#include "mixq/io/atomic_file.h"

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <span>
#include <stdexcept>
#include <system_error>

#include <fmt/format.h>

#include "mixq/eval/perplexity.h"
#include "mixq/io/gguf.h"

namespace mixq {

namespace {

// llama-imatrix ignores matrix products over fewer rows than this (its "small batches").
constexpr int kMinTokens = 16;

}  // namespace

bool ImatrixCollector::collects(const std::string& weight, int n_tokens) const {
  if (n_tokens < kMinTokens) return false;
  return weight.starts_with("blk.") || (process_output_ && weight == "output.weight");
}

void ImatrixCollector::add(const GgufTensor& weight, const float* x, int n_tokens) {
  if (!collects(weight.name, n_tokens)) return;
  const size_t n = static_cast<size_t>(weight.row_length());
  Entry& e = entries_[weight.name];
  if (e.sum2.empty()) e.sum2.assign(n, 0.0);
  if (e.sum2.size() != n) {
    throw std::runtime_error(fmt::format("imatrix: '{}' was multiplied with rows of {} and of {} values",
                                         weight.name, e.sum2.size(), n));
  }
  double* s = e.sum2.data();
  if (f32_sums_) {
    // Token after token into float sums, as llama-imatrix accumulates (x * x rounded, then the sum).
    std::vector<float> acc(s, s + n);
    for (int t = 0; t < n_tokens; ++t) {
      const float* row = x + static_cast<size_t>(t) * n;
      for (size_t j = 0; j < n; ++j) {
        const float sq = row[j] * row[j];
        acc[j] += sq;
      }
    }
    std::copy(acc.begin(), acc.end(), s);
  } else {
    for (int t = 0; t < n_tokens; ++t) {
      const float* row = x + static_cast<size_t>(t) * n;
      for (size_t j = 0; j < n; ++j) s[j] += static_cast<double>(row[j]) * static_cast<double>(row[j]);
    }
  }
  for (size_t j = 0; j < n; ++j) {
    if (!std::isfinite(s[j])) {
      throw std::runtime_error(fmt::format("imatrix: a non-finite activation reached '{}' (column {})", weight.name, j));
    }
  }
  e.count += n_tokens;
}

ImportanceMatrix ImatrixCollector::matrix(int64_t chunk_count, int64_t chunk_size,
                                          std::vector<std::string> datasets) const {
  ImportanceMatrix m;
  m.chunk_count = chunk_count;
  m.chunk_size = chunk_size;
  m.datasets = std::move(datasets);
  for (const auto& [name, e] : entries_) {
    ImatrixSums s;
    s.in_sum2.resize(e.sum2.size());
    for (size_t j = 0; j < e.sum2.size(); ++j) s.in_sum2[j] = static_cast<float>(e.sum2[j]);
    s.counts = {static_cast<float>(e.count)};
    // The means as load_imatrix computes them from a file: float sum / float count.
    std::vector<float> means(s.in_sum2.size());
    const float c = s.counts[0];
    for (size_t j = 0; j < means.size(); ++j) means[j] = c > 0 ? s.in_sum2[j] / c : 0.0f;
    m.weights[name] = std::move(means);
    m.sums[name] = std::move(s);
  }
  return m;
}

ImatrixResult collect_imatrix(const Model& model, const Tokenizer& tok, const std::string& text,
                              const ImatrixOptions& opts) {
  const auto start = std::chrono::steady_clock::now();
  if (opts.n_ctx < kMinTokens) {
    throw std::runtime_error(fmt::format("the context size (-c) must be at least {} for an importance matrix (llama-"
                                         "imatrix ignores matrix products of fewer tokens), got {}",
                                         kMinTokens, opts.n_ctx));
  }
  const TextChunks chunks = split_text(tok, text, opts.n_ctx, opts.max_chunks);
  const int n_vocab = model.n_vocab();
  chunks.check_vocabulary(n_vocab);

  ImatrixCollector collector(opts.process_output, opts.f32_sums);
  const std::unique_ptr<Context> ctx = model.new_context(chunks.n_ctx, opts.threads);
  ctx->set_matmul_observer(collector.observer());
  // Logits of every position are needed for the perplexity and for the head's inputs.
  const bool all_logits = opts.compute_ppl || opts.process_output;

  ImatrixResult r;
  double nll = 0, nll2 = 0;
  int64_t count = 0;
  for (int c = 0; c < chunks.n_chunks; ++c) {
    ctx->reset();
    const std::vector<float>& logits = ctx->eval(chunks.input(c), all_logits);
    r.tokens += chunks.n_ctx;
    if (opts.compute_ppl) {
      const int32_t* targets = chunks.targets(c);
      for (int i = 0; i < chunks.rows_per_chunk(); ++i) {
        const float* row = logits.data() + static_cast<size_t>(chunks.first() + i) * static_cast<size_t>(n_vocab);
        const double lp = LogSoftmax(row, n_vocab)(targets[i]);
        nll -= lp;
        nll2 += lp * lp;
        ++count;
      }
    }
    if (opts.on_chunk) opts.on_chunk(c + 1, chunks.n_chunks, count ? std::exp(nll / static_cast<double>(count)) : 0.0);
  }
  r.chunks = chunks.n_chunks;
  r.scored_tokens = count;
  if (count > 1) {
    const double mean = nll / static_cast<double>(count);
    const PplEstimate e = ppl_from_nll(mean, nll2 / static_cast<double>(count) - mean * mean, count);
    r.ppl = e.ppl;
    r.ppl_error = e.error;
  }
  r.matrix = collector.matrix(chunks.n_chunks, chunks.n_ctx, opts.datasets);
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return r;
}

namespace {

void require_sums(const ImportanceMatrix& m, const std::filesystem::path& path) {
  if (m.sums.empty() && !m.weights.empty()) {
    throw std::runtime_error(fmt::format("cannot write '{}': the importance matrix has no raw sums and counts (it "
                                         "was read from a legacy .dat file, which keeps only means)",
                                         path.string()));
  }
  for (const auto& [name, s] : m.sums) {
    if (s.counts.empty() || s.in_sum2.empty() || s.in_sum2.size() % s.counts.size() != 0) {
      throw std::runtime_error(fmt::format("cannot write '{}': '{}' has {} sums for {} counts", path.string(), name,
                                           s.in_sum2.size(), s.counts.size()));
    }
  }
}

std::span<const uint8_t> as_bytes(const std::vector<float>& v) {
  return {reinterpret_cast<const uint8_t*>(v.data()), v.size() * sizeof(float)};
}

}  // namespace

void write_imatrix_gguf(const ImportanceMatrix& m, const std::filesystem::path& path) {
  require_sums(m, path);
  GgufWriter w(path);
  // Keys and their types as llama-imatrix writes them.
  w.set("general.type", GgufValue::string("imatrix"));
  w.set("imatrix.datasets", GgufValue::string_array(m.datasets));
  w.set("imatrix.chunk_count", GgufValue::u32(static_cast<uint32_t>(m.chunk_count)));
  w.set("imatrix.chunk_size", GgufValue::u32(static_cast<uint32_t>(m.chunk_size)));
  // std::map order is llama-imatrix's (std::sort of the names).
  for (const auto& [name, s] : m.sums) {
    const auto n_mat = static_cast<int64_t>(s.counts.size());
    const auto per = static_cast<int64_t>(s.in_sum2.size()) / n_mat;
    // GGML drops trailing dimensions of 1: one matrix gives 1-D tensors [per] and [1].
    w.add_tensor(name + ".in_sum2", n_mat == 1 ? std::vector<int64_t>{per} : std::vector<int64_t>{per, n_mat}, TypeId::F32);
    w.add_tensor(name + ".counts", n_mat == 1 ? std::vector<int64_t>{1} : std::vector<int64_t>{1, n_mat}, TypeId::F32);
  }
  for (const auto& [name, s] : m.sums) {
    w.write_tensor_data(as_bytes(s.in_sum2));
    w.write_tensor_data(as_bytes(s.counts));
  }
  w.finish();
}

void write_imatrix_dat(const ImportanceMatrix& m, const std::filesystem::path& path) {
  require_sums(m, path);
  if (m.chunk_size <= 0) {
    throw std::runtime_error(fmt::format("cannot write '{}': the chunk size is unknown (the legacy format stores "
                                         "call counts in chunks)",
                                         path.string()));
  }
  std::string out;
  auto put_i32 = [&](int32_t v) { out.append(reinterpret_cast<const char*>(&v), sizeof v); };
  // Entries without any data are left out, as llama-imatrix does.
  std::vector<const std::pair<const std::string, ImatrixSums>*> stored;
  for (const auto& kv : m.sums) {
    if (std::any_of(kv.second.counts.begin(), kv.second.counts.end(), [](float c) { return c > 0; })) stored.push_back(&kv);
  }
  put_i32(static_cast<int32_t>(stored.size()));
  for (const auto* kv : stored) {
    const auto& [name, s] = *kv;
    put_i32(static_cast<int32_t>(name.size()));
    out += name;
    // Calls = chunks, rounded up so a partial chunk does not give zero.
    const auto max_count = static_cast<int64_t>(*std::max_element(s.counts.begin(), s.counts.end()));
    const auto ncall = static_cast<int32_t>((max_count + m.chunk_size - 1) / m.chunk_size);
    put_i32(ncall);
    put_i32(static_cast<int32_t>(s.in_sum2.size()));
    const size_t per = s.in_sum2.size() / s.counts.size();
    std::vector<float> values(s.in_sum2.size());
    for (size_t i = 0; i < values.size(); ++i) {
      float count = s.counts[i / per], value = s.in_sum2[i];
      if (count == 0.0f) value = count = 1.0f;  // an expert without data: weight 1
      values[i] = (value / count) * static_cast<float>(ncall);
    }
    out.append(reinterpret_cast<const char*>(values.data()), values.size() * sizeof(float));
  }
  put_i32(static_cast<int32_t>(m.chunk_count));
  const std::string dataset = m.datasets.empty() ? std::string() : m.datasets.back();
  put_i32(static_cast<int32_t>(dataset.size()));
  out += dataset;

  write_file_atomically(path, out);
}

}  // namespace mixq
