#include "mixq/plan/measure.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>
#include <map>
#include <set>
#include <tuple>

#include <fmt/format.h>

#include "mixq/calib/imatrix_collect.h"
#include "mixq/engine/registry.h"
#include "mixq/engine/repack.h"
#include "mixq/eval/chunks.h"
#include "mixq/eval/scores.h"
#include "mixq/formats/half.h"
#include "mixq/io/outlier_columns.h"
#include "mixq/policy/policy.h"
#include "mixq/policy/tensor_names.h"
#include "mixq/quantize/quantize_model.h"
#include "mixq/util/thread_pool.h"

namespace mixq {

namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}


// One candidate of a tensor in the quantize-and-error stage: a type, with or without the outlier
// columns.
struct ErrorJob {
  TypeId type;
  bool outliers;
};

// Quantizes rows with the importance weights (as mixq quantize does), dequantizes them and returns
// the importance-weighted relative squared error of each job, all jobs' row blocks in one parallel
// loop (so many threads have work even when a tensor has few rows). With outlier columns (`cols`),
// the quantizer sees them as zeros of weight 0 and the reconstruction takes their f16 values, as
// quantize --outliers writes and the engine reads them. Keeps the quantized bytes of jobs[0] when
// `keep` is given.
std::vector<double> quantize_and_measure(const float* x, int64_t rows, int64_t n, const std::vector<ErrorJob>& jobs,
                                         const float* importance, ThreadPool& pool, std::vector<uint8_t>* keep,
                                         const std::vector<int32_t>& cols) {
  for (const ErrorJob& j : jobs) {
    const TypeTraits& t = type_traits(j.type);
    if (!t.fits_row(n)) throw std::runtime_error(fmt::format("type {} cannot hold rows of {}", t.name, n));
  }
  if (keep) keep->resize(static_cast<size_t>(rows) * type_traits(jobs.at(0).type).row_bytes(n));
  constexpr int64_t kRowsPerTask = 16;
  const int64_t blocks = (rows + kRowsPerTask - 1) / kRowsPerTask;
  const int64_t tasks = blocks * static_cast<int64_t>(jobs.size());
  std::vector<double> num(static_cast<size_t>(tasks)), den(static_cast<size_t>(tasks));
  pool.parallel_for(tasks, [&](int64_t task) {
    const ErrorJob& job = jobs[static_cast<size_t>(task / blocks)];
    const int64_t block = task % blocks;
    const TypeTraits& t = type_traits(job.type);
    const size_t rb = t.row_bytes(n);
    const bool masked_cols = job.outliers && !cols.empty();
    thread_local std::vector<uint8_t> q;
    thread_local std::vector<float> y, masked, masked_imp;
    q.resize(rb);
    y.resize(static_cast<size_t>(n));
    if (masked_cols && importance) {
      masked_imp.assign(importance, importance + n);
      for (int32_t c : cols) masked_imp[static_cast<size_t>(c)] = 0.0f;
    }
    double a = 0, b = 0;
    for (int64_t r = block * kRowsPerTask; r < std::min(rows, (block + 1) * kRowsPerTask); ++r) {
      const float* xr = x + static_cast<size_t>(r) * static_cast<size_t>(n);
      uint8_t* dst = keep && task < blocks ? keep->data() + static_cast<size_t>(r) * rb : q.data();
      if (masked_cols) {
        masked.assign(xr, xr + n);
        for (int32_t c : cols) masked[static_cast<size_t>(c)] = 0.0f;
        t.quantize_row(masked.data(), dst, n, importance ? masked_imp.data() : nullptr);
        t.dequantize_row(dst, y.data(), n);
        for (int32_t c : cols) y[static_cast<size_t>(c)] = round_fp16(xr[c]);
      } else {
        t.quantize_row(xr, dst, n, importance);
        t.dequantize_row(dst, y.data(), n);
      }
      for (int64_t j = 0; j < n; ++j) {
        const double w = importance ? importance[j] : 1.0;
        const double d = static_cast<double>(xr[j]) - y[static_cast<size_t>(j)];
        a += w * d * d;
        b += w * static_cast<double>(xr[j]) * xr[j];
      }
    }
    num[static_cast<size_t>(task)] = a;
    den[static_cast<size_t>(task)] = b;
  });
  std::vector<double> out;
  for (size_t k = 0; k < jobs.size(); ++k) {
    double a = 0, b = 0;
    for (int64_t i = 0; i < blocks; ++i) {
      a += num[k * static_cast<size_t>(blocks) + static_cast<size_t>(i)];
      b += den[k * static_cast<size_t>(blocks) + static_cast<size_t>(i)];
    }
    out.push_back(b > 0 ? a / b : (a > 0 ? a : 0.0));
  }
  return out;
}

