#include "mixq/quantize/quantize_model.h"

#include <algorithm>
#include <chrono>
#include <set>
#include <map>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <re2/re2.h>

#include "mixq/engine/repack.h"
#include "mixq/formats/half.h"
#include "mixq/io/outlier_columns.h"
#include "mixq/policy/presets.h"
#include "mixq/util/thread_pool.h"

namespace mixq {

namespace {

constexpr int64_t kChunkValues = 1 << 16;  // values per parallel work item
constexpr int64_t kSliceBytes = 4 << 20;   // output bytes quantized before they are written

int64_t meta_int(const GgufFile& f, const std::string& key, int64_t fallback) {
  const GgufValue* v = f.find(key);
  if (!v) return fallback;
  if (v->is_integer()) return v->as_int();
  // Some models store per-layer head counts as arrays; the policy needs one figure.
  if (v->type() == GgufValueType::ARRAY && !v->as_array().empty() && v->as_array()[0].is_integer()) {
    return v->as_array()[0].as_int();
  }
  return fallback;
}

// llama.cpp's general.file_type for a model that is mostly `t` (LLAMA_FTYPE_MOSTLY_*).
std::optional<uint32_t> llama_ftype_for(TypeId t) {
  const int f = type_traits(t).llama_ftype;
  return f < 0 ? std::nullopt : std::optional<uint32_t>(static_cast<uint32_t>(f));
}

std::string shape_string(const std::vector<int64_t>& shape) { return fmt::format("{}", fmt::join(shape, "x")); }

nlohmann::ordered_json policy_json(const QuantizeOptions& opts) {
  const PolicyOptions& p = opts.policy;
  nlohmann::ordered_json j;
  j["requested"] = opts.type_label;
  j["default_type"] = type_traits(p.default_type).name;
  if (!p.preset.empty()) j["preset"] = p.preset;
  auto rules = nlohmann::ordered_json::array();
  for (const auto* list : {&p.tensor_type_rules, &p.config_rules, &p.layer_rules}) {
    for (const auto& r : *list) rules.push_back({{"rule", r.origin}, {"type", type_traits(r.type).name}});
  }
  j["rules"] = rules;
  if (p.output_tensor_type) j["output_tensor_type"] = type_traits(*p.output_tensor_type).name;
  if (p.token_embedding_type) j["token_embedding_type"] = type_traits(*p.token_embedding_type).name;
  j["pure"] = p.pure;
  j["leave_output_tensor"] = p.leave_output_tensor;
  j["imatrix"] = opts.imatrix ? opts.imatrix->source : "";
  if (!p.plan_label.empty()) j["plan"] = p.plan_label;
  if (opts.outlier_columns > 0) {
    j["outliers"] = {{"columns", opts.outlier_columns}, {"tensors", opts.outlier_tensors}};
  }
  if (!opts.calibration.is_default()) j["calib"] = opts.calibration.to_string();
  return j;
}

// Which planned tensors keep outlier columns, and how many: a plan's choice per tensor
// (opts.plan_outliers), or --outliers K for every matrix that can keep them (and that
// --outlier-tensors finds). The companions' bytes go into the plan.
void plan_outliers(const GgufFile& in, const QuantizeOptions& opts, std::vector<TensorPlan>& plans) {
  if (has_outlier_columns(in)) {
    throw PolicyError(
        "the input keeps outlier columns beside its tensors (mixq quantize --outliers): quantize the model it was "
        "made from instead");
  }
  const bool from_plan = !opts.plan_outliers.empty();
  if (opts.outlier_columns > 0 && from_plan) {
    throw PolicyError("the plan decides the outlier columns per tensor: --outliers cannot be combined with it");
  }
  if (opts.outlier_columns <= 0 && !from_plan) return;
  if (opts.policy.compat_llamacpp) {
    throw PolicyError("outlier columns are tensors llama.cpp does not load: they cannot be combined with --compat "
                      "llama.cpp");
  }
  std::unique_ptr<RE2> re;
  if (!opts.outlier_tensors.empty()) {
    re = std::make_unique<RE2>(opts.outlier_tensors, RE2::Quiet);
    if (!re->ok()) {
      throw PolicyError(fmt::format("--outlier-tensors '{}' is not a valid regular expression: {}",
                                    opts.outlier_tensors, re->error()));
    }
  }
  size_t found = 0;
  for (auto& p : plans) {
    int k = opts.outlier_columns;
    if (from_plan) {
      const auto it = opts.plan_outliers.find(p.tensor.name);
      if (it == opts.plan_outliers.end()) continue;
      ++found;
      k = it->second;
    } else if (re && !RE2::PartialMatch(p.tensor.name, *re)) {
      continue;
    }
    const bool can = p.quantize && p.type != p.tensor.stored_type &&
                     can_keep_outlier_columns(p.tensor.shape, type_traits(p.type), k);
    if (!can) {
      if (!from_plan) continue;
      throw PolicyError(fmt::format("the plan keeps {} outlier columns of '{}', which is not a 2-D matrix quantized "
                                    "to a block type with longer rows: was the plan made for another model?",
                                    k, p.tensor.name));
    }
    p.outliers = k;
    p.outlier_bytes = outlier_bytes(k, p.tensor.shape[1]);
  }
  if (found != opts.plan_outliers.size()) {
    throw PolicyError("the plan keeps outlier columns of tensors this model does not have");
  }
}

QuantizeReport make_report(const GgufFile& in, const QuantizeOptions& opts) {
  const auto tensors = tensor_descs(in);
  QuantizeReport rep;
  rep.plans = plan_types(tensors, model_info_from_gguf(in, tensors), opts.policy);
  plan_outliers(in, opts, rep.plans);
  rep.threads = resolve_threads(opts.threads);
  for (size_t i = 0; i < rep.plans.size(); ++i) {
    const auto& t = in.tensors()[i];
    rep.parameters += t.n_elements();
    rep.input_tensor_bytes += t.nbytes;
    rep.output_tensor_bytes += rep.plans[i].bytes + rep.plans[i].outlier_bytes;
    rep.outlier_bytes += rep.plans[i].outlier_bytes;
  }
  if (opts.outlier_columns > 0 && rep.outlier_bytes == 0) {
    rep.warnings.push_back("--outliers: no tensor qualified (only 2-D matrices quantized to a block type that "
                           "--outlier-tensors finds)");
  }
  for (const auto* list : {&opts.policy.tensor_type_rules, &opts.policy.config_rules, &opts.policy.layer_rules}) {
    for (const auto& r : *list) {
      if (r.hits == 0) rep.warnings.push_back(fmt::format("rule '{}' matched no tensor", r.origin));
    }
  }
  if (!opts.calibration.is_default()) {
    std::set<std::string> without;
    for (const auto& p : rep.plans) {
      const TypeTraits& t = type_traits(p.type);
      if (p.quantize && t.quantized && !t.quantize_row_calib) without.insert(t.name);
    }
    if (!without.empty()) {
      rep.warnings.push_back(fmt::format("--calib {} applies to nf4, i8_row, i8_mm, lb3 and lb2; {} keep their own "
                                         "scale search",
                                         opts.calibration.to_string(), fmt::join(without, ", ")));
    }
  }
  if (opts.imatrix) {
    int missing = 0;
    for (const auto& p : rep.plans) {
      if (p.quantize && type_traits(p.type).quantized && !opts.imatrix->find(p.tensor.name)) ++missing;
    }
    if (missing) {
      rep.warnings.push_back(fmt::format("the importance matrix has no entry for {} quantized tensors: they are "
                                         "quantized without one",
                                         missing));
    }
  }
  return rep;
}

void set_output_metadata(GgufWriter& w, const GgufFile& in, const QuantizeOptions& opts) {
  w.copy_metadata(in);
  w.set("general.quantization_version", GgufValue::u32(2));
  std::optional<uint32_t> ftype;
  if (auto preset = find_preset(opts.policy.preset.empty() ? opts.type_label : opts.policy.preset)) {
    ftype = preset->llama_ftype;
  } else {
    ftype = llama_ftype_for(opts.policy.default_type);
  }
  if (ftype) {
    w.set("general.file_type", GgufValue::u32(*ftype));
  } else {
    w.remove("general.file_type");
  }
  int k = opts.outlier_columns;
  for (const auto& [name, n] : opts.plan_outliers) k = std::max(k, n);
  if (k > 0) w.set(std::string(kOutlierColumnsKey), GgufValue::u32(static_cast<uint32_t>(k)));
  w.set("mixq.quantize.type", GgufValue::string(opts.type_label));
  w.set("mixq.quantize.policy", GgufValue::string(policy_json(opts).dump()));
  if (opts.imatrix) {
    // The keys llama-quantize writes, so tools that read them see where the imatrix came from.
    w.set("quantize.imatrix.file", GgufValue::string(opts.imatrix->source));
    if (!opts.imatrix->datasets.empty()) {
      w.set("quantize.imatrix.dataset", GgufValue::string(opts.imatrix->datasets.front()));
    }
    w.set("quantize.imatrix.entries_count", GgufValue::i32(static_cast<int32_t>(opts.imatrix->weights.size())));
    w.set("quantize.imatrix.chunks_count", GgufValue::i32(static_cast<int32_t>(opts.imatrix->chunk_count)));
  }
}

// The importance weights for rows [r0, r0 + n) of a tensor, or null.
const float* importance_for(const ImportanceMatrix* im, const GgufTensor& t, int64_t row) {
  if (!im) return nullptr;
  const std::vector<float>* w = im->find(t.name);
  if (!w) return nullptr;
  const int64_t n = t.row_length();
  if (static_cast<int64_t>(w->size()) == n) return w->data();
  // 3-D expert tensors: one slice of n weights per expert (rows of expert e are e*ne1 ... ).
  if (t.shape.size() == 3 && static_cast<int64_t>(w->size()) == n * t.shape[2]) {
    return w->data() + (row / t.shape[1]) * n;
  }
  throw PolicyError(fmt::format("the importance matrix for '{}' has {} values; the tensor has rows of {}", t.name,
                                w->size(), n));
}

// The tensor and, with outlier columns, its two companion tensors right after it.
void declare_tensor(GgufWriter& w, const TensorPlan& p) {
  w.add_tensor(p.tensor.name, p.tensor.shape, p.type);
  if (p.outliers > 0) {
    w.add_tensor(outlier_cols_name(p.tensor.name), {p.outliers}, TypeId::I32);
    w.add_tensor(outlier_vals_name(p.tensor.name), {p.outliers, p.tensor.shape[1]}, TypeId::F16);
  }
}

}  // namespace

std::vector<TensorDesc> tensor_descs(const GgufFile& f) {
  std::vector<TensorDesc> out;
  out.reserve(f.tensors().size());
  for (const auto& t : f.tensors()) out.push_back({t.name, t.shape, t.type->id});
  return out;
}

ModelInfo model_info_from_gguf(const GgufFile& f, const std::vector<TensorDesc>& tensors) {
  std::string arch;
  if (const auto* a = f.find("general.architecture"); a && a->type() == GgufValueType::STRING) arch = a->as_string();
  const int n_layers = static_cast<int>(meta_int(f, arch + ".block_count", 0));
  const int n_head = static_cast<int>(meta_int(f, arch + ".attention.head_count", 0));
  const int n_head_kv = static_cast<int>(meta_int(f, arch + ".attention.head_count_kv", n_head));
  const int n_expert = static_cast<int>(meta_int(f, arch + ".expert_count", 0));
  return model_info_from_tensors(tensors, arch, n_layers, n_head, n_head_kv, n_expert);
}

QuantizeReport plan_model(const GgufFile& in, const QuantizeOptions& opts) {
  QuantizeReport rep = make_report(in, opts);
  GgufWriter sizing = GgufWriter::sizing_only(in.alignment());
  set_output_metadata(sizing, in, opts);
  for (const auto& p : rep.plans) declare_tensor(sizing, p);
  rep.output_file_bytes = sizing.planned_file_size();
  return rep;
}

uint64_t plan_mode_header_bytes(const GgufFile& in, const ImportanceMatrix* imatrix) {
  QuantizeOptions opts;
  opts.type_label = "plan";
  opts.policy.default_type = TypeId::IQ4_NL;          // the longest type name a plan's default gets
  opts.policy.plan_label = std::string(32, 'x');      // plan labels are at most 32 characters
  opts.imatrix = imatrix;
  opts.policy.has_imatrix = imatrix != nullptr;
  GgufWriter sizing = GgufWriter::sizing_only(in.alignment());
  set_output_metadata(sizing, in, opts);
  sizing.set("general.file_type", GgufValue::u32(0));  // present or not, count it
  for (const auto& t : in.tensors()) sizing.add_tensor(t.name, t.shape, TypeId::F32);
  return sizing.planned_header_bytes();
}

QuantizeReport quantize_model(const GgufFile& in, const std::filesystem::path& out, const QuantizeOptions& opts) {
  const auto start = std::chrono::steady_clock::now();
  QuantizeReport rep = make_report(in, opts);
  GgufWriter w(out, in.alignment());
  set_output_metadata(w, in, opts);
  for (const auto& p : rep.plans) declare_tensor(w, p);

  // Loops here come milliseconds apart: a worker spinning between them would only keep the
  // output's writer thread from a core (ThreadPool's spin is for token generation's loops).
  ThreadPool pool(opts.threads, 0);
  // Each slice is copied into the output by one more item of the next slice's loop while the
  // other threads quantize, not between loops where every other thread would wait for the copy
  // (the slices alternate between two buffers).
  std::vector<uint8_t> buffers[2];
  size_t slices = 0;
  std::span<const uint8_t> pending;  // the last slice, not yet in the output
  const auto write_pending = [&] {
    if (!pending.empty()) w.write_tensor_part(pending);
    pending = {};
  };
  for (size_t i = 0; i < rep.plans.size(); ++i) {
    if (opts.cancel && opts.cancel->load()) throw QuantizeCancelled();
    const TensorPlan& p = rep.plans[i];
    // A matrix a model of this mapping interleaved for decode (engine/repack.h; quantize
    // --target-* measures on the file it quantizes): read as the file stores it.
    GgufTensor unpacked;
    std::vector<uint8_t> unpacked_bytes;
    if (kernels::interleaved(in.tensors()[i])) {
      unpacked = in.tensors()[i];
      unpacked_bytes.resize(static_cast<size_t>(unpacked.nbytes));
      kernels::unpack_rows(unpacked.type->id, unpacked.data, unpacked.n_rows(), unpacked.row_length(), 0, unpacked.n_rows(),
                           unpacked_bytes.data());
      unpacked.data = unpacked_bytes.data();
    }
    const GgufTensor& t = unpacked_bytes.empty() ? in.tensors()[i] : unpacked;
    write_pending();
    if (p.type == t.type->id) {
      w.write_tensor_data(t.bytes());  // kept as stored: copied straight from the mapping
    } else {
      const TypeTraits& from = *t.type;
      const TypeTraits& to = type_traits(p.type);
      const int64_t n = t.row_length(), rows = t.n_rows();
      const int64_t rows_per_chunk = std::max<int64_t>(1, kChunkValues / n);
      const int64_t chunks = (rows + rows_per_chunk - 1) / rows_per_chunk;
      const size_t in_row = from.row_bytes(n), out_row = to.row_bytes(n);
      const bool calibrated = !opts.calibration.is_default() && to.quantize_row_calib != nullptr;
      // Outlier columns are chosen on the whole tensor (widened to F32 first when stored otherwise),
      // kept in F16, and zeroed with importance 0 in the rows the quantizer sees.
      std::vector<float> widened;
      std::vector<int32_t> cols;
      std::vector<uint16_t> vals;
      if (p.outliers > 0) {
        const float* all = reinterpret_cast<const float*>(t.data);
        if (from.id != TypeId::F32) {
          widened.resize(static_cast<size_t>(rows * n));
          dequantize_rows(from.id, t.data, widened.data(), rows, n);
          all = widened.data();
        }
        cols = select_outlier_columns(all, rows, n, importance_for(opts.imatrix, t, 0), p.outliers);
        vals.resize(static_cast<size_t>(rows) * cols.size());
        for (int64_t r = 0; r < rows; ++r) {
          for (size_t k = 0; k < cols.size(); ++k) vals[static_cast<size_t>(r) * cols.size() + k] = fp32_to_fp16(all[r * n + cols[k]]);
        }
      }
      // Quantized and written slice by slice: a buffer of a few MB stays in the cache for the
      // copy into the file and is faulted in once, not once per tensor size.
      const int64_t slice_chunks =
          std::max<int64_t>(1, kSliceBytes / static_cast<int64_t>(static_cast<size_t>(rows_per_chunk) * out_row));
      for (int64_t c0 = 0; c0 < chunks; c0 += slice_chunks) {
        const int64_t c1 = std::min(chunks, c0 + slice_chunks);
        const int64_t row0 = c0 * rows_per_chunk, row1 = std::min(rows, c1 * rows_per_chunk);
        std::vector<uint8_t>& buffer = buffers[slices++ % 2];
        buffer.resize(std::max(buffer.size(), static_cast<size_t>(row1 - row0) * out_row));
        const int64_t copy = pending.empty() ? 0 : 1;
        pool.parallel_for(copy + (c1 - c0), [&](int64_t item) {
          if (item < copy) return write_pending();
          if (opts.cancel && opts.cancel->load()) throw QuantizeCancelled();
          const int64_t c = c0 + item - copy;
          const int64_t r0 = c * rows_per_chunk, r1 = std::min(rows, r0 + rows_per_chunk);
          // The chunk's stored rows, read from the file into this thread's buffer (GgufFile::copy_out:
          // faulting the mapping's pages in and unmapping them again costs more than the copy).
          thread_local std::vector<float> input;  // floats: F32 rows are read in place from it
          const uint8_t* stored = nullptr;
          if (widened.empty()) {
            const size_t bytes = static_cast<size_t>(r1 - r0) * in_row;
            input.resize((bytes + sizeof(float) - 1) / sizeof(float));
            in.copy_out(t.data + static_cast<size_t>(r0) * in_row, bytes, input.data());
            stored = reinterpret_cast<const uint8_t*>(input.data());
          }
          // The chunk's rows in one call where that writes the same bytes (TypeTraits::block_local).
          if (to.block_local && from.id == TypeId::F32 && cols.empty() && !calibrated &&
              importance_for(opts.imatrix, t, r0) == nullptr) {
            to.quantize_row(input.data(), buffer.data() + static_cast<size_t>(r0 - row0) * out_row, n * (r1 - r0), nullptr);
            return;
          }
          for (int64_t r = r0; r < r1; ++r) {
            const uint8_t* src = stored != nullptr ? stored + static_cast<size_t>(r - r0) * in_row : nullptr;
            const float* x;
            thread_local std::vector<float> row;  // inputs that are not F32 are widened row by row
            if (!widened.empty()) {
              x = widened.data() + r * n;
            } else if (from.id == TypeId::F32) {
              x = reinterpret_cast<const float*>(src);
            } else {
              row.resize(static_cast<size_t>(n));
              from.dequantize_row(src, row.data(), n);
              x = row.data();
            }
            const float* imp = importance_for(opts.imatrix, t, r);
            if (!cols.empty()) {
              thread_local std::vector<float> masked, masked_imp;
              masked.assign(x, x + n);
              for (int32_t j : cols) masked[static_cast<size_t>(j)] = 0.0f;
              x = masked.data();
              if (imp != nullptr) {
                masked_imp.assign(imp, imp + n);
                for (int32_t j : cols) masked_imp[static_cast<size_t>(j)] = 0.0f;
                imp = masked_imp.data();
              }
            }
            uint8_t* dst = buffer.data() + static_cast<size_t>(r - row0) * out_row;
            if (calibrated) {
              to.quantize_row_calib(x, dst, n, imp, opts.calibration);
            } else {
              to.quantize_row(x, dst, n, imp);
            }
          }
        });
        pending = {buffer.data(), static_cast<size_t>(row1 - row0) * out_row};
      }
      if (!cols.empty()) {
        write_pending();
        w.write_tensor_data({reinterpret_cast<const uint8_t*>(cols.data()), cols.size() * sizeof(int32_t)});
        w.write_tensor_data({reinterpret_cast<const uint8_t*>(vals.data()), vals.size() * sizeof(uint16_t)});
      }
    }
    // Only pages read through the mapping are resident (a tensor kept as stored, outlier columns):
    // quantized rows come in by copy_out.
    in.drop_pages(in.tensors()[i]);
    if (opts.on_progress) {
      opts.on_progress({i + 1, rep.plans.size(), &p,
                        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count()});
    }
  }
  if (opts.cancel && opts.cancel->load()) throw QuantizeCancelled();
  write_pending();
  w.finish();
  rep.output_file_bytes = w.bytes_written();  // the target may be a FIFO or a device
  rep.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return rep;
}

std::string QuantizeReport::to_text() const {
  size_t w = 6;
  for (const auto& p : plans) w = std::max(w, p.tensor.name.size());
  std::string s = fmt::format("{:<{}}  {:<14} {:<7} {:<7} {:>10} {:>7}  {}\n", "tensor", w, "shape", "from", "type",
                              "bytes", "bpw", "why");
  for (const auto& p : plans) {
    int64_t n = 1;
    for (auto d : p.tensor.shape) n *= d;
    std::string why = p.reason;
    if (!p.fallback.empty()) why += fmt::format(" -> fallback: {}", p.fallback);
    if (p.outliers > 0) why += fmt::format(" + {} outlier columns in f16 ({} bytes)", p.outliers, p.outlier_bytes);
    s += fmt::format("{:<{}}  {:<14} {:<7} {:<7} {:>10} {:>7.3f}  {}\n", p.tensor.name, w, shape_string(p.tensor.shape),
                     type_traits(p.tensor.stored_type).name, type_traits(p.type).name, p.bytes, 8.0 * p.bytes / n, why);
  }
  std::map<std::string, std::pair<int, uint64_t>> per_type;
  int fallbacks = 0;
  for (const auto& p : plans) {
    auto& e = per_type[type_traits(p.type).name];
    ++e.first;
    e.second += p.bytes;
    fallbacks += !p.fallback.empty();
  }
  s += fmt::format("\n{} tensors, {} parameters: {} -> {} bytes of tensor data ({:.3f} -> {:.3f} bits per weight)\n",
                   plans.size(), parameters, input_tensor_bytes, output_tensor_bytes, input_bpw(), output_bpw());
  s += fmt::format("output file: {} bytes", output_file_bytes);
  if (seconds > 0) s += fmt::format(", {:.2f} s on {} threads", seconds, threads);
  s += "\n";
  for (const auto& [name, e] : per_type) s += fmt::format("  {:<8} {:>4} tensors {:>12} bytes\n", name, e.first, e.second);
  if (outlier_bytes > 0) {
    const auto with = std::count_if(plans.begin(), plans.end(), [](const TensorPlan& p) { return p.outliers > 0; });
    s += fmt::format("  outliers {:>4} tensors {:>12} bytes (f16 columns + i32 indices; llama.cpp cannot load this "
                     "file)\n",
                     with, outlier_bytes);
  }
  if (fallbacks) s += fmt::format("{} tensors fell back to another type (see 'why')\n", fallbacks);
  for (const auto& warn : warnings) s += "warning: " + warn + "\n";
  return s;
}

nlohmann::ordered_json QuantizeReport::to_json() const {
  nlohmann::ordered_json j;
  auto tensors = nlohmann::ordered_json::array();
  for (const auto& p : plans) {
    nlohmann::ordered_json t = {{"name", p.tensor.name},
                                {"shape", p.tensor.shape},
                                {"stored_type", type_traits(p.tensor.stored_type).name},
                                {"requested_type", type_traits(p.requested).name},
                                {"type", type_traits(p.type).name},
                                {"quantized", p.quantize},
                                {"bytes", p.bytes},
                                {"reason", p.reason}};
    if (!p.fallback.empty()) t["fallback"] = p.fallback;
    if (p.outliers > 0) {
      t["outlier_columns"] = p.outliers;
      t["outlier_bytes"] = p.outlier_bytes;
    }
    tensors.push_back(t);
  }
  j["tensors"] = tensors;
  j["parameters"] = parameters;
  j["input_tensor_bytes"] = input_tensor_bytes;
  j["output_tensor_bytes"] = output_tensor_bytes;
  j["output_file_bytes"] = output_file_bytes;
  j["outlier_bytes"] = outlier_bytes;
  j["bits_per_weight"] = output_bpw();
  j["seconds"] = seconds;
  j["threads"] = threads;
  j["warnings"] = warnings;
  return j;
}

}  // namespace mixq
