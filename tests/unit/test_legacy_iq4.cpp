// Edge cases of the legacy, IQ4 and ternary codecs that the golden vectors do not reach: constant
// and all-zero blocks, lone outliers, values already on the grid, byte layouts and row checks.
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "mixq/formats/half.h"
#include "mixq/formats/iq4.h"
#include "mixq/formats/legacy.h"
#include "mixq/formats/ternary.h"
#include "mixq/formats/type_table.h"
#include "test_support.h"

namespace mixq {
namespace {

const TypeId kTypes[] = {TypeId::Q4_0,   TypeId::Q4_1,   TypeId::Q5_0,  TypeId::Q5_1,  TypeId::Q8_0,
                         TypeId::Q8_1,   TypeId::IQ4_NL, TypeId::IQ4_XS, TypeId::TQ1_0, TypeId::TQ2_0};

std::vector<float> round_trip(TypeId type, const std::vector<float>& x, const float* importance = nullptr) {
  const TypeTraits& t = type_traits(type);
  const auto n = static_cast<int64_t>(x.size());
  std::vector<uint8_t> q(t.row_bytes(n));
  std::vector<float> y(x.size());
  quantize_rows(type, x.data(), q.data(), 1, n, importance);
  dequantize_rows(type, q.data(), y.data(), 1, n);
  return y;
}

using test::gaussian;

double rmse(const std::vector<float>& x, const std::vector<float>& y) {
  double se = 0;
  for (size_t i = 0; i < x.size(); ++i) se += (static_cast<double>(x[i]) - y[i]) * (x[i] - y[i]);
  return std::sqrt(se / static_cast<double>(x.size()));
}

TEST(LegacyCodecs, AllZeroRowsStayZero) {
  const std::vector<float> zeros(512, 0.0f);
  for (const TypeId type : kTypes) {
    const auto y = round_trip(type, zeros);
    for (size_t i = 0; i < y.size(); ++i) {
      ASSERT_EQ(y[i], 0.0f) << type_traits(type).name << " at " << i;
    }
  }
}

TEST(LegacyCodecs, ZeroImportanceFallsBackToPlainError) {
  const auto x = gaussian(512, 0.02f, 7);
  const std::vector<float> zero_weights(x.size(), 0.0f);
  for (const TypeId type : kTypes) {
    const auto y = round_trip(type, x, zero_weights.data());
    EXPECT_EQ(rmse(x, y), rmse(x, round_trip(type, x))) << type_traits(type).name;
  }
}

TEST(LegacyCodecs, AffineTypesKeepConstantBlocks) {
  // A constant block has zero range: only the f16 offset can carry it.
  const std::vector<float> x(64, 0.3125f);  // exactly representable in f16
  for (const TypeId type : {TypeId::Q4_1, TypeId::Q5_1}) {
    const auto y = round_trip(type, x);
    for (size_t i = 0; i < y.size(); ++i) ASSERT_EQ(y[i], x[i]) << type_traits(type).name << " at " << i;
  }
}

TEST(LegacyCodecs, SingleHugeOutlierIsKeptAndOthersStayFinite) {
  for (const TypeId type : kTypes) {
    const TypeTraits& t = type_traits(type);
    auto x = gaussian(static_cast<size_t>(std::max<int64_t>(t.block_size, 256)), 0.01f, 11);
    x[5] = 1000.0f;
    const auto y = round_trip(type, x);
    for (size_t i = 0; i < y.size(); ++i) ASSERT_TRUE(std::isfinite(y[i])) << t.name << " at " << i;
    // Losing the outlier would cost far more than rounding everything else to zero.
    EXPECT_NEAR(y[5], 1000.0f, 1000.0f * (type == TypeId::TQ1_0 || type == TypeId::TQ2_0 ? 0.01f : 0.05f))
        << t.name;
  }
}

TEST(LegacyCodecs, Q8ReproducesValuesOnItsGridExactly) {
  // Every block is d * k for integers k in [-127, 127] with d a power of two (exact in f16), and
  // each block reaches both ends so the scale is pinned.
  std::mt19937 rng(3);
  std::uniform_int_distribution<int> code(-127, 127);
  std::vector<float> x(256);
  for (size_t b = 0; b < x.size() / 32; ++b) {
    const float d = std::ldexp(1.0f, -static_cast<int>(b) - 4);
    for (size_t j = 0; j < 32; ++j) x[b * 32 + j] = d * static_cast<float>(j == 0 ? 127 : j == 1 ? -127 : code(rng));
  }
  for (const TypeId type : {TypeId::Q8_0, TypeId::Q8_1}) {
    const auto y = round_trip(type, x);
    for (size_t i = 0; i < x.size(); ++i) ASSERT_EQ(y[i], x[i]) << type_traits(type).name << " at " << i;
  }
}

TEST(LegacyCodecs, TernaryReproducesTernaryWeightsExactly) {
  // BitNet-style weights are already scale * {-1, 0, 1}: both ternary types must store them losslessly.
  std::mt19937 rng(5);
  std::uniform_int_distribution<int> trit(-1, 1);
  std::vector<float> x(512);
  for (auto& v : x) v = 0.046875f * static_cast<float>(trit(rng));
  x[0] = 0.046875f;  // each block holds at least one nonzero value
  x[256] = -0.046875f;
  for (const TypeId type : {TypeId::TQ1_0, TypeId::TQ2_0}) {
    const auto y = round_trip(type, x);
    for (size_t i = 0; i < x.size(); ++i) ASSERT_EQ(y[i], x[i]) << type_traits(type).name << " at " << i;
  }
}

TEST(LegacyCodecs, ErrorShrinksWithBits) {
  const auto x = gaussian(4096, 0.02f, 13);
  const double q4 = rmse(x, round_trip(TypeId::Q4_0, x));
  const double q5 = rmse(x, round_trip(TypeId::Q5_0, x));
  const double q8 = rmse(x, round_trip(TypeId::Q8_0, x));
  EXPECT_LT(q5, q4 * 0.6);
  EXPECT_LT(q8, q5 * 0.2);
  EXPECT_LT(rmse(x, round_trip(TypeId::Q5_1, x)), rmse(x, round_trip(TypeId::Q4_1, x)) * 0.6);
  // The non-linear grid beats the uniform one on Gaussian data at the same size.
  EXPECT_LT(rmse(x, round_trip(TypeId::IQ4_NL, x)), q4);
}

TEST(LegacyCodecs, ImportanceLowersWeightedError) {
  const auto x = gaussian(4096, 0.02f, 17);
  std::mt19937 rng(19);
  std::lognormal_distribution<float> dist(0.0f, 1.5f);
  std::vector<float> importance(x.size());
  for (auto& v : importance) v = dist(rng);
  const auto weighted = [&](const std::vector<float>& y) {
    double se = 0;
    for (size_t i = 0; i < x.size(); ++i) se += importance[i] * (x[i] - y[i]) * (x[i] - y[i]);
    return se;
  };
  for (const TypeId type : {TypeId::Q4_0, TypeId::Q4_1, TypeId::Q5_0, TypeId::Q5_1, TypeId::IQ4_NL, TypeId::IQ4_XS,
                            TypeId::TQ2_0}) {
    EXPECT_LT(weighted(round_trip(type, x, importance.data())), weighted(round_trip(type, x)))
        << type_traits(type).name;
  }
}

TEST(LegacyCodecs, RowsThatDoNotFillBlocksAreRejected) {
  for (const TypeId type : kTypes) {
    const TypeTraits& t = type_traits(type);
    const int64_t n = t.block_size + t.block_size / 2;
    std::vector<float> x(static_cast<size_t>(n), 1.0f);
    std::vector<uint8_t> q(t.row_bytes(2 * t.block_size));
    EXPECT_THROW(quantize_rows(type, x.data(), q.data(), 1, n), TypeError) << t.name;
    EXPECT_THROW(dequantize_rows(type, q.data(), x.data(), 1, n), TypeError) << t.name;
  }
}

TEST(LegacyCodecs, Q4_0ByteLayoutSplitsHalves) {
  // Byte j holds value j in its low nibble and value j + 16 in its high nibble; code = q + 8.
  legacy::BlockQ4_0 block{};
  block.d = fp32_to_fp16(0.5f);
  block.qs[0] = 0x9f;  // value 0: 15 - 8 = 7, value 16: 9 - 8 = 1
  block.qs[15] = 0x08; // value 15: 0, value 31: -8
  float y[32];
  legacy::dequantize_row_q4_0(&block, y, 32);
  EXPECT_EQ(y[0], 3.5f);
  EXPECT_EQ(y[16], 0.5f);
  EXPECT_EQ(y[15], 0.0f);
  EXPECT_EQ(y[31], -4.0f);
}

TEST(LegacyCodecs, Q5_0HighBitsComeFromLittleEndianMask) {
  legacy::BlockQ5_0 block{};
  block.d = fp32_to_fp16(1.0f);
  block.qh[0] = 0x01;  // value 0 gets bit 4
  block.qh[3] = 0x80;  // value 31 gets bit 4
  float y[32];
  legacy::dequantize_row_q5_0(&block, y, 32);
  EXPECT_EQ(y[0], 0.0f);    // 16 - 16
  EXPECT_EQ(y[1], -16.0f);  // 0 - 16
  EXPECT_EQ(y[31], 0.0f);
}

TEST(LegacyCodecs, Q8_1StoresScaledSumOfCodes) {
  const auto x = gaussian(64, 1.0f, 23);
  legacy::BlockQ8_1 blocks[2];
  legacy::quantize_row_q8_1(x.data(), blocks, 64, nullptr);
  for (const auto& b : blocks) {
    int sum = 0;
    for (const int8_t c : b.qs) sum += c;
    EXPECT_NEAR(fp16_to_fp32(b.s), static_cast<float>(sum) * fp16_to_fp32(b.d),
                std::fabs(fp16_to_fp32(b.s)) * 2e-3f + 1e-3f);
  }
}

TEST(LegacyCodecs, Iq4XsScalesUseBothHalvesOfTheSixBits) {
  iq4::BlockIQ4XS block{};
  block.d = fp32_to_fp16(1.0f);
  block.scales_l[0] = 0x21;   // group 0: low bits 1, group 1: low bits 2
  block.scales_h = 0x2 << 2;  // group 1: high bits 2 -> scale code 2 + 32 = 34 -> l = 2
  std::memset(block.qs, 0xff, sizeof(block.qs));  // every index 15 -> grid value 113
  std::vector<float> y(256);
  iq4::dequantize_row_iq4_xs(&block, y.data(), 256);
  EXPECT_EQ(y[0], -31.0f * 113.0f);  // scale code 1 -> l = -31
  EXPECT_EQ(y[32], 2.0f * 113.0f);
  EXPECT_EQ(y[64], -32.0f * 113.0f);  // code 0 -> l = -32
}

}  // namespace
}  // namespace mixq
