// Bit allocation: one type per tensor that minimizes the predicted loss (measure.h) under a size
// or bits-per-weight budget.
//
// It is a multiple-choice knapsack: every quantizable tensor picks exactly one candidate (bytes,
// predicted KLD), the sum of bytes must fit the budget, and the sum of predicted KLDs (the
// per-tensor effects add up to first order) is minimized. Solved two ways, keeping the better:
//   1. Lagrangian relaxation: for a price lambda every tensor picks its candidate minimizing
//      kld + lambda * bytes; bisection finds the cheapest lambda that fits (the optimum over the
//      lower convex hull of each tensor's choices), then a greedy pass spends the bytes left on
//      the upgrades with the best loss reduction per byte;
//   2. exact dynamic programming over the budget in units of `unit` bytes (each choice's bytes
//      rounded up, so the result always fits; unit = 1 byte for budgets up to max_dp_units bytes,
//      which makes it the exact optimum), followed by the same greedy pass.
// The file size counted is the exact size `mixq quantize --plan` writes: the header (plus the
// mixq.extension_types entry when mixq's own types are chosen, and for candidates with outlier
// columns their two companion tensors' entries and the mixq.outlier_columns key), the padded data
// of every tensor. Outlier candidates (measured with MeasureOptions::outliers) compete like types;
// --compat llama.cpp leaves them out.
// Bits per weight are llama.cpp's: 8 * all tensors' bytes / all tensors' elements.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "mixq/plan/measure.h"
#include "mixq/policy/policy.h"

namespace mixq {

class PlanError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct PlanOptions {
  std::optional<double> target_bpw;
  std::optional<uint64_t> target_bytes;     // the whole file
  bool compat_llamacpp = false;             // only types llama.cpp loads (and no outlier columns)
  bool outliers = true;                     // consider the measured outlier candidates
  std::vector<TypeId> allowed;              // empty: every measured type
  std::vector<Rule> fixed;                  // REGEX=TYPE: these tensors get this type, whatever it costs
  int64_t max_dp_units = 400000;            // DP resolution (see the top)
  // Bytes the DP's choice table may take (one byte per tensor and budget unit). Above it the
  // choices are recovered in pieces, recomputing DP rows (time grows by a log factor; the plan
  // is the same), so memory stays at this plus O(log tensors) rows of max_dp_units doubles.
  uint64_t max_dp_table_bytes = uint64_t{256} << 20;
};

// What a plan was asked for: a whole-file size in bytes or llama.cpp's bits per weight. Its label
// ("bytes 304320" / "bpw 4.5000") is how plan.json, the text summary and a quantized file's
// plan label spell it; parse() reads that spelling back.
struct PlanTarget {
  enum class Kind { Bytes, Bpw };
  Kind kind = Kind::Bpw;
  double value = 0;  // bytes (a whole number) or bits per weight

  static PlanTarget bytes(uint64_t n) { return {Kind::Bytes, static_cast<double>(n)}; }
  static PlanTarget bpw(double b) { return {Kind::Bpw, b}; }
  bool is_bytes() const { return kind == Kind::Bytes; }
  std::string label() const;
  // Throws PlanError naming `origin` for anything but "bytes N" / "bpw X".
  static PlanTarget parse(const std::string& label, const std::string& origin);
};

struct PlannedTensor {
  std::string name;
  TypeId type = TypeId::F32;
  int outliers = 0;          // outlier columns kept in f16 beside it (quantize applies them)
  uint64_t bytes = 0;        // the tensor's data, with its outlier companions' data
  double predicted = 0;
  bool fixed = false;        // chosen by a user rule
};

struct Plan {
  std::vector<PlannedTensor> tensors;  // quantizable tensors, file order
  uint64_t file_bytes = 0;             // predicted size of the output file
  uint64_t budget_bytes = 0;           // the file size allowed (from the target)
  uint64_t min_file_bytes = 0;         // the smallest possible file with these candidates
  double bpw = 0;                      // llama.cpp's bits per weight of the result
  double predicted_kld = 0;            // sum of the tensors' predicted KLDs
  double lambda = 0;                   // the Lagrange multiplier found (KLD per byte)
  std::string method;                  // which solver gave the result
  PlanTarget target;
  std::string measurement;             // its file name
  bool compat_llamacpp = false;
  uint64_t dp_peak_bytes = 0;          // memory the DP held at its peak (not saved)

  nlohmann::ordered_json to_json() const;
  static Plan from_json(const nlohmann::ordered_json& j, const std::string& origin);
  static Plan load(const std::filesystem::path& path);
  void save(const std::filesystem::path& path) const;
  std::string to_text() const;     // per tensor, then the summary line
  std::string summary() const;     // the last line of to_text()
  // name -> type, what quantize applies.
  std::map<std::string, TypeId> types() const;
  // name -> outlier columns, for the tensors that keep some.
  std::map<std::string, int> outliers() const;
};

// Throws PlanError for an infeasible budget (with the minimum), an incomplete measurement (missing
// shards) or no target.
Plan make_plan(const Measurement& m, const PlanOptions& opts);

}  // namespace mixq