// The per-column weights the quantizers get for a tensor: its importance-matrix entry, or null.
const float* importance_of(const ImportanceMatrix* im, const std::string& name, int64_t n) {
  if (!im) return nullptr;
  const std::vector<float>* w = im->find(name);
  if (!w || static_cast<int64_t>(w->size()) != n) return nullptr;
  return w->data();
}

// The reference run over the calibration chunks: the residual stream entering every layer and
// the log-probabilities of the scored rows.
struct BaseRun {
  const TextChunks* chunks = nullptr;
  std::vector<std::vector<std::vector<float>>> layer_inputs;  // [chunk][layer 0..n_layer][n_ctx * n_embd]
  std::vector<std::vector<float>> log_probs;                  // [chunk][rows * n_vocab]
};

BaseRun run_base(const Model& model, const TextChunks& chunks, int threads, AttentionMode attention) {
  const int V = model.n_vocab(), width = model.layer_state_width();
  BaseRun b;
  b.chunks = &chunks;
  const std::unique_ptr<Context> ctx = model.new_context(chunks.n_ctx, threads);
  ctx->set_attention(attention);
  for (int c = 0; c < chunks.n_chunks; ++c) {
    auto& inputs = b.layer_inputs.emplace_back(static_cast<size_t>(model.n_layer()) + 1);
    ctx->set_layer_observer([&](int l, const float* x, int n) {
      inputs[static_cast<size_t>(l)].assign(x, x + static_cast<size_t>(n) * static_cast<size_t>(width));
    });
    ctx->reset();
    const auto& logits = ctx->eval(chunks.input(c), true);
    auto& lp = b.log_probs.emplace_back(static_cast<size_t>(chunks.rows_per_chunk()) * V);
    for (int r = 0; r < chunks.rows_per_chunk(); ++r) {
      const float* row = logits.data() + static_cast<size_t>(chunks.first() + r) * V;
      LogSoftmax(row, V).all(lp.data() + static_cast<size_t>(r) * V);
    }
  }
  return b;
}

// Mean KL(base || model with each `overrides` original read as its probe) over the scored rows
// (per row as kld.h computes it: scores.h's kl_row); the probes change nothing before block
// `start`, so with `restart` the run starts there from the cached state (and computes the head on
// the scored rows only), else from the tokens (a probe of the token embedding changes the state
// entering layer 0 itself). `ctx` is reused between probes: its overrides are
// set here and cleared before returning.
double probe_kld(Context& ctx, const std::vector<std::pair<const GgufTensor*, const GgufTensor*>>& overrides,
                 const BaseRun& base, int start, bool restart, ThreadPool& pool) {
  const TextChunks& chunks = *base.chunks;
  for (const auto& [original, probe] : overrides) ctx.override_weight(*original, probe);
  const int rows = chunks.rows_per_chunk(), V = ctx.n_vocab();
  double total = 0;
  try {
    for (int c = 0; c < chunks.n_chunks; ++c) {
      ctx.reset();
      const float* scored = nullptr;
      if (restart) {
        const auto& x = base.layer_inputs[static_cast<size_t>(c)][static_cast<size_t>(start)];
        scored = ctx.eval_from_layer_tail(start, x.data(), chunks.n_ctx, chunks.first()).data();
      } else {
        scored = ctx.eval(chunks.input(c), true).data() + static_cast<size_t>(chunks.first()) * V;
      }
      std::vector<double> per_row(static_cast<size_t>(rows));
      std::vector<float> lq(static_cast<size_t>(rows) * V);
      pool.parallel_for(rows, [&](int64_t r) {
        const float* row = scored + static_cast<size_t>(r) * V;
        float* q = lq.data() + static_cast<size_t>(r) * V;
        LogSoftmax(row, V).all(q);
        const float* lb = base.log_probs[static_cast<size_t>(c)].data() + static_cast<size_t>(r) * V;
        per_row[static_cast<size_t>(r)] = kl_row(lb, q, V).kld;
      });
      for (double k : per_row) total += k;
    }
  } catch (...) {
    for (const auto& o : overrides) ctx.override_weight(*o.first, nullptr);
    throw;
  }
  for (const auto& o : overrides) ctx.override_weight(*o.first, nullptr);
  return total / static_cast<double>(chunks.scored_tokens());
}

