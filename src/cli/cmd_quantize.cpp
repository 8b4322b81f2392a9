#include <charconv>
#include <fstream>
#include <iterator>
#include <map>
#include <optional>

#include <fmt/format.h>

#include "commands.h"
#include "mixq/convert/convert.h"
#include "mixq/plan/one_step.h"
#include "mixq/policy/presets.h"
#include "mixq/quantize/quantize_model.h"
#include "mixq/util/json_file.h"
#include "option_helpers.h"
#include "progress.h"
#include "whisper_commands.h"

namespace mixq::cli {

namespace {

struct QuantizeArgs {
  std::string input, output, type, threads_pos;
  std::vector<std::string> tensor_types, layers;
  std::string tensor_type_file, config, output_tensor_type, token_embedding_type, imatrix, report_json, compat;
  bool pure = false, leave_output = false, allow_requantize = false, dry_run = false, clean_stale = false;
  int threads = 0;
  // --plan, or the one-step allocation (--target-* with -f).
  std::string plan, calib_file, target_size, target_size_of, types, save_plan, save_measurement;
  double target_bpw = 0;
  int chunks = 8, imatrix_chunks = 64;
  std::string calib;
  bool symmetric = false;
  int hqq = 0;
  int outliers = 0;
  std::string outlier_tensors;
};

QuantizeOptions build_options(const QuantizeArgs& a) {
  QuantizeOptions o;
  PolicyOptions& p = o.policy;
  if (!a.config.empty()) {
    nlohmann::ordered_json j;  // rules keep the file's order: the first match wins
    try {
      j = read_json_file(a.config, "--config");
    } catch (const std::runtime_error& e) {
      throw PolicyError(e.what());
    }
    apply_policy_config(j, p, a.config);
  }
  std::string type = a.type;
  if (type.empty()) type = !p.preset.empty() ? p.preset : "";
  const bool planned = !a.plan.empty() || !a.calib_file.empty();
  if (type.empty() && a.config.empty() && !planned) {
    throw PolicyError("give a DEFAULT_TYPE (a type such as q4_k or nf4, or a preset such as Q4_K_M)");
  }
  if (!type.empty()) {
    if (auto preset = find_preset(type)) {
      p.preset = preset->name;
      p.default_type = preset->default_type;
      p.preset_rules = preset->rules;
    } else {
      p.default_type = parse_type_name(type);
      p.preset.clear();
    }
  } else if (!p.preset.empty()) {
    auto preset = find_preset(p.preset);
    p.preset_rules = preset->rules;
  }
  o.type_label = type.empty() ? (planned ? std::string("plan") : type_traits(p.default_type).name) : type;
  for (const auto& r : a.tensor_types) p.tensor_type_rules.push_back(parse_tensor_type_rule(r));
  if (!a.tensor_type_file.empty()) {
    for (const auto& r : read_rule_file(a.tensor_type_file)) p.tensor_type_rules.push_back(parse_tensor_type_rule(r));
  }
  for (const auto& r : a.layers) p.layer_rules.push_back(parse_layer_rule(r));
  if (!a.output_tensor_type.empty()) p.output_tensor_type = parse_type_name(a.output_tensor_type);
  if (!a.token_embedding_type.empty()) p.token_embedding_type = parse_type_name(a.token_embedding_type);
  p.pure = a.pure;
  p.leave_output_tensor = a.leave_output;
  p.allow_requantize = a.allow_requantize;
  if (!a.compat.empty()) {
    if (a.compat != "llama.cpp" && a.compat != "llamacpp" && a.compat != "ggml") {
      throw PolicyError(fmt::format("--compat '{}': the only target is llama.cpp", a.compat));
    }
    p.compat_llamacpp = true;
  }
  if (a.symmetric && a.hqq > 0) {
    throw PolicyError("--hqq refines the zero point and --symmetric fixes it in the middle: choose one");
  }
  o.calibration = parse_calibration(a.calib, a.symmetric, a.hqq);
  if (a.outliers < 0) throw PolicyError(fmt::format("--outliers {}: give a number of columns, at least 1", a.outliers));
  if (!a.outlier_tensors.empty() && a.outliers == 0) throw PolicyError("--outlier-tensors needs --outliers K");
  if (a.outliers > 0 && !a.plan.empty()) {
    throw PolicyError("the plan decides the outlier columns per tensor (mixq measure --outliers K, then mixq plan): "
                      "--outliers cannot be combined with --plan");
  }
  if (a.outliers > 0 && p.compat_llamacpp) {
    throw PolicyError("--outliers writes tensors llama.cpp does not load: it cannot be combined with --compat llama.cpp");
  }
  if (!a.outlier_tensors.empty() && planned) throw PolicyError("--outlier-tensors does not apply to a plan");
  // With a --target-*, K is what the measurement offers per tensor; the plan then chooses.
  o.outlier_columns = planned ? 0 : a.outliers;
  o.outlier_tensors = a.outlier_tensors;
  o.threads = positional_threads(a.threads_pos, a.threads);
  return o;
}

}  // namespace

int positional_threads(const std::string& positional, int threads) {
  if (positional.empty()) return threads;
  int n = 0;
  const auto [end, ec] = std::from_chars(positional.data(), positional.data() + positional.size(), n);
  if (ec != std::errc() || end != positional.data() + positional.size())
    throw PolicyError(fmt::format("THREADS '{}' is not a number", positional));
  return n;
}

std::vector<std::string> read_rule_file(const std::string& path) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) {
    throw PolicyError(fmt::format("cannot read --tensor-type-file '{}': it is a directory; give a file", path));
  }
  std::ifstream f(path);
  if (!f) throw PolicyError(fmt::format("cannot read --tensor-type-file '{}'", path));
  std::vector<std::string> rules;
  std::string line;
  while (std::getline(f, line)) {
    const auto start = line.find_first_not_of(" \t\r");
    if (start == std::string::npos || line[start] == '#') continue;
    const auto end = line.find_last_not_of(" \t\r");
    rules.push_back(line.substr(start, end - start + 1));
  }
  return rules;
}

