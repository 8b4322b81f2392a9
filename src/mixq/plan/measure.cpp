#include "mixq/plan/measure.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>
#include <map>
#include <set>

#include <fmt/format.h>

#include "mixq/eval/chunks.h"
#include "mixq/eval/scores.h"
#include "mixq/formats/half.h"
#include "mixq/io/outlier_columns.h"
#include "mixq/policy/policy.h"
#include "mixq/quantize/quantize_model.h"
#include "mixq/util/json_file.h"
#include "mixq/util/thread_pool.h"

namespace mixq {

namespace {

uint64_t align_up(uint64_t v, uint64_t a) { return (v + a - 1) / a * a; }

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

nlohmann::ordered_json candidate_json(const CandidateMeasure& c) {
  nlohmann::ordered_json j;
  j["type"] = type_traits(c.type).name;
  if (c.outliers > 0) {
    j["outliers"] = c.outliers;
    j["outlier_bytes"] = c.outlier_bytes;
  }
  j["bytes"] = c.bytes;
  j["error"] = c.error;
  j["predicted_kld"] = c.predicted;
  if (c.kld) j["measured_kld"] = *c.kld;
  return j;
}

template <typename T>
T get(const nlohmann::ordered_json& j, const char* key, const std::string& where) {
  if (!j.contains(key)) throw std::runtime_error(fmt::format("{}: '{}' is missing", where, key));
  try {
    return j.at(key).get<T>();
  } catch (const nlohmann::json::exception& e) {
    throw std::runtime_error(fmt::format("{}: '{}' has the wrong type ({})", where, key, e.what()));
  }
}

TypeId type_from_json(const nlohmann::ordered_json& j, const char* key, const std::string& where) {
  const auto name = get<std::string>(j, key, where);
  const TypeTraits* t = find_type(name);
  if (!t) throw std::runtime_error(fmt::format("{}: unknown type '{}'", where, name));
  return t->id;
}

}  // namespace

int64_t TensorMeasure::n_elements() const {
  int64_t n = 1;
  for (auto d : shape) n *= d;
  return n;
}

const CandidateMeasure* TensorMeasure::find(TypeId t, int outliers) const {
  for (const auto& c : candidates) {
    if (c.type == t && c.outliers == outliers) return &c;
  }
  return nullptr;
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
      m.fixed_bytes += align_up(t.nbytes, m.alignment);
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

nlohmann::ordered_json Measurement::to_json() const {
  nlohmann::ordered_json j;
  j["format"] = "mixq-measurement";
  j["version"] = 1;
  j["model"] = model;
  j["model_bytes"] = model_bytes;
  j["n_tensors"] = n_tensors;
  j["n_params"] = n_params;
  j["fixed_bytes"] = fixed_bytes;
  j["fixed_bytes_unpadded"] = fixed_bytes_unpadded;
  j["header_bytes"] = header_bytes;
  j["alignment"] = alignment;
  j["calibration"] = calibration;
  j["imatrix"] = imatrix;
  j["n_ctx"] = n_ctx;
  j["chunks"] = chunks;
  j["probes"] = probes;
  j["outliers"] = outliers;
  j["scored_tokens"] = scored_tokens;
  j["types"] = types;
  j["shard"] = shard;
  j["n_shards"] = n_shards;
  j["shards_merged"] = shards_merged;
  j["seconds"] = seconds;
  auto ts = nlohmann::ordered_json::array();
  for (const auto& t : tensors) {
    nlohmann::ordered_json e;
    e["name"] = t.name;
    e["shape"] = t.shape;
    e["stored"] = type_traits(t.stored).name;
    e["index"] = t.index;
    e["alpha"] = t.alpha;
    e["beta"] = t.beta;
    auto cs = nlohmann::ordered_json::array();
    for (const auto& c : t.candidates) cs.push_back(candidate_json(c));
    e["candidates"] = cs;
    ts.push_back(e);
  }
  j["tensors"] = ts;
  return j;
}

Measurement Measurement::from_json(const nlohmann::ordered_json& j, const std::string& origin) {
  if (!j.is_object() || j.value("format", "") != "mixq-measurement") {
    throw std::runtime_error(fmt::format("{}: not a mixq measurement (no \"format\": \"mixq-measurement\"); "
                                         "write one with mixq measure",
                                         origin));
  }
  if (j.value("version", 0) != 1) throw std::runtime_error(fmt::format("{}: unsupported measurement version", origin));
  Measurement m;
  m.model = get<std::string>(j, "model", origin);
  m.model_bytes = get<uint64_t>(j, "model_bytes", origin);
  m.n_tensors = get<int>(j, "n_tensors", origin);
  m.n_params = get<int64_t>(j, "n_params", origin);
  m.fixed_bytes = get<uint64_t>(j, "fixed_bytes", origin);
  m.fixed_bytes_unpadded = get<uint64_t>(j, "fixed_bytes_unpadded", origin);
  m.header_bytes = get<uint64_t>(j, "header_bytes", origin);
  m.alignment = get<uint32_t>(j, "alignment", origin);
  // Every padded size in the plan assumes GGUF's rule (a power of two); another number gives
  // sizes no file can have.
  if (m.alignment == 0 || (m.alignment & (m.alignment - 1)) != 0) {
    throw std::runtime_error(fmt::format("{}: alignment {} is not a power of two (GGUF alignments are 32, 64, ...)",
                                         origin, m.alignment));
  }
  m.calibration = get<std::string>(j, "calibration", origin);
  m.imatrix = get<std::string>(j, "imatrix", origin);
  m.n_ctx = get<int>(j, "n_ctx", origin);
  m.chunks = get<int>(j, "chunks", origin);
  m.probes = get<int>(j, "probes", origin);
  m.outliers = j.contains("outliers") ? get<int>(j, "outliers", origin) : 0;
  if (m.outliers < 0) throw std::runtime_error(fmt::format("{}: 'outliers' is negative", origin));
  m.scored_tokens = get<int64_t>(j, "scored_tokens", origin);
  m.types = get<std::vector<std::string>>(j, "types", origin);
  m.shard = get<int>(j, "shard", origin);
  m.n_shards = get<int>(j, "n_shards", origin);
  m.shards_merged = get<std::vector<int>>(j, "shards_merged", origin);
  m.seconds = get<double>(j, "seconds", origin);
  if (!j.contains("tensors") || !j["tensors"].is_array()) {
    throw std::runtime_error(fmt::format("{}: 'tensors' is missing or not a list", origin));
  }
  for (size_t i = 0; i < j["tensors"].size(); ++i) {
    const auto& e = j["tensors"][i];
    const std::string where = fmt::format("{}: tensors[{}]", origin, i);
    if (!e.is_object()) throw std::runtime_error(where + ": not an object");
    TensorMeasure t;
    t.name = get<std::string>(e, "name", where);
    t.shape = get<std::vector<int64_t>>(e, "shape", where);
    if (t.shape.empty()) throw std::runtime_error(where + ": empty shape");
    for (auto d : t.shape) {
      if (d <= 0) throw std::runtime_error(where + ": a dimension is not positive");
    }
    t.stored = type_from_json(e, "stored", where);
    t.index = get<int>(e, "index", where);
    t.alpha = get<double>(e, "alpha", where);
    t.beta = get<double>(e, "beta", where);
    if (!e.contains("candidates") || !e["candidates"].is_array() || e["candidates"].empty()) {
      throw std::runtime_error(where + ": 'candidates' is missing or empty");
    }
    for (size_t k = 0; k < e["candidates"].size(); ++k) {
      const auto& ce = e["candidates"][k];
      const std::string cw = fmt::format("{}.candidates[{}]", where, k);
      if (!ce.is_object()) throw std::runtime_error(cw + ": not an object");
      CandidateMeasure c;
      c.type = type_from_json(ce, "type", cw);
      c.bytes = get<uint64_t>(ce, "bytes", cw);
      c.error = get<double>(ce, "error", cw);
      c.predicted = get<double>(ce, "predicted_kld", cw);
      if (!std::isfinite(c.predicted) || c.predicted < 0) throw std::runtime_error(cw + ": predicted_kld is not a finite value >= 0");
      if (ce.contains("measured_kld")) c.kld = get<double>(ce, "measured_kld", cw);
      if (ce.contains("outliers")) {
        c.outliers = get<int>(ce, "outliers", cw);
        c.outlier_bytes = get<uint64_t>(ce, "outlier_bytes", cw);
        if (!can_keep_outlier_columns(t.shape, type_traits(c.type), c.outliers) ||
            c.outlier_bytes != outlier_bytes(c.outliers, t.n_elements() / t.shape[0])) {
          throw std::runtime_error(fmt::format("{}: {} outlier columns ({} bytes) do not fit shape {}", cw, c.outliers,
                                               c.outlier_bytes, fmt::join(t.shape, "x")));
        }
      }
      const TypeTraits& tt = type_traits(c.type);
      if (!tt.fits_row(t.shape[0]) || tt.row_bytes(t.shape[0]) * static_cast<uint64_t>(t.n_elements() / t.shape[0]) != c.bytes) {
        throw std::runtime_error(fmt::format("{}: {} bytes do not match type {} for shape {}", cw, c.bytes, tt.name,
                                             fmt::join(t.shape, "x")));
      }
      t.candidates.push_back(c);
    }
    m.tensors.push_back(std::move(t));
  }
  return m;
}

Measurement Measurement::load(const std::filesystem::path& path) {
  return from_json(read_json_file(path, "measurement"), path.string());
}

void Measurement::save(const std::filesystem::path& path) const { write_json_file(path, to_json()); }

Measurement merge_measurements(const std::vector<Measurement>& parts) {
  if (parts.empty()) throw std::runtime_error("nothing to merge");
  Measurement m = parts.front();
  if (parts.size() == 1 && static_cast<int>(m.shards_merged.size()) == m.n_shards) return m;
  m.tensors.clear();
  m.shards_merged.clear();
  m.seconds = 0;
  std::set<int> seen;
  std::set<std::string> names;
  for (const auto& p : parts) {
    auto differs = [&](const char* what) {
      return std::runtime_error(fmt::format("cannot merge: the parts differ in {} (measure every shard of one model "
                                            "with the same options)",
                                            what));
    };
    if (p.model_bytes != m.model_bytes || p.n_tensors != m.n_tensors || p.n_params != m.n_params) throw differs("model");
    if (p.n_shards != m.n_shards) throw differs("shard count");
    if (p.n_ctx != m.n_ctx || p.chunks != m.chunks || p.probes != m.probes || p.types != m.types ||
        p.outliers != m.outliers) {
      throw differs("settings");
    }
    if (p.calibration != m.calibration || p.imatrix != m.imatrix) throw differs("calibration text or imatrix");
    for (int s : p.shards_merged) {
      if (!seen.insert(s).second) throw std::runtime_error(fmt::format("cannot merge: shard {} appears twice", s));
    }
    m.seconds += p.seconds;
    m.header_bytes = std::max(m.header_bytes, p.header_bytes);
    for (const auto& t : p.tensors) {
      if (!names.insert(t.name).second) throw std::runtime_error(fmt::format("cannot merge: tensor '{}' appears twice", t.name));
      m.tensors.push_back(t);
    }
  }
  if (static_cast<int>(seen.size()) != m.n_shards) {
    std::string missing;
    for (int s = 0; s < m.n_shards; ++s) {
      if (!seen.count(s)) missing += fmt::format("{}{}", missing.empty() ? "" : ", ", s);
    }
    throw std::runtime_error(fmt::format("cannot merge: shards {} of {} are missing", missing, m.n_shards));
  }
  std::sort(m.tensors.begin(), m.tensors.end(), [](const auto& a, const auto& b) { return a.index < b.index; });
  m.shards_merged.assign(seen.begin(), seen.end());
  m.shard = 0;
  return m;
}

}  // namespace mixq

#include "mixq/calib/imatrix_collect.h"
#include "mixq/engine/registry.h"

namespace mixq {

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
