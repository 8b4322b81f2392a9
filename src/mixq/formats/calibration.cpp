#include "mixq/formats/calibration.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <vector>

#include <fmt/format.h>

namespace mixq {

std::string Calibration::to_string() const {
  std::string s;
  switch (method) {
    case ScaleMethod::Search: s = "search"; break;
    case ScaleMethod::MinMax: s = "minmax"; break;
    case ScaleMethod::Percentile: s = fmt::format("percentile:{}", percentile); break;
    case ScaleMethod::Mse: s = "mse"; break;
  }
  if (symmetric) s += ",symmetric";
  if (hqq_iterations > 0) s += fmt::format(",hqq:{}", hqq_iterations);
  return s;
}

Calibration parse_calibration(const std::string& method, bool symmetric, int hqq_iterations) {
  Calibration c;
  c.symmetric = symmetric;
  if (hqq_iterations < 0 || hqq_iterations > 1000) {
    throw std::runtime_error(fmt::format("--hqq {}: give 1 to 1000 iterations", hqq_iterations));
  }
  c.hqq_iterations = hqq_iterations;
  if (method.empty() || method == "search") {
    c.method = ScaleMethod::Search;
  } else if (method == "minmax" || method == "absmax") {
    c.method = ScaleMethod::MinMax;
  } else if (method == "mse") {
    c.method = ScaleMethod::Mse;
  } else if (method.starts_with("percentile")) {
    c.method = ScaleMethod::Percentile;
    if (method.size() > 10) {
      size_t pos = 0;
      double p = -1;
      try {
        if (method[10] != ':') throw std::invalid_argument("");
        p = std::stod(method.substr(11), &pos);
        if (pos != method.size() - 11) p = -1;
      } catch (const std::exception&) {
        p = -1;
      }
      if (!(p > 50 && p <= 100)) {
        throw std::runtime_error(fmt::format("--calib '{}': write percentile:P with 50 < P <= 100, e.g. percentile:99.9",
                                             method));
      }
      c.percentile = p;
    }
  } else {
    throw std::runtime_error(fmt::format("--calib '{}': choose search, minmax, percentile[:P] or mse", method));
  }
  return c;
}

namespace calib {

namespace {

// Linear interpolation between order statistics of sorted values.
float quantile(const std::vector<float>& sorted, double q) {
  const double pos = q * static_cast<double>(sorted.size() - 1);
  const auto i = static_cast<size_t>(std::floor(pos));
  const size_t j = std::min(i + 1, sorted.size() - 1);
  return static_cast<float>(sorted[i] + (pos - static_cast<double>(i)) * (sorted[j] - sorted[i]));
}

}  // namespace

Range choose_range(const float* x, const float* /*w*/, int64_t n, const Calibration& c, bool symmetric,
                   const std::function<float(float lo, float hi)>& score) {
  const auto [lo_it, hi_it] = std::minmax_element(x, x + n);
  const float amax = std::max(std::fabs(*lo_it), std::fabs(*hi_it));
  Range r = symmetric ? Range{-amax, amax} : Range{*lo_it, *hi_it};
  switch (c.method) {
    case ScaleMethod::Search:
    case ScaleMethod::MinMax:
      return r;
    case ScaleMethod::Percentile: {
      std::vector<float> v(x, x + n);
      if (symmetric) {
        for (auto& e : v) e = std::fabs(e);
        std::sort(v.begin(), v.end());
        const float a = quantile(v, c.percentile / 100);
        return {-a, a};
      }
      std::sort(v.begin(), v.end());
      return {quantile(v, 1 - c.percentile / 100), quantile(v, c.percentile / 100)};
    }
    case ScaleMethod::Mse: {
      Range best = r;
      float best_err = score(r.lo, r.hi);
      for (int k = 1; k <= 50; ++k) {
        const float f = 1.0f - 0.01f * static_cast<float>(k);
        const float err = score(r.lo * f, r.hi * f);
        if (err < best_err) {
          best_err = err;
          best = {r.lo * f, r.hi * f};
        }
      }
      return best;
    }
  }
  return r;
}

float hqq_zero(const float* x, int64_t n, int qmax, float s, float z, int iterations) {
  if (!(s > 0) || n == 0) return z;
  constexpr double kP = 0.7, kKappa = 1.01;
  double beta = 10.0;
  std::vector<double> q(static_cast<size_t>(n));
  for (int it = 0; it < iterations; ++it) {
    // Codes for the current zero point, then the shrunk error e and the zero point that fits the
    // rest: z = mean(q - (x - e) / s).
    double acc = 0;
    for (int64_t i = 0; i < n; ++i) {
      const double qi = std::clamp(std::nearbyint(static_cast<double>(x[i]) / s + z), 0.0, static_cast<double>(qmax));
      const double err = x[i] - (qi - z) * s;
      // Generalized soft-threshold for the l_p norm: shrink |err| by |err|^(p-1) / beta.
      const double mag = std::fabs(err);
      const double e = mag > 0 ? std::copysign(std::max(0.0, mag - std::pow(mag, kP - 1) / beta), err) : 0.0;
      q[static_cast<size_t>(i)] = qi;
      acc += qi - (x[i] - e) / s;
    }
    const double nz = acc / static_cast<double>(n);
    beta *= kKappa;
    if (std::fabs(nz - z) < 1e-6) {
      z = static_cast<float>(nz);
      break;
    }
    z = static_cast<float>(nz);
  }
  return z;
}

}  // namespace calib
}  // namespace mixq
