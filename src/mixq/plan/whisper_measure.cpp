#include "mixq/plan/whisper_measure.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <map>
#include <tuple>

#include <fmt/format.h>

#include "mixq/engine/whisper_audio.h"
#include "mixq/engine/whisper_model.h"
#include "mixq/eval/scores.h"
#include "mixq/util/thread_pool.h"

namespace mixq {

namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// The reference run of one calibration utterance: what a probe restarts from and compares with.
struct ReferenceUtterance {
  std::vector<std::vector<float>> block_inputs;  // encoder residual stream entering each block, ln_post last
  WhisperAudioState audio;
  std::vector<int> tokens;       // prompt + greedy transcript
  std::vector<float> log_probs;  // scored rows x n_vocab
  size_t first = 0;              // row of `tokens` the scored rows start at
};

// Where a probe of `name` starts: an encoder block, n_audio_layer (after the encoder's blocks:
// the cross-attention keys and values read its output), or -1 (the decoder alone).
int probe_start(const std::string& name, int n_audio_layer) {
  int block = 0;
  if (std::sscanf(name.c_str(), "encoder.blocks.%d.", &block) == 1) return block;
  if (name.find(".cross_attn.key.") != std::string::npos || name.find(".cross_attn.value.") != std::string::npos) {
    return n_audio_layer;
  }
  return -1;
}

const float* importance_of(const ImportanceMatrix* im, const std::string& name, int64_t n) {
  if (!im) return nullptr;
  const std::vector<float>* w = im->find(name);
  if (!w || static_cast<int64_t>(w->size()) != n) return nullptr;
  return w->data();
}

std::vector<float> dequantized(const WhisperTensor& t) {
  const std::vector<uint8_t> bytes(t.data.begin(), t.data.end());  // the file packs tensors unaligned
  std::vector<float> x(static_cast<size_t>(t.elements()));
  dequantize_rows(t.type, bytes.data(), x.data(), t.rows(), t.ne[0]);
  return x;
}

}  // namespace

std::vector<TypeId> whisper_candidate_types() {
  std::vector<TypeId> out;
  for (const auto& t : all_types()) {
    if (whisper_loads_type(t.id) && t.can_quantize() && t.can_dequantize()) out.push_back(t.id);
  }
  return out;
}

std::vector<std::string> whisper_quantizable_tensors(const WhisperFile& file) {
  std::vector<std::string> out;
  for (const auto& t : file.tensors) {
    if (whisper_quantizes_tensor(t.name, t.ne.size())) out.push_back(t.name);
  }
  return out;
}

