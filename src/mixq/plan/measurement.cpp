#include "mixq/plan/measurement.h"

#include <algorithm>
#include <cmath>
#include <set>
#include <stdexcept>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "mixq/formats/outliers.h"
#include "mixq/util/json_file.h"

namespace mixq {

namespace {

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
  if (c.dominated) j["dominated"] = true;
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
  j["error_rows"] = error_rows;
  j["probe_group"] = probe_group;
  j["probe_stride"] = probe_stride;
  if (block_proxy) j["block_proxy"] = true;
  j["probe_runs"] = probe_runs;
  j["scored_tokens"] = scored_tokens;
  j["types"] = types;
  j["shard"] = shard;
  j["n_shards"] = n_shards;
  j["shards_merged"] = shards_merged;
  j["seconds"] = seconds;
  if (!stage_seconds.empty()) j["stage_seconds"] = stage_seconds;
  if (!type_seconds.empty()) j["type_seconds"] = type_seconds;
  auto ts = nlohmann::ordered_json::array();
  for (const auto& t : tensors) {
    nlohmann::ordered_json e;
    e["name"] = t.name;
    e["shape"] = t.shape;
    e["stored"] = type_traits(t.stored).name;
    e["index"] = t.index;
    e["alpha"] = t.alpha;
    e["beta"] = t.beta;
    if (t.group_size > 1) {
      e["group_size"] = t.group_size;
      e["group_kld"] = t.group_kld;
    }
    if (t.interpolated()) e["interpolated_from_layers"] = {t.interpolated_from, t.interpolated_to};
    if (t.proxied()) {
      e["block_perturbation"] = t.block_perturbation;
      e["layer_gain"] = t.layer_gain;
    }
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
  // Measurements made before these settings existed: every row, one tensor per probe.
  m.error_rows = j.contains("error_rows") ? get<int>(j, "error_rows", origin) : 0;
  m.probe_group = j.contains("probe_group") ? get<int>(j, "probe_group", origin) : 1;
  m.probe_runs = j.contains("probe_runs") ? get<int>(j, "probe_runs", origin) : 0;
  m.probe_stride = j.contains("probe_stride") ? get<int>(j, "probe_stride", origin) : 1;
  if (m.probe_stride < 1) throw std::runtime_error(fmt::format("{}: probe_stride below 1", origin));
  m.block_proxy = j.contains("block_proxy") ? get<bool>(j, "block_proxy", origin) : false;
  if (m.error_rows < 0 || m.probe_group < 1 || m.probe_runs < 0) {
    throw std::runtime_error(fmt::format("{}: error_rows / probe_runs negative or probe_group below 1", origin));
  }
  m.scored_tokens = get<int64_t>(j, "scored_tokens", origin);
  m.types = get<std::vector<std::string>>(j, "types", origin);
  m.shard = get<int>(j, "shard", origin);
  m.n_shards = get<int>(j, "n_shards", origin);
  m.shards_merged = get<std::vector<int>>(j, "shards_merged", origin);
  m.seconds = get<double>(j, "seconds", origin);
  if (j.contains("stage_seconds")) m.stage_seconds = get<std::map<std::string, double>>(j, "stage_seconds", origin);
  if (j.contains("type_seconds")) m.type_seconds = get<std::map<std::string, double>>(j, "type_seconds", origin);
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
    if (e.contains("group_size")) {
      t.group_size = get<int>(e, "group_size", where);
      t.group_kld = get<double>(e, "group_kld", where);
    }
    if (e.contains("interpolated_from_layers")) {
      const auto& f = e["interpolated_from_layers"];
      if (!f.is_array() || f.size() != 2 || !f[0].is_number_integer() || !f[1].is_number_integer() || f[0].get<int>() < 0 ||
          f[1].get<int>() < f[0].get<int>()) {
        throw std::runtime_error(where + ": 'interpolated_from_layers' is not two increasing layers");
      }
      t.interpolated_from = f[0].get<int>();
      t.interpolated_to = f[1].get<int>();
    }
    if (e.contains("block_perturbation")) {
      t.block_perturbation = get<double>(e, "block_perturbation", where);
      t.layer_gain = get<double>(e, "layer_gain", where);
      if (!(t.block_perturbation >= 0) || !(t.layer_gain >= 0)) {
        throw std::runtime_error(where + ": 'block_perturbation' or 'layer_gain' is negative");
      }
    }
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
      if (ce.contains("dominated")) c.dominated = get<bool>(ce, "dominated", cw);
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
  m.stage_seconds.clear();
  m.type_seconds.clear();
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
        p.outliers != m.outliers || p.error_rows != m.error_rows || p.probe_group != m.probe_group ||
        p.probe_stride != m.probe_stride || p.block_proxy != m.block_proxy) {
      throw differs("settings");
    }
    if (p.calibration != m.calibration || p.imatrix != m.imatrix) throw differs("calibration text or imatrix");
    for (int s : p.shards_merged) {
      if (!seen.insert(s).second) throw std::runtime_error(fmt::format("cannot merge: shard {} appears twice", s));
    }
    m.seconds += p.seconds;
    if (&p != &parts.front()) m.probe_runs += p.probe_runs;
    for (const auto& [k, v] : p.stage_seconds) m.stage_seconds[k] += v;
    for (const auto& [k, v] : p.type_seconds) m.type_seconds[k] += v;
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