void register_quantize(CLI::App& app) {
  auto* cmd = app.add_subcommand("quantize",
                                 "Quantize a model with a per-tensor precision policy (a drop-in for llama-quantize)");
  auto a = std::make_shared<QuantizeArgs>();
  cmd->add_option("INPUT", a->input, "Input model: GGUF, llama2.c checkpoint (tokenizer.bin beside it) or rwkv.cpp file")
      ->required();
  cmd->add_option("OUTPUT", a->output, "Output GGUF (written to a temporary file, renamed when complete)")->required();
  cmd->add_option("DEFAULT_TYPE", a->type,
                  "Type (q4_k, q8_0, nf4, i8_row, lb3, ...) or preset (Q4_K_M, Q3_K_S, boundary[:TYPE[:EDGE]], "
                  "ssm-conservative, ...), case-insensitive; llama-quantize's names mean its mixes");
  cmd->add_option("THREADS", a->threads_pos, "Threads (as llama-quantize's trailing argument)");
  // One value per occurrence, as llama-quantize reads it: `--tensor-type X=Y IN OUT TYPE` must
  // leave IN OUT TYPE to the positionals.
  cmd->add_option("--tensor-type", a->tensor_types,
                  "REGEX=TYPE: tensors whose name the regex finds get TYPE (first match wins; repeatable)")
      ->allow_extra_args(false);
  cmd->add_option("--tensor-type-file", a->tensor_type_file, "File of REGEX=TYPE lines ('#' comments)");
  cmd->add_option("--layers", a->layers,
                  "SPEC[/COMPONENT]=TYPE: layer-position rule; SPEC first:N, last:N, A-B, N, every:N; COMPONENT "
                  "attn, ffn, attn_v, ffn_down, embed, output, norm, ssm, time_mix, channel_mix, ... (repeatable)")
      ->allow_extra_args(false);
  cmd->add_option("--config", a->config, "Policy JSON: default, preset, rules {PATTERN: TYPE}, <N>bit_layers, layers");
  cmd->add_option("--output-tensor-type", a->output_tensor_type, "Type of output.weight");
  cmd->add_option("--token-embedding-type", a->token_embedding_type, "Type of token_embd.weight");
  cmd->add_flag("--pure", a->pure, "No preset mixing: every quantizable tensor gets DEFAULT_TYPE (rules still apply)");
  cmd->add_flag("--leave-output-tensor", a->leave_output, "Keep output.weight as stored");
  cmd->add_flag("--allow-requantize", a->allow_requantize, "Accept already-quantized input (quality loss adds up)");
  cmd->add_option("--imatrix", a->imatrix, "Importance matrix (llama-imatrix GGUF or legacy .dat)");
  cmd->add_flag("--dry-run", a->dry_run, "Print the per-tensor plan, size and bits per weight; write nothing");
  cmd->add_option("--report-json", a->report_json, "Write the per-tensor report as JSON to this file");
  cmd->add_option("--compat", a->compat, "llama.cpp: refuse types llama.cpp cannot load");
  add_threads_option(cmd, a->threads);
  cmd->add_option("--calib", a->calib,
                  "Scale choice for nf4, i8_row, i8_mm, lb3, lb2: search (default), minmax, percentile[:P], mse");
  cmd->add_flag("--symmetric", a->symmetric, "Zero-point formats (i8_mm, lb3, lb2): zero point fixed at the middle code");
  cmd->add_option("--hqq", a->hqq, "HQQ zero-point refinement (calibration-free) with N iterations, e.g. 20");
  cmd->add_option("--outliers", a->outliers,
                  "Keep the K columns of largest importance-weighted magnitude of every quantized matrix in f16 "
                  "beside it (mixq-only files: llama.cpp cannot load them); with --target-*: offer that to the "
                  "plan per tensor");
  cmd->add_option("--outlier-tensors", a->outlier_tensors, "With --outliers: only the tensors this regex finds");
  cmd->add_option("--plan", a->plan, "Apply a bit-allocation plan (mixq plan): its types decide the tensors it lists");
  cmd->add_option("--target-bpw", a->target_bpw,
                  "One step (with -f): importance matrix, measure, plan and quantize to this bits per weight");
  cmd->add_option("--target-size", a->target_size, "One step (with -f): at most this file size (bytes, KiB, MiB, ...)");
  cmd->add_option("--target-size-of", a->target_size_of, "One step (with -f): at most the size of this file");
  cmd->add_option("-f,--file", a->calib_file, "Calibration text for the one-step allocation");
  cmd->add_option("--types", a->types, "One step: allowed types, comma-separated (default: all)");
  cmd->add_option("--chunks", a->chunks, "One step: calibration chunks for the probe runs (0: all)")->capture_default_str();
  cmd->add_option("--imatrix-chunks", a->imatrix_chunks, "One step: chunks to collect the importance matrix on (0: all)")
      ->capture_default_str();
  cmd->add_option("--save-plan", a->save_plan, "One step: also write the plan");
  cmd->add_option("--save-measurement", a->save_measurement, "One step: also write the measurement");
  add_clean_stale_flag(cmd, a->clean_stale);
  cmd->callback([a, cmd] {
    std::vector<NamedPath> outputs = {{"--report-json", a->report_json}, {"--save-plan", a->save_plan},
                                      {"--save-measurement", a->save_measurement}};
    if (!a->dry_run) outputs.insert(outputs.begin(), {"OUTPUT", a->output});
    check_outputs({{"INPUT", a->input}, {"--imatrix", a->imatrix}, {"--plan", a->plan}, {"--config", a->config},
                   {"--tensor-type-file", a->tensor_type_file}, {"-f", a->calib_file},
                   {"--target-size-of", a->target_size_of}},
                  outputs, a->clean_stale);
    checked_threads(a->threads);
    if (is_whisper_quantize_input(a->input)) {  // whisper.cpp's own format (whisper_commands.cpp)
      return run_whisper_quantize(*cmd, {a->input, a->output, a->type, a->threads_pos, a->tensor_types, a->tensor_type_file,
                                         a->token_embedding_type, a->compat, a->report_json, a->threads, a->dry_run,
                                         a->allow_requantize, a->plan, a->imatrix});
    }
    check_chunks(a->chunks, "--chunks");
    check_chunks(a->imatrix_chunks, "--imatrix-chunks");
    QuantizeOptions opts = build_options(*a);
    checked_threads(opts.threads);
    const bool one_step = a->target_bpw > 0 || !a->target_size.empty() || !a->target_size_of.empty();
    if (one_step && a->calib_file.empty()) throw PolicyError("--target-bpw / --target-size need -f CALIBRATION_TEXT");
    if (!a->calib_file.empty() && !one_step) throw PolicyError("-f needs a target: --target-bpw B or --target-size S");
    if (one_step && !a->plan.empty()) throw PolicyError("give either --plan or a --target-*, not both");
    // llama2.c and rwkv.cpp inputs are converted to a temporary GGUF first.
    const GgufSource source(a->input, a->output);
    const GgufFile in = GgufFile::open(source.path());
    ImportanceMatrix im;
    if (!a->imatrix.empty()) {
      im = load_imatrix(a->imatrix);
      opts.imatrix = &im;
      opts.policy.has_imatrix = true;
    }
    std::optional<Plan> plan;
    if (!a->plan.empty()) plan = Plan::load(a->plan);
    if (one_step) {
      const std::string text = read_text_file(a->calib_file);
      MeasureOptions mo;
      mo.chunks = a->chunks;
      mo.outliers = a->outliers;
      mo.threads = opts.threads;
      mo.imatrix = opts.imatrix;
      mo.calibration_name = a->calib_file;
      mo.model_name = a->input;
      Progress bar("measure");
      mo.on_tensor = [&](const MeasureProgress& p) {
        bar.update(static_cast<size_t>(p.done), static_cast<size_t>(p.total), p.tensor, p.seconds);
      };
      const PlanOptions po = plan_options(a->target_bpw, a->target_size, a->target_size_of, a->compat, a->types, {});
      OneStepResult r = allocate_one_step(in, text, mo, a->imatrix_chunks, &im, po, a->input);
      bar.finish();
      if (!opts.imatrix) {
        opts.imatrix = &im;  // the collected one
        opts.policy.has_imatrix = true;
      }
      if (!a->save_measurement.empty()) r.measurement.save(a->save_measurement);
      plan = std::move(r.plan);
      fmt::print("{}", plan->summary());
      if (!a->save_plan.empty()) plan->save(a->save_plan);
    }
    if (plan) apply_plan(*plan, !a->type.empty(), opts);
    QuantizeReport rep;
    if (a->dry_run) {
      rep = plan_model(in, opts);
    } else {
      // Interruptions: the handler main() installs removes the temporary files (io/atomic_file.h).
      Progress bar("quantize");
      opts.on_progress = [&](const QuantizeProgress& p) {
        bar.update(p.index, p.total, p.plan->tensor.name, p.seconds);
      };
      try {
        rep = quantize_model(in, a->output, opts);
      } catch (...) {
        bar.finish();
        throw;
      }
      bar.finish();
    }
    fmt::print("{}", rep.to_text());
    if (plan && rep.output_file_bytes > plan->budget_bytes && plan->target.is_bytes()) {
      fmt::print(stderr, "mixq: warning: the file ({} bytes) exceeds the plan's budget ({} bytes): its metadata differs "
                         "from what mixq measure counted (another --imatrix?)\n",
                 rep.output_file_bytes, plan->budget_bytes);
    }
    if (!a->report_json.empty()) write_file_atomically(a->report_json, rep.to_json().dump(2) + "\n");
    if (!a->dry_run) fmt::print("wrote {}\n", a->output);
  });
}

}  // namespace mixq::cli
