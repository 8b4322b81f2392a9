#include "mixq/plan/one_step.h"

#include <map>

namespace mixq {

OneStepResult allocate_one_step(const GgufFile& file, const std::string& calibration_text, const MeasureOptions& measure,
                                int imatrix_chunks, ImportanceMatrix* collected, const PlanOptions& plan_options,
                                const std::string& model_label) {
  OneStepResult r{measure_file(file, calibration_text, measure, imatrix_chunks, collected), Plan{}};
  r.plan = make_plan(r.measurement, plan_options);
  r.plan.measurement = model_label;
  return r;
}

void apply_plan(const Plan& plan, bool default_given, QuantizeOptions& o) {
  o.policy.plan = plan.types();
  o.plan_outliers = plan.outliers();
  o.policy.plan_label = plan.target.label().substr(0, 32);
  if (default_given) return;
  std::map<TypeId, uint64_t> bytes;
  for (const auto& t : plan.tensors) bytes[t.type] += t.bytes;
  TypeId best = o.policy.default_type;
  uint64_t most = 0;
  for (const auto& [t, b] : bytes) {
    if (b > most) {
      most = b;
      best = t;
    }
  }
  o.policy.default_type = best;
}

}  // namespace mixq
