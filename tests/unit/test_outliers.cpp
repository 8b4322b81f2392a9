// Outlier columns (quantize --outliers, formats/outliers.h): which columns are chosen, that the
// engine computes exactly the product of the merged matrix (quantized columns + F16 outliers),
// that keeping them lowers the reconstruction error, and that malformed companions are refused.
#include <algorithm>
#include <cmath>
#include <cstring>

#include <fmt/format.h>

#include "mixq/engine/llama_model.h"
#include "mixq/formats/half.h"
#include "mixq/io/outlier_columns.h"
#include "mixq/quantize/quantize_model.h"
#include "test_support.h"

namespace mixq {
namespace {

std::filesystem::path bundled_model() { return test::source_dir() / "assets/stories260K/stories260K-f32.gguf"; }

TEST(Outliers, SelectsTheColumnsOfLargestWeightedMagnitude) {
  const int64_t rows = 8, n = 64;
  auto x = test::gaussian(static_cast<size_t>(rows * n), 1.0f, 3);
  // Planted outliers: one huge value in columns 5, 40 and 17 (in that order of size).
  x[2 * n + 5] = 50.0f;
  x[7 * n + 40] = -40.0f;
  x[0 * n + 17] = 30.0f;
  EXPECT_EQ(select_outlier_columns(x.data(), rows, n, nullptr, 2), (std::vector<int32_t>{5, 40}));
  EXPECT_EQ(select_outlier_columns(x.data(), rows, n, nullptr, 3), (std::vector<int32_t>{5, 17, 40}));
  // An input that barely matters (importance 1e-4) loses its place to the next column.
  std::vector<float> imp(static_cast<size_t>(n), 1.0f);
  imp[5] = 1e-4f;
  EXPECT_EQ(select_outlier_columns(x.data(), rows, n, imp.data(), 2), (std::vector<int32_t>{17, 40}));
  EXPECT_EQ(select_outlier_columns(x.data(), rows, n, nullptr, 0).size(), 0u);
  EXPECT_EQ(select_outlier_columns(x.data(), rows, n, nullptr, 1000).size(), static_cast<size_t>(n));
}

QuantizeOptions options(TypeId type, int outliers, const std::string& regex = "") {
  QuantizeOptions o;
  o.policy.default_type = type;
  o.policy.pure = true;
  o.type_label = type_traits(type).name;
  o.threads = 2;
  o.outlier_columns = outliers;
  o.outlier_tensors = regex;
  return o;
}

// Tensor t of f as floats, its outlier columns (if any) replaced by their F16 values.
std::vector<float> merged_floats(const GgufFile& f, const GgufTensor& t) {
  const int64_t n = t.row_length(), rows = t.n_rows();
  std::vector<float> out(static_cast<size_t>(n * rows));
  dequantize_rows(t.type->id, t.data, out.data(), rows, n);
  const OutlierColumns oc = load_outlier_columns(f, t);
  for (int64_t r = 0; r < rows; ++r) {
    for (int c = 0; c < oc.k(); ++c) {
      out[static_cast<size_t>(r * n + oc.cols[static_cast<size_t>(c)])] = oc.vals[static_cast<size_t>(r * oc.k() + c)];
    }
  }
  return out;
}

// The file with every outlier tensor merged back into one F32 matrix (its quantized columns
// dequantized, the outlier columns replaced by their F16 values) and no companion tensors; the
// other tensors are copied as stored.
void write_merged(const GgufFile& in, const std::filesystem::path& out) {
  GgufWriter w(out, in.alignment());
  w.copy_metadata(in);
  std::vector<const GgufTensor*> kept;
  for (const auto& t : in.tensors()) {
    if (is_outlier_tensor(t.name)) continue;
    const bool merged = in.find_tensor(outlier_cols_name(t.name)) != nullptr;
    w.add_tensor(t.name, t.shape, merged ? TypeId::F32 : t.type->id);
    kept.push_back(&t);
  }
  for (const GgufTensor* t : kept) {
    if (in.find_tensor(outlier_cols_name(t->name)) == nullptr) {
      w.write_tensor_data(t->bytes());
      continue;
    }
    const std::vector<float> f = merged_floats(in, *t);
    w.write_tensor_data({reinterpret_cast<const uint8_t*>(f.data()), f.size() * sizeof(float)});
  }
  w.finish();
}

std::vector<float> logits_of(const std::filesystem::path& p, const std::vector<int32_t>& tokens) {
  const GgufFile f = GgufFile::open(p);
  const LlamaModel m(f);
  LlamaContext ctx(m, 64, 2);
  ctx.set_attention(AttentionMode::kF32);  // no F16 cache: its roundings would amplify sum-order noise
  return ctx.eval(tokens, true);
}

TEST(Outliers, EngineComputesTheMergedMatrixProduct) {
  const auto dir = test::temp_dir() / "outliers-merged";
  std::filesystem::create_directories(dir);
  const GgufFile src = GgufFile::open(bundled_model());
  // nf4 rows are decoded to F32 and take F32 activations, so both files compute the same sums in
  // another order (lb3, with an integer view, takes 8-bit activations: it would turn those
  // last-bit differences into rounding flips that grow layer by layer). ffn_down (rows of 172,
  // which nf4 cannot hold) stays F32 for the same reason.
  auto opts = options(TypeId::NF4, 6);
  opts.policy.tensor_type_rules.push_back(parse_tensor_type_rule("ffn_down=f32"));
  const QuantizeReport rep = quantize_model(src, dir / "nf4-outliers.gguf", opts);
  int with = 0;
  for (const auto& p : rep.plans) with += p.outliers > 0;
  ASSERT_GE(with, 30) << rep.to_text();
  EXPECT_GT(rep.outlier_bytes, 0u);
  EXPECT_EQ(rep.output_file_bytes, std::filesystem::file_size(dir / "nf4-outliers.gguf"));
  {
    const GgufFile q = GgufFile::open(dir / "nf4-outliers.gguf");
    ASSERT_NE(q.find(std::string(kOutlierColumnsKey)), nullptr);
    EXPECT_EQ(q.find(std::string(kOutlierColumnsKey))->as_int(), 6);
    const GgufTensor* cols = q.find_tensor("blk.0.attn_q.weight.outlier_cols");
    ASSERT_NE(cols, nullptr);
    EXPECT_EQ(cols->shape, std::vector<int64_t>{6});
    write_merged(q, dir / "merged-f32.gguf");
  }
  std::vector<int32_t> tokens;
  for (int i = 0; i < 40; ++i) tokens.push_back(1 + (i * 37) % 500);
  const auto a = logits_of(dir / "nf4-outliers.gguf", tokens), b = logits_of(dir / "merged-f32.gguf", tokens);
  ASSERT_EQ(a.size(), b.size());
  double max_diff = 0, max_mag = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    max_diff = std::max(max_diff, std::fabs(static_cast<double>(a[i]) - b[i]));
    max_mag = std::max(max_mag, std::fabs(static_cast<double>(b[i])));
  }
  EXPECT_LT(max_diff, 1e-4 * max_mag) << "max |diff| " << max_diff << " of " << max_mag;
  // And the outliers are not a no-op: the file without them differs by far more.
  quantize_model(src, dir / "nf4.gguf", options(TypeId::NF4, 0));
  const auto c = logits_of(dir / "nf4.gguf", tokens);
  double diff0 = 0;
  for (size_t i = 0; i < a.size(); ++i) diff0 = std::max(diff0, std::fabs(static_cast<double>(c[i]) - b[i]));
  EXPECT_GT(diff0, 100 * max_diff);
  std::filesystem::remove_all(dir);
}

// sum over a tensor of (reconstruction - original)^2, with its outlier columns merged in.
double squared_error(const GgufFile& q, const GgufTensor& orig) {
  const std::vector<float> f = merged_floats(q, *q.find_tensor(orig.name));
  const auto* x = reinterpret_cast<const float*>(orig.data);
  double e = 0;
  for (size_t i = 0; i < f.size(); ++i) e += (static_cast<double>(f[i]) - x[i]) * (static_cast<double>(f[i]) - x[i]);
  return e;
}

TEST(Outliers, KeepingTheLargestColumnsLowersTheError) {
  const auto dir = test::temp_dir() / "outliers-error";
  std::filesystem::create_directories(dir);
  const GgufFile src = GgufFile::open(bundled_model());
  quantize_model(src, dir / "plain.gguf", options(TypeId::Q4_0, 0));
  quantize_model(src, dir / "outliers.gguf", options(TypeId::Q4_0, 4));
  const GgufFile plain = GgufFile::open(dir / "plain.gguf"), out = GgufFile::open(dir / "outliers.gguf");
  int checked = 0;
  double sum_plain = 0, sum_out = 0;
  for (const auto& t : src.tensors()) {
    if (out.find_tensor(outlier_cols_name(t.name)) == nullptr) continue;
    const double ep = squared_error(plain, t), eo = squared_error(out, t);
    // 4 of 64 columns exact: never worse, and on these trained weights clearly better.
    EXPECT_LT(eo, ep) << t.name;
    sum_plain += ep;
    sum_out += eo;
    ++checked;
  }
  EXPECT_GE(checked, 20);
  EXPECT_LT(sum_out, 0.9 * sum_plain) << sum_out << " vs " << sum_plain;
  std::filesystem::remove_all(dir);
}

// Rewrites a file with one companion tensor's data replaced (same type and shape) or dropped.
void rewrite(const GgufFile& in, const std::filesystem::path& out, const std::string& name,
             const std::vector<uint8_t>* data) {
  GgufWriter w(out, in.alignment());
  w.copy_metadata(in);
  for (const auto& t : in.tensors()) {
    if (t.name == name && data == nullptr) continue;
    w.add_tensor(t.name, t.shape, t.type->id);
  }
  for (const auto& t : in.tensors()) {
    if (t.name == name) {
      if (data != nullptr) w.write_tensor_data(*data);
      continue;
    }
    w.write_tensor_data(t.bytes());
  }
  w.finish();
}

TEST(Outliers, MalformedCompanionTensorsAreClearErrors) {
  const auto dir = test::temp_dir() / "outliers-bad";
  std::filesystem::create_directories(dir);
  const GgufFile src = GgufFile::open(bundled_model());
  quantize_model(src, dir / "good.gguf", options(TypeId::Q4_0, 3));
  const GgufFile good = GgufFile::open(dir / "good.gguf");
  const std::string cols = "blk.1.attn_k.weight.outlier_cols";
  const GgufTensor* ct = good.find_tensor(cols);
  ASSERT_NE(ct, nullptr);
  auto expect_error = [&](const std::vector<uint8_t>* data, const std::string& name, const std::string& what) {
    rewrite(good, dir / "bad.gguf", name, data);
    const GgufFile bad = GgufFile::open(dir / "bad.gguf");
    try {
      const LlamaModel m(bad);
      FAIL() << "accepted: " << what;
    } catch (const GgufError& e) {
      EXPECT_NE(std::string(e.what()).find("blk.1.attn_k.weight"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
    }
  };
  auto with_cols = [&](std::vector<int32_t> c) {
    std::vector<uint8_t> b(c.size() * 4);
    std::memcpy(b.data(), c.data(), b.size());
    return b;
  };
  const auto out_of_range = with_cols({1, 2, 64});
  expect_error(&out_of_range, cols, "outside 0 .. 63");
  const auto unordered = with_cols({5, 2, 9});
  expect_error(&unordered, cols, "not ascending");
  const auto repeated = with_cols({5, 5, 9});
  expect_error(&repeated, cols, "not ascending");
  expect_error(nullptr, "blk.1.attn_k.weight.outlier_vals", "is missing");
  const auto negative = with_cols({-1, 2, 9});
  expect_error(&negative, cols, "outside 0 .. 63");
  std::filesystem::remove_all(dir);
}

TEST(Outliers, CommandLine) {
  const auto dir = test::temp_dir() / "outliers-cli";
  std::filesystem::create_directories(dir);
  const std::string in = fmt::format("'{}'", bundled_model().string());
  const std::string out = fmt::format("'{}'", (dir / "o.gguf").string());
  auto r = test::run_cli("quantize " + in + " " + out + " q4_0 --pure --outliers 4");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("outlier columns in f16"), std::string::npos) << r.output;
  r = test::run_cli("inspect " + out + " --no-metadata");
  EXPECT_NE(r.output.find("llama.cpp and other GGML tools cannot load it"), std::string::npos) << r.output;
  r = test::run_cli("generate " + out + " -p 'Once upon a time' --temp 0 -n 8 -t 1");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("Once upon a time"), std::string::npos) << r.output;
  // Refusals: llama.cpp compatibility, requantizing a file that has outliers, a bad regex, a
  // negative count, a regex without a count.
  r = test::run_cli("quantize " + in + " " + out + "2 q4_0 --outliers 4 --compat llama.cpp");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.output.find("cannot be combined with --compat llama.cpp"), std::string::npos) << r.output;
  r = test::run_cli("quantize " + out + " " + out + "2 q8_0 --allow-requantize");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.output.find("keeps outlier columns"), std::string::npos) << r.output;
  r = test::run_cli("quantize " + in + " " + out + "2 q4_0 --outliers 4 --outlier-tensors '(['");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.output.find("not a valid regular expression"), std::string::npos) << r.output;
  r = test::run_cli("quantize " + in + " " + out + "2 q4_0 --outliers -3");
  EXPECT_EQ(r.exit_code, 1);
  r = test::run_cli("quantize " + in + " " + out + "2 q4_0 --outlier-tensors attn");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.output.find("needs --outliers"), std::string::npos) << r.output;
  EXPECT_FALSE(std::filesystem::exists(dir / "o.gguf2"));
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace mixq
