#include "mixq/plan/measure.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>
#include <map>
#include <set>

#include <fmt/format.h>

#include "mixq/calib/imatrix_collect.h"
#include "mixq/engine/registry.h"
#include "mixq/eval/chunks.h"
#include "mixq/eval/scores.h"
#include "mixq/formats/half.h"
#include "mixq/io/outlier_columns.h"
#include "mixq/policy/policy.h"
#include "mixq/quantize/quantize_model.h"
#include "mixq/util/thread_pool.h"

namespace mixq {

namespace {


// Quantizes rows with the importance weights (as mixq quantize does), dequantizes them and returns
// the importance-weighted relative squared error; keeps the quantized bytes when `keep` is given.
// With outlier columns (`cols`), the quantizer sees them as zeros of weight 0 and the
// reconstruction takes their f16 values, as quantize --outliers writes and the engine reads them.
double quantize_and_measure(const float* x, int64_t rows, int64_t n, TypeId type, const float* importance,
                            ThreadPool& pool, std::vector<uint8_t>* keep, const std::vector<int32_t>* cols = nullptr) {
  const TypeTraits& t = type_traits(type);
  if (!t.fits_row(n)) throw std::runtime_error(fmt::format("type {} cannot hold rows of {}", t.name, n));
  const size_t rb = t.row_bytes(n);
  if (keep) keep->resize(static_cast<size_t>(rows) * rb);
  constexpr int64_t kRowsPerTask = 16;
  const int64_t tasks = (rows + kRowsPerTask - 1) / kRowsPerTask;
  std::vector<double> num(static_cast<size_t>(tasks)), den(static_cast<size_t>(tasks));
  pool.parallel_for(tasks, [&](int64_t task) {
    thread_local std::vector<uint8_t> q;
    thread_local std::vector<float> y, masked, masked_imp;
    q.resize(rb);
    y.resize(static_cast<size_t>(n));
    if (cols && importance) {
      masked_imp.assign(importance, importance + n);
      for (int32_t c : *cols) masked_imp[static_cast<size_t>(c)] = 0.0f;
    }
    double a = 0, b = 0;
    for (int64_t r = task * kRowsPerTask; r < std::min(rows, (task + 1) * kRowsPerTask); ++r) {
      const float* xr = x + static_cast<size_t>(r) * static_cast<size_t>(n);
      uint8_t* dst = keep ? keep->data() + static_cast<size_t>(r) * rb : q.data();
      if (cols) {
        masked.assign(xr, xr + n);
        for (int32_t c : *cols) masked[static_cast<size_t>(c)] = 0.0f;
        t.quantize_row(masked.data(), dst, n, importance ? masked_imp.data() : nullptr);
        t.dequantize_row(dst, y.data(), n);
        for (int32_t c : *cols) y[static_cast<size_t>(c)] = round_fp16(xr[c]);
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
  double a = 0, b = 0;
  for (size_t i = 0; i < num.size(); ++i) {
    a += num[i];
    b += den[i];
  }
  return b > 0 ? a / b : (a > 0 ? a : 0.0);
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

// Mean KL(base || model with `original` read as `probe`) over the scored rows (per row as kld.h
// computes it: scores.h's kl_row); the probe changes nothing before block `start`.
double probe_kld(const Model& model, const GgufTensor& original, const GgufTensor& probe, const BaseRun& base,
                 int start, int threads, AttentionMode attention, ThreadPool& pool) {
  const TextChunks& chunks = *base.chunks;
  const std::unique_ptr<Context> ctx = model.new_context(chunks.n_ctx, threads);
  ctx->set_attention(attention);
  ctx->override_weight(original, &probe);
  const int rows = chunks.rows_per_chunk(), V = model.n_vocab();
  double total = 0;
  for (int c = 0; c < chunks.n_chunks; ++c) {
    ctx->reset();
    const std::vector<float>& logits =
        start == 0 ? ctx->eval(chunks.input(c), true)
                   : ctx->eval_from_layer(start, base.layer_inputs[static_cast<size_t>(c)][static_cast<size_t>(start)].data(),
                                         chunks.n_ctx, true);
    std::vector<double> per_row(static_cast<size_t>(rows));
    std::vector<float> lq(static_cast<size_t>(rows) * V);
    pool.parallel_for(rows, [&](int64_t r) {
      const float* row = logits.data() + static_cast<size_t>(chunks.first() + r) * V;
      float* q = lq.data() + static_cast<size_t>(r) * V;
      LogSoftmax(row, V).all(q);
      const float* lb = base.log_probs[static_cast<size_t>(c)].data() + static_cast<size_t>(r) * V;
      per_row[static_cast<size_t>(r)] = kl_row(lb, q, V).kld;
    });
    for (double k : per_row) total += k;
  }
  return total / static_cast<double>(chunks.scored_tokens());
}

}  // namespace

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
  std::vector<size_t> todo;
  int quantizable = 0;
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
    if (quantizable++ % opts.n_shards == opts.shard) todo.push_back(i);
  }

  const TextChunks chunks = split_text(tok, calibration_text, opts.n_ctx, opts.chunks);
  chunks.check_vocabulary(model.n_vocab());
  m.chunks = chunks.n_chunks;
  m.scored_tokens = chunks.scored_tokens();
  const BaseRun base = run_base(model, chunks, opts.threads, opts.attention);
  ThreadPool pool(opts.threads);

  for (size_t k = 0; k < todo.size(); ++k) {
    if (opts.cancel && opts.cancel->load()) throw std::runtime_error("interrupted: no output was written");
    const GgufTensor& t = file.tensors()[todo[k]];
    TensorMeasure tm;
    tm.name = t.name;
    tm.shape = t.shape;
    tm.stored = t.type->id;
    tm.index = static_cast<int>(todo[k]);
    const int64_t n = t.row_length(), rows = t.n_rows();
    std::vector<float> x(static_cast<size_t>(rows * n));
    dequantize_rows(t.type->id, t.data, x.data(), rows, n);
    const float* imp = importance_of(opts.imatrix, t.name, n);
    // Outlier candidates: the columns quantize --outliers would keep (chosen once per tensor).
    std::vector<int32_t> cols;
    if (opts.outliers > 0 && t.shape.size() == 2 && n > opts.outliers) {
      cols = select_outlier_columns(x.data(), rows, n, imp, opts.outliers);
    }
    for (TypeId type : types) {
      const TypeTraits& tt = type_traits(type);
      if (!tt.fits_row(n)) continue;
      CandidateMeasure c;
      c.type = type;
      c.bytes = tt.row_bytes(n) * static_cast<uint64_t>(rows);
      c.error = type == t.type->id ? 0.0 : quantize_and_measure(x.data(), rows, n, type, imp, pool, nullptr);
      tm.candidates.push_back(c);
      if (!cols.empty() && type != t.type->id && can_keep_outlier_columns(t.shape, tt, opts.outliers)) {
        c.outliers = opts.outliers;
        c.outlier_bytes = outlier_bytes(c.outliers, rows);
        c.error = quantize_and_measure(x.data(), rows, n, type, imp, pool, nullptr, &cols);
        tm.candidates.push_back(c);
      }
    }
    if (tm.candidates.empty()) {
      throw std::runtime_error(fmt::format("no candidate type can hold the rows of '{}' ({} values)", t.name, n));
    }
    std::stable_sort(tm.candidates.begin(), tm.candidates.end(), [](const auto& a, const auto& b) {
      return a.bytes + a.outlier_bytes < b.bytes + b.outlier_bytes;
    });

    // Probes (among the candidates without outliers): the one with the largest error, and one
    // with about 1/16 of it.
    int p1 = -1, p2 = -1;
    for (size_t i = 0; i < tm.candidates.size(); ++i) {
      if (tm.candidates[i].outliers > 0) continue;
      if (tm.candidates[i].error > 0 && (p1 < 0 || tm.candidates[i].error > tm.candidates[static_cast<size_t>(p1)].error)) {
        p1 = static_cast<int>(i);
      }
    }
    if (p1 >= 0 && opts.probes == 2) {
      const double target = std::log(tm.candidates[static_cast<size_t>(p1)].error / 16);
      double best = INFINITY;
      for (size_t i = 0; i < tm.candidates.size(); ++i) {
        const double e = tm.candidates[i].error;
        if (tm.candidates[i].outliers > 0) continue;
        if (static_cast<int>(i) == p1 || e <= 0 || e > tm.candidates[static_cast<size_t>(p1)].error / 2) continue;
        if (std::abs(std::log(e) - target) < best) {
          best = std::abs(std::log(e) - target);
          p2 = static_cast<int>(i);
        }
      }
    }
    for (int p : {p1, p2}) {
      if (p < 0) continue;
      CandidateMeasure& c = tm.candidates[static_cast<size_t>(p)];
      std::vector<uint8_t> bytes;
      quantize_and_measure(x.data(), rows, n, c.type, imp, pool, &bytes);
      GgufTensor probe = t;
      probe.type = &type_traits(c.type);
      probe.data = bytes.data();
      probe.nbytes = bytes.size();
      c.kld = probe_kld(model, t, probe, base, start_layer.at(&t), opts.threads, opts.attention, pool);
    }
    // The fit: kld = alpha * error^beta through the probes.
    if (p1 >= 0) {
      const double e1 = tm.candidates[static_cast<size_t>(p1)].error, k1 = std::max(*tm.candidates[static_cast<size_t>(p1)].kld, 0.0);
      tm.beta = 1;
      if (p2 >= 0) {
        const double e2 = tm.candidates[static_cast<size_t>(p2)].error, k2 = *tm.candidates[static_cast<size_t>(p2)].kld;
        if (k1 > 0 && k2 > 0) tm.beta = std::clamp(std::log(k1 / k2) / std::log(e1 / e2), 0.5, 2.0);
      }
      tm.alpha = k1 / std::pow(e1, tm.beta);
    }
    for (auto& c : tm.candidates) c.predicted = c.error > 0 ? tm.alpha * std::pow(c.error, tm.beta) : 0.0;
    m.tensors.push_back(std::move(tm));
    if (opts.on_tensor) {
      opts.on_tensor({static_cast<int>(k + 1), static_cast<int>(todo.size()), t.name,
                      std::chrono::duration<double>(std::chrono::steady_clock::now() - start_time).count()});
    }
  }
  m.shards_merged = {opts.shard};
  m.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_time).count();
  return m;
}

Measurement measure_file(const GgufFile& file, const std::string& calibration_text, MeasureOptions opts,
                         int imatrix_chunks, ImportanceMatrix* collected) {
  const std::unique_ptr<Model> loaded = load_model(file);
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
