#include "mixq/plan/speed_plan.h"

#include <cmath>
#include <unordered_map>

#include <fmt/format.h>

namespace mixq {

namespace {

// A token embedding the graph only reads rows of: the model has a separate output matrix.
bool lookup_only(const Measurement& m, const TensorMeasure& t) {
  if (t.name != "token_embd.weight") return false;
  for (const auto& u : m.tensors) {
    if (u.name == "output.weight") return true;
  }
  return false;
}

const TensorMeasure* find_tensor(const Measurement& m, const std::string& name) {
  for (const auto& t : m.tensors) {
    if (t.name == name) return &t;
  }
  return nullptr;
}

}  // namespace

double candidate_ms(const Measurement& m, const TensorMeasure& t, const CandidateMeasure& c, const DecodeCost& cost) {
  if (lookup_only(m, t)) return 0.0;
  const int64_t weights = t.n_elements();
  double ms = cost.ms(c.type, weights, c.bytes);
  if (c.outliers > 0 && !t.shape.empty()) {
    const int64_t rows = weights / t.shape.front();
    ms += cost.ms(TypeId::F16, rows * c.outliers, c.outlier_bytes);
  }
  return ms;
}

double plan_ms_per_token(const Plan& plan, const Measurement& m, const DecodeCost& cost) {
  double ms = 0;
  for (const auto& p : plan.tensors) {
    const TensorMeasure* t = find_tensor(m, p.name);
    if (t == nullptr) throw PlanError(fmt::format("plan tensor {} is not in the measurement", p.name));
    if (const CandidateMeasure* c = t->find(p.type, p.outliers)) {
      ms += candidate_ms(m, *t, *c, cost);
    } else if (!lookup_only(m, *t)) {  // a user rule's type that was not measured
      ms += cost.ms(p.type, t->n_elements(), p.bytes);
    }
  }
  return ms;
}

Plan make_speed_plan(const Measurement& m, const PlanOptions& opts, const DecodeCost& cost, double max_ms) {
  if (!(max_ms > 0) || std::isinf(max_ms)) {
    throw PlanError(fmt::format("--max-ms-per-token {}: give a time in milliseconds above 0", max_ms));
  }
  Plan best = make_plan(m, opts);
  double best_ms = plan_ms_per_token(best, m, cost);
  if (best_ms <= max_ms) return best;

  // The plan at price mu, with the candidates' own losses restored.
  Measurement priced = m;
  const auto plan_at = [&](double mu, double& ms) {
    for (size_t i = 0; i < m.tensors.size(); ++i) {
      const TensorMeasure& t = m.tensors[i];
      for (size_t j = 0; j < t.candidates.size(); ++j) {
        priced.tensors[i].candidates[j].predicted = t.candidates[j].predicted + mu * candidate_ms(m, t, t.candidates[j], cost);
      }
    }
    Plan p = make_plan(priced, opts);
    p.predicted_kld = 0;
    for (auto& pt : p.tensors) {
      const CandidateMeasure* c = find_tensor(m, pt.name)->find(pt.type, pt.outliers);
      if (c != nullptr) pt.predicted = c->predicted;
      p.predicted_kld += pt.predicted;
    }
    ms = plan_ms_per_token(p, m, cost);
    return p;
  };
  // A price at which the plan fits: KLD per ms from 1e-6 up.
  double lo = 0, hi = 1e-6, ms = 0;
  Plan fit = plan_at(hi, ms);
  while (ms > max_ms) {
    lo = hi;
    hi *= 10;
    if (hi > 1e9) {
      throw PlanError(fmt::format("no plan within the size budget decodes in {:.3f} ms per token here: the fastest "
                                  "takes {:.3f} ms (one thread, kernels {}); raise the time or the size budget",
                                  max_ms, ms, cost.kernels));
    }
    fit = plan_at(hi, ms);
  }
  // The smallest price that fits (its plan has the lowest loss among those the price reaches).
  for (int i = 0; i < 30 && hi > lo * 1.001; ++i) {
    const double mid = lo > 0 ? std::sqrt(lo * hi) : hi / 10;
    double mid_ms = 0;
    Plan p = plan_at(mid, mid_ms);
    if (mid_ms <= max_ms) {
      hi = mid;
      fit = std::move(p);
    } else {
      lo = mid;
    }
  }
  fit.method += fmt::format(" + decode-time price {:.4g} KLD/ms", hi);
  return fit;
}

}  // namespace mixq
