// `mixq plan`: the type of every tensor that minimizes the predicted loss under a budget
// (plan/plan.h), from a measurement (mixq measure).
#include <cmath>
#include <filesystem>
#include <optional>

#include <fmt/format.h>

#include "commands.h"
#include "option_helpers.h"
#include "mixq/engine/decode_cost.h"
#include "mixq/plan/plan.h"
#include "mixq/plan/speed_plan.h"

namespace mixq::cli {


namespace {

struct PlanArgs {
  std::vector<std::string> measurements;
  std::string out = "plan.json", target_size, target_size_of, compat, types;
  std::vector<std::string> tensor_types;
  double target_bpw = 0, max_ms_per_token = 0;
  bool quiet = false, no_outliers = false, clean_stale = false;
};

}  // namespace

uint64_t parse_size(const std::string& text) {
  static const std::pair<const char*, uint64_t> kSuffixes[] = {
      {"GiB", 1ull << 30}, {"MiB", 1ull << 20}, {"KiB", 1ull << 10}, {"G", 1000000000ull}, {"M", 1000000ull},
      {"K", 1000ull}, {"B", 1}};
  std::string num = text;
  uint64_t mult = 1;
  for (const auto& [s, m] : kSuffixes) {
    if (num.ends_with(s)) {
      num.resize(num.size() - std::string_view(s).size());
      mult = m;
      break;
    }
  }
  size_t pos = 0;
  double v = 0;
  try {
    v = std::stod(num, &pos);
  } catch (const std::exception&) {
    pos = 0;
  }
  if (pos == 0 || pos != num.size() || !(v > 0)) {
    throw std::runtime_error(fmt::format("size '{}': write bytes (304320) or with a suffix (297KiB, 1.5MiB, 2G)", text));
  }
  // Converting a double at or above 2^64 to uint64_t is undefined (in practice 0: "budget 0").
  const double bytes = v * static_cast<double>(mult);
  if (!(bytes < 0x1p63)) {
    throw std::runtime_error(fmt::format("size '{}' is beyond any file mixq can write (2^63 bytes)", text));
  }
  return static_cast<uint64_t>(bytes);
}

PlanOptions plan_options(double target_bpw, const std::string& target_size, const std::string& target_size_of,
                         const std::string& compat, const std::string& types, const std::vector<std::string>& rules) {
  PlanOptions o;
  int targets = (target_bpw > 0) + !target_size.empty() + !target_size_of.empty();
  if (std::isnan(target_bpw) || target_bpw < 0 || std::isinf(target_bpw) || target_bpw > 64) {
    throw std::runtime_error(fmt::format("--target-bpw {}: give bits per weight in (0, 64]", target_bpw));
  }
  if (targets != 1) throw std::runtime_error("give exactly one of --target-bpw, --target-size, --target-size-of");
  if (target_bpw > 0) o.target_bpw = target_bpw;
  if (!target_size.empty()) o.target_bytes = parse_size(target_size);
  if (!target_size_of.empty()) {
    std::error_code ec;
    const auto size = std::filesystem::file_size(target_size_of, ec);
    if (ec) throw std::runtime_error(fmt::format("--target-size-of '{}': {}", target_size_of, ec.message()));
    o.target_bytes = size;
  }
  if (!compat.empty()) {
    if (compat != "llama.cpp" && compat != "llamacpp" && compat != "ggml") {
      throw std::runtime_error(fmt::format("--compat '{}': the only target is llama.cpp", compat));
    }
    o.compat_llamacpp = true;
  }
  if (!types.empty()) o.allowed = parse_type_list(types);
  for (const auto& r : rules) o.fixed.push_back(parse_tensor_type_rule(r));
  return o;
}

void register_plan(CLI::App& app) {
  auto* cmd = app.add_subcommand("plan", "Choose every tensor's type to minimize the predicted KL divergence under a "
                                         "size or bits-per-weight budget");
  auto a = std::make_shared<PlanArgs>();
  cmd->add_option("MEASUREMENT", a->measurements, "Measurement JSON (mixq measure); several shards are merged")
      ->required()
      ->expected(1, -1);
  cmd->add_option("--target-bpw", a->target_bpw, "Bits per weight over all tensors (llama.cpp's BPW)");
  cmd->add_option("--target-size", a->target_size, "Whole output file size: bytes, or with KiB/MiB/GiB/K/M/G");
  cmd->add_option("--target-size-of", a->target_size_of, "At most the size of this file (e.g. llama.cpp's Q4_K_M)");
  cmd->add_option("--compat", a->compat, "llama.cpp: only types llama.cpp loads");
  cmd->add_option("--types", a->types, "Allowed types, comma-separated (default: every measured type)");
  cmd->add_option("--tensor-type", a->tensor_types, "REGEX=TYPE: fixed choice for the tensors the regex finds (repeatable)")
      ->allow_extra_args(false);
  cmd->add_option("-o,--output", a->out, "Plan JSON (for mixq quantize --plan)")->capture_default_str();
  cmd->add_flag("-q,--quiet", a->quiet, "Print only the summary line");
  cmd->add_flag("--no-outliers", a->no_outliers, "Ignore the measurement's outlier candidates (measure --outliers)");
  cmd->add_option("--max-ms-per-token", a->max_ms_per_token,
                  "Also at most this decode time per token: each type's one-token product timed on this CPU (one "
                  "thread, weights only; a roofline of its kernel and the memory read rate), traded against KLD");
  add_clean_stale_flag(cmd, a->clean_stale);
  cmd->callback([a] {
    std::vector<NamedPath> inputs = {{"--target-size-of", a->target_size_of}};
    for (const auto& m : a->measurements) inputs.push_back({"MEASUREMENT", m});
    check_outputs(inputs, {{"-o", a->out}}, a->clean_stale);
    PlanOptions o = plan_options(a->target_bpw, a->target_size, a->target_size_of, a->compat, a->types, a->tensor_types);
    std::vector<Measurement> parts;
    for (const auto& p : a->measurements) parts.push_back(Measurement::load(p));
    const Measurement m = merge_measurements(parts);
    o.outliers = !a->no_outliers;
    if (a->max_ms_per_token < 0 || std::isnan(a->max_ms_per_token)) {
      throw std::runtime_error(fmt::format("--max-ms-per-token {}: give milliseconds above 0", a->max_ms_per_token));
    }
    std::optional<DecodeCost> cost;
    if (a->max_ms_per_token > 0) {
      std::vector<TypeId> timed = {TypeId::F16};
      for (const auto& t : m.types) timed.push_back(require_type(t).id);
      for (const auto& r : o.fixed) timed.push_back(r.type);
      cost = measure_decode_cost(timed, kernels::best_kernels());
      std::string per_type;
      for (const auto& [t, ns] : cost->ns_per_weight) per_type += fmt::format(" {} {:.3f}", type_traits(t).name, ns);
      fmt::print("decode cost on this CPU (one thread, kernels {}): read {:.1f} GB/s; ns per weight in cache:{}\n",
                 cost->kernels, cost->read_bytes_per_second / 1e9, per_type);
    }
    Plan plan = cost ? make_speed_plan(m, o, *cost, a->max_ms_per_token) : make_plan(m, o);
    plan.measurement = a->measurements.front();
    for (const auto& r : o.fixed) {
      if (r.hits == 0) fmt::print(stderr, "mixq: warning: rule '{}' matched no tensor\n", r.origin);
    }
    fmt::print("{}", a->quiet ? plan.summary() : plan.to_text());
    if (cost) {
      fmt::print("decode time: {:.4g} ms per token (budget {:.4g}; one thread, weights only)\n",
                 plan_ms_per_token(plan, m, *cost), a->max_ms_per_token);
    }
    plan.save(a->out);
    fmt::print("wrote {}\n", a->out);
  });
}

}  // namespace mixq::cli
