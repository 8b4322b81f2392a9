// A measurement (measure.h): for every quantizable tensor of a model and every candidate type, the
// bytes and the predicted KL divergence, with the settings it was made with; its JSON form
// (docs/ARCHITECTURE.md, "measurement.json") and the merge of shards.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "mixq/formats/type_table.h"
#include "mixq/io/gguf.h"

namespace mixq {

struct CandidateMeasure {
  TypeId type = TypeId::F32;
  int outliers = 0;         // outlier columns kept in f16 beside the tensor (formats/outliers.h)
  uint64_t bytes = 0;       // the tensor's data in this type (without alignment padding)
  // With outliers: the two companion tensors' data (K * 4 + K * rows * 2), not in `bytes`.
  uint64_t outlier_bytes = 0;
  double error = 0;         // importance-weighted relative squared error (see the top)
  double predicted = 0;     // predicted mean KLD with this tensor alone in this type
  std::optional<double> kld;  // the measured mean KLD, for the probe types (tensors probed alone)
  // Another candidate of the tensor is no larger and no worse (and one of the two strictly): the
  // plan never needs this one, and it is never a probe type. Kept so that rules can still name it.
  bool dominated = false;
};

struct TensorMeasure {
  std::string name;
  std::vector<int64_t> shape;
  TypeId stored = TypeId::F32;
  int index = 0;            // position among the file's tensors
  double alpha = 0, beta = 1;
  // Probed together with others of its kind (measure.h): how many, and the group's measured KLD
  // (0 / unset when probed alone).
  int group_size = 0;
  double group_kld = 0;
  // Not probed (MeasureOptions::probe_stride): alpha and beta interpolated from the probed layers
  // of its kind below and above (equal when only one side was probed).
  int interpolated_from = -1, interpolated_to = -1;
  bool interpolated() const { return interpolated_from >= 0; }
  // Fitted by the block proxy (MeasureOptions::block_proxy): the relative perturbation of the
  // state leaving its block at the probe type, and its layer's gain (KLD per unit of it, from one
  // full probe); alpha = gain * perturbation / error there. Negative: not proxied.
  double block_perturbation = -1, layer_gain = -1;
  bool proxied() const { return block_perturbation >= 0; }
  std::vector<CandidateMeasure> candidates;  // by increasing bytes

  int64_t n_elements() const;
  const CandidateMeasure* find(TypeId t, int outliers = 0) const;
};

struct Measurement {
  // The model and the settings (checked when shards are merged).
  std::string model;              // file name as given
  uint64_t model_bytes = 0;
  int n_tensors = 0;              // all tensors of the file
  int64_t n_params = 0;           // all tensors' elements (bits per weight are over these)
  uint64_t fixed_bytes = 0;       // tensors that are never quantized (norms): data, padded
  uint64_t fixed_bytes_unpadded = 0;
  uint64_t header_bytes = 0;      // the output header without mixq.extension_types, unpadded
  uint32_t alignment = kGgufDefaultAlignment;
  std::string calibration;        // the text's file name
  std::string imatrix;            // the importance matrix's source ("" when computed here)
  int n_ctx = 0, chunks = 0, probes = 0;
  int outliers = 0;               // K of the outlier candidates (0: none measured)
  int error_rows = 0;             // rows per tensor the errors were measured on (0: all)
  int probe_group = 1;            // tensors of one kind probed together
  int probe_stride = 1;           // layers probed: 0, S, 2S, ..., the last (the rest interpolated)
  bool block_proxy = false;       // layers' tensors fitted by the block proxy (measure.h)
  int probe_runs = 0;             // probe forward runs made (each over every chunk)
  int64_t scored_tokens = 0;
  std::vector<std::string> types;  // candidate types
  int shard = 0, n_shards = 1;
  std::vector<int> shards_merged;  // after a merge: the shards it holds
  double seconds = 0;
  // Where the time went (the cost model in docs/BENCHMARKS.md): seconds per stage ("base",
  // "quantize", "probe_quantize", "probe_eval") and the quantize-and-error seconds per candidate
  // type; summed over merged shards. Informational: nothing reads them back into a decision.
  std::map<std::string, double> stage_seconds, type_seconds;
  std::vector<TensorMeasure> tensors;  // quantizable tensors measured, in file order

  nlohmann::ordered_json to_json() const;
  static Measurement from_json(const nlohmann::ordered_json& j, const std::string& origin);
  // Reads a measurement file; throws std::runtime_error naming the file and what is wrong.
  static Measurement load(const std::filesystem::path& path);
  // Writes to a temporary file and renames it.
  void save(const std::filesystem::path& path) const;
};

// Merges shards of one measurement (same model, settings and shard count; each shard once).
// Throws std::runtime_error naming the difference or the missing shards.
Measurement merge_measurements(const std::vector<Measurement>& parts);

}  // namespace mixq
