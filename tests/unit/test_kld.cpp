// KL divergence (mixq kld) and the shared perplexity chunking, on the real stories260K model and
// wikitext-2: a model against itself, quantized copies, stored base runs, an independent check of
// the formula, the quality gate and bad input.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <fstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "mixq/engine/llama_model.h"
#include "mixq/engine/tokenizer.h"
#include "mixq/eval/kld.h"
#include "mixq/eval/perplexity.h"
#include "mixq/policy/policy.h"
#include "mixq/quantize/quantize_model.h"
#include "test_support.h"

namespace mixq {
namespace {

namespace fs = std::filesystem;

constexpr const char* kModelRel = "stories260K/stories260K-f32.llamacpp.gguf";
constexpr const char* kTextRel = "wikitext-2-raw/wiki.test.raw";
constexpr int kThreads = 2;

std::string q(const fs::path& p) { return fmt::format("'{}'", p.string()); }

std::string read_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void write_file(const fs::path& p, const std::string& s) { std::ofstream(p, std::ios::binary) << s; }

// A copy of a GGUF file with some metadata keys replaced.
void copy_with_metadata(const GgufFile& f, const fs::path& out, const std::vector<std::pair<std::string, GgufValue>>& keys) {
  GgufWriter w(out);
  w.copy_metadata(f);
  for (const auto& [k, v] : keys) w.set(k, v);
  for (const auto& t : f.tensors()) w.add_tensor(t.name, t.shape, t.type->id);
  for (const auto& t : f.tensors()) w.write_tensor_data(t.bytes());
  w.finish();
}

// The JSON object in a command's output (progress lines on stderr carry no braces).
nlohmann::json json_of(const std::string& out) {
  const size_t a = out.find('{'), b = out.rfind('}');
  if (a == std::string::npos || b == std::string::npos) throw std::runtime_error("no JSON in: " + out);
  return nlohmann::json::parse(out.substr(a, b - a + 1));
}

class Kld : public ::testing::Test {
 protected:
  // Shared by the tests of one process: the text prefix and the quantized copies.
  static void SetUpTestSuite() {
    if (test::shared_data_dir().empty() || !fs::exists(test::shared_data_dir() / kModelRel) ||
        !fs::exists(test::shared_data_dir() / kTextRel)) {
      return;
    }
    dir_ = test::temp_dir() / "kld";
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    f32_ = test::shared_data_dir() / kModelRel;
    // The first ~20 kB of wiki.test.raw (cut at a line end): about 24 chunks of 512 tokens.
    const std::string all = read_file(test::shared_data_dir() / kTextRel);
    text_ = all.substr(0, all.find('\n', 20000) + 1);
    text_path_ = dir_ / "text.txt";
    write_file(text_path_, text_);
    const GgufFile in = GgufFile::open(f32_);
    for (const auto& [type, path] : {std::pair{TypeId::Q8_0, &q8_}, std::pair{TypeId::Q4_0, &q4_}}) {
      QuantizeOptions opts;
      opts.policy.default_type = type;
      opts.policy.tensor_type_rules.push_back(parse_tensor_type_rule("ffn_down=f16"));  // rows of 172
      opts.threads = kThreads;
      *path = dir_ / fmt::format("stories260K-{}.gguf", type == TypeId::Q8_0 ? "q8_0" : "q4_0");
      quantize_model(in, *path, opts);
    }
  }
  static void TearDownTestSuite() {
    if (!dir_.empty()) fs::remove_all(dir_);
  }
  void SetUp() override {
    MIXQ_REQUIRE_SHARED(kModelRel);
    MIXQ_REQUIRE_SHARED(kTextRel);
    ASSERT_FALSE(dir_.empty());
  }

  static KldOptions opts(int chunks = 3) {
    KldOptions o;
    o.n_ctx = 512;
    o.max_chunks = chunks;
    o.threads = kThreads;
    return o;
  }

