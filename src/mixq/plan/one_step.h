// The one-step allocation behind `mixq quantize --target-bpw/--target-size -f TEXT`: an importance
// matrix (unless given), the measurement, and the plan, in one call; and how a plan becomes the
// quantizer's options (the same for a plan file and a one-step plan).
#pragma once

#include <string>

#include "mixq/calib/imatrix.h"
#include "mixq/io/gguf.h"
#include "mixq/plan/measure.h"
#include "mixq/plan/measurement.h"
#include "mixq/plan/plan.h"
#include "mixq/quantize/quantize_model.h"

namespace mixq {

struct OneStepResult {
  Measurement measurement;
  Plan plan;
};

// Measures `file` on `calibration_text` (collecting an importance matrix into `collected` on
// imatrix_chunks chunks when measure.imatrix is null) and plans it under `plan_options`.
// plan.measurement is set to model_label.
OneStepResult allocate_one_step(const GgufFile& file, const std::string& calibration_text, const MeasureOptions& measure,
                                int imatrix_chunks, ImportanceMatrix* collected, const PlanOptions& plan_options,
                                const std::string& model_label);

// Puts a plan into quantize options: its types decide the tensors it lists, its outlier columns
// are applied, its target becomes the file's plan label; unless a default type was given, the
// default (general.file_type) becomes the type holding most of the plan's bytes.
void apply_plan(const Plan& plan, bool default_given, QuantizeOptions& o);

}  // namespace mixq
