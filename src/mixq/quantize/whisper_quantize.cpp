#include "mixq/quantize/whisper_quantize.h"

#include <chrono>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <re2/re2.h>

#include "mixq/util/thread_pool.h"

namespace mixq {

namespace {

void check_loadable(TypeId t, const std::string& what) {
  if (!whisper_loads_type(t)) {
    throw PolicyError(fmt::format("{} is {}, which whisper.cpp does not load: use q4_0, q4_1, q5_0, q5_1, q8_0, "
                                  "q2_k, q3_k, q4_k, q5_k, q6_k, f16 or f32",
                                  what, type_traits(t).name));
  }
}

}  // namespace

WhisperQuantizeReport plan_whisper_quantize(const WhisperFile& in, const WhisperQuantizeOptions& opts) {
  if (in.tensors.empty()) {
    throw PolicyError(fmt::format("'{}' holds no tensors (a header-only test file): nothing to quantize",
                                  in.path().string()));
  }
  check_loadable(opts.default_type, "DEFAULT_TYPE");
  for (const auto& r : opts.rules) check_loadable(r.type, fmt::format("'{}'", r.origin));
  if (opts.token_embedding_type) check_loadable(*opts.token_embedding_type, "--token-embedding-type");
  for (const auto& [name, type] : opts.plan) {
    check_loadable(type, fmt::format("the plan's type for '{}'", name));
    const WhisperTensor* t = in.find(name);
    if (!t || !whisper_quantizes_tensor(t->name, t->ne.size())) {
      throw PolicyError(fmt::format("the plan names '{}', which '{}' has no quantizable tensor of: a plan for "
                                    "another model?",
                                    name, in.path().string()));
    }
  }
  WhisperQuantizeReport rep;
  rep.hparams = in.hparams;
  rep.hparams.ftype = whisper_ftype_for(opts.default_type);
  const TypeId conv_type = whisper_stored_type(WhisperTensorRole::Conv, opts.default_type);
  for (const auto& r : opts.rules) r.hits = 0;
  for (const auto& t : in.tensors) {
    WhisperTensorPlan p;
    p.name = t.name;
    p.ne = t.ne;
    p.from = p.to = t.type;
    rep.input_bytes += t.data.size();
    rep.parameters += t.elements();
    if (!whisper_quantizes_tensor(t.name, t.ne.size())) {
      p.reason = "kept (whisper.cpp quantizes only 2-D weights)";
      if (t.ne.size() == 3 && t.type != conv_type) {
        // Convolution kernels: whisper.cpp reads them as F16 in every file that is not all-F32.
        p.to = conv_type;
        p.reason = fmt::format("conv kernel to {} (as whisper.cpp loads it)", type_traits(conv_type).name);
      }
    } else {
      p.quantized = true;
      TypeId want = opts.default_type;
      p.reason = "DEFAULT_TYPE";
      const Rule* hit = nullptr;
      const auto planned = opts.plan.find(t.name);
      for (const auto& r : opts.rules) {
        if (planned == opts.plan.end() && RE2::PartialMatch(t.name, *r.compiled)) {
          hit = &r;
          break;
        }
      }
      if (planned != opts.plan.end()) {
        want = planned->second;
        p.reason = "plan";
      } else if (hit) {
        want = hit->type;
        p.reason = hit->origin;
        ++hit->hits;
      } else if (opts.token_embedding_type && t.name == "decoder.token_embedding.weight") {
        want = *opts.token_embedding_type;
        p.reason = "--token-embedding-type";
      }
      if (type_traits(t.type).quantized && t.type != want && !opts.allow_requantize) {
        throw PolicyError(fmt::format("'{}' in '{}' is already {}: quantizing it again loses quality; give "
                                      "--allow-requantize, or start from the f16/f32 file",
                                      t.name, in.path().string(), type_traits(t.type).name));
      }
      const TypeTraits& wt = type_traits(want);
      if (!wt.fits_row(t.ne[0])) {
        // llama.cpp's substitute where it holds the row (every k-quant has one), else f16.
        const auto& sub = wt.llamacpp_fallback;
        const TypeId fb = sub && whisper_loads_type(*sub) && type_traits(*sub).fits_row(t.ne[0]) ? *sub : TypeId::F16;
        p.fallback = fmt::format("rows of {} do not fill {} blocks of {}: {} instead", t.ne[0], wt.name,
                                 wt.block_size, type_traits(fb).name);
        want = fb;
      }
      p.to = want;
    }
    p.bytes = whisper_tensor_bytes(p.to, p.ne);
    rep.output_bytes += p.bytes;
    if (p.quantized && p.to != opts.default_type) rep.loads_in_whisper_cpp = false;
    rep.tensors.push_back(std::move(p));
  }
  for (const auto& r : opts.rules) {
    if (r.hits == 0) rep.warnings.push_back(fmt::format("'{}' matched no quantized tensor", r.origin));
  }
  if (!rep.loads_in_whisper_cpp) {
    std::vector<std::string> odd;
    for (const auto& p : rep.tensors) {
      if (p.quantized && p.to != opts.default_type && odd.size() < 3) odd.push_back(p.name + " " + type_traits(p.to).name);
    }
    const std::string msg = fmt::format(
        "the weights mix types ({}, ... in a {} file): stock whisper.cpp (233fe1fc) loads every weight in the "
        "header's type and refuses this file; mixq reads it",
        fmt::join(odd, ", "), type_traits(opts.default_type).name);
    if (opts.compat_whisper_cpp) throw PolicyError("--compat whisper.cpp: " + msg);
    rep.warnings.push_back(msg);
  }
  return rep;
}

WhisperQuantizeReport quantize_whisper(const WhisperFile& in, const std::filesystem::path& out,
                                       const WhisperQuantizeOptions& opts) {
  const auto t0 = std::chrono::steady_clock::now();
  WhisperQuantizeReport rep = plan_whisper_quantize(in, opts);
  ThreadPool pool(opts.threads);
  WhisperWriter w(out, rep.hparams, in.filters, in.vocab);
  std::vector<uint8_t> src, dst;
  for (size_t i = 0; i < in.tensors.size(); ++i) {
    const WhisperTensor& t = in.tensors[i];
    const WhisperTensorPlan& p = rep.tensors[i];
    if (p.to == t.type) {
      w.add_tensor(t.name, t.ne, t.type, t.data);
      in.mapping().drop_pages(t.data.data(), t.data.size());
      continue;
    }
    // The file packs tensors unaligned: copy before decoding blocks.
    src.assign(t.data.begin(), t.data.end());
    dst.resize(p.bytes);
    const int64_t row = t.ne[0], rows = t.rows();
    const size_t in_row = type_traits(t.type).row_bytes(row), out_row = type_traits(p.to).row_bytes(row);
    const float* importance = nullptr;
    if (opts.imatrix && p.quantized) {
      const auto it = opts.imatrix->weights.find(t.name);
      if (it == opts.imatrix->weights.end()) {
        rep.warnings.push_back(fmt::format("the importance matrix has no entry for {}: quantized without", t.name));
      } else if (static_cast<int64_t>(it->second.size()) != row) {
        throw PolicyError(fmt::format("the importance matrix's {} has {} columns, the tensor's rows {} values: "
                                      "an imatrix of another model?", t.name, it->second.size(), row));
      } else {
        importance = it->second.data();
      }
    }
    const int64_t chunk = std::max<int64_t>(1, 4096 / std::max<int64_t>(1, row / 256));
    const int64_t chunks = (rows + chunk - 1) / chunk;
    pool.parallel_for(chunks, [&](int64_t c) {
      const int64_t r0 = c * chunk, n = std::min(chunk, rows - r0);
      std::vector<float> v(static_cast<size_t>(n * row));
      dequantize_rows(t.type, src.data() + r0 * in_row, v.data(), n, row);
      quantize_rows(p.to, v.data(), dst.data() + r0 * out_row, n, row, importance);
    });
    w.add_tensor(t.name, t.ne, p.to, dst);
    in.mapping().drop_pages(t.data.data(), t.data.size());
  }
  w.finish();
  rep.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return rep;
}

std::string WhisperQuantizeReport::to_text() const {
  std::string s;
  for (const auto& p : tensors) {
    s += fmt::format("{:>44} [{}] {:>5} -> {:<5} {}{}\n", p.name, fmt::join(p.ne, ", "), type_traits(p.from).name,
                     type_traits(p.to).name, p.reason, p.fallback.empty() ? "" : " (" + p.fallback + ")");
  }
  s += fmt::format("whisper.cpp file: ftype {}, {} tensors, {:.2f} MiB -> {:.2f} MiB ({:.3f} bits per weight){}\n",
                   hparams.ftype, tensors.size(), input_bytes / 1048576.0, output_bytes / 1048576.0,
                   parameters ? 8.0 * output_bytes / parameters : 0.0,
                   loads_in_whisper_cpp ? "" : "; stock whisper.cpp refuses mixed weight types");
  return s;
}

nlohmann::ordered_json WhisperQuantizeReport::to_json() const {
  nlohmann::ordered_json j;
  j["format"] = "whisper.cpp";
  j["ftype"] = hparams.ftype;
  j["input_bytes"] = input_bytes;
  j["output_bytes"] = output_bytes;
  j["parameters"] = parameters;
  j["loads_in_whisper_cpp"] = loads_in_whisper_cpp;
  j["warnings"] = warnings;
  auto& arr = j["tensors"] = nlohmann::ordered_json::array();
  for (const auto& p : tensors) {
    arr.push_back({{"name", p.name},
                   {"shape", p.ne},
                   {"from", type_traits(p.from).name},
                   {"type", type_traits(p.to).name},
                   {"reason", p.reason},
                   {"fallback", p.fallback},
                   {"bytes", p.bytes}});
  }
  return j;
}

}  // namespace mixq
