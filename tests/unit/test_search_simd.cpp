// The SIMD scale searches (formats/search_avx512.cpp) against the portable reference: every
// quantizer in the type table must write the same bytes with either, on data that reaches the
// searches' edge cases (importance weights with zeros, outliers, ties on the code grid, constant,
// all-zero and tiny blocks, values at the f16 limits).
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include <gtest/gtest.h>

#include "mixq/formats/search_isa.h"
#include "mixq/formats/type_table.h"

namespace mixq {
namespace {

constexpr int64_t kCols = 1536;  // whole blocks of every type (32, 256 values), as ffn_down rows of SmolLM2

struct Case {
  std::string name;
  std::vector<float> x;    // rows * kCols
  std::vector<float> imp;  // kCols, or empty
};

std::vector<Case> cases() {
  std::vector<Case> out;
  std::mt19937 rng(1234);
  const int64_t rows = 6;
  const auto fill = [&](auto&& gen) {
    std::vector<float> v(static_cast<size_t>(rows * kCols));
    for (size_t i = 0; i < v.size(); ++i) v[i] = gen(i);
    return v;
  };
  std::normal_distribution<float> normal(0.0f, 0.02f);
  std::student_t_distribution<float> heavy(2.0f);
  std::uniform_int_distribution<int> small_int(-9, 9);
  std::uniform_real_distribution<float> uni(0.0f, 1.0f);
  std::lognormal_distribution<float> logn(0.0f, 1.5f);
  std::vector<float> imp(static_cast<size_t>(kCols)), imp_zeros(static_cast<size_t>(kCols));
  for (auto& v : imp) v = logn(rng);
  for (size_t i = 0; i < imp_zeros.size(); ++i) imp_zeros[i] = (i / 16) % 5 == 0 || uni(rng) < 0.3f ? 0.0f : logn(rng);
  auto gaussian = fill([&](size_t) { return normal(rng); });
  out.push_back({"gaussian", gaussian, {}});
  out.push_back({"gaussian+imatrix", gaussian, imp});
  out.push_back({"gaussian+sparse imatrix", gaussian, imp_zeros});
  out.push_back({"heavy tails", fill([&](size_t) { return 0.01f * heavy(rng); }), imp});
  // Outliers: one value in 64 a hundred times larger than its neighbours.
  out.push_back({"outliers", fill([&](size_t i) { return normal(rng) * (i % 64 == 7 ? 100.0f : 1.0f); }), {}});
  // Values on a grid: many exact ties in x * iscale.
  out.push_back({"integers", fill([&](size_t) { return static_cast<float>(small_int(rng)); }), {}});
  out.push_back({"quarter steps", fill([&](size_t) { return 0.25f * static_cast<float>(small_int(rng)); }), imp});
  // Whole blocks and sub-blocks constant, zero, or tiny (below what an f16 scale can hold).
  out.push_back({"blocky", fill([&](size_t i) {
                   const size_t block = i / 16;
                   switch (block % 7) {
                     case 0: return 0.0f;
                     case 1: return 0.5f;
                     case 2: return 1e-9f * normal(rng);
                     case 3: return -3.0f;
                     case 4: return 1e-30f;
                     default: return normal(rng);
                   }
                 }),
                 imp_zeros});
  out.push_back({"large", fill([&](size_t) { return 3000.0f * normal(rng); }), {}});
  out.push_back({"positive", fill([&](size_t) { return std::fabs(normal(rng)); }), imp});
  return out;
}

TEST(SearchSimd, EveryQuantizerWritesTheReferenceBytes) {
  if (!search::avx512_available()) GTEST_SKIP() << "this CPU has no AVX-512 F/DQ/BW/VL: only the reference runs here";
  const search::Isa before = search::isa();
  int compared = 0;
  for (const auto& c : cases()) {
    const int64_t rows = static_cast<int64_t>(c.x.size()) / kCols;
    for (const auto& t : all_types()) {
      if (!t.can_quantize() || !t.quantized || kCols % t.block_size != 0) continue;
      const size_t bytes = t.row_bytes(kCols) * static_cast<size_t>(rows);
      std::vector<uint8_t> ref(bytes), simd(bytes);
      const float* imp = c.imp.empty() ? nullptr : c.imp.data();
      search::set_isa(search::Isa::scalar);
      quantize_rows(t.id, c.x.data(), ref.data(), rows, kCols, imp);
      search::set_isa(search::Isa::avx512);
      quantize_rows(t.id, c.x.data(), simd.data(), rows, kCols, imp);
      size_t first = bytes;
      for (size_t i = 0; i < bytes && first == bytes; ++i) {
        if (ref[i] != simd[i]) first = i;
      }
      EXPECT_EQ(first, bytes) << t.name << " on " << c.name << ": bytes differ from the reference, first at byte "
                              << first << " (row " << first / t.row_bytes(kCols) << ")";
      ++compared;
    }
  }
  search::set_isa(before);
  EXPECT_GT(compared, 50);
}

// Rows of an odd number of 32-value blocks: the legacy search pairs blocks, and the last one of
// such a row runs alone.
TEST(SearchSimd, OddBlockCountsMatchTheReference) {
  if (!search::avx512_available()) GTEST_SKIP() << "this CPU has no AVX-512 F/DQ/BW/VL: only the reference runs here";
  const search::Isa before = search::isa();
  std::mt19937 rng(99);
  std::normal_distribution<float> normal(0.0f, 0.02f);
  std::lognormal_distribution<float> logn(0.0f, 1.0f);
  for (const int64_t cols : {32, 96, 800}) {
    const int64_t rows = 5;
    std::vector<float> x(static_cast<size_t>(rows * cols)), imp(static_cast<size_t>(cols));
    for (auto& v : x) v = normal(rng);
    for (auto& v : imp) v = logn(rng);
    for (const auto& t : all_types()) {
      if (!t.can_quantize() || !t.quantized || cols % t.block_size != 0) continue;
      for (const float* importance : {static_cast<const float*>(nullptr), static_cast<const float*>(imp.data())}) {
        const size_t bytes = t.row_bytes(cols) * static_cast<size_t>(rows);
        std::vector<uint8_t> ref(bytes), simd(bytes);
        search::set_isa(search::Isa::scalar);
        quantize_rows(t.id, x.data(), ref.data(), rows, cols, importance);
        search::set_isa(search::Isa::avx512);
        quantize_rows(t.id, x.data(), simd.data(), rows, cols, importance);
        EXPECT_EQ(ref, simd) << t.name << ", rows of " << cols << (importance ? ", with importance" : "");
      }
    }
  }
  search::set_isa(before);
}

// TypeTraits::block_local: one call over many rows writes what one call per row writes, with either
// search (quantize_model hands such types whole chunks of rows).
TEST(SearchSimd, BlockLocalTypesQuantizeManyRowsAsOne) {
  const search::Isa before = search::isa();
  std::mt19937 rng(5);
  std::normal_distribution<float> normal(0.0f, 0.02f);
  const int64_t cols = 576, rows = 7;  // 18 blocks a row: 126 blocks in one call
  std::vector<float> x(static_cast<size_t>(rows * cols));
  for (auto& v : x) v = normal(rng);
  for (size_t i = 0; i < x.size(); i += 97) x[i] *= 50.0f;
  int checked = 0;
  for (const auto& t : all_types()) {
    if (!t.block_local) continue;
    for (const search::Isa isa : {search::Isa::scalar, search::Isa::avx512}) {
      search::set_isa(isa);
      const size_t bytes = t.row_bytes(cols) * static_cast<size_t>(rows);
      std::vector<uint8_t> per_row(bytes), at_once(bytes);
      quantize_rows(t.id, x.data(), per_row.data(), rows, cols, nullptr);
      t.quantize_row(x.data(), at_once.data(), rows * cols, nullptr);
      EXPECT_EQ(per_row, at_once) << t.name << " (" << search::isa_name(isa) << ")";
      ++checked;
    }
  }
  search::set_isa(before);
  EXPECT_GE(checked, 6);
}

TEST(SearchSimd, ForcingTheReferenceSticks) {
  const search::Isa before = search::isa();
  search::set_isa(search::Isa::scalar);
  EXPECT_EQ(search::isa(), search::Isa::scalar);
  search::set_isa(search::Isa::avx512);
  EXPECT_EQ(search::isa(), search::avx512_available() ? search::Isa::avx512 : search::Isa::scalar);
  search::set_isa(before);
}

}  // namespace
}  // namespace mixq
