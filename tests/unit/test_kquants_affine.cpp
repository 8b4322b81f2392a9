// Edge cases of the affine k-quants (Q2_K, Q4_K, Q5_K) that the golden vectors do not reach.
#include <cmath>
#include <random>
#include <vector>

#include <gtest/gtest.h>

#include "mixq/formats/type_table.h"

namespace mixq {
namespace {

constexpr int64_t kN = 512;  // two super-blocks
const TypeId kAffineTypes[] = {TypeId::Q2_K, TypeId::Q4_K, TypeId::Q5_K};

int code_max(TypeId t) { return t == TypeId::Q2_K ? 3 : t == TypeId::Q4_K ? 15 : 31; }

std::vector<uint8_t> quantize(TypeId t, const std::vector<float>& x, const float* importance = nullptr) {
  std::vector<uint8_t> q(type_traits(t).row_bytes(static_cast<int64_t>(x.size())));
  quantize_rows(t, x.data(), q.data(), 1, static_cast<int64_t>(x.size()), importance);
  return q;
}

std::vector<float> dequantize(TypeId t, const std::vector<uint8_t>& q, int64_t n) {
  std::vector<float> y(n);
  dequantize_rows(t, q.data(), y.data(), 1, n);
  return y;
}

std::vector<float> round_trip(TypeId t, const std::vector<float>& x, const float* importance = nullptr) {
  return dequantize(t, quantize(t, x, importance), static_cast<int64_t>(x.size()));
}

double weighted_rmse(const std::vector<float>& a, const std::vector<float>& b, const float* w = nullptr) {
  double se = 0, ws = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    const double d = static_cast<double>(a[i]) - b[i];
    se += (w ? w[i] : 1.0) * d * d;
    ws += w ? w[i] : 1.0;
  }
  return std::sqrt(se / ws);
}

std::vector<float> gaussian(uint32_t seed, float sigma) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, sigma);
  std::vector<float> x(kN);
  for (auto& v : x) v = dist(rng);
  return x;
}

TEST(KQuantAffine, AllZeroSuperBlocksDecodeToZero) {
  const std::vector<float> x(kN, 0.0f);
  const std::vector<float> importance(kN, 1.0f);
  for (TypeId t : kAffineTypes) {
    for (const float* w : {static_cast<const float*>(nullptr), importance.data()}) {
      for (float v : round_trip(t, x, w)) EXPECT_EQ(v, 0.0f) << type_traits(t).name;
    }
  }
}

TEST(KQuantAffine, ConstantBlocksAreReproducedClosely) {
  for (TypeId t : kAffineTypes) {
    for (float c : {0.75f, -0.75f, 0.1f, -0.1f}) {
      const std::vector<float> x(kN, c);
      // Only the fp16 super-scale and the integer scale/minimum limit the precision.
      for (float v : round_trip(t, x)) EXPECT_NEAR(v, c, 2e-3f * std::fabs(c)) << type_traits(t).name << " c=" << c;
    }
  }
}

TEST(KQuantAffine, OneHugeOutlierIsKeptAndOtherSubBlocksSurvive) {
  for (TypeId t : kAffineTypes) {
    std::vector<float> x = gaussian(7, 0.02f);
    x[100] = 20.0f;
    const std::vector<float> y = round_trip(t, x);
    EXPECT_NEAR(y[100], 20.0f, 0.05f * 20.0f) << type_traits(t).name;
    // The second super-block never sees the outlier: its error must match quantizing it alone.
    const std::vector<float> tail(x.begin() + 256, x.end());
    const std::vector<float> tail_alone = round_trip(t, std::vector<float>(tail.begin(), tail.end()));
    for (int i = 0; i < 256; ++i) EXPECT_EQ(y[256 + i], tail_alone[i]) << type_traits(t).name << " at " << i;
    // The outlier's sub-block sets the super-scale, so the other sub-blocks of its super-block get
    // at most a few scale steps; they must still do no worse than the best single constant.
    const std::vector<float> head(x.begin(), x.begin() + 64), head_y(y.begin(), y.begin() + 64);
    double mean = 0;
    for (float v : head) mean += v / 64.0;
    EXPECT_LE(weighted_rmse(head, head_y), weighted_rmse(head, std::vector<float>(64, static_cast<float>(mean))))
        << type_traits(t).name;
  }
}

TEST(KQuantAffine, NegativeOnlyDataFitsWithinHalfAStep) {
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> dist(-1.0f, -0.5f);
  std::vector<float> x(kN);
  for (auto& v : x) v = dist(rng);
  for (TypeId t : kAffineTypes) {
    const std::vector<float> y = round_trip(t, x);
    for (float v : y) EXPECT_LE(v, 0.0f) << type_traits(t).name;
    // Uniform rounding error has an RMS of 0.29 steps; allow half a step of the range's grid.
    EXPECT_LT(weighted_rmse(x, y), 0.5 * 0.5 / code_max(t)) << type_traits(t).name;
  }
}

TEST(KQuantAffine, RequantizingDequantizedValuesIsStable) {
  for (TypeId t : kAffineTypes) {
    const std::vector<float> x = gaussian(11, 0.05f);
    const std::vector<uint8_t> q = quantize(t, x);
    const std::vector<float> y = dequantize(t, q, kN);
    const std::vector<uint8_t> q2 = quantize(t, y);
    if (q2 == q) continue;
    // y lies exactly on a grid the format can store, so quantizing it again may pick different
    // bytes only if they decode at least as close to y as y was to x.
    EXPECT_LE(weighted_rmse(y, dequantize(t, q2, kN)), weighted_rmse(x, y)) << type_traits(t).name;
  }
}

TEST(KQuantAffine, ImportanceLowersTheWeightedError) {
  std::mt19937 rng(5);
  std::lognormal_distribution<float> dist(0.0f, 1.5f);
  std::vector<float> importance(kN);
  for (auto& v : importance) v = dist(rng);
  const std::vector<float> x = gaussian(13, 0.02f);
  for (TypeId t : kAffineTypes) {
    const double plain = weighted_rmse(x, round_trip(t, x), importance.data());
    const double weighted = weighted_rmse(x, round_trip(t, x, importance.data()), importance.data());
    EXPECT_LT(weighted, plain) << type_traits(t).name;
  }
}

TEST(KQuantAffine, ZeroImportanceSubBlocksStillFollowTheData) {
  std::vector<float> importance(kN, 1.0f);
  std::fill(importance.begin(), importance.begin() + 32, 0.0f);
  const std::vector<float> x = gaussian(17, 0.02f);
  for (TypeId t : kAffineTypes) {
    const std::vector<float> y = round_trip(t, x, importance.data());
    const std::vector<float> head(x.begin(), x.begin() + 32), head_y(y.begin(), y.begin() + 32);
    EXPECT_LT(weighted_rmse(head, head_y), 0.02) << type_traits(t).name;
  }
}

}  // namespace
}  // namespace mixq
