// Measuring how much each tensor's quantization costs, once, for every candidate type: the input of
// the bit allocation (plan.h).
//
// For every quantizable tensor t and candidate type T the measurement holds the bytes t takes in T
// and a predicted end-to-end loss: the mean KL divergence from the reference model, on calibration
// tokens, when t alone is stored in T. Running the model once per tensor and type would take hours
// on a real model, so the prediction is a cheap proxy calibrated by a few real runs:
//
//   error(t, T) = sum_rows sum_j w_j (x_j - q_j)^2 / sum_rows sum_j w_j x_j^2
//
// the importance-weighted relative error of the quantized tensor (w_j: the importance matrix, the
// mean squared input of column j, so error is the relative output error E||(W - Q) a||^2 /
// E||W a||^2 under independent inputs; unit weights where a tensor has no entry, as
// token_embd). The tensor is quantized with the importance weights as `mixq quantize --imatrix`
// would, and dequantized; by default on MeasureOptions::error_rows evenly spread rows (the same
// rows for every type, all candidates' row blocks in one parallel loop), since the error is a
// mean over rows. Candidates that another is no larger and no worse than are marked dominated.
//
// How much output error of tensor t costs at the model's output depends on where t sits, so the
// error is calibrated per tensor by real KL divergence: t is quantized to one or two probe types
// (among the candidates that are not dominated, the one with the largest error, and one with
// about 1/16 of it), the model is run on the calibration chunks from the layer that holds t (the
// residual stream entering every layer is cached from the reference run, so a probe of layer l
// skips layers 0 .. l-1, and the head runs on the scored rows only), and
//
//   predicted_kld(t, T) = alpha_t * error(t, T) ^ beta_t
//
// is fitted through the probes (beta_t = 1 with one probe; clamped to [0.5, 2]). The probe runs
// are the cost, so tensors of one kind in up to MeasureOptions::probe_group consecutive layers are
// probed together in one run, with one shared fit: sum over the group of alpha * error^beta equals
// the group's KLD (KL divergence is additive for small independent perturbations; the tests hold a
// group's KLD to the sum of its members' single probes). With MeasureOptions::probe_stride S > 1
// only layers 0, S, 2S, ... and the last are probed (one tensor per run), and every other layer's
// tensor takes a fit interpolated between the probed layers of its kind below and above it
// (interpolate_fits): the probe runs drop to about 1/S. With MeasureOptions::block_proxy a
// layer's tensors are not probed to the logits: each one's block alone is rerun on its cached input
// with the tensor in its probe type, and the relative perturbation of the state leaving the block
// (mean over tokens of ||y - y_ref||^2 / ||y_ref||^2), times the layer's gain, is its predicted KLD
// there; the gain is one full probe per layer (of its tensor with the largest perturbation) divided
// by that tensor's perturbation. The count of full runs then grows with the layers, not with the
// tensors (SmolLM2: 31 instead of 211), and what each tensor's fit measures is its own output
// change on real inputs, so a tensor whose weighted error understates it is not missed. Candidates with
// outlier columns (MeasureOptions::outliers) have their own exact error (the columns merged back)
// and share the tensor's fit; the probes are made without outliers. The scored
// positions and log-softmax are llama-perplexity's (second half of each chunk), as `mixq kld`.
//
// A measurement can be split over processes or machines (shard i of N measures the probe groups
// whose index modulo N is i, the groups formed over the whole model; with groups of one, the
// tensors whose quantizable index modulo N is i) and merged.
#pragma once

#include <atomic>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "mixq/calib/imatrix.h"
#include "mixq/engine/model.h"
#include "mixq/engine/tokenizer.h"
#include "mixq/formats/type_table.h"
#include "mixq/io/gguf.h"
#include "mixq/plan/measurement.h"