// Evenly spread rows of a tensor (x: rows x n) for the error proxy: all of them when rows <= want
// or want <= 0, else `want` rows, row i being the middle of the i-th of `want` equal bands.
std::vector<float> sample_rows(const std::vector<float>& x, int64_t rows, int64_t n, int want, int64_t* kept) {
  if (want <= 0 || rows <= want) {
    *kept = rows;
    return x;
  }
  std::vector<float> out(static_cast<size_t>(want) * static_cast<size_t>(n));
  for (int i = 0; i < want; ++i) {
    const int64_t r = (2 * static_cast<int64_t>(i) + 1) * rows / (2 * static_cast<int64_t>(want));
    std::copy_n(x.data() + static_cast<size_t>(r) * static_cast<size_t>(n), n,
                out.data() + static_cast<size_t>(i) * static_cast<size_t>(n));
  }
  *kept = want;
  return out;
}

// The name of a tensor with its layer number replaced by '*' (what a probe group shares).
std::string kind_of(const std::string& name, int layer) {
  const std::string mark = fmt::format(".{}.", layer);
  const size_t at = name.find(mark);
  if (at == std::string::npos) return name;
  return name.substr(0, at) + ".*." + name.substr(at + mark.size());
}

// Everything measured about one tensor before its probes.
struct Pending {
  size_t file_index = 0;
  TensorMeasure tm;
  int p1 = -1, p2 = -1;  // probe candidates (indices into tm.candidates)
  bool probed = true;    // false: between the probed layers (MeasureOptions::probe_stride)
  double perturbation = -1;  // the block proxy's perturbation at the probe type (MeasureOptions::block_proxy)
};

// The probe of one tensor in its probe type: the quantized bytes and the tensor view reading them.
struct ProbeTensor {
  std::vector<uint8_t> bytes;
  GgufTensor view;
};

// Relative perturbation of the state leaving a block: mean over tokens of ||y - ref||^2 / ||ref||^2
// (per token, because the next block's RMS norm divides each token by its own scale; tokens with
// a zero reference state are skipped).
double relative_perturbation(const float* y, const float* ref, int n_tokens, int width) {
  double sum = 0;
  int counted = 0;
  for (int t = 0; t < n_tokens; ++t) {
    const float* a = y + static_cast<size_t>(t) * static_cast<size_t>(width);
    const float* b = ref + static_cast<size_t>(t) * static_cast<size_t>(width);
    double d2 = 0, r2 = 0;
    for (int j = 0; j < width; ++j) {
      const double d = static_cast<double>(a[j]) - b[j];
      d2 += d * d;
      r2 += static_cast<double>(b[j]) * b[j];
    }
    if (r2 > 0) {
      sum += d2 / r2;
      ++counted;
    }
  }
  return counted > 0 ? sum / counted : 0.0;
}

}  // namespace

void mark_dominated(std::vector<CandidateMeasure>& candidates) {
  for (auto& c : candidates) {
    c.dominated = false;
    for (const auto& o : candidates) {
      const uint64_t cb = c.bytes + c.outlier_bytes, ob = o.bytes + o.outlier_bytes;
      if (ob <= cb && o.error <= c.error && (ob < cb || o.error < c.error)) {
        c.dominated = true;
        break;
      }
    }
  }
}

std::vector<double> quantization_errors(const float* x, int64_t rows, int64_t n, const std::vector<TypeId>& types,
                                        const float* importance, ThreadPool& pool, std::vector<uint8_t>* keep) {
  std::vector<ErrorJob> jobs;
  for (TypeId t : types) jobs.push_back({t, false});
  return quantize_and_measure(x, rows, n, jobs, importance, pool, keep, {});
}

std::pair<int, int> probe_candidates(const TensorMeasure& tm, int probes) {
  int p1 = -1, p2 = -1;
  for (size_t i = 0; i < tm.candidates.size(); ++i) {
    const CandidateMeasure& c = tm.candidates[i];
    if (c.outliers > 0 || c.dominated) continue;
    if (c.error > 0 && (p1 < 0 || c.error > tm.candidates[static_cast<size_t>(p1)].error)) p1 = static_cast<int>(i);
  }
  if (p1 >= 0 && probes == 2) {
    const double e1 = tm.candidates[static_cast<size_t>(p1)].error, target = std::log(e1 / 16);
    double best = INFINITY;
    for (size_t i = 0; i < tm.candidates.size(); ++i) {
      const CandidateMeasure& c = tm.candidates[i];
      if (c.outliers > 0 || c.dominated) continue;
      if (static_cast<int>(i) == p1 || c.error <= 0 || c.error > e1 / 2) continue;
      if (std::abs(std::log(c.error) - target) < best) {
        best = std::abs(std::log(c.error) - target);
        p2 = static_cast<int>(i);
      }
    }
  }
  return {p1, p2};
}

