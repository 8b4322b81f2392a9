// Emulated activation precision (--activations, Context::set_activation_precision): the rounding
// itself against hand-computed values, and through the engine against what the kernels already do
// natively: F16 / BF16 weights get F16 / BF16-rounded inputs from the kernels (as ggml computes
// them), so pre-rounding to that same precision must change nothing on such a model, while on an F32 model it changes the logits (slightly).
#include <bit>
#include <cmath>
#include <filesystem>
#include <vector>

#include <fmt/format.h>

#include "mixq/engine/registry.h"
#include "mixq/formats/half.h"
#include "mixq/io/gguf.h"
#include "mixq/quantize/quantize_model.h"
#include "test_support.h"

namespace mixq {
namespace {

namespace fs = std::filesystem;

TEST(Activations, RoundingOfEachFormat) {
  EXPECT_EQ(parse_activation_precision("bf16"), ActivationPrecision::kBF16);
  EXPECT_THROW(parse_activation_precision("int4"), std::runtime_error);
  const std::vector<float> x = test::gaussian(80, 2.0f, 7);  // two rows of 40: blocks of 32 and 8
  std::vector<float> y(x.size());
  round_activations(ActivationPrecision::kF32, x.data(), x.size(), 40, y.data());
  EXPECT_EQ(y, x);
  round_activations(ActivationPrecision::kF16, x.data(), x.size(), 40, y.data());
  for (size_t i = 0; i < x.size(); ++i) EXPECT_EQ(y[i], fp16_to_fp32(fp32_to_fp16(x[i])));
  round_activations(ActivationPrecision::kBF16, x.data(), x.size(), 40, y.data());
  for (size_t i = 0; i < x.size(); ++i) {
    EXPECT_EQ(std::bit_cast<uint32_t>(y[i]) & 0xffffu, 0u);        // 8 mantissa bits left
    EXPECT_LE(std::abs(y[i] - x[i]), std::abs(x[i]) / 256 + 1e-30);  // half an ulp of bf16
  }
  round_activations(ActivationPrecision::kQ8, x.data(), x.size(), 40, y.data());
  for (size_t row = 0; row < 2; ++row) {
    for (auto [b0, b1] : {std::pair<size_t, size_t>{0, 32}, {32, 40}}) {
      float amax = 0;
      for (size_t i = b0; i < b1; ++i) amax = std::max(amax, std::abs(x[row * 40 + i]));
      const float d = fp16_to_fp32(fp32_to_fp16(amax / 127));
      for (size_t i = b0; i < b1; ++i) {
        const float v = y[row * 40 + i], q = v / d;
        EXPECT_NEAR(q, std::round(q), 1e-3) << "not on the block's grid";
        EXPECT_LE(std::abs(std::round(q)), 127.0f);
        EXPECT_LE(std::abs(v - x[row * 40 + i]), d * 0.5f + amax * 2e-3f);
      }
    }
  }
}

std::vector<float> logits(const fs::path& path, ActivationPrecision p) {
  const GgufFile f = GgufFile::open(path);
  const auto model = load_model(f);
  const auto ctx = model->new_context(32, 1);
  ctx->set_activation_precision(p);
  return ctx->eval({1, 30, 31, 32, 33, 34}, true);
}

TEST(Activations, NativeRoundingIsUnchangedAndF32ModelsMove) {
  const auto dir = test::temp_dir() / "activations";
  fs::create_directories(dir);
  const fs::path f32 = test::stories260K_gguf();
  const GgufFile in = GgufFile::open(f32);
  // (Q8_0 weights quantize their inputs natively too, but stories260K's ffn_down rows of 172 cannot
  // be Q8_0: that model is not all Q8_0.)
  for (auto [type, act] : {std::pair{TypeId::F16, ActivationPrecision::kF16}, {TypeId::BF16, ActivationPrecision::kBF16}}) {
    SCOPED_TRACE(type_traits(type).name);
    QuantizeOptions opts;
    opts.policy.default_type = type;
    opts.policy.pure = true;
    opts.threads = 1;
    const fs::path q = dir / fmt::format("{}.gguf", type_traits(type).name);
    quantize_model(in, q, opts);
    EXPECT_EQ(logits(q, act), logits(q, ActivationPrecision::kF32));
  }
  const std::vector<float> base = logits(f32, ActivationPrecision::kF32);
  for (ActivationPrecision p : {ActivationPrecision::kF16, ActivationPrecision::kBF16, ActivationPrecision::kQ8}) {
    const std::vector<float> got = logits(f32, p);
    double max_diff = 0;
    for (size_t i = 0; i < got.size(); ++i) max_diff = std::max(max_diff, std::abs(double(got[i]) - base[i]));
    EXPECT_GT(max_diff, 0.0);
    EXPECT_LT(max_diff, 0.5);
  }
}

TEST(Activations, CliRefusesBadChoices) {
  const std::string m = test::stories260K_gguf().string();
  const auto bad = test::run_cli(fmt::format("generate '{}' -p Hi -n 2 --activations int4", m));
  EXPECT_EQ(bad.exit_code, 1) << bad.output;
  EXPECT_NE(bad.output.find("use f32 (the default), f16, bf16 or q8"), std::string::npos) << bad.output;
  // kld against a live base would round the base too.
  const auto kld = test::run_cli(fmt::format("kld '{}' --base '{}' -f '{}' --activations q8", m, m, m));
  EXPECT_EQ(kld.exit_code, 1) << kld.output;
  EXPECT_NE(kld.output.find("--base-logits"), std::string::npos) << kld.output;
  const auto ok = test::run_cli(fmt::format("generate '{}' -p 'Once upon' -n 4 --temp 0 -t 1 --activations q8", m));
  EXPECT_EQ(ok.exit_code, 0) << ok.output;
}

}  // namespace
}  // namespace mixq
