// Scale calibration for mixq's own formats (NF4, I8_ROW, I8_MM, LB3, LB2): how a group's (or a
// row's) range is chosen before its values are coded, as `mixq quantize --calib` selects it.
//
//   search      the format's default: shrunk ranges + least-squares re-fit, importance-weighted
//   minmax      the group's min and max (symmetric: +-max |x|), as bitsandbytes' absmax
//   percentile  clip at the p-th percentile (asymmetric: the (100-p)-th and p-th; symmetric:
//               the p-th of |x|); p = 99.9 unless written percentile:P
//   mse         the clip ratio r (51 steps, 1.0 down to 0.5) whose coded values have the least
//               importance-weighted squared error
// symmetric: zero-point formats (LB3, LB2, I8_MM) keep the zero point at the middle code (NF4 and
//   I8_ROW are symmetric by construction).
// hqq_iterations > 0: after the range is chosen, HQQ's calibration-free refinement of the zero
//   point (zero-point formats): alternately shrink the coding error with a generalized
//   soft-threshold (an l_p norm, p = 0.7, that lets a few outliers keep large errors) and move the
//   zero point to the mean of what remains, with the scale fixed.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

namespace mixq {

enum class ScaleMethod : uint8_t { Search, MinMax, Percentile, Mse };

struct Calibration {
  ScaleMethod method = ScaleMethod::Search;
  double percentile = 99.9;
  bool symmetric = false;
  int hqq_iterations = 0;

  bool is_default() const { return method == ScaleMethod::Search && !symmetric && hqq_iterations == 0; }
  std::string to_string() const;
};

// "search", "minmax", "percentile", "percentile:99.5", "mse". Throws std::runtime_error naming
// the choices.
Calibration parse_calibration(const std::string& method, bool symmetric, int hqq_iterations);

namespace calib {

struct Range {
  float lo, hi;
};

// The range of n values (weights w, may be null) by c.method (not Search), symmetric when asked.
// score(lo, hi) is the format's coded error for a range (used by Mse).
Range choose_range(const float* x, const float* w, int64_t n, const Calibration& c, bool symmetric,
                   const std::function<float(float lo, float hi)>& score);

// HQQ's zero-point refinement for codes 0 .. qmax, value = (q - z) * s, s fixed: returns z.
float hqq_zero(const float* x, int64_t n, int qmax, float s, float z, int iterations);

}  // namespace calib
}  // namespace mixq
