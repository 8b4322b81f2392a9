// The RWKV graphs (engine/rwkv_model.h) against rwkv.cpp's expected logits for its tiny test
// models, on the files mixq's own converter writes from rwkv.cpp's.
#include <cmath>
#include <filesystem>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "mixq/convert/convert.h"
#include "mixq/quantize/quantize_model.h"
#include "mixq/engine/registry.h"
#include "mixq/io/gguf.h"
#include "test_support.h"

namespace mixq {
namespace {

namespace fs = std::filesystem;

const std::vector<int32_t> kPrompt = {'"', 'i', 'n'};

fs::path rwkv_dir() { return test::shared_data_dir() / "rwkv-tiny"; }

fs::path fresh_dir(const std::string& name) {
  auto d = test::temp_dir() / name;
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

struct LogitDiff {
  double max_abs = 0, kld = 0, sum = 0;
};

// max |a - e|, the signed sum (rwkv.cpp's figure) and KL(softmax(e) || softmax(a)).
LogitDiff compare(const float* actual, const std::vector<float>& expected) {
  LogitDiff d;
  const size_t n = expected.size();
  double me = -1e30, ma = -1e30;
  for (size_t i = 0; i < n; ++i) {
    d.max_abs = std::max(d.max_abs, std::abs(static_cast<double>(actual[i]) - expected[i]));
    d.sum += static_cast<double>(actual[i]) - expected[i];
    me = std::max(me, static_cast<double>(expected[i]));
    ma = std::max(ma, static_cast<double>(actual[i]));
  }
  double ze = 0, za = 0;
  for (size_t i = 0; i < n; ++i) {
    ze += std::exp(expected[i] - me);
    za += std::exp(actual[i] - ma);
  }
  for (size_t i = 0; i < n; ++i) {
    const double lpe = expected[i] - me - std::log(ze), lpa = actual[i] - ma - std::log(za);
    d.kld += std::exp(lpe) * (lpe - lpa);
  }
  return d;
}

std::vector<float> prompt_logits(const fs::path& gguf, bool one_by_one = false) {
  const GgufFile f = GgufFile::open(gguf);
  const auto model = load_model(f);
  const auto ctx = model->new_context(64, 2);
  if (!one_by_one) return ctx->eval(kPrompt, false);
  std::vector<float> last;
  for (int32_t t : kPrompt) last = ctx->eval({t}, false);
  return last;
}

TEST(RwkvEngine, Fp32MatchesRwkvCpp) {
  MIXQ_REQUIRE_SHARED("rwkv-tiny/tiny-rwkv-7v0-834K-FP32.bin");
  const auto dir = fresh_dir("rwkv-fp32");
  for (const char* ver : {"4v0-660K", "5v2-730K", "7v0-834K"}) {
    SCOPED_TRACE(ver);
    const fs::path out = dir / fmt::format("{}.gguf", ver);
    convert_to_gguf({rwkv_dir() / fmt::format("tiny-rwkv-{}-FP32.bin", ver), out, std::nullopt, {}});
    const auto expected = test::read_raw<float>(rwkv_dir() / fmt::format("expected-logits-{}.bin", ver));
    ASSERT_EQ(expected.size(), 256u);
    for (bool one_by_one : {false, true}) {
      const auto logits = prompt_logits(out, one_by_one);
      ASSERT_EQ(logits.size(), 256u);
      const LogitDiff d = compare(logits.data(), expected);
      std::printf("%s FP32 %s: max|diff| %.3g, KLD %.3g, sum %+.6f\n", ver, one_by_one ? "token by token" : "batched",
                  d.max_abs, d.kld, d.sum);
      EXPECT_LE(d.max_abs, 1e-4);
    }
  }
}

// rwkv.cpp's own FP16 / Q5_1 files, converted bit for bit: within rwkv.cpp's own acceptance figure
// (|signed sum| <= 1.05 x its recorded sum), plus max |diff| and KLD bounds.
TEST(RwkvEngine, RwkvCppFp16AndQ5_1Files) {
  MIXQ_REQUIRE_SHARED("rwkv-tiny/tiny-rwkv-7v0-834K-Q5_1.bin");
  const auto dir = fresh_dir("rwkv-f16");
  struct Case {
    const char* ver;
    const char* format;
    double upstream_sum, max_abs, kld;
  };
  for (const Case& c : {Case{"5v2-730K", "FP16", 0.455912, 0.01, 1e-6}, Case{"7v0-834K", "FP16", 0.005766, 1e-3, 1e-7},
                        Case{"7v0-834K", "Q5_1", -0.064663, 0.01, 5e-6}}) {
    SCOPED_TRACE(fmt::format("{} {}", c.ver, c.format));
    const fs::path out = dir / fmt::format("{}-{}.gguf", c.ver, c.format);
    convert_to_gguf({rwkv_dir() / fmt::format("tiny-rwkv-{}-{}.bin", c.ver, c.format), out, std::nullopt, {}});
    const auto expected = test::read_raw<float>(rwkv_dir() / fmt::format("expected-logits-{}.bin", c.ver));
    const LogitDiff d = compare(prompt_logits(out).data(), expected);
    std::printf("%s %s: max|diff| %.3g, KLD %.3g, sum %+.6f (rwkv.cpp %+.6f)\n", c.ver, c.format, d.max_abs, d.kld, d.sum,
                c.upstream_sum);
    EXPECT_LE(std::abs(d.sum), 1.05 * std::abs(c.upstream_sum));
    EXPECT_LE(d.max_abs, c.max_abs);
    EXPECT_LE(d.kld, c.kld);
  }
}

// mixq's quantizations of the FP32 files, emb and head kept F32 as rwkv.cpp's quantizer does.
// mixq rounds like current ggml while rwkv.cpp's files came from its older ggml (the bytes
// differ), so the signed sum only agrees in magnitude: the bounds are on max |diff| and KLD
// (about twice what this engine measures), the sum is checked loosely and printed beside rwkv.cpp's.
TEST(RwkvEngine, MixqQuantizationsOfFp32) {
  MIXQ_REQUIRE_SHARED("rwkv-tiny/tiny-rwkv-7v0-834K-FP32.bin");
  const auto dir = fresh_dir("rwkv-quant");
  struct Bound {
    TypeId type;
    double upstream_sum, max_abs, kld;
  };
  struct Model {
    const char* ver;
    std::vector<Bound> bounds;
  };
  const std::vector<Model> models = {
      {"4v0-660K",
       {{TypeId::Q8_0, 0.076282, 0.05, 6e-5}, {TypeId::Q5_1, 0.278034, 0.3, 4e-3}, {TypeId::Q5_0, -0.170404, 0.5, 1e-2},
        {TypeId::Q4_1, -0.547409, 0.5, 6e-3}, {TypeId::Q4_0, -0.160030, 0.8, 2e-2}}},
      {"5v2-730K",
       {{TypeId::Q8_0, -9.44, 0.2, 3e-3}, {TypeId::Q5_1, 48.07, 1.2, 8e-3}, {TypeId::Q5_0, 25.27, 1.2, 1.5e-2},
        {TypeId::Q4_1, 67.02, 3.5, 1.5}, {TypeId::Q4_0, 35.27, 2.8, 0.2}}},
      {"7v0-834K",
       {{TypeId::Q8_0, 0.011924, 3e-3, 3e-7}, {TypeId::Q5_1, -0.064663, 0.015, 5e-6}, {TypeId::Q5_0, -0.063645, 0.015, 6e-6},
        {TypeId::Q4_1, 0.002614, 0.02, 7e-6}, {TypeId::Q4_0, 0.136785, 0.035, 3e-5}}},
  };
  for (const Model& m : models) {
    const fs::path f32 = dir / fmt::format("{}.gguf", m.ver);
    convert_to_gguf({rwkv_dir() / fmt::format("tiny-rwkv-{}-FP32.bin", m.ver), f32, std::nullopt, {}});
    const GgufFile in = GgufFile::open(f32);
    const auto expected = test::read_raw<float>(rwkv_dir() / fmt::format("expected-logits-{}.bin", m.ver));
    for (const Bound& b : m.bounds) {
      SCOPED_TRACE(fmt::format("{} {}", m.ver, type_traits(b.type).name));
      QuantizeOptions opts;
      opts.policy.default_type = b.type;
      opts.threads = 2;
      opts.policy.tensor_type_rules = {parse_tensor_type_rule("^emb\\.weight$=f32"),
                                       parse_tensor_type_rule("^head\\.weight$=f32")};
      const fs::path q = dir / fmt::format("{}-{}.gguf", m.ver, type_traits(b.type).name);
      quantize_model(in, q, opts);
      const LogitDiff d = compare(prompt_logits(q).data(), expected);
      std::printf("%s %s: max|diff| %.3g, KLD %.3g, sum %+.6f (rwkv.cpp %+.6f)\n", m.ver, type_traits(b.type).name,
                  d.max_abs, d.kld, d.sum, b.upstream_sum);
      EXPECT_LE(d.max_abs, b.max_abs);
      EXPECT_LE(d.kld, b.kld);
      EXPECT_LE(std::abs(d.sum), 4 * std::abs(b.upstream_sum) + 0.1);
    }
  }
}

// Everything quantized (emb and head too) in mixq's own formats, as the boundary presets use them.
TEST(RwkvEngine, MixqFormatsEverywhere) {
  MIXQ_REQUIRE_SHARED("rwkv-tiny/tiny-rwkv-7v0-834K-FP32.bin");
  const auto dir = fresh_dir("rwkv-formats");
  const fs::path f32 = dir / "7v0.gguf";
  convert_to_gguf({rwkv_dir() / "tiny-rwkv-7v0-834K-FP32.bin", f32, std::nullopt, {}});
  const GgufFile in = GgufFile::open(f32);
  const auto expected = test::read_raw<float>(rwkv_dir() / "expected-logits-7v0-834K.bin");
  for (const auto& [type, kld] : {std::pair{TypeId::I8_ROW, 5e-5}, std::pair{TypeId::NF4, 4e-3}, std::pair{TypeId::Q8_0, 2e-5}}) {
    SCOPED_TRACE(type_traits(type).name);
    QuantizeOptions opts;
    opts.policy.default_type = type;
    opts.threads = 2;
    const fs::path q = dir / fmt::format("7v0-{}.gguf", type_traits(type).name);
    const QuantizeReport rep = quantize_model(in, q, opts);
    EXPECT_EQ(GgufFile::open(q).find_tensor("emb.weight")->type->id, type);
    const LogitDiff d = compare(prompt_logits(q).data(), expected);
    std::printf("7v0-834K all %s: max|diff| %.3g, KLD %.3g\n", type_traits(type).name, d.max_abs, d.kld);
    EXPECT_LE(d.kld, kld);
  }
}

}  // namespace
}  // namespace mixq
