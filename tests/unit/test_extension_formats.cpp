// mixq's own formats (NF4, I8_ROW, I8_MM, LB3, LB2) against references written here from the
// formats' definitions, not from the codecs: bitsandbytes' NF4 rule, a plain min/max affine
// quantizer, hand-packed bytes, and the half-step bound of the INT8 types.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include <fmt/format.h>

#include "mixq/formats/half.h"
#include "mixq/formats/lowbit.h"
#include "mixq/formats/nf4.h"
#include "mixq/formats/type_table.h"
#include "test_support.h"

namespace mixq {
namespace {

constexpr int64_t kRows = 8, kCols = 4096;
constexpr int64_t kGroup = 64;

const TypeId kExtensionTypes[] = {TypeId::NF4, TypeId::I8_ROW, TypeId::I8_MM, TypeId::LB3, TypeId::LB2};

std::vector<uint8_t> quantize(TypeId t, const std::vector<float>& x, int64_t rows, const float* importance = nullptr) {
  const int64_t cols = static_cast<int64_t>(x.size()) / rows;
  std::vector<uint8_t> q(type_traits(t).row_bytes(cols) * rows);
  quantize_rows(t, x.data(), q.data(), rows, cols, importance);
  return q;
}

std::vector<float> dequantize(TypeId t, const std::vector<uint8_t>& q, int64_t rows, int64_t cols) {
  std::vector<float> y(rows * cols);
  dequantize_rows(t, q.data(), y.data(), rows, cols);
  return y;
}

std::vector<float> round_trip(TypeId t, const std::vector<float>& x, int64_t rows, const float* importance = nullptr) {
  return dequantize(t, quantize(t, x, rows, importance), rows, static_cast<int64_t>(x.size()) / rows);
}

// RMSE over a matrix; with w, each column's squared error is weighted by w[column].
double rmse(const std::vector<float>& x, const std::vector<float>& y, int64_t cols, const float* w = nullptr) {
  double se = 0, ws = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    const double wi = w ? w[i % cols] : 1.0;
    const double d = static_cast<double>(x[i]) - y[i];
    se += wi * d * d;
    ws += wi;
  }
  return std::sqrt(se / ws);
}

float half_at(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return fp16_to_fp32(h);
}

using test::gaussian;

struct NamedData {
  std::string name;
  std::vector<float> x;
};

std::filesystem::path golden(const std::string& rel) { return test::shared_data_dir() / "quant-golden" / rel; }

// bitsandbytes' NF4 rule, written from its definition: scale = the block's absmax (f32, as
// bitsandbytes keeps it, or rounded to f16 as mixq stores it), each value the nearest level.
std::vector<float> bnb_nf4(const std::vector<float>& x, bool f16_scale) {
  std::vector<float> y(x.size());
  for (size_t b = 0; b < x.size(); b += kGroup) {
    float amax = 0;
    for (int64_t i = 0; i < kGroup; ++i) amax = std::max(amax, std::fabs(x[b + i]));
    const float scale = f16_scale ? round_fp16(amax) : amax;
    for (int64_t i = 0; i < kGroup; ++i) {
      const double v = amax > 0 ? x[b + i] / static_cast<double>(scale) : 0.0;
      double best = nf4::kLevels[0];
      for (const float l : nf4::kLevels) {
        if (std::fabs(v - l) < std::fabs(v - best)) best = l;
      }
      y[b + i] = static_cast<float>(best * scale);
    }
  }
  return y;
}

// The plain affine min/max quantizer LB3 and LB2 must beat: s = range / qmax, z = -min / s, both
// rounded to f16, nearest code clamped to [0, qmax].
std::vector<float> minmax_affine(const std::vector<float>& x, int qmax) {
  std::vector<float> y(x.size());
  for (size_t b = 0; b < x.size(); b += kGroup) {
    const auto [lo, hi] = std::minmax_element(x.begin() + b, x.begin() + b + kGroup);
    const double s = round_fp16(static_cast<float>((*hi - *lo) / static_cast<double>(qmax)));
    const double z = s > 0 ? round_fp16(static_cast<float>(-*lo / s)) : 0.0;
    for (int64_t i = 0; i < kGroup; ++i) {
      const double q = s > 0 ? std::clamp(std::round(x[b + i] / s + z), 0.0, static_cast<double>(qmax)) : 0.0;
      y[b + i] = s > 0 ? static_cast<float>((q - z) * s) : *lo;
    }
  }
  return y;
}

// ---------------------------------------------------------------------------------------------
// NF4

TEST(ExtensionNf4, GoldenRmseWithinBitsandbytesFigures) {
  MIXQ_REQUIRE_SHARED("quant-golden/gauss/input.f32");
  // bitsandbytes' own RMSE on these inputs (blocksize 64), computed outside this project.
  const struct {
    const char* dataset;
    double bnb_rmse;
  } cases[] = {{"gauss", 0.001849}, {"heavy", 0.002920}};
  fmt::print("| dataset | mixq nf4 RMSE | bnb rule here (f32 absmax) | bnb rule, f16 absmax | bnb figure |\n"
             "|---|---|---|---|---|\n");
  for (const auto& c : cases) {
    const auto x = test::read_raw<float>(golden(std::string(c.dataset) + "/input.f32"));
    ASSERT_EQ(x.size(), static_cast<size_t>(kRows * kCols));
    const double ours = rmse(x, round_trip(TypeId::NF4, x, kRows), kCols);
    const double ref = rmse(x, bnb_nf4(x, false), kCols);
    const double ref16 = rmse(x, bnb_nf4(x, true), kCols);
    fmt::print("| {} | {:.6f} | {:.6f} | {:.6f} | {:.6f} |\n", c.dataset, ours, ref, ref16, c.bnb_rmse);
    // The independent reference reproduces bitsandbytes' figure (printed to 4 significant digits).
    EXPECT_NEAR(ref, c.bnb_rmse, 0.001 * c.bnb_rmse) << c.dataset;
    EXPECT_LE(ours, c.bnb_rmse) << c.dataset;
    EXPECT_LE(ours, ref16) << c.dataset;
  }
}

TEST(ExtensionNf4, ByteLayoutHighNibbleFirst) {
  // Values exactly on the grid at scale 0.5: the quantizer must reproduce them, and its bytes must
  // be the f16 scale then code pairs with the even value in the high nibble.
  std::vector<float> x(kGroup);
  for (int64_t i = 0; i < kGroup; ++i) x[i] = nf4::kLevels[(i * 5) % 16] * 0.5f;
  const auto q = quantize(TypeId::NF4, x, 1);
  ASSERT_EQ(q.size(), 34u);
  EXPECT_EQ(half_at(q.data()), 0.5f);
  for (int64_t j = 0; j < kGroup / 2; ++j) {
    const int hi = static_cast<int>((2 * j * 5) % 16), lo = static_cast<int>(((2 * j + 1) * 5) % 16);
    EXPECT_EQ(q[2 + j], (hi << 4) | lo) << "byte " << j;
  }
  EXPECT_EQ(dequantize(TypeId::NF4, q, 1, kGroup), x);
}

TEST(ExtensionNf4, NeverWorseThanBitsandbytesPerBlock) {
  // The search starts from bitsandbytes' scale, so no block may come out worse than it.
  for (const float sigma : {1e-4f, 0.02f, 3.0f}) {
    auto x = gaussian(64 * 64, sigma, 11);
    x[100] *= 40;  // a heavy outlier in one block
    const auto y = round_trip(TypeId::NF4, x, 1);
    const auto ref = bnb_nf4(x, true);
    for (size_t b = 0; b < x.size(); b += kGroup) {
      double e = 0, er = 0;
      for (int64_t i = 0; i < kGroup; ++i) {
        e += std::pow(static_cast<double>(x[b + i]) - y[b + i], 2);
        er += std::pow(static_cast<double>(x[b + i]) - ref[b + i], 2);
      }
      // Slack: the search ranks scales by a float sum, which may misorder near-equal candidates.
      EXPECT_LE(e, er * (1 + 1e-5)) << "sigma " << sigma << " block " << b / kGroup;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// LB3 / LB2

TEST(ExtensionLowbit, Pack8x3RoundTripsEveryPattern) {
  uint8_t bytes[3], codes[8], packed[3];
  for (uint32_t word = 0; word < (1u << 24); ++word) {
    bytes[0] = static_cast<uint8_t>(word);
    bytes[1] = static_cast<uint8_t>(word >> 8);
    bytes[2] = static_cast<uint8_t>(word >> 16);
    lowbit::unpack8x3(bytes, codes);
    for (int i = 0; i < 8; ++i) {
      if (codes[i] != ((word >> (3 * i)) & 7u)) FAIL() << "unpack of word " << word << ", code " << i;
    }
    lowbit::pack8x3(codes, packed);
    if (std::memcmp(bytes, packed, 3) != 0) FAIL() << "pack of word " << word;
  }
}

TEST(ExtensionLowbit, Pack4x2RoundTripsEveryPattern) {
  uint8_t codes[4];
  for (int byte = 0; byte < 256; ++byte) {
    lowbit::unpack4x2(static_cast<uint8_t>(byte), codes);
    for (int i = 0; i < 4; ++i) ASSERT_EQ(codes[i], (byte >> (2 * i)) & 3) << byte;
    ASSERT_EQ(lowbit::pack4x2(codes), byte);
  }
}

TEST(ExtensionLowbit, HandPackedBlocksDecode) {
  // s = 0.5, z = 1.5: value = (q - 1.5) / 2, codes q = i mod (qmax + 1) packed by hand.
  const uint16_t s = fp32_to_fp16(0.5f), z = fp32_to_fp16(1.5f);
  for (const int bits : {3, 2}) {
    const TypeId t = bits == 3 ? TypeId::LB3 : TypeId::LB2;
    std::vector<uint8_t> block(type_traits(t).block_bytes, 0);
    std::memcpy(block.data(), &s, 2);
    std::memcpy(block.data() + 2, &z, 2);
    const int levels = 1 << bits;
    for (int i = 0; i < kGroup; ++i) {
      const int bit = i * bits;  // 3-bit: 8 codes per little-endian 24-bit word = bit stream order
      for (int k = 0; k < bits; ++k) {
        if (((i % levels) >> k) & 1) block[4 + (bit + k) / 8] |= static_cast<uint8_t>(1u << ((bit + k) % 8));
      }
    }
    const auto y = dequantize(t, block, 1, kGroup);
    for (int i = 0; i < kGroup; ++i) EXPECT_EQ(y[i], (i % levels - 1.5f) * 0.5f) << bits << "-bit, value " << i;
  }
}

// For each group: values inside the grid's span decode within half a step, and nothing decodes
// outside it. Returns the number of values checked against the half-step bound.
int64_t check_lowbit_bound(TypeId t, const std::vector<float>& x, const char* what) {
  const int qmax = t == TypeId::LB3 ? 7 : 3;
  const auto q = quantize(t, x, 1);
  const auto y = dequantize(t, q, 1, static_cast<int64_t>(x.size()));
  const size_t bb = type_traits(t).block_bytes;
  int64_t checked = 0;
  for (size_t g = 0; g * kGroup < x.size(); ++g) {
    const double s = half_at(&q[g * bb]), z = half_at(&q[g * bb + 2]);
    const double lo = (0 - z) * s, hi = (qmax - z) * s;
    // Levels and midpoints are each rounded once in f32; a few ulps of the span's magnitude cover it.
    const double eps = 4 * std::ldexp(std::max(std::fabs(lo), std::fabs(hi)), -24);
    for (int64_t i = 0; i < kGroup; ++i) {
      const double xi = x[g * kGroup + i], yi = y[g * kGroup + i];
      if (s > 0) {
        EXPECT_GE(yi, std::min(lo, hi) - eps) << what;
        EXPECT_LE(yi, std::max(lo, hi) + eps) << what;
      }
      if (s > 0 && xi >= lo && xi <= hi) {
        EXPECT_LE(std::fabs(xi - yi), s / 2 + eps) << what << " group " << g << " value " << i;
        ++checked;
      }
    }
  }
  return checked;
}

TEST(ExtensionLowbit, HalfStepBoundAndBeatsMinMax) {
  std::vector<NamedData> sets;
  sets.push_back({"random gauss", gaussian(64 * 256, 0.02f, 3)});
  auto shifted = gaussian(64 * 256, 0.5f, 4);
  for (auto& v : shifted) v += 3.0f;  // far from zero: z well outside [0, qmax]
  sets.push_back({"random shifted", shifted});
  if (!test::shared_data_dir().empty() && std::filesystem::exists(golden("gauss/input.f32"))) {
    for (const char* d : {"gauss", "heavy", "stories260K"}) {
      sets.push_back({d, test::read_raw<float>(golden(std::string(d) + "/input.f32"))});
    }
  }
  fmt::print("| data | type | mixq RMSE | min/max RMSE | ratio |\n|---|---|---|---|---|\n");
  for (const auto& [name, x] : sets) {
    for (const TypeId t : {TypeId::LB3, TypeId::LB2}) {
      const int qmax = t == TypeId::LB3 ? 7 : 3;
      EXPECT_GT(check_lowbit_bound(t, x, name.c_str()), static_cast<int64_t>(x.size() / 2)) << name;
      const double ours = rmse(x, round_trip(t, x, 1), 1);
      const double base = rmse(x, minmax_affine(x, qmax), 1);
      fmt::print("| {} | {} | {:.6g} | {:.6g} | {:.3f} |\n", name, type_traits(t).name, ours, base, ours / base);
      EXPECT_LT(ours, base) << name << " " << type_traits(t).name;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// INT8

// Data meant to break the half-step bound: huge dynamic range, constants not representable in
// f16, zeros, lone outliers, values at the very top of f16's range, and tiny subnormal scales.
std::vector<NamedData> adversarial_int8_sets() {
  std::vector<NamedData> sets;
  std::mt19937 rng(5);
  std::uniform_real_distribution<float> expo(-8.0f, 4.0f), unit(-1.0f, 1.0f);
  std::vector<float> wide(64 * 64);
  for (auto& v : wide) v = std::copysign(std::pow(10.0f, expo(rng)), unit(rng));
  sets.push_back({"wide range", wide});
  std::vector<float> consts;
  for (const float c : {0.1f, 1.0f / 3.0f, -1000.3f, 7.0f, -2e-6f, 65504.0f, 60000.7f}) consts.insert(consts.end(), 64, c);
  sets.push_back({"constants", consts});
  sets.push_back({"zeros", std::vector<float>(256, 0.0f)});
  auto outlier = gaussian(64 * 16, 0.02f, 6);
  outlier[37] = 50.0f;
  outlier[64 * 9 + 3] = -1e4f;
  sets.push_back({"one outlier", outlier});
  // Narrow ranges far from zero: f32's spacing at the values is coarser than d's f16 step.
  std::vector<float> offset;
  for (int centre = -3; centre <= 4; ++centre) {
    for (int width = -6; width <= 0; ++width) {
      const float c = std::pow(10.0f, static_cast<float>(centre)) * (unit(rng) < 0 ? -1.0f : 1.0f);
      const float h = std::fabs(c) * std::pow(10.0f, static_cast<float>(width));
      for (int i = 0; i < 64; ++i) offset.push_back(c + h * unit(rng));
    }
  }
  sets.push_back({"offset", offset});
  std::vector<float> tiny(64 * 8);
  for (auto& v : tiny) v = unit(rng) * 1e-6f;  // steps in f16's subnormal range
  sets.push_back({"tiny", tiny});
  return sets;
}

// The half-step bound of I8_MM, with no slack: the quantizer picks codes on the decoded values.
void check_i8_mm(const std::vector<float>& x, const std::string& what) {
  const auto q = quantize(TypeId::I8_MM, x, 1);
  const auto y = dequantize(TypeId::I8_MM, q, 1, static_cast<int64_t>(x.size()));
  for (size_t g = 0; g * kGroup < x.size(); ++g) {
    const double d = half_at(&q[g * 68]);
    for (int64_t i = 0; i < kGroup; ++i) {
      const size_t k = g * kGroup + i;
      ASSERT_LE(std::fabs(static_cast<double>(x[k]) - y[k]), d / 2)
          << what << ": value " << k << " = " << x[k] << " decoded " << y[k] << ", d " << d;
    }
  }
}

// The half-step bound of I8_ROW. Slack: half an ulp of the decoded value, the rounding of the f32
// product q * s itself (the exact grid point q * s is within s / 2; the stored value is the float
// nearest it).
void check_i8_row(const std::vector<float>& x, int64_t rows, const std::string& what) {
  const int64_t n = static_cast<int64_t>(x.size()) / rows;
  const auto q = quantize(TypeId::I8_ROW, x, rows);
  const auto y = dequantize(TypeId::I8_ROW, q, rows, n);
  for (int64_t r = 0; r < rows; ++r) {
    float s;
    std::memcpy(&s, &q[r * (4 + n)], 4);
    for (int64_t i = 0; i < n; ++i) {
      const size_t k = r * n + i;
      const int code = static_cast<int8_t>(q[r * (4 + n) + 4 + i]);
      ASSERT_GE(code, -127) << what;
      const double slack = std::ldexp(std::fabs(static_cast<double>(y[k])), -24);
      ASSERT_LE(std::fabs(static_cast<double>(x[k]) - y[k]), s / 2.0 + slack)
          << what << ": row " << r << " value " << i << " = " << x[k] << " decoded " << y[k];
    }
  }
}

// Inputs placed exactly on (and one ulp either side of) the midpoints of a block's own grid,
// keeping the block's min and max so the quantizer rebuilds the same grid.
std::vector<float> midpoint_attack(const std::vector<float>& x) {
  const auto q = quantize(TypeId::I8_MM, x, 1);
  std::vector<float> out = x;
  std::mt19937 rng(9);
  for (size_t g = 0; g * kGroup < x.size(); ++g) {
    const float d = half_at(&q[g * 68]), m = half_at(&q[g * 68 + 2]);
    const auto [lo, hi] = std::minmax_element(x.begin() + g * kGroup, x.begin() + (g + 1) * kGroup);
    const float vlo = *lo, vhi = *hi;
    for (int64_t i = 0; i < kGroup; ++i) {
      const int k = static_cast<int>(rng() % 255);
      float v = m + (static_cast<float>(k) + 0.5f) * d;
      if (i % 3 == 1) v = std::nextafter(v, -INFINITY);
      if (i % 3 == 2) v = std::nextafter(v, INFINITY);
      out[g * kGroup + i] = std::clamp(v, vlo, vhi);
    }
    out[g * kGroup] = vlo;
    out[g * kGroup + 1] = vhi;
  }
  return out;
}

TEST(ExtensionInt8, HalfStepBoundOnGoldenAndAdversarialData) {
  auto sets = adversarial_int8_sets();
  for (int seed = 0; seed < 20; ++seed) {
    auto x = gaussian(64 * 64, std::pow(10.0f, static_cast<float>(seed % 7) - 4.0f), 100 + seed);
    sets.push_back({fmt::format("midpoints {}", seed), midpoint_attack(x)});
  }
  const auto adversarial = sets;
  for (const auto& [name, x] : adversarial) sets.push_back({"midpoints, " + name, midpoint_attack(x)});
  if (!test::shared_data_dir().empty() && std::filesystem::exists(golden("gauss/input.f32"))) {
    for (const char* d : {"gauss", "heavy", "stories260K"}) {
      sets.push_back({d, test::read_raw<float>(golden(std::string(d) + "/input.f32"))});
    }
  }
  for (const auto& [name, x] : sets) {
    check_i8_mm(x, name);
    const int64_t rows = x.size() % (kRows * 64) == 0 ? kRows : 1;
    check_i8_row(x, rows, name);
  }
}

TEST(ExtensionInt8, RowLayoutScaleThenCodes) {
  // Rows of odd length put the second row's f32 scale at an odd offset.
  const std::vector<float> x = {1.27f, -0.635f, 0.0f, 0.01f, 0.5f, -2.54f, 0.0f, 1.0f, 0.02f, 2.54f};
  const auto q = quantize(TypeId::I8_ROW, x, 2);
  ASSERT_EQ(q.size(), 2u * (4 + 5));
  float s0, s1;
  std::memcpy(&s0, &q[0], 4);
  std::memcpy(&s1, &q[9], 4);
  EXPECT_EQ(s0, 1.27f / 127.0f);
  EXPECT_EQ(s1, 2.54f / 127.0f);
  EXPECT_EQ(static_cast<int8_t>(q[4]), 127);
  EXPECT_EQ(static_cast<int8_t>(q[6]), 0);
  EXPECT_EQ(static_cast<int8_t>(q[8]), 50);
  EXPECT_EQ(static_cast<int8_t>(q[13]), -127);
  EXPECT_EQ(static_cast<int8_t>(q[17]), 127);
}

// ---------------------------------------------------------------------------------------------
// All five

TEST(ExtensionFormats, ZeroRowsStayZero) {
  const std::vector<float> zeros(256, 0.0f);  // 256: whole blocks for every type
  for (const TypeId t : kExtensionTypes) EXPECT_EQ(round_trip(t, zeros, 1), zeros) << type_traits(t).name;
}

TEST(ExtensionFormats, ConstantGroupsReproduceExactly) {
  // Constants representable in f16 survive every block type exactly (I8_ROW's f32 scale c / 127
  // need not give back c, so it is held to its half-step bound elsewhere instead).
  for (const float c : {1.0f, -0.375f, 1000.0f, -65504.0f, 0x1p-20f}) {
    const std::vector<float> x(128, c);
    for (const TypeId t : {TypeId::NF4, TypeId::I8_MM, TypeId::LB3, TypeId::LB2}) {
      EXPECT_EQ(round_trip(t, x, 1), x) << type_traits(t).name << " " << c;
    }
  }
}

TEST(ExtensionFormats, ImportanceDoesNotRaiseWeightedError) {
  MIXQ_REQUIRE_SHARED("quant-golden/imatrix.f32");
  const auto w = test::read_raw<float>(golden("imatrix.f32"));
  ASSERT_EQ(w.size(), static_cast<size_t>(kCols));
  fmt::print("| dataset | type | bpw | RMSE | weighted RMSE, plain | weighted RMSE, imatrix |\n"
             "|---|---|---|---|---|---|\n");
  for (const char* d : {"gauss", "heavy", "stories260K"}) {
    const auto x = test::read_raw<float>(golden(std::string(d) + "/input.f32"));
    for (const TypeId t : kExtensionTypes) {
      const auto plain = round_trip(t, x, kRows);
      const auto weighted = round_trip(t, x, kRows, w.data());
      const double e_plain = rmse(x, plain, kCols, w.data()), e_imat = rmse(x, weighted, kCols, w.data());
      fmt::print("| {} | {} | {:.3f} | {:.6g} | {:.6g} | {:.6g} |\n", d, type_traits(t).name,
                 type_traits(t).bits_per_weight(kCols), rmse(x, plain, kCols), e_plain, e_imat);
      EXPECT_LE(e_imat, e_plain * (1 + 1e-9)) << d << " " << type_traits(t).name;
    }
  }
}

}  // namespace
}  // namespace mixq