std::vector<std::vector<size_t>> probe_groups(const std::vector<std::string>& names, int n_layer, int group) {
  if (group < 1) throw std::runtime_error(fmt::format("probe group {}: want 1 or more tensors", group));
  std::vector<std::vector<size_t>> out;
  std::map<std::pair<std::string, int>, size_t> open;  // (kind, block of layers) -> group
  for (size_t i = 0; i < names.size(); ++i) {
    const std::optional<int> layer = layer_of(names[i]);
    // The first and last layers (next to the embedding and the head) differ most from their
    // neighbours: they are probed alone, as are tensors outside the layers.
    if (group == 1 || !layer || *layer <= 0 || *layer >= n_layer - 1) {
      out.push_back({i});
      continue;
    }
    const auto key = std::make_pair(kind_of(names[i], *layer), (*layer - 1) / group);
    const auto it = open.find(key);
    if (it == open.end()) {
      open.emplace(key, out.size());
      out.push_back({i});
    } else {
      out[it->second].push_back(i);
    }
  }
  return out;
}

bool is_probed_layer(int layer, int n_layer, int stride) {
  if (stride < 1) throw std::runtime_error(fmt::format("probe stride {}: want 1 or more", stride));
  return layer % stride == 0 || layer >= n_layer - 1;
}

void interpolate_fits(std::vector<TensorMeasure>& tensors, const std::vector<bool>& probed) {
  // (kind, layer) -> the probed tensor there, with a fit.
  std::map<std::string, std::map<int, const TensorMeasure*>> anchors;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const std::optional<int> l = layer_of(tensors[i].name);
    if (l && probed.at(i) && tensors[i].alpha > 0) anchors[kind_of(tensors[i].name, *l)][*l] = &tensors[i];
  }
  std::vector<std::pair<size_t, std::pair<const TensorMeasure*, const TensorMeasure*>>> fills;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const std::optional<int> l = layer_of(tensors[i].name);
    if (!l || probed[i]) continue;
    const auto kind = anchors.find(kind_of(tensors[i].name, *l));
    if (kind == anchors.end()) continue;
    const auto& by_layer = kind->second;
    const auto above = by_layer.upper_bound(*l);
    const TensorMeasure* hi = above == by_layer.end() ? nullptr : above->second;
    const TensorMeasure* lo = above == by_layer.begin() ? nullptr : std::prev(above)->second;
    fills.push_back({i, {lo ? lo : hi, hi ? hi : lo}});
  }
  // Every fit read above comes from a probed tensor, so filling in place cannot feed on itself.
  for (const auto& [i, ends] : fills) {
    TensorMeasure& t = tensors[i];
    const auto [lo, hi] = ends;
    const int l = *layer_of(t.name), a = *layer_of(lo->name), b = *layer_of(hi->name);
    const double w = b > a ? static_cast<double>(l - a) / (b - a) : 0.0;
    t.alpha = std::exp((1 - w) * std::log(lo->alpha) + w * std::log(hi->alpha));
    t.beta = (1 - w) * lo->beta + w * hi->beta;
    t.interpolated_from = a;
    t.interpolated_to = b;
    for (auto& c : t.candidates) {
      c.kld.reset();
      c.predicted = c.error > 0 ? t.alpha * std::pow(c.error, t.beta) : 0.0;
    }
  }
}

std::vector<TypeId> default_candidate_types() {
  std::vector<TypeId> out;
  for (const auto& t : all_types()) {
    if (!t.can_quantize() || !t.can_dequantize()) continue;
    // Ternary types are for ternary-trained models: on ordinary weights they are never a good choice.
    if (!t.weight || t.id == TypeId::TQ1_0 || t.id == TypeId::TQ2_0) continue;
    if (!t.quantized && t.id != TypeId::F32 && t.id != TypeId::F16 && t.id != TypeId::BF16) continue;
    out.push_back(t.id);
  }
  return out;
}