  static inline fs::path dir_, f32_, q8_, q4_, text_path_;
  static inline std::string text_;
};

// Task 1: BOS first only when the vocabulary adds it; stories260K's SentencePiece vocabulary does.
TEST_F(Kld, ChunksStartWithBosOnlyWhenTheVocabularyAddsIt) {
  const GgufFile f = GgufFile::open(f32_);
  const Tokenizer tok = Tokenizer::from_gguf(f);
  ASSERT_TRUE(tok.add_bos_token());
  const TextChunks with = split_text(tok, text_, 512, 3);
  EXPECT_TRUE(with.bos_first);
  EXPECT_EQ(with.tokens[0], tok.bos());
  EXPECT_EQ(with.n_chunks, 3);
  EXPECT_EQ(with.first(), 256);
  EXPECT_EQ(with.rows_per_chunk(), 255);
  for (int c = 0; c < 3; ++c) {
    const auto in = with.input(c);
    ASSERT_EQ(in.size(), 512u);
    EXPECT_EQ(in[0], tok.bos());
    EXPECT_TRUE(std::equal(in.begin() + 1, in.end(), with.text_tokens(c) + 1));
    EXPECT_EQ(with.targets(c)[0], with.tokens[static_cast<size_t>(c) * 512 + 257]);
  }

  const fs::path nobos = dir_ / "nobos.gguf";
  copy_with_metadata(f, nobos, {{"tokenizer.ggml.add_bos_token", GgufValue::boolean(false)}});
  const GgufFile g = GgufFile::open(nobos);
  const Tokenizer tok2 = Tokenizer::from_gguf(g);
  ASSERT_FALSE(tok2.add_bos_token());
  const TextChunks without = split_text(tok2, text_, 512, 3);
  EXPECT_FALSE(without.bos_first);
  // The same text without the leading BOS; every chunk is fed exactly as the text has it.
  ASSERT_EQ(without.tokens.size() + 1, with.tokens.size());
  EXPECT_TRUE(std::equal(without.tokens.begin(), without.tokens.end(), with.tokens.begin() + 1));
  for (int c = 0; c < 3; ++c) {
    const auto in = without.input(c);
    EXPECT_TRUE(std::equal(in.begin(), in.end(), without.text_tokens(c)));
    EXPECT_NE(in[0], tok2.bos());
  }
  // perplexity() follows the plan: a different (BOS-free) chunking gives a different figure.
  const LlamaModel m(f), m2(g);
  const PerplexityResult a = perplexity(m, tok, text_, {512, 2, kThreads, nullptr});
  const PerplexityResult b = perplexity(m2, tok2, text_, {512, 2, kThreads, nullptr});
  EXPECT_EQ(a.scored_tokens, 510);
  EXPECT_EQ(b.scored_tokens, 510);
  EXPECT_NE(a.ppl, b.ppl);
}

// (a) A model against itself: KLD exactly 0, the same top token everywhere, PPL ratio 1.
TEST_F(Kld, ModelAgainstItselfIsExactlyZero) {
  const GgufFile f = GgufFile::open(f32_);
  const LlamaModel m(f);
  const Tokenizer tok = Tokenizer::from_gguf(f);
  const KldResult r = kl_divergence(m, tok, m, tok, text_, opts());
  ASSERT_EQ(r.tokens.size(), 3u * 255u);
  for (size_t i = 0; i < r.tokens.size(); ++i) {
    ASSERT_EQ(r.tokens.kld[i], 0.0) << i;
    ASSERT_EQ(r.tokens.delta_p[i], 0.0) << i;
    ASSERT_EQ(r.tokens.same_top[i], 1) << i;
    ASSERT_EQ(r.tokens.nll_base[i], r.tokens.nll_model[i]) << i;
  }
  const KldStats& s = r.stats;
  EXPECT_EQ(s.kld.value, 0.0);
  EXPECT_EQ(s.kld_q.max, 0.0);
  EXPECT_EQ(s.same_top.value, 1.0);
  EXPECT_EQ(s.ppl_ratio.value, 1.0);
  EXPECT_EQ(s.ln_ppl_ratio.value, 0.0);
  EXPECT_EQ(s.ppl_base.value, s.ppl_model.value);
  EXPECT_NEAR(s.ppl_correlation, 1.0, 1e-12);
  EXPECT_EQ(s.rms_delta_p.value, 0.0);
  // PPL as the perplexity command computes it (log-probabilities rounded to float32 here: ~1e-7).
  const PerplexityResult p = perplexity(m, tok, text_, {512, 3, kThreads, nullptr});
  EXPECT_NEAR(s.ppl_base.value, p.ppl, 1e-6 * p.ppl);
  EXPECT_NEAR(s.ppl_base.error, p.ppl_error, 1e-6 * p.ppl_error);
  EXPECT_TRUE(check_quality_gate(s, 0.0, 0.0).empty());
}

// (b) A quantized copy: KLD > 0 and statistics that agree with each other.
TEST_F(Kld, QuantizedCopyHasConsistentStatistics) {
  const GgufFile fb = GgufFile::open(f32_), f8 = GgufFile::open(q8_), f4 = GgufFile::open(q4_);
  const LlamaModel base(fb), m8(f8), m4(f4);
  const Tokenizer tb = Tokenizer::from_gguf(fb), t8 = Tokenizer::from_gguf(f8), t4 = Tokenizer::from_gguf(f4);
  const KldResult r4 = kl_divergence(base, tb, m4, t4, text_, opts());
  const KldResult r8 = kl_divergence(base, tb, m8, t8, text_, opts());
  for (const KldResult* r : {&r4, &r8}) {
    const KldStats& s = r->stats;
    const KldTokens& t = r->tokens;
    ASSERT_EQ(t.size(), 765u);
    EXPECT_EQ(s.tokens, 765);
    EXPECT_EQ(s.chunks, 3);
    EXPECT_GT(s.kld.value, 0.0);
    EXPECT_GT(s.kld.error, 0.0);
    for (double k : t.kld) EXPECT_GE(k, -1e-12);
    const Quantiles& k = s.kld_q;
    const std::vector<double> order = {k.min, k.p01, k.p05, k.p10, k.p25, k.median, k.p75, k.p90, k.p95, k.p99, k.p999, k.max};
    EXPECT_TRUE(std::is_sorted(order.begin(), order.end()));
    EXPECT_EQ(k.max, *std::max_element(t.kld.begin(), t.kld.end()));
    EXPECT_EQ(k.min, *std::min_element(t.kld.begin(), t.kld.end()));
    EXPECT_LE(k.min, s.kld.value);
    EXPECT_LE(s.kld.value, k.max);
    // The median: half the values on each side.
    const auto below = std::count_if(t.kld.begin(), t.kld.end(), [&](double v) { return v < k.median; });
    EXPECT_NEAR(static_cast<double>(below), 765 / 2.0, 1.0);
    const Quantiles& p = s.delta_p_q;
    const std::vector<double> dp_order = {p.min, p.p01, p.p05, p.p10, p.p25, p.median, p.p75, p.p90, p.p95, p.p99, p.p999, p.max};
    EXPECT_TRUE(std::is_sorted(dp_order.begin(), dp_order.end()));
    // Mean and RMS of dp, recomputed; RMS >= |mean|.
    double sum = 0, sum2 = 0;
    for (double d : t.delta_p) {
      sum += d;
      sum2 += d * d;
    }
    EXPECT_NEAR(s.delta_p.value, sum / 765, 1e-15);
    EXPECT_NEAR(s.rms_delta_p.value, std::sqrt(sum2 / 765), 1e-15);
    EXPECT_GE(s.rms_delta_p.value, std::abs(s.delta_p.value));
    EXPECT_LE(s.rms_delta_p.value, std::max(std::abs(p.min), std::abs(p.max)));
    // PPL ratio = exp(mean ln ratio) = PPL(model) / PPL(base).
    EXPECT_NEAR(s.ppl_ratio.value, std::exp(s.ln_ppl_ratio.value), 1e-12);
    EXPECT_NEAR(s.ppl_ratio.value, s.ppl_model.value / s.ppl_base.value, 1e-12);
    EXPECT_NEAR(s.ppl_diff.value, s.ppl_model.value - s.ppl_base.value, 1e-9);
    EXPECT_GT(s.ppl_correlation, 0.9);
    EXPECT_LE(s.ppl_correlation, 1.0);
    EXPECT_GT(s.same_top.value, 0.5);
    EXPECT_LT(s.same_top.value, 1.0);
    EXPECT_GT(s.same_top.error, 0.0);
    // delta_p is p_model(target) - p_base(target).
    for (size_t i = 0; i < 765; i += 50) {
      EXPECT_NEAR(t.delta_p[i], std::exp(-t.nll_model[i]) - std::exp(-t.nll_base[i]), 1e-15);
    }
    // The base side is the base model's perplexity.
    EXPECT_EQ(s.ppl_base.value, r8.stats.ppl_base.value);
  }
  // Q4_0 is further from F32 than Q8_0.
  EXPECT_GT(r4.stats.kld.value, 3 * r8.stats.kld.value);
  EXPECT_LT(r4.stats.same_top.value, r8.stats.same_top.value);
  // The model side is the quantized model's perplexity.
  const PerplexityResult p4 = perplexity(m4, t4, text_, {512, 3, kThreads, nullptr});
  EXPECT_NEAR(r4.stats.ppl_model.value, p4.ppl, 1e-6 * p4.ppl);
  // JSON carries the same figures.
  const auto j = r4.stats.to_json();
  EXPECT_EQ(j["kld"]["mean"].get<double>(), r4.stats.kld.value);
  EXPECT_EQ(j["kld"]["p99.9"].get<double>(), r4.stats.kld_q.p999);
  EXPECT_EQ(j["same_top"]["fraction"].get<double>(), r4.stats.same_top.value);
  EXPECT_EQ(j["delta_p"]["rms"].get<double>(), r4.stats.rms_delta_p.value);
}

// (c) A stored base run gives exactly the numbers of a live one, through the library and the CLI.
TEST_F(Kld, StoredBaseGivesExactlyTheSameNumbers) {
  const GgufFile fb = GgufFile::open(f32_), f4 = GgufFile::open(q4_);
  const LlamaModel base(fb), m4(f4);
  const Tokenizer tb = Tokenizer::from_gguf(fb), t4 = Tokenizer::from_gguf(f4);
  const fs::path saved = dir_ / "lib-base.kld", saved2 = dir_ / "lib-base2.kld";
  const PerplexityResult p = save_base_logits(base, tb, text_, saved, opts());
  KldOptions o = opts();
  o.save_base = saved2;
  const KldResult live = kl_divergence(base, tb, m4, t4, text_, o);
  EXPECT_EQ(read_file(saved), read_file(saved2));  // both ways of saving write the same bytes
  const std::string expected_size_note = "header + tokens + 3 chunks of 255 x 512 floats";
  EXPECT_EQ(fs::file_size(saved), 40u + 3 * 512 * 4 + 8 + 3 * (255u * 512 * 4 + 8)) << expected_size_note;
  const BaseLogitsInfo info = read_base_logits_info(saved);
  EXPECT_EQ(info.n_vocab, 512);
  EXPECT_EQ(info.n_ctx, 512);
  EXPECT_EQ(info.n_chunks, 3);
  EXPECT_TRUE(info.bos_first);
  KldOptions from_file = opts(0);  // all the file's chunks
  const KldResult stored = kl_divergence_from_file(saved, m4, t4, text_, from_file);
  EXPECT_EQ(stored.tokens.kld, live.tokens.kld);
  EXPECT_EQ(stored.tokens.nll_base, live.tokens.nll_base);
  EXPECT_EQ(stored.tokens.nll_model, live.tokens.nll_model);
  EXPECT_EQ(stored.tokens.delta_p, live.tokens.delta_p);
  EXPECT_EQ(stored.tokens.same_top, live.tokens.same_top);
  EXPECT_EQ(stored.stats.to_json(), live.stats.to_json());
  // The saving run's PPL is the PPL(base) that a comparison reports.
  EXPECT_EQ(p.ppl, live.stats.ppl_base.value);
  EXPECT_EQ(p.scored_tokens, 765);
  // Fewer chunks than the file holds: its first ones.
  const KldResult two = kl_divergence_from_file(saved, m4, t4, text_, opts(2));
  ASSERT_EQ(two.tokens.size(), 510u);
  EXPECT_TRUE(std::equal(two.tokens.kld.begin(), two.tokens.kld.end(), live.tokens.kld.begin()));

  // The CLI: --base with --save-base, MODEL alone with --save-base, then --base-logits.
  const std::string common = " -f " + q(text_path_) + " --chunks 3 -t 2 --json";
  const fs::path cli_saved = dir_ / "cli-base.kld", cli_saved2 = dir_ / "cli-base2.kld";
  const auto a = test::run_cli("kld " + q(q4_) + " --base " + q(f32_) + " --save-base " + q(cli_saved) + common);
  ASSERT_EQ(a.exit_code, 0) << a.output;
  const auto s = test::run_cli("kld " + q(f32_) + " --save-base " + q(cli_saved2) + common);
  ASSERT_EQ(s.exit_code, 0) << s.output;
  EXPECT_EQ(read_file(cli_saved), read_file(saved));
  EXPECT_EQ(read_file(cli_saved2), read_file(saved));
  const auto b = test::run_cli("kld " + q(q4_) + " --base-logits " + q(cli_saved2) + " -f " + q(text_path_) + " -t 2 --json");
  ASSERT_EQ(b.exit_code, 0) << b.output;
  nlohmann::json ja = json_of(a.output), jb = json_of(b.output);
  EXPECT_EQ(json_of(s.output)["ppl"]["value"].get<double>(), ja["ppl_base"]["value"].get<double>());
  EXPECT_EQ(ja["base"], f32_.string());
  EXPECT_EQ(jb["base_logits"], cli_saved2.string());
  for (const char* k : {"base", "base_logits", "saved_base", "seconds"}) {
    ja.erase(k);
    jb.erase(k);
  }
  EXPECT_EQ(ja, jb);
  EXPECT_EQ(ja["kld"]["mean"].get<double>(), live.stats.kld.value);
  // No temporary file is left beside the outputs.
  for (const auto& name : test::files_in(dir_)) EXPECT_EQ(name.find(".tmp"), std::string::npos) << name;
}

// (d) The KLD formula, checked against a double-precision computation from the raw logits.
TEST_F(Kld, PerTokenValuesMatchAnIndependentComputation) {
  const GgufFile fb = GgufFile::open(f32_), f4 = GgufFile::open(q4_);
  const LlamaModel base(fb), m4(f4);
  const Tokenizer tb = Tokenizer::from_gguf(fb), t4 = Tokenizer::from_gguf(f4);
  const KldResult r = kl_divergence(base, tb, m4, t4, text_, opts(1));
  ASSERT_EQ(r.tokens.size(), 255u);
  // Chunk 0 by hand: the first 512 tokens (the first of them BOS), positions 256 .. 510 scored.
  std::vector<int32_t> ids = tb.encode(text_, true);
  ids.resize(512);
  ASSERT_EQ(ids[0], tb.bos());
  LlamaContext cb(base, 512, kThreads), cm(m4, 512, kThreads);
  const std::vector<float> lb = cb.eval(ids, true);
  const std::vector<float> lm = cm.eval(ids, true);
  const int V = 512;
  const auto log_softmax = [&](const float* x) {
    double mx = -1e300;
    for (int v = 0; v < V; ++v) mx = std::max(mx, static_cast<double>(x[v]));
    double s = 0;
    for (int v = 0; v < V; ++v) s += std::exp(static_cast<double>(x[v]) - mx);
    std::vector<double> out(V);
    for (int v = 0; v < V; ++v) out[v] = static_cast<double>(x[v]) - mx - std::log(s);
    return out;
  };
  double max_err = 0;
  for (int j = 256; j <= 510; ++j) {
    const std::vector<double> pb = log_softmax(lb.data() + static_cast<size_t>(j) * V);
    const std::vector<double> pm = log_softmax(lm.data() + static_cast<size_t>(j) * V);
    double kl = 0;
    for (int v = 0; v < V; ++v) kl += std::exp(pb[v]) * (pb[v] - pm[v]);
    const int32_t target = ids[static_cast<size_t>(j) + 1];
    const size_t i = static_cast<size_t>(j - 256);
    EXPECT_NEAR(r.tokens.kld[i], kl, 1e-7 + 1e-5 * kl) << "position " << j;
    max_err = std::max(max_err, std::abs(r.tokens.kld[i] - kl));
    EXPECT_NEAR(r.tokens.nll_base[i], -pb[target], 1e-5) << j;
    EXPECT_NEAR(r.tokens.nll_model[i], -pm[target], 1e-5) << j;
    EXPECT_NEAR(r.tokens.delta_p[i], std::exp(pm[target]) - std::exp(pb[target]), 1e-6) << j;
    const auto top = [&](const std::vector<double>& x) { return std::max_element(x.begin(), x.end()) - x.begin(); };
    EXPECT_EQ(r.tokens.same_top[i] == 1, top(pb) == top(pm)) << j;
  }
  RecordProperty("max_abs_kld_error", fmt::format("{:.3g}", max_err));
}

// (e) The quality gate: exit 3 with the figure, the limit and the value; 0 within the limits.
TEST_F(Kld, QualityGateExitCodes) {
  const std::string args = "kld " + q(q4_) + " --base " + q(f32_) + " -f " + q(text_path_) + " --chunks 3 -t 2";
  const auto fail = test::run_cli(args + " --max-kld 0");
  EXPECT_EQ(fail.exit_code, 3) << fail.output;
  EXPECT_NE(fail.output.find("KL divergence statistics"), std::string::npos) << fail.output;  // report first
  EXPECT_NE(fail.output.find("quality gate failed: mean KLD 0."), std::string::npos) << fail.output;
  EXPECT_NE(fail.output.find("exceeds --max-kld 0"), std::string::npos) << fail.output;
  const auto ppl = test::run_cli(args + " --max-ppl-increase 0%");
  EXPECT_EQ(ppl.exit_code, 3) << ppl.output;
  EXPECT_NE(ppl.output.find("quality gate failed: PPL increase"), std::string::npos) << ppl.output;
  EXPECT_NE(ppl.output.find("exceeds --max-ppl-increase 0%"), std::string::npos) << ppl.output;
  const auto pass = test::run_cli(args + " --max-kld 1 --max-ppl-increase 50%");
  EXPECT_EQ(pass.exit_code, 0) << pass.output;
  EXPECT_NE(pass.output.find("quality gate passed"), std::string::npos) << pass.output;
  const auto json = test::run_cli(args + " --max-kld 0 --json");
  EXPECT_EQ(json.exit_code, 3) << json.output;
  const auto j = json_of(json.output);
  EXPECT_FALSE(j["gate"]["passed"].get<bool>());
  EXPECT_EQ(j["gate"]["failures"].size(), 1u);
  EXPECT_NE(test::run_cli("kld --help").output.find("3 a quality gate failed"), std::string::npos);

  // The gate in the library; a NaN figure never passes.
  KldStats s;
  s.ppl_base.value = 100;
  s.ppl_model.value = 104;
  s.ppl_ratio.value = 1.04;
  s.kld.value = 0.01;
  EXPECT_TRUE(check_quality_gate(s, 0.05, 0.02).empty());
  EXPECT_EQ(check_quality_gate(s, 0.03, std::nullopt).size(), 1u);
  EXPECT_EQ(check_quality_gate(s, std::nullopt, 0.005).size(), 1u);
  EXPECT_TRUE(check_quality_gate(s, std::nullopt, std::nullopt).empty());
  s.kld.value = std::nan("");
  EXPECT_EQ(check_quality_gate(s, std::nullopt, 1.0).size(), 1u);
}

TEST_F(Kld, PplIncreaseSyntax) {
  EXPECT_DOUBLE_EQ(parse_ppl_increase("5%"), 0.05);
  EXPECT_DOUBLE_EQ(parse_ppl_increase(" 2.5 % "), 0.025);
  EXPECT_DOUBLE_EQ(parse_ppl_increase("0.05"), 0.05);
  EXPECT_DOUBLE_EQ(parse_ppl_increase("150%"), 1.5);
  EXPECT_DOUBLE_EQ(parse_ppl_increase("0"), 0.0);
  EXPECT_DOUBLE_EQ(parse_ppl_increase("1e-2"), 0.01);
  for (const char* bad : {"", "%", "abc", "5%%", "-1%", "5", "1.5", "nan", "inf%", "0x1p-3", "5 percent", "0.05.1"}) {
    try {
      parse_ppl_increase(bad);
      ADD_FAILURE() << "accepted '" << bad << "'";
    } catch (const std::runtime_error& e) {
      EXPECT_NE(std::string(e.what()).find("bad --max-ppl-increase"), std::string::npos) << e.what();
    }
  }
}

// Corrupt, truncated and mismatched stored runs, and other bad input: each a clear error.
TEST_F(Kld, BadInputIsAClearError) {
  const fs::path saved = dir_ / "bad-base.kld";
  const auto s = test::run_cli("kld " + q(f32_) + " --save-base " + q(saved) + " -f " + q(text_path_) + " --chunks 3 -t 2");
  ASSERT_EQ(s.exit_code, 0) << s.output;
  EXPECT_NE(s.output.find("PPL(base) = "), std::string::npos) << s.output;
  const std::string good = read_file(saved);
  const auto with_file = [&](const std::string& bytes, const std::string& extra = "") {
    const fs::path p = dir_ / "mangled.kld";
    write_file(p, bytes);
    return test::run_cli("kld " + q(q4_) + " --base-logits " + q(p) + " -f " + q(text_path_) + " -t 2" + extra);
  };
  struct Case {
    std::string bytes, extra, expect;
  };
  std::string flipped = good;
  flipped[good.size() / 2] ^= 0x40;  // inside chunk 1's log-probabilities
  std::string bad_magic = good;
  bad_magic[0] = 'X';
  std::string header_edit = good;
  header_edit[12] ^= 1;  // n_vocab
  const std::vector<Case> cases = {
      {good.substr(0, good.size() - 100), "", "truncated"},
      {good.substr(0, 10), "", "truncated"},
      {"", "", "truncated"},
      {good + "extra", "", "more than its header describes"},
      {flipped, "", "chunk 1 does not match its checksum"},
      {bad_magic, "", "not a mixq base-logits file"},
      {header_edit, "", "corrupt"},
      {good, " -c 256", "were made with -c 512, not -c 256"},
      {good, " --chunks 4", "hold 3 chunks; --chunks 4 asks for more"},
  };
  for (const auto& c : cases) {
    const auto r = with_file(c.bytes, c.extra);
    EXPECT_EQ(r.exit_code, 1) << c.expect << ": " << r.output;
    EXPECT_NE(r.output.find(c.expect), std::string::npos) << c.expect << ": " << r.output;
  }
  // -c equal to the file's is fine.
  EXPECT_EQ(with_file(good, " -c 512 --chunks 1").exit_code, 0);

  // A stored run of another text.
  const fs::path other = dir_ / "other.txt";
  write_file(other, text_.substr(1000));
  const auto wrong_text = test::run_cli("kld " + q(q4_) + " --base-logits " + q(saved) + " -f " + q(other));
  EXPECT_EQ(wrong_text.exit_code, 1);
  EXPECT_NE(wrong_text.output.find("the stored tokens and the text's tokens differ at token "), std::string::npos)
      << wrong_text.output;

  // A model whose vocabulary differs from the base's (one piece renamed).
  const GgufFile f = GgufFile::open(f32_);
  std::vector<std::string> pieces;
  for (const auto& v : f.find("tokenizer.ggml.tokens")->as_array()) pieces.push_back(v.as_string());
  pieces[300] = "<renamed>";
  const fs::path renamed = dir_ / "renamed-vocab.gguf";
  copy_with_metadata(f, renamed, {{"tokenizer.ggml.tokens", GgufValue::string_array(pieces)}});
  const auto vocab = test::run_cli("kld " + q(renamed) + " --base " + q(f32_) + " -f " + q(text_path_) + " --chunks 1");
  EXPECT_EQ(vocab.exit_code, 1);
  EXPECT_NE(vocab.output.find("different vocabularies (token 300 is"), std::string::npos) << vocab.output;
  const fs::path nobos = dir_ / "nobos-vocab.gguf";
  copy_with_metadata(f, nobos, {{"tokenizer.ggml.add_bos_token", GgufValue::boolean(false)}});
  const auto bos = test::run_cli("kld " + q(nobos) + " --base " + q(f32_) + " -f " + q(text_path_) + " --chunks 1");
  EXPECT_EQ(bos.exit_code, 1);
  EXPECT_NE(bos.output.find("different vocabularies (BOS handling differs)"), std::string::npos) << bos.output;
  const auto bos_file = test::run_cli("kld " + q(nobos) + " --base-logits " + q(saved) + " -f " + q(text_path_));
  EXPECT_EQ(bos_file.exit_code, 1);
  EXPECT_NE(bos_file.output.find("the vocabularies differ"), std::string::npos) << bos_file.output;

  // Missing files, short text, bad options.
  const fs::path shorttext = dir_ / "short.txt";
  write_file(shorttext, text_.substr(0, 1000));
  const std::string base = " --base " + q(f32_);
  const std::vector<std::pair<std::string, std::string>> cli = {
      {"kld " + q(q4_) + base + " -f " + q(dir_ / "none.txt"), "cannot read the text file"},
      {"kld " + q(dir_ / "none.gguf") + base + " -f " + q(text_path_), "none.gguf"},
      {"kld " + q(q4_) + " --base " + q(dir_ / "none.gguf") + " -f " + q(text_path_), "none.gguf"},
      {"kld " + q(q4_) + " --base-logits " + q(dir_ / "none.kld") + " -f " + q(text_path_), "cannot open base logits"},
      {"kld " + q(q4_) + base + " -f " + q(shorttext), "two contexts"},
      {"kld " + q(q4_) + base + " -f " + q(text_path_) + " --max-ppl-increase 5", "bad --max-ppl-increase '5'"},
      {"kld " + q(q4_) + base + " -f " + q(text_path_) + " --max-ppl-increase abc", "bad --max-ppl-increase 'abc'"},
      {"kld " + q(q4_) + base + " -f " + q(text_path_) + " --max-kld -1", "bad --max-kld"},
      {"kld " + q(q4_) + " -f " + q(text_path_), "nothing to compare with"},
      {"kld " + q(q4_) + base + " --base-logits " + q(saved) + " -f " + q(text_path_), "either --base or --base-logits"},
      {"kld " + q(q4_) + " --base-logits " + q(saved) + " --save-base " + q(dir_ / "x.kld") + " -f " + q(text_path_),
       "--save-base stores a base run"},
      {"kld " + q(f32_) + " --save-base " + q(dir_ / "x.kld") + " --max-kld 1 -f " + q(text_path_), "need a comparison"},
      {"kld " + q(f32_) + " --save-base " + q(dir_ / "no" / "dir" / "x.kld") + " -f " + q(text_path_) + " --chunks 1",
       "cannot write"},
      {"kld " + q(q4_) + base + " -f " + q(text_path_) + " -c 2", "at least 4"},
  };
  for (const auto& [args, expect] : cli) {
    const auto r = test::run_cli(args);
    EXPECT_EQ(r.exit_code, 1) << args << "\n" << r.output;
    EXPECT_NE(r.output.find(expect), std::string::npos) << args << "\n" << r.output;
  }
  EXPECT_FALSE(fs::exists(dir_ / "x.kld"));
}

// An interrupted save leaves no file, not even a temporary one.
TEST_F(Kld, InterruptedSaveLeavesNoFile) {
  const GgufFile fb = GgufFile::open(f32_);
  const LlamaModel base(fb);
  const Tokenizer tb = Tokenizer::from_gguf(fb);
  const fs::path sub = dir_ / "interrupted";
  fs::create_directories(sub);
  std::atomic<bool> cancel{false};
  KldOptions o = opts(3);
  o.cancel = &cancel;
  int seen = 0;
  o.on_chunk = [&](const KldProgress& p) {
    EXPECT_EQ(p.total, 3);
    if (++seen == 2) cancel = true;
  };
  EXPECT_THROW(save_base_logits(base, tb, text_, sub / "base.kld", o), KldCancelled);
  EXPECT_EQ(seen, 2);
  EXPECT_TRUE(test::files_in(sub).empty());
  o.save_base = sub / "base.kld";
  seen = 0;
  cancel = false;
  EXPECT_THROW(kl_divergence(base, tb, base, tb, text_, o), KldCancelled);
  EXPECT_TRUE(test::files_in(sub).empty());
}

}  // namespace
}  // namespace mixq
