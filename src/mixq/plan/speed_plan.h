// A speed-aware plan: the lowest predicted KLD under the size budget (plan.h) whose tokens also
// decode within a time budget on this CPU, each tensor's time priced by the decode cost of its
// type (engine/decode_cost.h).
//
// The time of a plan is the sum over its tensors of DecodeCost::ms (one thread, one token: the
// products of the weights; attention, norms and the sampler are not counted). A token embedding
// that the model only looks rows up in (a separate output.weight exists) costs nothing.
//
// Solved by a second Lagrangian price: for mu (KLD per ms) every candidate's predicted loss is
// raised by mu x its time and the size-budget plan is made on that (make_plan: Lagrangian + DP);
// a geometric bisection finds the smallest mu whose plan fits the time budget. The plan returned
// carries the candidates' own predicted KLDs.
#pragma once

#include "mixq/engine/decode_cost.h"
#include "mixq/plan/measurement.h"
#include "mixq/plan/plan.h"

namespace mixq {

// Milliseconds per token of tensor t in candidate c (its outlier columns as F16 weights).
double candidate_ms(const Measurement& m, const TensorMeasure& t, const CandidateMeasure& c, const DecodeCost& cost);
// Milliseconds per token of a plan made from m.
double plan_ms_per_token(const Plan& plan, const Measurement& m, const DecodeCost& cost);

// Throws PlanError when no plan within the size budget decodes within max_ms (naming the fastest
// such plan's time), and what make_plan throws.
Plan make_speed_plan(const Measurement& m, const PlanOptions& opts, const DecodeCost& cost, double max_ms);

}  // namespace mixq