Measurement measure_model(const GgufFile& file, const Model& model, const Tokenizer& tok,
                          const std::string& calibration_text, const MeasureOptions& opts) {
  const auto start_time = std::chrono::steady_clock::now();
  if (opts.n_shards < 1 || opts.shard < 0 || opts.shard >= opts.n_shards) {
    throw std::runtime_error(fmt::format("shard {}/{}: want 0 <= i < N", opts.shard, opts.n_shards));
  }
  if (opts.probes < 1 || opts.probes > 2) throw std::runtime_error("probes must be 1 or 2");
  if (opts.error_rows < 0) throw std::runtime_error(fmt::format("error rows {}: want 0 (all rows) or more", opts.error_rows));
  if (opts.probe_group < 1) throw std::runtime_error(fmt::format("probe group {}: want 1 or more", opts.probe_group));
  if (opts.probe_stride < 1) throw std::runtime_error(fmt::format("probe stride {}: want 1 or more", opts.probe_stride));
  if (opts.probe_stride > 1 && (opts.probe_group != 1 || opts.n_shards != 1)) {
    throw std::runtime_error("a probe stride above 1 needs probe group 1 and no shards (it interpolates between "
                             "the probed layers)");
  }
  if (opts.block_proxy && (opts.probe_group != 1 || opts.probe_stride != 1 || opts.n_shards != 1)) {
    throw std::runtime_error("the block proxy needs probe group 1, probe stride 1 and no shards (a layer's gain "
                             "needs all its tensors)");
  }
  if (has_outlier_columns(file)) {
    throw std::runtime_error(fmt::format("{} keeps outlier columns (quantize --outliers): measure the unquantized "
                                         "model it was made from",
                                         file.label()));
  }
  Measurement m;
  m.model = opts.model_name;
  m.model_bytes = file.file_size();
  m.n_tensors = static_cast<int>(file.tensors().size());
  m.alignment = file.alignment();
  m.header_bytes = opts.header_bytes;
  m.calibration = opts.calibration_name;
  m.imatrix = opts.imatrix ? opts.imatrix->source : "";
  m.n_ctx = opts.n_ctx;
  m.probes = opts.probes;
  m.error_rows = opts.error_rows;
  m.probe_group = opts.probe_group;
  m.probe_stride = opts.probe_stride;
  m.block_proxy = opts.block_proxy;
  if (opts.block_proxy) m.probes = 1;
  if (opts.outliers < 0) throw std::runtime_error(fmt::format("outliers {}: want 0 (none) or more", opts.outliers));
  m.outliers = opts.outliers;
  m.shard = opts.shard;
  m.n_shards = opts.n_shards;
  const std::vector<TypeId> types = opts.types.empty() ? default_candidate_types() : opts.types;
  for (TypeId t : types) {
    const TypeTraits& tt = type_traits(t);
    if (!tt.can_quantize() || !tt.can_dequantize()) {
      throw std::runtime_error(fmt::format("candidate type {}: mixq cannot both produce and decode it", tt.name));
    }
    m.types.push_back(tt.name);
  }

  // Where each engine tensor sits: the first layer whose output it changes.
  std::map<const GgufTensor*, int> start_layer;
  for (const WeightUse& w : model.weights()) start_layer.emplace(w.tensor, w.layer);

  const auto descs = tensor_descs(file);
  const ModelInfo info = model_info_from_gguf(file, descs);
  std::vector<size_t> quantizable;
  std::vector<std::string> names;
  for (size_t i = 0; i < descs.size(); ++i) {
    const GgufTensor& t = file.tensors()[i];
    m.n_params += t.n_elements();
    if (!is_quantizable(descs[i], info)) {
      m.fixed_bytes += GgufWriter::align_up(t.nbytes, m.alignment);
      m.fixed_bytes_unpadded += t.nbytes;
      continue;
    }
    if (!start_layer.count(&t)) {
      throw std::runtime_error(fmt::format("tensor '{}' is quantizable but the {} graph does not use it: it cannot "
                                           "be measured",
                                           t.name, model.architecture()));
    }
    quantizable.push_back(i);
    names.push_back(t.name);
  }
  // Probe groups over the whole model, so that every shard forms the same ones; shard i takes
  // groups i, i + N, ... (with groups of one: the tensors whose quantizable index is i mod N).
  std::vector<std::vector<size_t>> groups;
  {
    const auto all = probe_groups(names, model.n_layer(), opts.probe_group);
    for (size_t g = 0; g < all.size(); ++g) {
      if (static_cast<int>(g % static_cast<size_t>(opts.n_shards)) != opts.shard) continue;
      auto& mine = groups.emplace_back();
      for (size_t k : all[g]) mine.push_back(quantizable[k]);
    }
  }
  std::vector<size_t> todo;
  for (const auto& g : groups) todo.insert(todo.end(), g.begin(), g.end());
  std::sort(todo.begin(), todo.end());

  const TextChunks chunks = split_text(tok, calibration_text, opts.n_ctx, opts.chunks);
  chunks.check_vocabulary(model.n_vocab());
  m.chunks = chunks.n_chunks;
  m.scored_tokens = chunks.scored_tokens();
  auto t0 = std::chrono::steady_clock::now();
  const BaseRun base = run_base(model, chunks, opts.threads, opts.attention);
  m.stage_seconds["base"] = seconds_since(t0);
  ThreadPool pool(opts.threads);
  size_t total_steps = todo.size() + groups.size();
  size_t steps = 0;
  auto progress = [&](const std::string& what) {
    ++steps;
    if (opts.on_tensor) {
      opts.on_tensor({static_cast<int>(steps), static_cast<int>(total_steps), what, seconds_since(start_time)});
    }
  };
  auto check_cancel = [&] {
    if (opts.cancel && opts.cancel->load()) throw std::runtime_error("interrupted: no output was written");
  };

  // Stage 1, per tensor: every candidate's bytes and error (on error_rows rows), the dominated
  // candidates, the probe types.
  std::map<size_t, Pending> pending;
  for (size_t file_index : todo) {
    check_cancel();
    const GgufTensor& t = file.tensors()[file_index];
    Pending& p = pending[file_index];
    p.file_index = file_index;
    if (const auto l = layer_of(t.name)) p.probed = is_probed_layer(*l, model.n_layer(), opts.probe_stride);
    TensorMeasure& tm = p.tm;
    tm.name = t.name;
    tm.shape = t.shape;
    tm.stored = t.type->id;
    tm.index = static_cast<int>(file_index);
    const int64_t n = t.row_length(), rows = t.n_rows();
    std::vector<float> x(static_cast<size_t>(rows * n));
    kernels::dequantize_tensor(t, x.data());  // the model may have interleaved t
    const float* imp = importance_of(opts.imatrix, t.name, n);
    // Outlier candidates: the columns quantize --outliers would keep (chosen once per tensor, on
    // every row).
    std::vector<int32_t> cols;
    if (opts.outliers > 0 && t.shape.size() == 2 && n > opts.outliers) {
      cols = select_outlier_columns(x.data(), rows, n, imp, opts.outliers);
    }
    int64_t kept = 0;
    const std::vector<float> xs = sample_rows(x, rows, n, opts.error_rows, &kept);
    x.clear();
    x.shrink_to_fit();
    std::vector<ErrorJob> jobs;
    for (TypeId type : types) {
      const TypeTraits& tt = type_traits(type);
      if (!tt.fits_row(n)) continue;
      CandidateMeasure c;
      c.type = type;
      c.bytes = tt.row_bytes(n) * static_cast<uint64_t>(rows);
      tm.candidates.push_back(c);
      if (type != t.type->id) jobs.push_back({type, false});
      if (!cols.empty() && type != t.type->id && can_keep_outlier_columns(t.shape, tt, opts.outliers)) {
        c.outliers = opts.outliers;
        c.outlier_bytes = outlier_bytes(c.outliers, rows);
        tm.candidates.push_back(c);
        jobs.push_back({type, true});
      }
    }
    if (tm.candidates.empty()) {
      throw std::runtime_error(fmt::format("no candidate type can hold the rows of '{}' ({} values)", t.name, n));
    }
    t0 = std::chrono::steady_clock::now();
    const std::vector<double> errors =
        jobs.empty() ? std::vector<double>{} : quantize_and_measure(xs.data(), kept, n, jobs, imp, pool, nullptr, cols);
    m.stage_seconds["quantize"] += seconds_since(t0);
    for (auto& c : tm.candidates) {
      for (size_t k = 0; k < jobs.size(); ++k) {
        if (jobs[k].type == c.type && jobs[k].outliers == (c.outliers > 0)) c.error = errors[k];
      }
    }
    std::stable_sort(tm.candidates.begin(), tm.candidates.end(), [](const auto& a, const auto& b) {
      return a.bytes + a.outlier_bytes < b.bytes + b.outlier_bytes;
    });
    mark_dominated(tm.candidates);

    // Probes, among the candidates without outliers that are not dominated (the plan never
    // picks a dominated one, so its loss is the wrong place to calibrate).
    std::tie(p.p1, p.p2) = probe_candidates(tm, opts.block_proxy ? 1 : opts.probes);
    progress(t.name);
  }

  const std::unique_ptr<Context> ctx = model.new_context(chunks.n_ctx, opts.threads);
  ctx->set_attention(opts.attention);
  // A tensor quantized to one of its candidates, for a probe.
  auto make_probe = [&](const Pending& p, int c, ProbeTensor& out) {
    const GgufTensor& t = file.tensors()[p.file_index];
    const CandidateMeasure& cand = p.tm.candidates[static_cast<size_t>(c)];
    const int64_t n = t.row_length(), rows = t.n_rows();
    std::vector<float> x(static_cast<size_t>(rows * n));
    kernels::dequantize_tensor(t, x.data());  // the model may have interleaved t
    quantize_and_measure(x.data(), rows, n, {{cand.type, false}}, importance_of(opts.imatrix, t.name, n), pool,
                         &out.bytes, {});
    out.view = t;
    out.view.type = &type_traits(cand.type);
    out.view.data = out.bytes.data();
    out.view.nbytes = out.bytes.size();
  };

  // Stage 2 with the block proxy, per layer: every tensor of the block in its probe type, the
  // block alone run on its cached input, and the relative perturbation of the state leaving it;
  // then one full probe of the tensor with the largest perturbation gives the layer's gain (KLD
  // per unit of perturbation), and every tensor of the layer its predicted KLD at the probe type =
  // gain * perturbation, so alpha = that / error (beta 1).
  std::set<size_t> proxied;
  if (opts.block_proxy) {
    std::map<int, std::vector<Pending*>> layers;
    for (auto& [i, p] : pending) {
      const std::optional<int> l = layer_of(p.tm.name);
      if (p.p1 < 0 || !l || start_layer.at(&file.tensors()[i]) != *l || *l >= model.n_layer()) continue;
      layers[*l].push_back(&p);
    }
    const int width = model.layer_state_width();
    total_steps += layers.size();  // one gain probe per layer
    for (auto& [l, members] : layers) {
      Pending* cal = nullptr;  // the member with the largest perturbation, and its probe bytes
      ProbeTensor cal_probe;
      for (Pending* p : members) {
        check_cancel();
        ProbeTensor probe;
        t0 = std::chrono::steady_clock::now();
        make_probe(*p, p->p1, probe);
        m.stage_seconds["probe_quantize"] += seconds_since(t0);
        t0 = std::chrono::steady_clock::now();
        const GgufTensor& original = file.tensors()[p->file_index];
        ctx->override_weight(original, &probe.view);
        double sum = 0;
        try {
          for (int c = 0; c < chunks.n_chunks; ++c) {
            const auto& in = base.layer_inputs[static_cast<size_t>(c)];
            ctx->reset();  // a gain probe leaves its last chunk's sequence
            const std::vector<float>& y =
                ctx->eval_blocks(l, l + 1, in[static_cast<size_t>(l)].data(), chunks.n_ctx);
            sum += relative_perturbation(y.data(), in[static_cast<size_t>(l) + 1].data(), chunks.n_ctx, width);
          }
        } catch (...) {
          ctx->override_weight(original, nullptr);
          throw;
        }
        ctx->override_weight(original, nullptr);
        p->perturbation = sum / chunks.n_chunks;
        m.stage_seconds["proxy_eval"] += seconds_since(t0);
        proxied.insert(p->file_index);
        if (!cal || p->perturbation > cal->perturbation) {
          cal = p;
          cal_probe = std::move(probe);  // the view keeps pointing at the moved bytes
        }
        progress(fmt::format("block proxy of {}", p->tm.name));
      }
      t0 = std::chrono::steady_clock::now();
      const double k = probe_kld(*ctx, {{&file.tensors()[cal->file_index], &cal_probe.view}}, base, l,
                                 opts.restart_from_layer, pool);
      m.stage_seconds["probe_eval"] += seconds_since(t0);
      ++m.probe_runs;
      cal->tm.candidates[static_cast<size_t>(cal->p1)].kld = k;
      const double gain = cal->perturbation > 0 ? std::max(k, 0.0) / cal->perturbation : 0.0;
      for (Pending* p : members) {
        const double e = p->tm.candidates[static_cast<size_t>(p->p1)].error;
        p->tm.block_perturbation = p->perturbation;
        p->tm.layer_gain = gain;
        p->tm.beta = 1;
        p->tm.alpha = e > 0 ? gain * p->perturbation / e : 0.0;
      }
      progress(fmt::format("probe of {} (layer {}'s gain)", cal->tm.name, l));
    }
  }

  // Stage 2, per probe group: its tensors quantized together to their probe types, one run from
  // the group's first layer. For small perturbations the KL divergence is additive over tensors
  // (second order in the logits' change, cross terms of independent quantization noise averaging
  // out), so a group of G tensors of one kind in consecutive layers costs one run instead of G and
  // gives them one shared fit: sum over the group of alpha * error^beta = the measured KLD.
  for (const auto& group : groups) {
    check_cancel();
    if (std::all_of(group.begin(), group.end(), [&](size_t i) { return proxied.count(i) > 0; })) continue;
    std::vector<Pending*> members;
    int start = model.n_layer();
    bool embedding = false;
    for (size_t i : group) {
      Pending& p = pending.at(i);
      if (p.p1 < 0) continue;  // nothing to calibrate (every candidate exact)
      if (!p.probed) continue;  // between probed layers: interpolated below
      members.push_back(&p);
      start = std::min(start, start_layer.at(&file.tensors()[i]));
      embedding |= classify_tensor(p.tm.name, true).component == Component::Embed;
    }
    double k[2] = {0, 0}, e[2] = {0, 0};
    bool have[2] = {false, false};
    for (int pi = 0; pi < 2 && !members.empty(); ++pi) {
      std::vector<ProbeTensor> probes;
      probes.reserve(members.size());
      std::vector<std::pair<const GgufTensor*, const GgufTensor*>> overrides;
      t0 = std::chrono::steady_clock::now();
      for (Pending* p : members) {
        const int c = pi == 0 ? p->p1 : p->p2;
        if (c < 0) continue;
        make_probe(*p, c, probes.emplace_back());
        overrides.emplace_back(&file.tensors()[p->file_index], &probes.back().view);
        e[pi] += p->tm.candidates[static_cast<size_t>(c)].error;
      }
      m.stage_seconds["probe_quantize"] += seconds_since(t0);
      // A group's second probe is made only when every member has one (the fit compares sums).
      if (overrides.empty() || (pi == 1 && overrides.size() != members.size())) break;
      t0 = std::chrono::steady_clock::now();
      k[pi] = probe_kld(*ctx, overrides, base, start, opts.restart_from_layer && !embedding, pool);
      m.stage_seconds["probe_eval"] += seconds_since(t0);
      ++m.probe_runs;
      have[pi] = true;
      if (members.size() == 1) {
        members[0]->tm.candidates[static_cast<size_t>(pi == 0 ? members[0]->p1 : members[0]->p2)].kld = k[pi];
      }
    }
    // The fit: kld = alpha * error^beta through the probes (summed over the group).
    if (have[0]) {
      double beta = 1;
      const double k1 = std::max(k[0], 0.0);
      if (have[1] && k1 > 0 && k[1] > 0) beta = std::clamp(std::log(k1 / k[1]) / std::log(e[0] / e[1]), 0.5, 2.0);
      double sum = 0;
      for (Pending* p : members) sum += std::pow(p->tm.candidates[static_cast<size_t>(p->p1)].error, beta);
      const double alpha = k1 / sum;
      for (Pending* p : members) {
        p->tm.alpha = alpha;
        p->tm.beta = beta;
        if (members.size() > 1) {
          p->tm.group_size = static_cast<int>(members.size());
          p->tm.group_kld = k[0];
        }
      }
    }
    progress(fmt::format("probe of {}{}", file.tensors()[group.front()].name,
                         group.size() > 1 ? fmt::format(" and {} more", group.size() - 1) : ""));
  }
  std::vector<bool> probed;
  for (auto& [i, p] : pending) {
    for (auto& c : p.tm.candidates) c.predicted = c.error > 0 ? p.tm.alpha * std::pow(c.error, p.tm.beta) : 0.0;
    m.tensors.push_back(std::move(p.tm));
    probed.push_back(p.probed);
  }
  if (opts.probe_stride > 1) interpolate_fits(m.tensors, probed);
  m.shards_merged = {opts.shard};
  m.seconds = seconds_since(start_time);
  return m;
}

