#include "mixq/plan/plan.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <limits>
#include <set>

#include <fmt/format.h>
#include <re2/re2.h>

#include "mixq/formats/outliers.h"
#include "mixq/io/gguf.h"
#include "mixq/util/json_file.h"

namespace mixq {

namespace {


struct Choice {
  TypeId type;
  uint64_t bytes;   // data bytes (with outlier companions)
  uint64_t cost;    // what the budget counts (padded bytes and companion header entries for a size target)
  double loss;
  int outliers = 0;
};

// Header bytes of the two companion tensors' entries (formats/outliers.h) of tensor `name`:
// each a name string, n_dims, dims, type and offset.
uint64_t companion_info_bytes(const std::string& name) {
  return GgufWriter::tensor_info_bytes(name + std::string(kOutlierColsSuffix), 1) +
         GgufWriter::tensor_info_bytes(name + std::string(kOutlierValsSuffix), 2);
}

// Data bytes of a tensor as the file lays it out: its data and, with k outlier columns, the two
// companions', each padded to the alignment.
uint64_t padded_data_bytes(uint64_t main, int k, int64_t rows, uint64_t alignment) {
  if (k == 0) return GgufWriter::align_up(main, alignment);
  return GgufWriter::align_up(main, alignment) + GgufWriter::align_up(outlier_cols_bytes(k), alignment) +
         GgufWriter::align_up(outlier_vals_bytes(k, rows), alignment);
}

uint64_t outlier_key_bytes(int k) {
  return k > 0 ? GgufWriter::key_value_bytes(std::string(kOutlierColumnsKey), GgufValue::u32(static_cast<uint32_t>(k))) : 0;
}

struct Item {
  size_t tensor;                // index into the measurement's tensors
  std::vector<Choice> choices;  // non-dominated, by increasing cost (decreasing loss)
};

// Keeps the choices no other choice beats on both cost and loss; sorted by cost.
std::vector<Choice> pareto(std::vector<Choice> c) {
  std::sort(c.begin(), c.end(), [](const Choice& a, const Choice& b) {
    return a.cost != b.cost ? a.cost < b.cost : a.loss < b.loss;
  });
  std::vector<Choice> out;
  for (const auto& x : c) {
    if (out.empty() || x.loss < out.back().loss) {
      if (!out.empty() && out.back().cost == x.cost) out.pop_back();
      out.push_back(x);
    }
  }
  return out;
}

struct Selection {
  std::vector<size_t> pick;  // per item, index into its choices
  uint64_t cost = 0;
  double loss = 0;
};

Selection evaluate(const std::vector<Item>& items, std::vector<size_t> pick) {
  Selection s;
  s.pick = std::move(pick);
  for (size_t i = 0; i < items.size(); ++i) {
    s.cost += items[i].choices[s.pick[i]].cost;
    s.loss += items[i].choices[s.pick[i]].loss;
  }
  return s;
}

Selection lagrangian_pick(const std::vector<Item>& items, double lambda) {
  std::vector<size_t> pick(items.size());
  for (size_t i = 0; i < items.size(); ++i) {
    double best = INFINITY;
    for (size_t c = 0; c < items[i].choices.size(); ++c) {
      const double v = items[i].choices[c].loss + lambda * static_cast<double>(items[i].choices[c].cost);
      if (v < best) {
        best = v;
        pick[i] = c;
      }
    }
  }
  return evaluate(items, std::move(pick));
}

// Spends the bytes left on the upgrades with the largest loss reduction per byte.
void greedy_fill(const std::vector<Item>& items, uint64_t budget, Selection& s) {
  for (;;) {
    const uint64_t left = budget - s.cost;
    double best_rate = 0;
    size_t bi = 0, bc = 0;
    bool found = false;
    for (size_t i = 0; i < items.size(); ++i) {
      const Choice& cur = items[i].choices[s.pick[i]];
      for (size_t c = s.pick[i] + 1; c < items[i].choices.size(); ++c) {
        const Choice& up = items[i].choices[c];
        const uint64_t extra = up.cost - cur.cost;
        if (extra > left) break;  // choices are by increasing cost
        const double rate = (cur.loss - up.loss) / static_cast<double>(std::max<uint64_t>(extra, 1));
        if (rate > best_rate) {
          best_rate = rate;
          bi = i;
          bc = c;
          found = true;
        }
      }
    }
    if (!found) return;
    s.cost += items[bi].choices[bc].cost - items[bi].choices[s.pick[bi]].cost;
    s.loss += items[bi].choices[bc].loss - items[bi].choices[s.pick[bi]].loss;
    s.pick[bi] = bc;
  }
}

Selection solve_lagrangian(const std::vector<Item>& items, uint64_t budget, double& lambda_out) {
  Selection s = lagrangian_pick(items, 0);
  lambda_out = 0;
  if (s.cost > budget) {
    double lo = 0, hi = 1e-12;
    while (lagrangian_pick(items, hi).cost > budget) {
      lo = hi;
      hi *= 4;
      if (hi > 1e300) break;
    }
    for (int it = 0; it < 200; ++it) {
      const double mid = lo == 0 ? hi / 2 : std::sqrt(lo * hi);
      if (lagrangian_pick(items, mid).cost > budget) lo = mid; else hi = mid;
      if (hi - lo <= hi * 1e-12) break;
    }
    s = lagrangian_pick(items, hi);
    lambda_out = hi;
  }
  greedy_fill(items, budget, s);
  return s;
}

// The DP over items [first, last): dp[cap] = least loss of the items so far within cap units.
// With `choice`, row i - first records which candidate gave each dp[cap] of item i.
class KnapsackDp {
 public:
  KnapsackDp(const std::vector<Item>& items, uint64_t unit, size_t W, uint64_t table_bytes)
      : items_(items), unit_(unit), W_(W), table_rows_(std::max<size_t>(1, table_bytes / (W + 1))) {}

