// The speed-aware plan (plan/speed_plan.h, mixq plan --max-ms-per-token) against brute force on
// small synthetic measurements priced by a fixed decode cost, and the decode-cost timing
// (engine/decode_cost.h).
#include <algorithm>
#include <cmath>
#include <random>

#include <fmt/format.h>

#include "mixq/engine/decode_cost.h"
#include "mixq/plan/speed_plan.h"
#include "plan_enumeration.h"
#include "test_support.h"

namespace mixq {
namespace {

uint64_t align32(uint64_t v) { return (v + 31) / 32 * 32; }

// Tensors of rows of 64 in three types; each tensor's sensitivity is random.
Measurement priced_measurement(int n_tensors, std::mt19937& rng) {
  Measurement m;
  m.model = "synthetic";
  m.n_tensors = n_tensors;
  m.header_bytes = 1000;
  m.shards_merged = {0};
  std::uniform_int_distribution<int> rows(1, 40);
  std::uniform_real_distribution<double> sens(0.1, 10), jitter(0.5, 2);
  for (int i = 0; i < n_tensors; ++i) {
    TensorMeasure t;
    t.name = fmt::format("blk.{}.w.weight", i);
    t.shape = {64, rows(rng)};
    t.index = i;
    const double s = sens(rng);
    for (TypeId ty : {TypeId::LB2, TypeId::Q4_0, TypeId::Q8_0}) {
      CandidateMeasure c;
      c.type = ty;
      c.bytes = type_traits(ty).row_bytes(64) * static_cast<uint64_t>(t.shape[1]);
      c.predicted = s * std::pow(2.0, -type_traits(ty).bits_per_weight(64)) * jitter(rng);
      t.candidates.push_back(c);
    }
    m.n_params += t.n_elements();
    m.tensors.push_back(t);
  }
  return m;
}

// lb2 small and slowest, q4_0 the fastest, q8_0 the best and slower; compute-bound (no read term).
DecodeCost fixed_cost() {
  DecodeCost c;
  c.ns_per_weight = {{TypeId::LB2, 4.0}, {TypeId::Q4_0, 0.5}, {TypeId::Q8_0, 1.5}, {TypeId::F16, 1.0}};
  c.kernels = "fixed";
  return c;
}


// Minimum predicted loss with padded bytes within budget and time within max_ms.
double brute_force(const Measurement& m, const DecodeCost& cost, uint64_t tensor_budget, double max_ms) {
  double best = INFINITY;
  test::for_each_pick(m, [&](const std::vector<size_t>& pick) {
    uint64_t bytes = 0;
    double loss = 0, ms = 0;
    for (size_t i = 0; i < pick.size(); ++i) {
      const CandidateMeasure& c = m.tensors[i].candidates[pick[i]];
      bytes += align32(c.bytes);
      loss += c.predicted;
      ms += candidate_ms(m, m.tensors[i], c, cost);
    }
    if (bytes <= tensor_budget && ms <= max_ms) best = std::min(best, loss);
  });
  return best;
}

TEST(SpeedPlan, FitsBothBudgetsNearTheBruteForceOptimum) {
  std::mt19937 rng(11);
  const DecodeCost cost = fixed_cost();
  int binding = 0;
  for (int trial = 0; trial < 48; ++trial) {
    const Measurement m = priced_measurement(6, rng);
    uint64_t lo = 0, hi = 0;
    double fastest = 0, slowest = 0, widest_step = 0;
    for (const auto& t : m.tensors) {
      lo += align32(t.candidates.front().bytes);
      hi += align32(t.candidates.back().bytes);
      double f = INFINITY, s = 0, kmin = INFINITY, kmax = 0;
      for (const auto& c : t.candidates) {
        f = std::min(f, candidate_ms(m, t, c, cost));
        s = std::max(s, candidate_ms(m, t, c, cost));
        kmin = std::min(kmin, c.predicted);
        kmax = std::max(kmax, c.predicted);
      }
      fastest += f;
      slowest += s;
      widest_step = std::max(widest_step, kmax - kmin);
    }
    // Sizes from tight to loose, times from near the fastest to beyond the slowest.
    const uint64_t tensor_budget = lo + (hi - lo) * static_cast<uint64_t>(trial % 4 + 1) / 4;
    const double max_ms = fastest + (slowest - fastest) * (0.15 + 0.3 * (trial % 3));
    PlanOptions o;
    o.target_bytes = align32(m.header_bytes) + tensor_budget;
    const double optimum = brute_force(m, cost, tensor_budget, max_ms);
    SCOPED_TRACE(fmt::format("trial {}: budget {} bytes, {} ms", trial, tensor_budget, max_ms));
    if (!std::isfinite(optimum)) {
      EXPECT_THROW(make_speed_plan(m, o, cost, max_ms), PlanError);
      continue;
    }
    const Plan p = make_speed_plan(m, o, cost, max_ms);
    const Plan unpriced = make_plan(m, o);
    EXPECT_LE(p.file_bytes, *o.target_bytes);
    EXPECT_LE(plan_ms_per_token(p, m, cost), max_ms * (1 + 1e-12));
    EXPECT_GE(p.predicted_kld, optimum - 1e-12);
    // A Lagrangian price reaches the optimum up to one tensor's step (separable problem).
    EXPECT_LE(p.predicted_kld, optimum + widest_step);
    double sum = 0;
    for (const auto& t : p.tensors) sum += t.predicted;
    EXPECT_NEAR(p.predicted_kld, sum, 1e-12);  // the candidates' own losses, not the priced ones
    if (plan_ms_per_token(unpriced, m, cost) <= max_ms) {
      EXPECT_EQ(p.types(), unpriced.types());  // a budget that does not bind changes nothing
    } else {
      ++binding;
      EXPECT_GT(p.predicted_kld, unpriced.predicted_kld - 1e-12);
    }
  }
  EXPECT_GE(binding, 8);  // the trials exercise the price
}

TEST(SpeedPlan, ImpossibleTimesAndLookupOnlyEmbeddings) {
  std::mt19937 rng(3);
  const DecodeCost cost = fixed_cost();
  Measurement m = priced_measurement(3, rng);
  PlanOptions o;
  o.target_bpw = 16;
  try {
    make_speed_plan(m, o, cost, 1e-9);
    ADD_FAILURE() << "no plan decodes in 1e-9 ms";
  } catch (const PlanError& e) {
    EXPECT_NE(std::string(e.what()).find("the fastest takes"), std::string::npos) << e.what();
  }
  EXPECT_THROW(make_speed_plan(m, o, cost, -1), PlanError);
  // A token embedding costs its product only when it is the head (no output.weight).
  m.tensors[0].name = "token_embd.weight";
  const CandidateMeasure& c = m.tensors[0].candidates[1];
  EXPECT_GT(candidate_ms(m, m.tensors[0], c, cost), 0);
  m.tensors[1].name = "output.weight";
  EXPECT_EQ(candidate_ms(m, m.tensors[0], c, cost), 0);
}

TEST(SpeedPlanCli, PrintsTheDecodeTimeWithinTheBudgetAndRefusesBadTimes) {
  std::mt19937 rng(5);
  Measurement m = priced_measurement(8, rng);
  m.types = {"lb2", "q4_0", "q8_0"};
  const auto dir = test::temp_dir() / "speed-plan-cli";
  std::filesystem::create_directories(dir);
  m.save(dir / "m.json");
  const std::string base = fmt::format("plan '{}' --target-bpw 9 -o '{}'", (dir / "m.json").string(), (dir / "p.json").string());
  const auto free_run = test::run_cli(base + " --max-ms-per-token 1000");
  ASSERT_EQ(free_run.exit_code, 0) << free_run.output;
  const size_t at = free_run.output.find("decode time: ");
  ASSERT_NE(at, std::string::npos) << free_run.output;
  const double unconstrained = std::stod(free_run.output.substr(at + 13));
  ASSERT_GT(unconstrained, 0) << free_run.output;  // printed to 4 significant digits, however small
  EXPECT_NE(free_run.output.find("ns per weight in cache: "), std::string::npos) << free_run.output;
  // Half of that time: the plan must trade quality for it, or say it cannot.
  const auto tight = test::run_cli(base + fmt::format(" --max-ms-per-token {}", unconstrained / 2));
  if (tight.exit_code == 0) {
    const size_t t = tight.output.find("decode time: ");
    ASSERT_NE(t, std::string::npos) << tight.output;
    // Within the budget up to the printed value's rounding (4 significant digits).
    EXPECT_LE(std::stod(tight.output.substr(t + 13)), unconstrained / 2 * (1 + 1e-3));
  } else {
    EXPECT_NE(tight.output.find("the fastest takes"), std::string::npos) << tight.output;
  }
  const auto bad = test::run_cli(base + " --max-ms-per-token -2");
  EXPECT_NE(bad.exit_code, 0);
  EXPECT_NE(bad.output.find("--max-ms-per-token"), std::string::npos) << bad.output;
}

TEST(DecodeCost, TimesEveryUsableTypeAndTakesTheRoofline) {
  const DecodeCost c = measure_decode_cost({TypeId::Q8_0, TypeId::Q4_K, TypeId::LB3, TypeId::F16},
                                           kernels::best_kernels(), 256, 8, 0.001, size_t{8} << 20);
  for (TypeId t : {TypeId::Q8_0, TypeId::Q4_K, TypeId::LB3, TypeId::F16}) {
    EXPECT_GT(c.of(t), 0) << type_traits(t).name;
    EXPECT_TRUE(std::isfinite(c.of(t)));
  }
  EXPECT_GT(c.read_bytes_per_second, 0);
  EXPECT_THROW(c.of(TypeId::Q5_1), std::runtime_error);  // not timed
  // ms = max(weights x ns per weight, bytes / bandwidth).
  DecodeCost f = fixed_cost();
  f.read_bytes_per_second = 1e9;
  EXPECT_DOUBLE_EQ(f.ms(TypeId::Q8_0, 1000000, 100), 1.5);            // compute-bound: 1.5 ns x 1e6
  EXPECT_DOUBLE_EQ(f.ms(TypeId::Q8_0, 1000, 10000000), 10.0);         // read-bound: 1e7 B at 1 GB/s
  EXPECT_THROW(measure_decode_cost({TypeId::Q8_0}, kernels::best_kernels(), 100), std::runtime_error);
}

}  // namespace
}  // namespace mixq