Measurement measure_whisper(const WhisperFile& file, const std::vector<WhisperTestItem>& calibration,
                            const WhisperMeasureOptions& opts) {
  const auto start_time = std::chrono::steady_clock::now();
  if (opts.n_shards < 1 || opts.shard < 0 || opts.shard >= opts.n_shards) {
    throw std::runtime_error(fmt::format("shard {}/{}: want 0 <= i < N", opts.shard, opts.n_shards));
  }
  if (opts.probes < 1 || opts.probes > 2) throw std::runtime_error("probes must be 1 or 2");
  if (opts.utterances < 0) throw std::runtime_error(fmt::format("utterances {}: want 0 (all) or more", opts.utterances));
  if (opts.error_rows < 0) throw std::runtime_error(fmt::format("error rows {}: want 0 (all rows) or more", opts.error_rows));
  if (calibration.empty()) throw std::runtime_error("whisper measure: the calibration set holds no utterances");
  if (file.tensors.empty()) {
    throw std::runtime_error(fmt::format("{}: the file holds no tensors (a header-only test file)", file.path().string()));
  }
  Measurement m;
  m.model = opts.model_name;
  m.model_bytes = std::filesystem::file_size(file.path());
  m.n_tensors = static_cast<int>(file.tensors.size());
  m.alignment = 1;  // whisper.cpp packs tensors without padding
  m.calibration = opts.calibration_name;
  m.imatrix = opts.imatrix ? opts.imatrix->source : "";
  m.n_ctx = file.hparams.n_audio_ctx;
  m.probes = opts.probes;
  m.error_rows = opts.error_rows;
  m.shard = opts.shard;
  m.n_shards = opts.n_shards;
  const std::vector<TypeId> types = opts.types.empty() ? whisper_candidate_types() : opts.types;
  for (TypeId t : types) {
    const TypeTraits& tt = type_traits(t);
    if (!whisper_loads_type(t) || !tt.can_quantize() || !tt.can_dequantize()) {
      throw std::runtime_error(fmt::format("candidate type {}: whisper.cpp does not load it (q4_0, q4_1, q5_0, q5_1, "
                                           "q8_0, q2_k .. q6_k, f16, f32)",
                                           tt.name));
    }
    m.types.push_back(tt.name);
  }

  // Sizes (see the top): the header is the file without its tensor data; the kept tensors are
  // written as quantize writes them (convolution kernels F16 in every quantized file).
  uint64_t data_bytes = 0;
  std::vector<size_t> todo;
  size_t quantizable = 0;
  for (size_t i = 0; i < file.tensors.size(); ++i) {
    const WhisperTensor& t = file.tensors[i];
    data_bytes += t.data.size();
    m.n_params += t.elements();
    if (!whisper_quantizes_tensor(t.name, t.ne.size())) {
      const TypeId kept = t.ne.size() == 3 ? whisper_stored_type(WhisperTensorRole::Conv, TypeId::Q8_0) : t.type;
      m.fixed_bytes += whisper_tensor_bytes(kept, t.ne);
      continue;
    }
    if (static_cast<int>(quantizable++ % static_cast<size_t>(opts.n_shards)) == opts.shard) todo.push_back(i);
  }
  m.fixed_bytes_unpadded = m.fixed_bytes;
  m.header_bytes = m.model_bytes - data_bytes;

  // The reference runs.
  auto t0 = std::chrono::steady_clock::now();
  WhisperModel model(file);
  const int n_vocab = model.n_vocab(), n_audio_layer = file.hparams.n_audio_layer;
  const size_t n_utt = opts.utterances == 0 ? calibration.size()
                                            : std::min(calibration.size(), static_cast<size_t>(opts.utterances));
  std::vector<ReferenceUtterance> refs(n_utt);
  for (size_t u = 0; u < n_utt; ++u) {
    ReferenceUtterance& r = refs[u];
    r.audio = model.encode(read_wav_16k_mono(calibration[u].audio), opts.threads, &r.block_inputs);
    std::vector<float> logits;
    const WhisperTranscript tr = model.decode_greedy(r.audio, opts.threads, opts.max_tokens, &logits);
    r.tokens = model.prompt();
    r.first = r.tokens.size() - 1;
    r.tokens.insert(r.tokens.end(), tr.tokens.begin(), tr.tokens.end());
    // The greedy steps' rows score the transcript's tokens and, when it ended, <|endoftext|> (a
    // transcript cut at max_tokens has no row past its last token).
    const size_t rows = std::min(logits.size() / static_cast<size_t>(n_vocab), r.tokens.size() - r.first);
    r.log_probs.resize(rows * static_cast<size_t>(n_vocab));
    for (size_t i = 0; i < rows; ++i) {
      LogSoftmax(logits.data() + i * n_vocab, n_vocab).all(r.log_probs.data() + i * n_vocab);
    }
    m.scored_tokens += static_cast<int64_t>(rows);
  }
  m.chunks = static_cast<int>(n_utt);
  m.stage_seconds["base"] = seconds_since(t0);

  ThreadPool pool(opts.threads);
  // Mean KL(reference || model with its current override) over every scored row.
  auto probe_kld = [&](int start) {
    double total = 0;
    for (const ReferenceUtterance& r : refs) {
      const size_t rows = r.log_probs.size() / static_cast<size_t>(n_vocab);
      if (rows == 0) continue;
      WhisperAudioState restarted;
      if (start >= 0) {
        restarted = model.encode_from(start, r.block_inputs[static_cast<size_t>(start)], opts.threads);
      }
      const std::vector<int> read(r.tokens.begin(), r.tokens.begin() + static_cast<std::ptrdiff_t>(r.first + rows));
      const std::vector<float> logits = model.forced_logits(start >= 0 ? restarted : r.audio, read, opts.threads);
      std::vector<double> per_row(rows);
      pool.parallel_for(static_cast<int64_t>(rows), [&](int64_t i) {
        thread_local std::vector<float> lq;
        lq.resize(static_cast<size_t>(n_vocab));
        LogSoftmax(logits.data() + (r.first + static_cast<size_t>(i)) * n_vocab, n_vocab).all(lq.data());
        per_row[static_cast<size_t>(i)] = kl_row(r.log_probs.data() + static_cast<size_t>(i) * n_vocab, lq.data(), n_vocab).kld;
      });
      for (double k : per_row) total += k;
    }
    return m.scored_tokens > 0 ? total / static_cast<double>(m.scored_tokens) : 0.0;
  };

  for (size_t step = 0; step < todo.size(); ++step) {
    if (opts.cancel && opts.cancel->load()) throw std::runtime_error("interrupted: no output was written");
    const WhisperTensor& t = file.tensors[todo[step]];
    TensorMeasure tm;
    tm.name = t.name;
    tm.shape = t.ne;
    tm.stored = t.type;
    tm.index = static_cast<int>(todo[step]);
    const int64_t n = t.ne[0], rows = t.rows();
    const std::vector<float> x = dequantized(t);
    const float* imp = importance_of(opts.imatrix, t.name, n);
    std::vector<TypeId> measured;
    for (TypeId type : types) {
      const TypeTraits& tt = type_traits(type);
      if (!tt.fits_row(n)) continue;
      CandidateMeasure c;
      c.type = type;
      c.bytes = whisper_tensor_bytes(type, t.ne);
      tm.candidates.push_back(c);
      if (type != t.type) measured.push_back(type);
    }
    if (tm.candidates.empty()) {
      throw std::runtime_error(fmt::format("no candidate type can hold the rows of '{}' ({} values)", t.name, n));
    }
    t0 = std::chrono::steady_clock::now();
    // The error on error_rows evenly spread rows (measure.h), the same rows for every type.
    std::vector<float> sampled;
    int64_t kept = rows;
    const float* xs = x.data();
    if (opts.error_rows > 0 && rows > opts.error_rows) {
      kept = opts.error_rows;
      sampled.resize(static_cast<size_t>(kept * n));
      for (int64_t i = 0; i < kept; ++i) {
        const int64_t r = (2 * i + 1) * rows / (2 * kept);
        std::copy_n(x.data() + r * n, n, sampled.data() + i * n);
      }
      xs = sampled.data();
    }
    const std::vector<double> errors =
        measured.empty() ? std::vector<double>{} : quantization_errors(xs, kept, n, measured, imp, pool);
    m.stage_seconds["quantize"] += seconds_since(t0);
    for (auto& c : tm.candidates) {
      for (size_t k = 0; k < measured.size(); ++k) {
        if (measured[k] == c.type) c.error = errors[k];
      }
    }
    std::stable_sort(tm.candidates.begin(), tm.candidates.end(),
                     [](const auto& a, const auto& b) { return a.bytes < b.bytes; });
    mark_dominated(tm.candidates);

    const auto [p1, p2] = probe_candidates(tm, opts.probes);
    double k[2] = {0, 0}, e[2] = {0, 0};
    bool have[2] = {false, false};
    for (int pi = 0; pi < 2; ++pi) {
      const int c = pi == 0 ? p1 : p2;
      if (c < 0) continue;
      CandidateMeasure& cand = tm.candidates[static_cast<size_t>(c)];
      t0 = std::chrono::steady_clock::now();
      std::vector<uint8_t> bytes;
      quantization_errors(x.data(), rows, n, {cand.type}, imp, pool, &bytes);
      std::vector<float> probe(x.size());
      dequantize_rows(cand.type, bytes.data(), probe.data(), rows, n);
      model.set_weight_override(t.name, std::move(probe));
      m.stage_seconds["probe_quantize"] += seconds_since(t0);
      t0 = std::chrono::steady_clock::now();
      try {
        k[pi] = probe_kld(probe_start(t.name, n_audio_layer));
      } catch (...) {
        model.clear_weight_overrides();
        throw;
      }
      model.clear_weight_overrides();
      m.stage_seconds["probe_eval"] += seconds_since(t0);
      ++m.probe_runs;
      cand.kld = k[pi];
      e[pi] = cand.error;
      have[pi] = true;
    }
    // The fit of measure.h: kld = alpha * error^beta through the probes.
    if (have[0]) {
      double beta = 1;
      const double k1 = std::max(k[0], 0.0);
      if (have[1] && k1 > 0 && k[1] > 0) beta = std::clamp(std::log(k1 / k[1]) / std::log(e[0] / e[1]), 0.5, 2.0);
      tm.alpha = k1 / std::pow(e[0], beta);
      tm.beta = beta;
    }
    for (auto& c : tm.candidates) c.predicted = c.error > 0 ? tm.alpha * std::pow(c.error, tm.beta) : 0.0;
    m.tensors.push_back(std::move(tm));
    if (opts.on_tensor) {
      opts.on_tensor({static_cast<int>(step + 1), static_cast<int>(todo.size()), t.name, seconds_since(start_time)});
    }
  }
  m.shards_merged = {opts.shard};
  m.seconds = seconds_since(start_time);
  return m;
}

}  // namespace mixq