  size_t units(size_t i, size_t c) const { return static_cast<size_t>((items_[i].choices[c].cost + unit_ - 1) / unit_); }

  void step(size_t i, const std::vector<double>& dp, std::vector<double>& next, uint8_t* choice) const {
    std::fill(next.begin(), next.end(), std::numeric_limits<double>::infinity());
    for (size_t c = 0; c < items_[i].choices.size() && c < 256; ++c) {
      const size_t w = units(i, c);
      const double l = items_[i].choices[c].loss;
      for (size_t cap = w; cap <= W_; ++cap) {
        const double v = dp[cap - w] + l;
        if (v < next[cap]) {
          next[cap] = v;
          if (choice) choice[cap] = static_cast<uint8_t>(c);
        }
      }
    }
  }

  std::vector<double> forward(size_t first, size_t last, std::vector<double> dp) {
    std::vector<double> next(W_ + 1);
    note(2);
    for (size_t i = first; i < last; ++i) {
      step(i, dp, next, nullptr);
      dp.swap(next);
    }
    return dp;
  }

  // Fills pick[first, last) for the optimum that ends at `cap` units after item last - 1, given
  // dp as it stood before item `first`; returns the units left before item `first`. The choice
  // table is kept for at most table_rows_ items at once: longer ranges are split, and the dp at
  // the split point recomputed from `dp_first`. Every dp row is computed by the same operations
  // in the same order as one pass would, so the choices (ties included) are identical.
  size_t reconstruct(size_t first, size_t last, const std::vector<double>& dp_first, size_t cap,
                     std::vector<size_t>& pick) {
    if (last - first <= table_rows_) {
      std::vector<uint8_t> table((last - first) * (W_ + 1));
      table_peak_ = std::max<uint64_t>(table_peak_, table.size());
      std::vector<double> dp = dp_first, next(W_ + 1);
      note(2);
      for (size_t i = first; i < last; ++i) {
        step(i, dp, next, table.data() + (i - first) * (W_ + 1));
        dp.swap(next);
      }
      // The optimum is finite at every split point; only an infeasible budget fails here.
      if (!std::isfinite(dp[cap])) throw PlanError("internal: the DP found no feasible plan");
      for (size_t i = last; i-- > first;) {
        pick[i] = table[(i - first) * (W_ + 1) + cap];
        cap -= units(i, pick[i]);
      }
      done(2);
      return cap;
    }
    const size_t mid = first + (last - first) / 2;
    const std::vector<double> dp_mid = forward(first, mid, dp_first);
    done(1);  // forward's scratch row is gone; dp_mid stays while the right half is solved
    const size_t cap_mid = reconstruct(mid, last, dp_mid, cap, pick);
    done(1);
    return reconstruct(first, mid, dp_first, cap_mid, pick);
  }

  // Peak bytes held by the DP: the choice table and the dp rows alive at once.
  uint64_t peak_bytes() const { return table_peak_ + peak_rows_ * (W_ + 1) * sizeof(double); }

