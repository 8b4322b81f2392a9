// The engine's kernels against independent references: every integer view against the type's own
// dequantizer (bit for bit; the k-quant dequantizers read those views, so the independent check of
// the views is GoldenQuant.IntegerViewsReproduceGgmlsFloats, against ggml's own floats), the activation quantizers against the Q8_1 / Q8_K codecs (ggml's
// activation formats), and every kernel set against the scalar set and against a double-precision
// dot of the dequantized operands, on random data.
#include <algorithm>
#include <cmath>
#include <iterator>
#include <random>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include "mixq/engine/kernels.h"
#include "mixq/engine/repack.h"
#include "mixq/formats/half.h"
#include "mixq/formats/kquants/kquants.h"
#include "mixq/formats/legacy.h"
#include "mixq/formats/type_table.h"
#include "mixq/util/thread_pool.h"

namespace mixq {
namespace {

std::vector<float> random_row(int64_t n, uint32_t seed, float outlier = 0.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> g(0.0f, 1.0f);
  std::vector<float> x(static_cast<size_t>(n));
  for (auto& v : x) v = g(rng);
  if (outlier != 0.0f) x[static_cast<size_t>(n / 3)] = outlier;
  return x;
}

// Row lengths each type can hold, including ones that are not multiples of 32 where the type allows.
std::vector<int64_t> lengths_for(const TypeTraits& t) {
  // 96, 160, 288 and 1280 leave 32 codes after the last 64 (the wide kernels' masked tail).
  if (t.block_size == 1) return {64, 96, 172, 576};
  if (t.block_size == 32) return {64, 160, 288, 576};
  // 64, 192 and 1344 end on a single group after the two-group steps.
  if (t.block_size == 64) return {64, 192, 512, 1344};
  return {256, 1280, 1536};
}

bool engine_runs(const TypeTraits& t) { return t.can_quantize() && t.can_dequantize() && t.id != TypeId::Q8_1; }

TEST(Kernels, IntegerViewsEqualTheDequantizers) {
  int checked = 0;
  for (const TypeTraits& t : all_types()) {
    if (t.unpack_row == nullptr) continue;
    for (int64_t n : lengths_for(t)) {
      const auto x = random_row(n, 7 + static_cast<uint32_t>(n), 9.0f);
      std::vector<uint8_t> bytes(t.row_bytes(n));
      t.quantize_row(x.data(), bytes.data(), n, nullptr);
      std::vector<float> y(static_cast<size_t>(n));
      t.dequantize_row(bytes.data(), y.data(), n);
      std::vector<int8_t> q(static_cast<size_t>(n));
      std::vector<float> scale(static_cast<size_t>((n + 15) / 16)), offset(scale.size());
      t.unpack_row(bytes.data(), q.data(), scale.data(), offset.data(), n);
      for (int64_t i = 0; i < n; ++i) {
        const float v = scale[static_cast<size_t>(i / 16)] * static_cast<float>(q[static_cast<size_t>(i)]) +
                        offset[static_cast<size_t>(i / 16)];
        ASSERT_EQ(v, y[static_cast<size_t>(i)]) << t.name << " n=" << n << " i=" << i;
      }
      ++checked;
    }
  }
  EXPECT_GE(checked, 30);
}

TEST(Kernels, Q8_0ActivationsAreGgmlsAbsmaxBlocks) {
  // Q8_1 is ggml's activation block for Q4_1/Q5_1: the same codes and f16 scale as Q8_0 activations.
  const int64_t n = 1024;
  {
    // A block of exact halves (amax 127: d = 1, the codes are the values rounded) rounds them away
    // from zero, as ggml's quantize_row_q8_0_ref (roundf) does. (mixq's Q8_1 weight codec, below,
    // rounds ties to even, so this block stays out of that comparison.)
    const float halves[] = {127.0f, 2.5f, -2.5f, 0.5f, -0.5f, 126.5f, -126.5f, -15.5f, 1.5f, 0.49999997f};
    const int8_t rounded[] = {127, 3, -3, 1, -1, 127, -127, -16, 2, 0};
    std::vector<float> xh(32, 0.0f);
    std::copy(std::begin(halves), std::end(halves), xh.begin());
    kernels::PreparedActs ah;
    kernels::prepare_activations(ActFormat::Q8_0, xh.data(), 1, 32, ah);
    for (size_t i = 0; i < std::size(halves); ++i) EXPECT_EQ(ah.q[i], rounded[i]) << halves[i];
  }
  const auto x = random_row(n, 11, -20.0f);
  kernels::PreparedActs a;
  kernels::prepare_activations(ActFormat::Q8_1, x.data(), 1, n, a);
  kernels::PreparedActs a0;
  kernels::prepare_activations(ActFormat::Q8_0, x.data(), 1, n, a0);
  EXPECT_EQ(a.q, a0.q);
  EXPECT_EQ(a.dx, a0.dx);
  std::vector<legacy::BlockQ8_1> ref(static_cast<size_t>(n / 32));
  legacy::quantize_row_q8_1(x.data(), ref.data(), n, nullptr);
  for (int64_t b = 0; b < n / 32; ++b) {
    EXPECT_EQ(a.dx[static_cast<size_t>(2 * b)], fp16_to_fp32(ref[static_cast<size_t>(b)].d)) << b;
    EXPECT_EQ(a.dsum[static_cast<size_t>(2 * b)], fp16_to_fp32(ref[static_cast<size_t>(b)].s)) << b;
    EXPECT_EQ(a.dsum[static_cast<size_t>(2 * b + 1)], 0.0f) << b;
    for (int j = 0; j < 32; ++j) ASSERT_EQ(a.q[static_cast<size_t>(32 * b + j)], ref[static_cast<size_t>(b)].qs[j]) << b;
  }
}

TEST(Kernels, Q8_KActivationsMatchTheQ8_KCodec) {
  const int64_t n = 1024;
  const auto x = random_row(n, 12, 15.0f);
  kernels::PreparedActs a;
  kernels::prepare_activations(ActFormat::Q8_K, x.data(), 1, n, a);
  std::vector<kq::BlockQ8K> ref(static_cast<size_t>(n / 256));
  kq::quantize_row_q8_k(x.data(), ref.data(), n, nullptr);
  for (int64_t b = 0; b < n / 256; ++b) {
    EXPECT_EQ(a.dx[static_cast<size_t>(16 * b)], ref[static_cast<size_t>(b)].d);
    for (int j = 0; j < 256; ++j) ASSERT_EQ(a.q[static_cast<size_t>(256 * b + j)], ref[static_cast<size_t>(b)].qs[j]);
    for (int g = 0; g < 16; ++g) {
      EXPECT_EQ(a.dsum[static_cast<size_t>(16 * b + g)], ref[static_cast<size_t>(b)].d * ref[static_cast<size_t>(b)].bsums[g]);
    }
  }
}

// ggml's nearest_int rounds half to even: with the extreme at -127 the scale is exactly 1, so 2.5
// must become 2 and 3.5 become 4, in the codec and in the engine's activations alike.
TEST(Kernels, Q8_KRoundsHalfToEvenLikeGgml) {
  std::vector<float> x(256, 0.0f);
  x[0] = -127.0f;
  x[1] = 2.5f;
  x[2] = 3.5f;
  x[3] = -0.5f;
  std::vector<kq::BlockQ8K> ref(1);
  kq::quantize_row_q8_k(x.data(), ref.data(), 256, nullptr);
  EXPECT_EQ(ref[0].qs[0], -127);  // iscale = -127 / extreme = 1
  EXPECT_EQ(ref[0].qs[1], 2);
  EXPECT_EQ(ref[0].qs[2], 4);
  EXPECT_EQ(ref[0].qs[3], 0);
  kernels::PreparedActs a;
  kernels::prepare_activations(ActFormat::Q8_K, x.data(), 1, 256, a);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(a.q[static_cast<size_t>(i)], ref[0].qs[i]) << i;
}

// Activations as the kernels see them, decoded back to floats.
std::vector<double> decoded_activation(const kernels::PreparedActs& a) {
  std::vector<double> v(static_cast<size_t>(a.n_pad));
  for (int64_t i = 0; i < a.n_pad; ++i) {
    v[static_cast<size_t>(i)] = a.f.empty() ? static_cast<double>(a.dx[static_cast<size_t>(i / 16)]) * a.q[static_cast<size_t>(i)]
                                            : a.f[static_cast<size_t>(i)];
  }
  return v;
}

TEST(Kernels, EverySetMatchesTheReferenceOnEveryType) {
  int checked = 0;
  for (const TypeTraits& t : all_types()) {
    if (!engine_runs(t)) continue;
    for (int64_t n : lengths_for(t)) {
      const auto w = random_row(n, 21 + static_cast<uint32_t>(n), 6.0f);
      std::vector<uint8_t> bytes(t.row_bytes(n));
      t.quantize_row(w.data(), bytes.data(), n, nullptr);
      std::vector<float> wd(static_cast<size_t>(n));
      t.dequantize_row(bytes.data(), wd.data(), n);
      kernels::PreparedRow row[4];
      for (auto& r : row) kernels::prepare_row(t, bytes.data(), n, r);
      const auto x = random_row(n * 2, 99 + static_cast<uint32_t>(n));
      kernels::PreparedActs a;
      kernels::prepare_activations(t.act_format, x.data(), 2, n, a);
      for (int tok = 0; tok < 2; ++tok) {
        // Reference: the dequantized weights against the activation as quantized, in double.
        kernels::PreparedActs one;
        kernels::prepare_activations(t.act_format, x.data() + tok * n, 1, n, one);
        const auto xd = decoded_activation(one);
        double ref = 0, mag = 0;
        for (int64_t i = 0; i < n; ++i) {
          ref += static_cast<double>(wd[static_cast<size_t>(i)]) * xd[static_cast<size_t>(i)];
          mag += std::fabs(static_cast<double>(wd[static_cast<size_t>(i)]) * xd[static_cast<size_t>(i)]);
        }
        if (t.act_format == ActFormat::Q8_1) {
          // ggml's Q8_1 carries s = f16(d * sum of codes) per 32 values, and the weight minimum
          // multiplies that rounded s instead of the exact sum: apply the same to the reference.
          std::vector<legacy::BlockQ8_1> blocks(static_cast<size_t>(n / 32));
          legacy::quantize_row_q8_1(x.data() + tok * n, blocks.data(), n, nullptr);
          for (int64_t b = 0; b < n / 32; ++b) {
            const auto& blk = blocks[static_cast<size_t>(b)];
            int sum = 0;
            for (int j = 0; j < 32; ++j) sum += blk.qs[j];
            const double m = row[0].offset[static_cast<size_t>(2 * b)];
            ref += m * (static_cast<double>(fp16_to_fp32(blk.s)) - static_cast<double>(fp16_to_fp32(blk.d)) * sum);
          }
        }
        const float scalar = kernels::dot(kernels::scalar_kernels(), row[0], a, tok);
        EXPECT_NEAR(scalar, ref, 2e-6 * mag + 1e-6) << t.name << " n=" << n;
        for (const kernels::KernelSet* k : kernels::available_kernel_sets()) {
          const float got = kernels::dot(*k, row[0], a, tok);
          EXPECT_NEAR(got, scalar, 2e-6 * mag + 1e-6) << k->name << " " << t.name << " n=" << n;
          const kernels::PreparedRow* four[4] = {&row[0], &row[1], &row[2], &row[3]};
          float out4[4];
          kernels::dot4(*k, four, a, tok, 1, out4);
          for (float o : out4) EXPECT_NEAR(o, scalar, 2e-6 * mag + 1e-6) << k->name << " x4 " << t.name;
          if (tok == 0) {
            float out8[8];
            kernels::dot4(*k, four, a, 0, 2, out8);
            const float second = kernels::dot(kernels::scalar_kernels(), row[0], a, 1);
            for (int r = 0; r < 4; ++r) {
              EXPECT_NEAR(out8[r], scalar, 2e-6 * mag + 1e-6) << k->name << " 4x2 " << t.name;
              EXPECT_NEAR(out8[4 + r], second, 2e-6 * mag + 1e-6) << k->name << " 4x2 " << t.name;
            }
          }
        }
        ++checked;
      }
    }
  }
  EXPECT_GE(checked, 40);
}

// The in-place decode kernels (RowDotFn) of every set against the reference (the integer view and
// the scalar kernel), on random rows with an outlier weight, for every type that has one. Both sum
// the same exact integer group sums in F32, in different orders: each side's rounding error is at
// most (terms) * eps * sum |terms|, so the bound below is that of two F32 sums of the reference's
// terms (scale * dx * group sum, offset * dsum); a wrong code, scale or group is far outside it.
TEST(Kernels, FastPathsMatchTheReferenceOnEveryType) {
  int checked = 0;
  std::vector<std::string> covered;
  for (const kernels::KernelSet* k : kernels::available_kernel_sets()) {
    for (const TypeTraits& t : all_types()) {
      const kernels::RowDotFn fast = kernels::row_dot_for(*k, t.id);
      if (fast == nullptr) continue;
      ASSERT_TRUE(engine_runs(t) && t.unpack_row != nullptr) << t.name;
      covered.push_back(fmt::format("{}:{}", k->name, t.name));
      for (int64_t n : lengths_for(t)) {
        for (uint32_t seed = 0; seed < 3; ++seed) {
          const auto w = random_row(n, 31 + 7 * seed + static_cast<uint32_t>(n), seed == 1 ? 0.0f : 9.0f);
          std::vector<uint8_t> bytes(t.row_bytes(n));
          t.quantize_row(w.data(), bytes.data(), n, nullptr);
          kernels::PreparedRow row;
          kernels::prepare_row(t, bytes.data(), n, row);
          const auto x = random_row(n * 3, 77 + seed + static_cast<uint32_t>(n), seed == 2 ? -30.0f : 0.0f);
          kernels::PreparedActs a;
          kernels::prepare_activations(t.act_format, x.data(), 3, n, a);
          for (int tok = 0; tok < 3; ++tok) {
            const float ref = kernels::dot(kernels::scalar_kernels(), row, a, tok);
            double mag = 0;
            const int8_t* aq = a.q_row(tok);
            for (int64_t g = 0; g < a.n_pad / 16; ++g) {
              int64_t s = 0;
              for (int64_t i = 16 * g; i < 16 * g + 16; ++i) s += int64_t{row.q[static_cast<size_t>(i)]} * aq[i];
              mag += std::fabs(double{row.scale[static_cast<size_t>(g)]} * a.dx_row(tok)[g] * static_cast<double>(s));
              mag += std::fabs(double{row.offset[static_cast<size_t>(g)]} * a.dsum_row(tok)[g]);
            }
            const double terms = static_cast<double>(a.n_pad / 16) * 2 + 16;
            const double bound = 2 * terms * std::ldexp(1.0, -24) * mag;
            const float got = fast(bytes.data(), n, a.row(tok));
            EXPECT_NEAR(got, ref, bound) << k->name << " " << t.name << " n=" << n << " seed=" << seed << " tok=" << tok;
            ++checked;
          }
        }
      }
    }
  }
  // On an AVX-512 machine every type of the decode tables is covered (the engine's fast paths).
  if (kernels::avx512_kernels() != nullptr) {
    for (const char* name : {"q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "iq4_nl", "q2_K", "q3_K", "q4_K", "q5_K", "q6_K", "iq4_xs", "lb3", "lb2"}) {
      EXPECT_NE(std::find(covered.begin(), covered.end(), fmt::format("avx512:{}", name)), covered.end()) << name;
    }
  }
  if (kernels::avx2_kernels() != nullptr) {
    for (const char* name : {"q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "iq4_nl", "q2_K", "q3_K", "q4_K", "q5_K", "q6_K", "iq4_xs", "lb3", "lb2"}) {
      EXPECT_NE(std::find(covered.begin(), covered.end(), fmt::format("avx2:{}", name)), covered.end()) << name;
    }
  }
  if (kernels::avx2_kernels() != nullptr) {
    EXPECT_GT(checked, 0);
  }
}

// The four-row interleaved layouts (engine/repack.h): repacking is lossless (every row comes back
// byte for byte, alone or any range at once, the rows past the last full group stay as they are;
// in place gives the same bytes), and every set's interleaved
// kernel gives each row of each full group the reference's dot within the bound of the in-place
// kernels' test (the same exact integer sums, another F32 order), for row counts that leave 0 to
// 3 rows after the groups.
TEST(Kernels, InterleavedRowsMatchTheReferenceOnEveryRepackedType) {
  int checked = 0;
  for (const TypeId id : {TypeId::Q5_0, TypeId::Q8_0, TypeId::IQ4_NL}) {
    const TypeTraits& t = type_traits(id);
    ASSERT_TRUE(kernels::has_repacked_layout(id)) << t.name;
    for (int64_t n : {32, 64, 160, 576}) {
      for (int64_t rows : {1, 3, 4, 5, 7, 8, 11}) {
        const size_t rb = t.row_bytes(n);
        std::vector<uint8_t> bytes(rb * static_cast<size_t>(rows)), packed(bytes.size());
        std::vector<kernels::PreparedRow> prepared(static_cast<size_t>(rows));
        for (int64_t r = 0; r < rows; ++r) {
          const auto w = random_row(n, 5 + static_cast<uint32_t>(13 * r + n), r == 2 ? 9.0f : 0.0f);
          t.quantize_row(w.data(), bytes.data() + rb * static_cast<size_t>(r), n, nullptr);
          kernels::prepare_row(t, bytes.data() + rb * static_cast<size_t>(r), n, prepared[static_cast<size_t>(r)]);
        }
        kernels::repack_rows(id, bytes.data(), rows, n, packed.data());
        std::vector<uint8_t> back(rb);
        for (int64_t r = 0; r < rows; ++r) {
          kernels::unpacked_row(id, packed.data(), rows, n, r, back.data());
          EXPECT_TRUE(std::equal(back.begin(), back.end(), bytes.begin() + static_cast<std::ptrdiff_t>(rb * static_cast<size_t>(r))))
              << t.name << " n=" << n << " rows=" << rows << " row " << r;
        }
        // In place: the same bytes; every range of rows unpacked at once: the file's rows.
        std::vector<uint8_t> in_place = bytes;
        kernels::repack_rows_in_place(id, in_place.data(), rows, n);
        EXPECT_EQ(in_place, packed) << t.name << " n=" << n << " rows=" << rows;
        for (int64_t r0 = 0; r0 <= rows; ++r0) {
          for (int64_t r1 = r0; r1 <= rows; ++r1) {
            std::vector<uint8_t> range(rb * static_cast<size_t>(r1 - r0) + 1, 0xa5);
            kernels::unpack_rows(id, packed.data(), rows, n, r0, r1, range.data());
            EXPECT_TRUE(std::equal(range.begin(), range.end() - 1, bytes.begin() + static_cast<std::ptrdiff_t>(rb * static_cast<size_t>(r0))))
                << t.name << " n=" << n << " rows " << r0 << " .. " << r1 << " of " << rows;
            EXPECT_EQ(range.back(), 0xa5) << "wrote past the range";
          }
        }
        const int64_t full = rows / kernels::kRepackRows * kernels::kRepackRows;
        EXPECT_TRUE(std::equal(packed.begin() + static_cast<std::ptrdiff_t>(rb * static_cast<size_t>(full)), packed.end(),
                               bytes.begin() + static_cast<std::ptrdiff_t>(rb * static_cast<size_t>(full))))
            << "rows past the last group stay in the file's layout";
        const auto x = random_row(n * 2, 91 + static_cast<uint32_t>(n + rows), -30.0f);
        kernels::PreparedActs a;
        kernels::prepare_activations(t.act_format, x.data(), 2, n, a);
        for (const kernels::KernelSet* k : kernels::available_kernel_sets()) {
          const kernels::RowDot4Fn fn = kernels::row_dot4_for(*k, id);
          if (fn == nullptr || full == 0) continue;
          for (int tok = 0; tok < 2; ++tok) {
            std::vector<float> y(static_cast<size_t>(full) + 1, 12345.0f);
            fn(packed.data(), n, full / kernels::kRepackRows, a.row(tok), y.data());
            EXPECT_EQ(y[static_cast<size_t>(full)], 12345.0f) << "wrote past its groups";
            for (int64_t r = 0; r < full; ++r) {
              const kernels::PreparedRow& row = prepared[static_cast<size_t>(r)];
              const float ref = kernels::dot(kernels::scalar_kernels(), row, a, tok);
              double mag = 0;
              for (int64_t g = 0; g < a.n_pad / 16; ++g) {
                int64_t sum = 0;
                for (int64_t i = 16 * g; i < 16 * g + 16; ++i) sum += int64_t{row.q[static_cast<size_t>(i)]} * a.q_row(tok)[i];
                mag += std::fabs(double{row.scale[static_cast<size_t>(g)]} * a.dx_row(tok)[g] * static_cast<double>(sum));
              }
              const double terms = static_cast<double>(a.n_pad / 16) * 2 + 16;
              EXPECT_NEAR(y[static_cast<size_t>(r)], ref, 2 * terms * std::ldexp(1.0, -24) * mag)
                  << k->name << " " << t.name << " n=" << n << " rows=" << rows << " row " << r << " tok=" << tok;
              ++checked;
            }
          }
        }
      }
    }
  }
  if (kernels::avx512_kernels() != nullptr) {
    EXPECT_GT(checked, 0);
  }
}

// The prefill panel kernels (PackedPanel, KernelSet::panel_int8) against the scalar reference dot
// of every (row, token), on every integer type: 29 rows (a full panel and a partial one, whose
// padding rows must not be written), 7 tokens (a tile of 4 and a remainder of 3), one and two
// panels per call, and a pair of panels that group differently (q4_K's 32s beside q6_K's 16s).
// In place on a pool: a matrix of several runs of groups (about 1 MB each) split across threads,
// with a partial last group, gives repack_rows' bytes.
TEST(Kernels, InPlaceRepackOnAPoolEqualsTheCopy) {
  ThreadPool pool(3, 0);
  for (const TypeId id : {TypeId::Q5_0, TypeId::Q8_0, TypeId::IQ4_NL}) {
    const TypeTraits& t = type_traits(id);
    const int64_t n = 4096, rows = 4 * 500 + 3;
    const size_t rb = t.row_bytes(n);
    std::vector<uint8_t> bytes(rb * static_cast<size_t>(rows)), packed(bytes.size());
    for (int64_t r = 0; r < rows; ++r) {
      const auto w = random_row(n, 11 + static_cast<uint32_t>(r), 0.0f);
      t.quantize_row(w.data(), bytes.data() + rb * static_cast<size_t>(r), n, nullptr);
    }
    ASSERT_GT(bytes.size(), size_t{3} << 20) << "several runs";
    kernels::repack_rows(id, bytes.data(), rows, n, packed.data());
    std::vector<uint8_t> in_place = bytes;
    kernels::repack_rows_in_place(id, in_place.data(), rows, n, &pool);
    EXPECT_EQ(in_place, packed) << t.name;
  }
}

TEST(Kernels, PanelKernelsMatchTheReferenceOnEveryType) {
  constexpr int kRows = 29, kTokens = 7, P = kernels::kPanelRows;
  int checked = 0;
  std::vector<std::string> covered;
  // y (kTokens x ldy) against the reference of rows[r] (r < n_rows) at columns col0 + r.
  auto check = [&](const char* set, const std::string& what, const std::vector<kernels::PreparedRow>& rows,
                   const kernels::PreparedActs& a, const std::vector<float>& y, int64_t ldy) {
    for (int tok = 0; tok < kTokens; ++tok) {
      for (size_t r = 0; r < rows.size(); ++r) {
        const kernels::PreparedRow& row = rows[r];
        const float ref = kernels::dot(kernels::scalar_kernels(), row, a, tok);
        double mag = 0;
        const int8_t* aq = a.q_row(tok);
        for (int64_t g = 0; g < a.n_pad / 16; ++g) {
          int64_t sum = 0;
          for (int64_t i = 16 * g; i < 16 * g + 16; ++i) sum += int64_t{row.q[static_cast<size_t>(i)]} * aq[i];
          mag += std::fabs(double{row.scale[static_cast<size_t>(g)]} * a.dx_row(tok)[g] * static_cast<double>(sum));
          mag += std::fabs(double{row.offset[static_cast<size_t>(g)]} * a.dsum_row(tok)[g]);
        }
        const double bound = 2 * (static_cast<double>(a.n_pad / 16) * 2 + 16) * std::ldexp(1.0, -24) * mag;
        EXPECT_NEAR(y[static_cast<size_t>(tok * ldy) + r], ref, bound) << set << " " << what << " row " << r << " tok " << tok;
        ++checked;
      }
      // Columns past the rows (the padding rows of the last panel) stay untouched.
      for (auto c = static_cast<int64_t>(rows.size()); c < ldy; ++c) {
        EXPECT_EQ(y[static_cast<size_t>(tok * ldy + c)], -1.0f) << set << " " << what << " column " << c;
      }
    }
  };
  auto quantized_rows = [](const TypeTraits& t, int64_t n, int count, uint32_t seed) {
    std::vector<kernels::PreparedRow> rows(static_cast<size_t>(count));
    for (int r = 0; r < count; ++r) {
      const auto w = random_row(n, seed + 13 * static_cast<uint32_t>(r), r % 5 == 0 ? 9.0f : 0.0f);
      std::vector<uint8_t> bytes(t.row_bytes(n));
      t.quantize_row(w.data(), bytes.data(), n, nullptr);
      kernels::prepare_row(t, bytes.data(), n, rows[static_cast<size_t>(r)]);
    }
    return rows;
  };
  auto pack = [](const std::vector<kernels::PreparedRow>& rows, size_t first, size_t count, kernels::PackedPanel& out) {
    const kernels::PreparedRow* p[P];
    for (size_t i = 0; i < count; ++i) p[i] = &rows[first + i];
    kernels::pack_panel(p, static_cast<int>(count), out);
  };
  for (const kernels::KernelSet* k : kernels::available_kernel_sets()) {
    if (k->panel_int8 == nullptr) continue;
    for (const TypeTraits& t : all_types()) {
      if (!engine_runs(t) || t.unpack_row == nullptr) continue;
      covered.push_back(t.name);
      for (int64_t n : lengths_for(t)) {
        const auto rows = quantized_rows(t, n, kRows, 5 + static_cast<uint32_t>(n));
        const auto x = random_row(n * kTokens, 41 + static_cast<uint32_t>(n), -25.0f);
        kernels::PreparedActs a;
        kernels::prepare_activations(t.act_format, x.data(), kTokens, n, a);
        kernels::PackedPanel panels[2];
        pack(rows, 0, P, panels[0]);
        pack(rows, P, kRows - P, panels[1]);
        const std::string what = fmt::format("{} n={}", t.name, n);
        for (int np : {2, 1}) {
          // np == 1: each panel alone, the second written at its own columns.
          const int64_t ldy = 2 * P;
          std::vector<float> y(static_cast<size_t>(kTokens * ldy), -1.0f);
          for (int first = 0; first < 2; first += np) {
            const kernels::PackedPanel* pp[2] = {&panels[first], &panels[np == 2 ? 1 : first]};
            for (int t0 = 0; t0 < kTokens; t0 += 4) {
              k->panel_int8(pp, np, a, t0, std::min(4, kTokens - t0), y.data() + t0 * ldy + P * first, ldy);
            }
          }
          check(k->name, fmt::format("{} np={}", what, np), rows, a, y, ldy);
        }
      }
    }
    // Two panels that group differently in one call: q4_K (groups of 32) and q6_K (16), both Q8_K.
    const auto r4 = quantized_rows(type_traits(TypeId::Q4_K), 512, P, 3);
    const auto r6 = quantized_rows(type_traits(TypeId::Q6_K), 512, P, 4);
    std::vector<kernels::PreparedRow> both(r4);
    both.insert(both.end(), r6.begin(), r6.end());
    kernels::PackedPanel panels[2];
    pack(both, 0, P, panels[0]);
    pack(both, P, P, panels[1]);
    EXPECT_EQ(panels[0].group, 32);
    EXPECT_EQ(panels[1].group, 16);
    const auto x = random_row(512 * kTokens, 8);
    kernels::PreparedActs a;
    kernels::prepare_activations(ActFormat::Q8_K, x.data(), kTokens, 512, a);
    std::vector<float> y(static_cast<size_t>(kTokens * 2 * P), -1.0f);
    const kernels::PackedPanel* pp[2] = {&panels[0], &panels[1]};
    for (int t0 = 0; t0 < kTokens; t0 += 4) k->panel_int8(pp, 2, a, t0, std::min(4, kTokens - t0), y.data() + t0 * 2 * P, 2 * P);
    check(k->name, "q4_K + q6_K", both, a, y, 2 * P);
  }
  if (kernels::avx512_kernels() != nullptr) {
    EXPECT_GT(checked, 0);
    for (const char* name : {"q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q2_K", "q3_K", "q4_K", "q5_K", "q6_K", "iq4_xs", "lb3", "lb2"}) {
      EXPECT_NE(std::find(covered.begin(), covered.end(), name), covered.end()) << name;
    }
  }
}

TEST(Kernels, AttentionKernelsAgreeAcrossSets) {
  const int hd = 64, len = 300;
  const int64_t stride = 320;
  std::mt19937 rng(5);
  std::normal_distribution<float> g(0.0f, 1.0f);
  std::vector<float> kt(static_cast<size_t>(hd * stride)), v(static_cast<size_t>(len + 8) * hd), q(4 * hd);
  for (auto& x : kt) x = round_fp16(g(rng));
  for (auto& x : v) x = round_fp16(g(rng));
  for (auto& x : q) x = 2.0f * g(rng);
  const float scale = 1.0f / 8.0f;
  std::vector<float> scratch(16 * (len + 16));
  // Plain softmax attention in double: what every F16 path approximates.
  auto exact = [&](const float* qh, int n, std::vector<double>& out) {
    std::vector<double> s(static_cast<size_t>(n));
    double m = -1e300, sum = 0;
    for (int p = 0; p < n; ++p) {
      double d = 0;
      for (int i = 0; i < hd; ++i) d += static_cast<double>(round_fp16(qh[i])) * kt[static_cast<size_t>(i * stride + p)];
      s[static_cast<size_t>(p)] = d * scale;
      m = std::max(m, s[static_cast<size_t>(p)]);
    }
    out.assign(hd, 0.0);
    for (int p = 0; p < n; ++p) {
      const double w = std::exp(s[static_cast<size_t>(p)] - m);
      sum += w;
      for (int i = 0; i < hd; ++i) out[static_cast<size_t>(i)] += w * v[static_cast<size_t>(p * hd + i)];
    }
    for (auto& o : out) o /= sum;
  };
  for (const kernels::KernelSet* k : kernels::available_kernel_sets()) {
    std::vector<float> single(4 * hd), four(4 * hd);
    const int lens[4] = {len - 3, len - 2, len - 1, len};
    for (int r = 0; r < 4; ++r) {
      k->attn_f16(q.data() + r * hd, kt.data(), stride, v.data(), hd, hd, lens[r], scale, scratch.data(),
                  single.data() + r * hd);
    }
    const float* qs[4] = {q.data(), q.data() + hd, q.data() + 2 * hd, q.data() + 3 * hd};
    float* outs[4] = {four.data(), four.data() + hd, four.data() + 2 * hd, four.data() + 3 * hd};
    k->attn_f16_x4(qs, kt.data(), stride, v.data(), hd, hd, lens, scale, scratch.data(), outs);
    for (int r = 0; r < 4; ++r) {
      std::vector<double> ref;
      exact(q.data() + r * hd, lens[r], ref);
      for (int i = 0; i < hd; ++i) {
        EXPECT_EQ(four[static_cast<size_t>(r * hd + i)], single[static_cast<size_t>(r * hd + i)]) << k->name;
        // F16 accumulation: a few half-precision steps of error, no more.
        EXPECT_NEAR(single[static_cast<size_t>(r * hd + i)], ref[static_cast<size_t>(i)], 4e-3) << k->name << " r=" << r;
      }
    }
    // The F32 tile kernels against the scalar set.
    float s_ref[kernels::kAttnTile], s_got[kernels::kAttnTile];
    kernels::scalar_kernels().attn_scores(q.data(), kt.data(), stride, hd, s_ref);
    k->attn_scores(q.data(), kt.data(), stride, hd, s_got);
    for (int p = 0; p < kernels::kAttnTile; ++p) EXPECT_FLOAT_EQ(s_got[p], s_ref[p]) << k->name;
    std::vector<float> acc_ref(hd, 0.5f), acc_got(hd, 0.5f), w(kernels::kAttnTile);
    for (auto& x : w) x = std::fabs(g(rng));
    kernels::scalar_kernels().attn_accumulate(w.data(), 50, v.data(), hd, hd, acc_ref.data());
    k->attn_accumulate(w.data(), 50, v.data(), hd, hd, acc_got.data());
    for (int i = 0; i < hd; ++i) EXPECT_NEAR(acc_got[static_cast<size_t>(i)], acc_ref[static_cast<size_t>(i)], 1e-4) << k->name;
    std::vector<float> e1(100), e2(100);
    for (int i = 0; i < 100; ++i) e1[static_cast<size_t>(i)] = e2[static_cast<size_t>(i)] = -0.37f * static_cast<float>(i);
    const double s1 = kernels::scalar_kernels().exp_sum(e1.data(), 100, 0.0f), s2 = k->exp_sum(e2.data(), 100, 0.0f);
    EXPECT_NEAR(s1, s2, 1e-6 * s1) << k->name;
    for (int i = 0; i < 100; ++i) EXPECT_NEAR(e2[static_cast<size_t>(i)], e1[static_cast<size_t>(i)], 2e-7 * e1[static_cast<size_t>(i)] + 1e-38);
  }
}

// The prefill F32 kernel: every value exactly the four-row kernel's (so a batch computes what
// token pairs did), near a double-precision dot, and nothing written outside the 4 x nt block.
TEST(Kernels, F32TileIsTheFourRowKernelForEveryToken) {
  for (const int64_t n_pad : {32, 64, 192, 576}) {
    const std::vector<float> wv = random_row(4 * n_pad, 11), xv = random_row(17 * n_pad, 12);
    const float* w[4] = {wv.data(), wv.data() + n_pad, wv.data() + 2 * n_pad, wv.data() + 3 * n_pad};
    for (const int nt : {1, 2, 3, 4, 5, 7, 8, 9, 17}) {
      for (const kernels::KernelSet* k : kernels::available_kernel_sets()) {
        const int64_t ldy = 6;
        std::vector<float> y(static_cast<size_t>(nt * ldy), -7.0f);
        k->dot_f32_tile(n_pad, w, xv.data(), n_pad, nt, y.data(), ldy);
        for (int j = 0; j < nt; ++j) {
          const float* x[2] = {xv.data() + j * n_pad, xv.data() + j * n_pad};
          float four[8];
          k->dot_f32_x4(n_pad, w, x, 1, four);
          for (int r = 0; r < 4; ++r) {
            double ref = 0;
            for (int64_t i = 0; i < n_pad; ++i) ref += static_cast<double>(w[r][i]) * x[0][i];
            const float got = y[static_cast<size_t>(j * ldy + r)];
            EXPECT_EQ(got, four[r]) << k->name << " n_pad=" << n_pad << " nt=" << nt << " token " << j << " row " << r;
            EXPECT_NEAR(got, ref, 1e-5 * std::sqrt(static_cast<double>(n_pad)) * 4) << k->name;
          }
          EXPECT_EQ(y[static_cast<size_t>(j * ldy + 4)], -7.0f) << k->name;
          EXPECT_EQ(y[static_cast<size_t>(j * ldy + 5)], -7.0f) << k->name;
        }
      }
    }
  }
}

// Tiled attention of several queries at once: per query exactly attn_tiled_reference over the same
// set's tile kernels (so the interleaving reorders nothing), close to the scalar set and to a
// plain softmax in double. Lengths cross tile boundaries, differ within a call, and include 1.
TEST(Kernels, TiledAttentionOfSeveralQueriesIsEachQuerysReference) {
  for (const int hd : {8, 16, 64}) {
    const int max_len = 200, n_kv = 2;  // two KV heads: V rows hold both, as the cache does
    const int64_t kstride = 256, vstride = n_kv * hd;
    std::mt19937 rng(static_cast<uint32_t>(hd));
    std::normal_distribution<float> g(0.0f, 1.0f);
    std::vector<float> kt(static_cast<size_t>(hd * kstride)), v(static_cast<size_t>(max_len * vstride)),
        q(static_cast<size_t>(kernels::kAttnQueries * hd));
    for (auto& x : kt) x = round_fp16(g(rng));
    for (auto& x : v) x = round_fp16(g(rng));
    for (auto& x : q) x = 3.0f * g(rng);
    const float* vh = v.data() + hd;  // the second KV head
    const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
    auto exact = [&](const float* qh, int n, int i) {
      std::vector<double> s(static_cast<size_t>(n));
      double m = -1e300, sum = 0, o = 0;
      for (int p = 0; p < n; ++p) {
        double d = 0;
        for (int c = 0; c < hd; ++c) d += static_cast<double>(qh[c]) * kt[static_cast<size_t>(c * kstride + p)];
        m = std::max(m, s[static_cast<size_t>(p)] = d * scale);
      }
      for (int p = 0; p < n; ++p) {
        const double w = std::exp(s[static_cast<size_t>(p)] - m);
        sum += w;
        o += w * vh[static_cast<size_t>(p * vstride + i)];
      }
      return o / sum;
    };
    const std::vector<std::vector<int>> cases = {{1},
                                                  {64, 65},
                                                  {120, 121, 122, 123, 124, 125, 126, 127},
                                                  {1, 2, 3, 63, 64, 65, 129, 200},
                                                  {190, 7, 66}};
    for (const auto& lens : cases) {
      const int nq = static_cast<int>(lens.size());
      const float* qs[kernels::kAttnQueries];
      for (int j = 0; j < nq; ++j) qs[j] = q.data() + j * hd;
      std::vector<float> scalar(static_cast<size_t>(nq * hd));
      for (int j = 0; j < nq; ++j) {
        kernels::attn_tiled_reference(kernels::scalar_kernels(), qs[j], kt.data(), kstride, vh, vstride, hd,
                                      lens[static_cast<size_t>(j)], scale, scalar.data() + j * hd);
      }
      for (const kernels::KernelSet* k : kernels::available_kernel_sets()) {
        std::vector<float> got(static_cast<size_t>(nq * hd), -7.0f), ref(got.size());
        float* outs[kernels::kAttnQueries];
        for (int j = 0; j < nq; ++j) outs[j] = got.data() + j * hd;
        k->attn_tiled(qs, nq, kt.data(), kstride, vh, vstride, hd, lens.data(), scale, outs);
        for (int j = 0; j < nq; ++j) {
          const int len = lens[static_cast<size_t>(j)];
          kernels::attn_tiled_reference(*k, qs[j], kt.data(), kstride, vh, vstride, hd, len, scale, ref.data() + j * hd);
          for (int i = 0; i < hd; ++i) {
            const auto at = static_cast<size_t>(j * hd + i);
            EXPECT_EQ(got[at], ref[at]) << k->name << " hd=" << hd << " query " << j << " len " << len << " dim " << i;
            EXPECT_NEAR(got[at], scalar[at], 2e-5) << k->name << " hd=" << hd << " len " << len;
            EXPECT_NEAR(got[at], exact(qs[j], len, i), 2e-5) << k->name << " hd=" << hd << " len " << len;
          }
        }
      }
    }
  }
}

// Which sets a CPU is offered, and that the default is the last (widest) of them: an order, not a
// speed (bench/ measures speed).
TEST(Kernels, EveryCpuGetsTheWidestSetItRuns) {
  const auto sets = kernels::available_kernel_sets();
  ASSERT_FALSE(sets.empty());
  EXPECT_STREQ(sets.front()->name, "scalar");
#if defined(__x86_64__)
  // Every AVX2 CPU since Haswell has FMA and F16C too: the avx2 set must be offered there.
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    ASSERT_GE(sets.size(), 2u);
    EXPECT_STREQ(sets[1]->name, "avx2");
    // And every CPU with AVX-512 F/BW/VL + VNNI (Ice Lake, Zen 4 and later) the avx512 set.
    const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
    EXPECT_EQ(kernels::avx512_kernels() != nullptr, avx512);
    if (avx512) {
      ASSERT_EQ(sets.size(), 3u);
      EXPECT_STREQ(sets[2]->name, "avx512");
    } else {
      GTEST_LOG_(INFO) << "this CPU has no AVX-512 VNNI: the avx512 kernels are not tested here";
    }
  }
#endif
  if (std::getenv("MIXQ_KERNELS") == nullptr) { EXPECT_EQ(&kernels::best_kernels(), sets.back()); }
}

}  // namespace
}  // namespace mixq