Measurement measure_file(const GgufFile& file, const std::string& calibration_text, MeasureOptions opts,
                         int imatrix_chunks, ImportanceMatrix* collected) {
  // Measurement evaluates batches only (prefill's panel path reads rows unpacked): the decode
  // layouts would buy nothing, so the mapping keeps the file's layout (quantize --target-*
  // quantizes from this same mapping next, which also copes with interleaved matrices).
  const std::unique_ptr<Model> loaded = load_model(file, false);
  const Model& model = *loaded;
  const Tokenizer tok = Tokenizer::from_gguf(file);
  ImportanceMatrix local;
  if (!opts.imatrix) {
    ImatrixOptions io;
    io.n_ctx = opts.n_ctx;
    io.max_chunks = imatrix_chunks;
    io.threads = opts.threads;
    io.compute_ppl = false;
    io.f32_sums = false;
    io.process_output = true;  // the head is a matrix like the others: weigh its error too
    io.datasets = {opts.calibration_name};
    local = collect_imatrix(model, tok, calibration_text, io).matrix;
    local.source = opts.calibration_name + " (collected by mixq measure)";
    if (collected) *collected = local;
    opts.imatrix = collected ? collected : &local;
  }
  opts.header_bytes = plan_mode_header_bytes(file, opts.imatrix);
  return measure_model(file, model, tok, calibration_text, opts);
}

}  // namespace mixq