 private:
  void note(int rows) {
    rows_ += rows;
    peak_rows_ = std::max(peak_rows_, rows_);
  }
  void done(int rows) { rows_ -= rows; }

  const std::vector<Item>& items_;
  uint64_t unit_;
  size_t W_;
  size_t table_rows_;
  uint64_t table_peak_ = 0;
  int64_t rows_ = 1, peak_rows_ = 1;  // the caller's initial row
};

std::optional<Selection> solve_dp(const std::vector<Item>& items, uint64_t budget, int64_t max_units,
                                  uint64_t table_bytes, uint64_t& unit_out, uint64_t& peak_bytes) {
  const uint64_t unit = std::max<uint64_t>(1, (budget + static_cast<uint64_t>(max_units) - 1) / static_cast<uint64_t>(max_units));
  unit_out = unit;
  const size_t W = static_cast<size_t>(budget / unit);
  // Costs round up to whole units: a budget within a few bytes per tensor of the smallest file
  // may hold no choice in units. The Lagrangian solution stands alone then.
  size_t min_units = 0;
  for (const Item& it : items) min_units += static_cast<size_t>((it.choices.front().cost + unit - 1) / unit);
  if (min_units > W) return std::nullopt;
  KnapsackDp dp(items, unit, W, table_bytes);
  const std::vector<double> start(W + 1, 0.0);
  std::vector<size_t> pick(items.size());
  dp.reconstruct(0, items.size(), start, W, pick);
  peak_bytes = dp.peak_bytes();
  Selection s = evaluate(items, std::move(pick));
  greedy_fill(items, budget, s);
  return s;
}

uint64_t extension_key_bytes(const std::set<std::string>& names) {
  if (names.empty()) return 0;
  std::vector<std::string> v(names.begin(), names.end());
  return GgufWriter::key_value_bytes(kExtensionTypesKey, GgufValue::string_array(v));
}

}  // namespace

std::string PlanTarget::label() const {
  if (kind == Kind::Bytes) return fmt::format("bytes {}", static_cast<uint64_t>(value));
  return fmt::format("bpw {:.4f}", value);
}

PlanTarget PlanTarget::parse(const std::string& label, const std::string& origin) {
  const auto bad = [&]() {
    return PlanError(fmt::format("{}: target '{}' is neither \"bytes N\" nor \"bpw X\"; write the plan again with mixq plan",
                                 origin, label));
  };
  const auto space = label.find(' ');
  if (space == std::string::npos) throw bad();
  const std::string kind = label.substr(0, space), number = label.substr(space + 1);
  size_t used = 0;
  try {
    if (kind == "bytes" && !number.empty() && number.find_first_not_of("0123456789") == std::string::npos) {
      return bytes(std::stoull(number, &used));
    }
    if (kind == "bpw") {
      const double b = std::stod(number, &used);
      if (used == number.size() && std::isfinite(b) && b > 0) return bpw(b);
    }
  } catch (const std::exception&) {
  }
  throw bad();
}

Plan make_plan(const Measurement& m, const PlanOptions& opts) {
  if (static_cast<int>(m.shards_merged.size()) != m.n_shards) {
    throw PlanError(fmt::format("the measurement holds {} of {} shards: merge every shard first "
                                "(mixq measure --merge PARTS... -o ALL)",
                                m.shards_merged.size(), m.n_shards));
  }
  if (opts.target_bpw.has_value() == opts.target_bytes.has_value()) {
    throw PlanError("give exactly one target: --target-bpw B or --target-size S");
  }
  if (m.tensors.empty()) throw PlanError("the measurement has no tensors");
  const bool by_size = opts.target_bytes.has_value();
  auto allowed = [&](TypeId t) {
    if (opts.compat_llamacpp && type_traits(t).is_extension()) return false;
    return opts.allowed.empty() || std::find(opts.allowed.begin(), opts.allowed.end(), t) != opts.allowed.end();
  };
  auto cost_of = [&](uint64_t bytes) { return by_size ? GgufWriter::align_up(bytes, m.alignment) : bytes; };

  Plan plan;
  plan.compat_llamacpp = opts.compat_llamacpp;
  plan.tensors.resize(m.tensors.size());
  std::vector<Item> items;
  uint64_t fixed_cost = 0;
  int possible_outliers = 0;
  std::set<std::string> possible_ext, fixed_ext;
  for (size_t i = 0; i < m.tensors.size(); ++i) {
    const TensorMeasure& t = m.tensors[i];
    PlannedTensor& p = plan.tensors[i];
    p.name = t.name;
    const Rule* rule = nullptr;
    for (const auto& r : opts.fixed) {
      if (r.compiled && RE2::PartialMatch(t.name, *r.compiled)) {
        rule = &r;
        break;
      }
    }
    if (rule) {
      const TypeTraits& tt = type_traits(rule->type);
      if (!tt.fits_row(t.shape[0])) {
        throw PlanError(fmt::format("rule '{}': type {} cannot hold the rows of '{}' ({} values)", rule->origin, tt.name,
                                    t.name, t.shape[0]));
      }
      if (opts.compat_llamacpp && tt.is_extension()) {
        throw PlanError(fmt::format("rule '{}': {} is a mixq type, which --compat llama.cpp refuses", rule->origin, tt.name));
      }
      ++rule->hits;
      p.type = rule->type;
      p.fixed = true;
      p.bytes = tt.row_bytes(t.shape[0]) * static_cast<uint64_t>(t.n_elements() / t.shape[0]);
      const CandidateMeasure* c = t.find(rule->type);
      p.predicted = c ? c->predicted : 0.0;
      fixed_cost += cost_of(p.bytes);
      if (tt.is_extension()) fixed_ext.insert(tt.name);
      continue;
    }
    std::vector<Choice> cs;
    const int64_t rows = t.n_elements() / t.shape[0];
    for (const auto& c : t.candidates) {
      if (!allowed(c.type)) continue;
      if (c.outliers > 0) {
        if (opts.compat_llamacpp || !opts.outliers) continue;  // llama.cpp refuses the companion tensors
        const uint64_t cost = by_size ? padded_data_bytes(c.bytes, c.outliers, rows, m.alignment) + companion_info_bytes(t.name)
                                      : c.bytes + c.outlier_bytes;
        cs.push_back({c.type, c.bytes + c.outlier_bytes, cost, c.predicted, c.outliers});
        possible_outliers = std::max(possible_outliers, c.outliers);
      } else {
        cs.push_back({c.type, c.bytes, cost_of(c.bytes), c.predicted});
      }
      if (type_traits(c.type).is_extension()) possible_ext.insert(type_traits(c.type).name);
    }
    if (cs.empty()) {
      throw PlanError(fmt::format("no allowed type was measured for '{}'{}", t.name,
                                  opts.compat_llamacpp ? " with --compat llama.cpp" : ""));
    }
    items.push_back({i, pareto(std::move(cs))});
  }

  // The budget for the free tensors.
  uint64_t overhead = 0, budget = 0;
  std::set<std::string> all_ext = possible_ext;
  all_ext.insert(fixed_ext.begin(), fixed_ext.end());
  if (by_size) {
    plan.budget_bytes = *opts.target_bytes;
    plan.target = PlanTarget::bytes(*opts.target_bytes);
    overhead = GgufWriter::align_up(m.header_bytes + extension_key_bytes(all_ext), m.alignment) + m.fixed_bytes + fixed_cost;
    // Outlier companions: their header entries are in the choices' costs; the key, and the header
    // padding those entries may cross, are reserved here.
    if (possible_outliers > 0) overhead += outlier_key_bytes(possible_outliers) + m.alignment - 1;
  } else {
    if (!(*opts.target_bpw > 0) || !std::isfinite(*opts.target_bpw)) throw PlanError("--target-bpw must be a positive number");
    plan.target = PlanTarget::bpw(*opts.target_bpw);
    const double total = *opts.target_bpw * static_cast<double>(m.n_params) / 8.0;
    plan.budget_bytes = static_cast<uint64_t>(std::floor(total));
    overhead = m.fixed_bytes_unpadded + fixed_cost;
  }
  uint64_t min_cost = 0;
  for (const auto& it : items) min_cost += it.choices.front().cost;
  auto min_file = [&]() {
    uint64_t data = m.fixed_bytes;
    std::set<std::string> ext = fixed_ext;
    for (size_t i = 0; i < plan.tensors.size(); ++i) {
      if (plan.tensors[i].fixed) data += GgufWriter::align_up(plan.tensors[i].bytes, m.alignment);
    }
    for (const auto& it : items) {
      data += GgufWriter::align_up(it.choices.front().bytes, m.alignment);
      if (type_traits(it.choices.front().type).is_extension()) ext.insert(type_traits(it.choices.front().type).name);
    }
    return GgufWriter::align_up(m.header_bytes + extension_key_bytes(ext), m.alignment) + data;
  };
  plan.min_file_bytes = min_file();
  if (plan.budget_bytes < overhead || plan.budget_bytes - overhead < min_cost) {
    uint64_t min_tensor_bytes = m.fixed_bytes_unpadded;
    for (const auto& p : plan.tensors) min_tensor_bytes += p.fixed ? p.bytes : 0;
    for (const auto& it : items) min_tensor_bytes += it.choices.front().bytes;
    throw PlanError(fmt::format("the budget ({}) is below the smallest possible file with these types: {} bytes, "
                                "{:.4f} bits per weight; raise the target{}",
                                plan.target.label(), plan.min_file_bytes, 8.0 * min_tensor_bytes / m.n_params,
                                opts.compat_llamacpp ? " or drop --compat llama.cpp" : ""));
  }
  budget = plan.budget_bytes - overhead;

  double lambda = 0;
  Selection best = solve_lagrangian(items, budget, lambda);
  plan.method = "lagrangian+greedy";
  plan.lambda = lambda;
  if (opts.max_dp_units > 0) {
    uint64_t unit = 1;
    const std::optional<Selection> dp =
        solve_dp(items, budget, opts.max_dp_units, opts.max_dp_table_bytes, unit, plan.dp_peak_bytes);
    if (dp && dp->loss < best.loss - 1e-15 * std::abs(best.loss)) {
      best = *dp;
      plan.method = unit == 1 ? "dp (exact)" : fmt::format("dp ({}-byte units)+greedy", unit);
    }
  }
  std::set<std::string> used_ext = fixed_ext;
  int used_outliers = 0;
  uint64_t companion_headers = 0;
  for (size_t k = 0; k < items.size(); ++k) {
    const Choice& c = items[k].choices[best.pick[k]];
    PlannedTensor& p = plan.tensors[items[k].tensor];
    p.type = c.type;
    p.bytes = c.bytes;
    p.predicted = c.loss;
    p.outliers = c.outliers;
    if (type_traits(c.type).is_extension()) used_ext.insert(type_traits(c.type).name);
    if (c.outliers > 0) {
      used_outliers = std::max(used_outliers, c.outliers);
      companion_headers += companion_info_bytes(p.name);
    }
  }
  uint64_t data = m.fixed_bytes, tensor_bytes = m.fixed_bytes_unpadded;
  for (size_t i = 0; i < plan.tensors.size(); ++i) {
    const PlannedTensor& p = plan.tensors[i];
    const int64_t rows = m.tensors[i].n_elements() / m.tensors[i].shape[0];
    data += padded_data_bytes(p.bytes - (p.outliers > 0 ? outlier_bytes(p.outliers, rows) : 0), p.outliers, rows,
                              m.alignment);
    tensor_bytes += p.bytes;
    plan.predicted_kld += p.predicted;
  }
  plan.file_bytes = GgufWriter::align_up(m.header_bytes + extension_key_bytes(used_ext) + outlier_key_bytes(used_outliers) +
                                 companion_headers,
                             m.alignment) +
                    data;
  plan.bpw = 8.0 * static_cast<double>(tensor_bytes) / static_cast<double>(m.n_params);
  plan.measurement = m.model;
  return plan;
}

std::map<std::string, TypeId> Plan::types() const {
  std::map<std::string, TypeId> out;
  for (const auto& t : tensors) out[t.name] = t.type;
  return out;
}

std::map<std::string, int> Plan::outliers() const {
  std::map<std::string, int> out;
  for (const auto& t : tensors) {
    if (t.outliers > 0) out[t.name] = t.outliers;
  }
  return out;
}

nlohmann::ordered_json Plan::to_json() const {
  nlohmann::ordered_json j;
  j["format"] = "mixq-plan";
  j["version"] = 1;
  j["target"] = target.label();
  j["compat"] = compat_llamacpp ? "llama.cpp" : "";
  j["file_bytes"] = file_bytes;
  j["budget_bytes"] = budget_bytes;
  j["min_file_bytes"] = min_file_bytes;
  j["bpw"] = bpw;
  j["predicted_kld"] = predicted_kld;
  j["lambda"] = lambda;
  j["method"] = method;
  j["model"] = measurement;
  auto ts = nlohmann::ordered_json::array();
  for (const auto& t : tensors) {
    nlohmann::ordered_json e = {{"name", t.name}, {"type", type_traits(t.type).name}};
    if (t.outliers > 0) e["outliers"] = t.outliers;
    e["bytes"] = t.bytes;
    e["predicted_kld"] = t.predicted;
    e["fixed"] = t.fixed;
    ts.push_back(e);
  }
  j["tensors"] = ts;
  return j;
}

Plan Plan::from_json(const nlohmann::ordered_json& j, const std::string& origin) {
  if (!j.is_object() || j.value("format", "") != "mixq-plan") {
    throw PlanError(fmt::format("{}: not a mixq plan (no \"format\": \"mixq-plan\"); write one with mixq plan", origin));
  }
  Plan p;
  try {
    p.target = PlanTarget::parse(j.at("target").get<std::string>(), origin);
    p.compat_llamacpp = j.value("compat", "") == "llama.cpp";
    p.file_bytes = j.at("file_bytes").get<uint64_t>();
    p.budget_bytes = j.at("budget_bytes").get<uint64_t>();
    p.min_file_bytes = j.value("min_file_bytes", uint64_t{0});
    p.bpw = j.at("bpw").get<double>();
    p.predicted_kld = j.at("predicted_kld").get<double>();
    p.lambda = j.value("lambda", 0.0);
    p.method = j.value("method", "");
    p.measurement = j.value("model", "");
    for (const auto& e : j.at("tensors")) {
      PlannedTensor t;
      t.name = e.at("name").get<std::string>();
      const auto type = e.at("type").get<std::string>();
      const TypeTraits* tt = find_type(type);
      if (!tt) throw PlanError(fmt::format("{}: tensor '{}' has unknown type '{}'", origin, t.name, type));
      t.type = tt->id;
      t.bytes = e.value("bytes", uint64_t{0});
      t.predicted = e.value("predicted_kld", 0.0);
      t.fixed = e.value("fixed", false);
      t.outliers = e.value("outliers", 0);
      if (t.outliers < 0) throw PlanError(fmt::format("{}: tensor '{}' has a negative outlier count", origin, t.name));
      if (t.outliers > 0 && p.compat_llamacpp) {
        throw PlanError(fmt::format("{}: tensor '{}' keeps outlier columns in a --compat llama.cpp plan", origin, t.name));
      }
      p.tensors.push_back(std::move(t));
    }
  } catch (const nlohmann::json::exception& e) {
    throw PlanError(fmt::format("{}: malformed plan: {}", origin, e.what()));
  }
  std::set<std::string> names;
  for (const auto& t : p.tensors) {
    if (!names.insert(t.name).second) throw PlanError(fmt::format("{}: tensor '{}' appears twice", origin, t.name));
  }
  return p;
}

Plan Plan::load(const std::filesystem::path& path) {
  nlohmann::ordered_json j;
  try {
    j = read_json_file(path, "plan");
  } catch (const std::runtime_error& e) {
    throw PlanError(e.what());
  }
  return from_json(j, path.string());
}

void Plan::save(const std::filesystem::path& path) const { write_json_file(path, to_json()); }

std::string Plan::to_text() const {
  size_t w = 6;
  for (const auto& t : tensors) w = std::max(w, t.name.size());
  std::string s = fmt::format("{:<{}}  {:<8} {:>10} {:>12}\n", "tensor", w, "type", "bytes", "pred. KLD");
  std::map<std::string, std::pair<int, uint64_t>> by_type;
  for (const auto& t : tensors) {
    const std::string type = t.outliers > 0 ? fmt::format("{}+o{}", type_traits(t.type).name, t.outliers)
                                            : std::string(type_traits(t.type).name);
    s += fmt::format("{:<{}}  {:<8} {:>10} {:>12.6f}{}\n", t.name, w, type, t.bytes, t.predicted,
                     t.fixed ? "  (rule)" : "");
    auto& e = by_type[type];
    ++e.first;
    e.second += t.bytes;
  }
  s += "types:";
  for (const auto& [name, e] : by_type) s += fmt::format(" {} x{} ({} bytes)", name, e.first, e.second);
  s += "\n" + summary();
  return s;
}

std::string Plan::summary() const {
  return fmt::format("target {}{}: file {} bytes (budget {}, smallest possible {}), {:.4f} bpw, predicted KLD {:.6f} "
                   "[{}]\n",
                   target.label(), compat_llamacpp ? ", --compat llama.cpp" : "", file_bytes, budget_bytes, min_file_bytes, bpw,
                   predicted_kld, method);
}

}  // namespace mixq
