// --calib: the range choices of mixq's own formats (NF4, I8_ROW, I8_MM, LB3, LB2) checked through
// their dequantizers: minmax covers every value, percentile clips outliers, mse never does worse
// than minmax, symmetric keeps the zero point in the middle, HQQ lowers its l_p objective.
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include <gtest/gtest.h>

#include "mixq/formats/calibration.h"
#include "mixq/formats/half.h"
#include "mixq/formats/type_table.h"

namespace mixq {
namespace {

constexpr int64_t kN = 64 * 32;

// Gaussian rows with a few large outliers (as real weight rows have).
std::vector<float> heavy_row(uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> g(0.01f, 1.0f);
  std::vector<float> x(kN);
  for (auto& v : x) v = g(rng);
  for (int64_t i = 5; i < kN; i += 97) x[static_cast<size_t>(i)] = (i % 2 ? 9.0f : -6.5f) + g(rng);
  return x;
}

std::vector<float> roundtrip(TypeId t, const std::vector<float>& x, const Calibration& c) {
  const TypeTraits& tt = type_traits(t);
  std::vector<uint8_t> q(tt.row_bytes(kN));
  tt.quantize_row_calib(x.data(), q.data(), kN, nullptr, c);
  std::vector<float> y(kN);
  tt.dequantize_row(q.data(), y.data(), kN);
  return y;
}

double sq_error(const std::vector<float>& x, const std::vector<float>& y) {
  double e = 0;
  for (size_t i = 0; i < x.size(); ++i) e += (static_cast<double>(x[i]) - y[i]) * (x[i] - y[i]);
  return e;
}

Calibration calib(const char* m, bool sym = false, int hqq = 0) { return parse_calibration(m, sym, hqq); }

TEST(Calibration, ParsesTheMethodsAndRejectsOthers) {
  EXPECT_EQ(calib("minmax").method, ScaleMethod::MinMax);
  EXPECT_EQ(calib("mse").method, ScaleMethod::Mse);
  EXPECT_EQ(calib("percentile").percentile, 99.9);
  EXPECT_EQ(calib("percentile:99.5").percentile, 99.5);
  EXPECT_TRUE(calib("search").is_default());
  EXPECT_THROW(calib("percentile:20"), std::runtime_error);
  EXPECT_THROW(calib("percentile:abc"), std::runtime_error);
  EXPECT_THROW(calib("kmeans"), std::runtime_error);
  EXPECT_THROW(calib("minmax", false, -1), std::runtime_error);
  EXPECT_EQ(calib("percentile:99", true, 5).to_string(), "percentile:99,symmetric,hqq:5");
}

TEST(Calibration, EveryCalibratedFormatIsInTheTable) {
  for (TypeId t : {TypeId::NF4, TypeId::I8_ROW, TypeId::I8_MM, TypeId::LB3, TypeId::LB2}) {
    EXPECT_NE(type_traits(t).quantize_row_calib, nullptr) << type_traits(t).name;
  }
  EXPECT_EQ(type_traits(TypeId::Q4_K).quantize_row_calib, nullptr);
}

// minmax: no value is clipped, so every error is within half a step of the group's grid; the
// percentile choice clips the outliers (larger error there, smaller elsewhere).
TEST(Calibration, MinMaxCoversPercentileClips) {
  const auto x = heavy_row(1);
  for (TypeId t : {TypeId::LB3, TypeId::LB2, TypeId::I8_MM}) {
    const int levels = t == TypeId::LB3 ? 8 : t == TypeId::LB2 ? 4 : 256;
    const auto y = roundtrip(t, x, calib("minmax"));
    for (int64_t g = 0; g < kN / 64; ++g) {
      float lo = x[static_cast<size_t>(g * 64)], hi = lo;
      for (int i = 0; i < 64; ++i) {
        lo = std::min(lo, x[static_cast<size_t>(g * 64 + i)]);
        hi = std::max(hi, x[static_cast<size_t>(g * 64 + i)]);
      }
      const float step = (hi - lo) / static_cast<float>(levels - 1);
      for (int i = 0; i < 64; ++i) {
        const size_t k = static_cast<size_t>(g * 64 + i);
        // f16 rounding of the scale and zero point may widen a half step by a little.
        EXPECT_LE(std::fabs(x[k] - y[k]), 0.5f * step * 1.02f + 1e-3f) << type_traits(t).name << " group " << g;
      }
    }
    const auto p = roundtrip(t, x, calib("percentile:99"));
    double out_mm = 0, out_p = 0, in_mm = 0, in_p = 0;
    for (size_t k = 0; k < x.size(); ++k) {
      const bool outlier = std::fabs(x[k]) > 4;
      (outlier ? out_mm : in_mm) += (x[k] - y[k]) * (x[k] - y[k]);
      (outlier ? out_p : in_p) += (x[k] - p[k]) * (x[k] - p[k]);
    }
    EXPECT_GT(out_p, out_mm) << type_traits(t).name;
    // With few levels the finer steps pay for the clipped outliers; with 256 they do not.
    if (levels <= 8) {
      EXPECT_LT(in_p, in_mm) << type_traits(t).name;
    }
  }
}

// mse searches clip ratios including 1.0 (= minmax), scored with the stored arithmetic.
TEST(Calibration, MseIsNeverWorseThanMinMax) {
  for (uint32_t seed = 0; seed < 4; ++seed) {
    const auto x = heavy_row(seed);
    for (TypeId t : {TypeId::LB3, TypeId::LB2, TypeId::I8_MM, TypeId::I8_ROW, TypeId::NF4}) {
      const double mm = sq_error(x, roundtrip(t, x, calib("minmax")));
      const double mse = sq_error(x, roundtrip(t, x, calib("mse")));
      EXPECT_LE(mse, mm * (1 + 1e-6)) << type_traits(t).name;
    }
    // With 4 levels clipping pays off a lot on these rows.
    EXPECT_LT(sq_error(x, roundtrip(TypeId::LB2, x, calib("mse"))), 0.8 * sq_error(x, roundtrip(TypeId::LB2, x, calib("minmax"))));
  }
}

TEST(Calibration, SymmetricKeepsTheZeroPointInTheMiddle) {
  const auto x = heavy_row(3);
  const TypeTraits& lb3 = type_traits(TypeId::LB3);
  std::vector<uint8_t> q(lb3.row_bytes(kN));
  lb3.quantize_row_calib(x.data(), q.data(), kN, nullptr, calib("minmax", true));
  for (size_t g = 0; g < kN / 64; ++g) {
    uint16_t z;
    std::memcpy(&z, q.data() + g * lb3.block_bytes + 2, 2);
    EXPECT_EQ(fp16_to_fp32(z), 3.5f);
  }
  // LB2: levels +-0.5 s and +-1.5 s, every decoded value one of them.
  const TypeTraits& lb2 = type_traits(TypeId::LB2);
  std::vector<uint8_t> q2(lb2.row_bytes(kN));
  lb2.quantize_row_calib(x.data(), q2.data(), kN, nullptr, calib("minmax", true));
  std::vector<float> y(kN);
  lb2.dequantize_row(q2.data(), y.data(), kN);
  for (size_t g = 0; g < kN / 64; ++g) {
    uint16_t s16, z16;
    std::memcpy(&s16, q2.data() + g * lb2.block_bytes, 2);
    std::memcpy(&z16, q2.data() + g * lb2.block_bytes + 2, 2);
    EXPECT_EQ(fp16_to_fp32(z16), 1.5f);
    const float s = fp16_to_fp32(s16);
    for (size_t i = 0; i < 64; ++i) {
      const float k = y[g * 64 + i] / s;
      EXPECT_TRUE(k == -1.5f || k == -0.5f || k == 0.5f || k == 1.5f) << k;
    }
  }
  // NF4 minmax is bitsandbytes' absmax: the scale is the block's largest magnitude.
  const TypeTraits& nf4 = type_traits(TypeId::NF4);
  std::vector<uint8_t> n4(nf4.row_bytes(kN));
  nf4.quantize_row_calib(x.data(), n4.data(), kN, nullptr, calib("minmax"));
  for (size_t b = 0; b < kN / 64; ++b) {
    float amax = 0;
    for (size_t i = 0; i < 64; ++i) amax = std::max(amax, std::fabs(x[b * 64 + i]));
    uint16_t d;
    std::memcpy(&d, n4.data() + b * nf4.block_bytes, 2);
    EXPECT_EQ(fp16_to_fp32(d), round_fp16(amax));
  }
}

// HQQ minimizes sum |error|^p (p < 1) over the zero point: it must lower that objective from
// the min/max start on rows with outliers.
TEST(Calibration, HqqLowersItsObjective) {
  for (TypeId t : {TypeId::LB3, TypeId::LB2}) {
    double before = 0, after = 0;
    for (uint32_t seed = 10; seed < 14; ++seed) {
      const auto x = heavy_row(seed);
      const auto a = roundtrip(t, x, calib("minmax"));
      const auto b = roundtrip(t, x, calib("minmax", false, 20));
      for (size_t k = 0; k < x.size(); ++k) {
        before += std::pow(std::fabs(static_cast<double>(x[k]) - a[k]), 0.7);
        after += std::pow(std::fabs(static_cast<double>(x[k]) - b[k]), 0.7);
      }
    }
    EXPECT_LT(after, before) << type_traits(t).name;
  }
}

}  // namespace
}  // namespace mixq
