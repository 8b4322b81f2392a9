// The RWKV graphs (engine/rwkv_model.h) against rwkv.cpp's expected logits for its tiny test
// models, on the files mixq's own converter writes from rwkv.cpp's.
#include <cmath>
#include <filesystem>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "mixq/convert/convert.h"
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

}  // namespace
}  // namespace mixq