namespace mixq {

class ThreadPool;

struct MeasureProgress {
  int done = 0, total = 0;   // tensors
  std::string tensor;
  double seconds = 0;
};

struct MeasureOptions {
  int n_ctx = 512;
  int chunks = 8;               // calibration chunks the probes are scored on
  int probes = 2;               // 1 or 2 probe types per tensor
  int threads = 0;
  int shard = 0, n_shards = 1;
  std::vector<TypeId> types;    // empty: default_candidate_types()
  // > 0: every block type is also measured with this many outlier columns kept in f16 (the
  // quantize --outliers layout, chosen as it chooses them); the plan may then pick them per tensor.
  int outliers = 0;
  // Rows per tensor the candidates' errors are measured on (evenly spread; 0: every row). The
  // error is a mean over rows, so a few hundred rows estimate it to a few percent, and the same
  // rows serve every type, so the types' order is kept; the probes quantize whole tensors. Default:
  // every row, the exact path; 256 rows with one probe chunk (in `mixq measure --fast`) kept SmolLM2's
  // plans within 5% of its KLD (docs/BENCHMARKS.md, issue 16).
  int error_rows = 0;
  // Tensors of one kind (blk.*.attn_q, ...) in up to this many consecutive layers are probed in
  // one run and share one fit (1: every tensor alone). Layer 0, the last layer and tensors outside
  // the layers are always probed alone. Default 1: groups of 4 cost SmolLM2's plans 30-60% more
  // KLD (docs/BENCHMARKS.md, issue 16).
  int probe_group = 1;
  // Layers whose tensors are probed: 0, S, 2S, ... and the last (S = this stride; 1: every layer).
  // A tensor of another layer is not probed: its fit (alpha and beta) is interpolated, per kind,
  // between the probed layers of its kind below and above it (log-linear in alpha). The probes'
  // cost is roughly divided by S; tensors outside the layers are always probed. Needs
  // probe_group 1 and no shards (the interpolation needs the neighbours' probes). Default 1: on
  // SmolLM2 the sensitivity is not smooth over depth (attn_q/attn_k spike at single layers), and
  // stride 3 (with one chunk and 256 error rows) cost its plans 17-50% more KLD (BENCHMARKS).
  int probe_stride = 1;
  // The block proxy: a tensor of a layer is not probed to the logits. Its block alone is run on
  // the cached input with the tensor in its probe type (one block's cost instead of the rest of
  // the model), and the relative perturbation of the state leaving the block, times the layer's
  // gain, is its predicted KLD there; the gain (KLD per unit of perturbation) comes from one full
  // probe per layer, of its tensor with the largest perturbation. Per tensor, not shared over
  // depth: a tensor whose importance-weighted error understates its output change (SmolLM2's
  // blk.11.ffn_down) shows it in the perturbation. One probe type per tensor (beta 1); needs
  // probe_group 1, probe_stride 1 and no shards (a layer's gain needs all its tensors). Default
  // off (the exact path); `mixq measure --fast` turns it on: on SmolLM2 with one chunk and 256
  // error rows its plans scored within 5% of the exact path's KLD at 8x less work (BENCHMARKS).
  bool block_proxy = false;
  // Probes restart from the tensor's layer on the reference run's cached state (false: from the
  // tokens; the same figures, slower: for tests).
  bool restart_from_layer = true;
  const ImportanceMatrix* imatrix = nullptr;  // null: unit weights everywhere
  std::string calibration_name, model_name;
  uint64_t header_bytes = 0;    // filled by the caller from the output metadata it will write
  AttentionMode attention = AttentionMode::kLlamaCppF16;
  std::function<void(const MeasureProgress&)> on_tensor;
  const std::atomic<bool>* cancel = nullptr;
};

// Every weight type mixq can both quantize and decode, llama.cpp's and mixq's own, except those
// that only make sense for models trained for them (ternary) and activation-only types (Q8_1, Q8_K).
std::vector<TypeId> default_candidate_types();

// Marks the candidates another one of the same tensor dominates: no more bytes (outlier bytes
// included) and no more error, one of the two strictly less.
void mark_dominated(std::vector<CandidateMeasure>& candidates);

// The importance-weighted relative squared error (the top) of `x` (rows x n) quantized to each of
// `types` with the importance weights (null: unit weights), all types' row blocks in one parallel
// loop; with `keep`, the quantized bytes of types[0] are left there. Throws std::runtime_error for a
// type that cannot hold rows of n.
std::vector<double> quantization_errors(const float* x, int64_t rows, int64_t n, const std::vector<TypeId>& types,
                                        const float* importance, ThreadPool& pool, std::vector<uint8_t>* keep = nullptr);

// The probe candidates of a measured tensor (candidates by increasing bytes, dominated ones
// marked), as indices into tm.candidates (-1: none): among the candidates without outliers that are
// not dominated, the one with the largest error, and with probes == 2 the one whose error is
// nearest 1/16 of it (at most half of it).
std::pair<int, int> probe_candidates(const TensorMeasure& tm, int probes);

// The probe groups of a model's quantizable tensors (names in file order; indices into names):
// tensors of one kind in layers 1 + G*j .. G*(j+1) together (G = group), every tensor of layer 0,
// of layer n_layer - 1 and outside the layers alone. Throws std::runtime_error for group < 1.
std::vector<std::vector<size_t>> probe_groups(const std::vector<std::string>& names, int n_layer, int group);

// The layers probe_stride S probes in a model of n_layer layers: 0, S, 2S, ... and n_layer - 1.
// Throws std::runtime_error for S < 1.
bool is_probed_layer(int layer, int n_layer, int stride);

// Fills the fit of every tensor of `tensors` marked in `probed` false and inside the layers
// (names blk.L.*) from the probed tensors of its kind (same name but for L) in the nearest layers
// below and above: alpha log-linearly, beta linearly in the layer; the nearest one's where only
// one side has a probed tensor with alpha > 0; left as it is where neither has. Records the two
// layers (TensorMeasure::interpolated_from/_to) and recomputes its candidates' predicted KLDs.
void interpolate_fits(std::vector<TensorMeasure>& tensors, const std::vector<bool>& probed);

// Measures every quantizable tensor of the shard. Throws std::runtime_error for a model the engine
// cannot run, a text shorter than two contexts, or an unknown type.
Measurement measure_model(const GgufFile& file, const Model& model, const Tokenizer& tok,
                          const std::string& calibration_text, const MeasureOptions& opts);


// What `mixq measure` and the one-step `mixq quantize --target-bpw -f` run: the engine's model and
// tokenizer from `file`; an importance matrix collected from the text's first `imatrix_chunks`
// chunks (0: all) unless opts.imatrix is set (the collected one is left in *collected); the header
// bound of a plan-mode output; then measure_model.
Measurement measure_file(const GgufFile& file, const std::string& calibration_text, MeasureOptions opts,
                         int imatrix_chunks, ImportanceMatrix* collected);

}  // namespace mixq
