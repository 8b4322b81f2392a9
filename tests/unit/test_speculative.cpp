// Runtime precision strategies: context rollback and state transfer (engine/model.h), speculative
// decoding (engine/speculative.h) and `generate --draft / --prefill-model`.
//
// References: a rollback is checked against a fresh context that never saw the rolled-back
// tokens; greedy speculative output against the target alone; sampled speculative output against
// the target's own distribution, computed here from its logits (a chi-square test that an
// always-accept rule fails); a prefill by the same file against no prefill.
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "gguf_patch.h"
#include "mixq/convert/convert.h"
#include "mixq/engine/registry.h"
#include "mixq/engine/speculative.h"
#include "mixq/engine/tokenizer.h"
#include "mixq/io/gguf.h"
#include "mixq/quantize/quantize_model.h"
#include "test_support.h"

namespace mixq {
namespace {

namespace fs = std::filesystem;

fs::path fresh_dir(const std::string& name) {
  auto d = test::temp_dir() / name;
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

fs::path rwkv_dir() { return test::shared_data_dir() / "rwkv-tiny"; }

// The models every architecture test runs: stories260K (LLaMA) always, the tiny RWKV-4/5.2/7 (and
// 5.2 as llama.cpp's rwkv6) when the shared data is there (converted into dir).
std::vector<fs::path> every_architecture(const fs::path& dir) {
  std::vector<fs::path> out{test::stories260K_gguf()};
  if (test::shared_data_dir().empty()) return out;
  for (const char* ver : {"4v0-660K", "5v2-730K", "7v0-834K"}) {
    const fs::path src = rwkv_dir() / fmt::format("tiny-rwkv-{}-FP32.bin", ver);
    if (!fs::exists(src)) continue;
    const fs::path dst = dir / fmt::format("rwkv-{}.gguf", ver);
    convert_to_gguf({src, dst, std::nullopt, {}});
    out.push_back(dst);
    if (std::string(ver) == "5v2-730K") {  // and as llama.cpp's rwkv6 (convert/rwkv6_layout.h)
      const fs::path v6 = dir / "rwkv6-5v2-730K.gguf";
      convert_to_gguf({src, v6, std::nullopt, {}}, RwkvLayout::LlamaCpp);
      out.push_back(v6);
    }
  }
  return out;
}

const std::vector<int32_t> kHead = {1, 30, 31, 32, 33}, kSpeculated = {40, 41, 42, 43}, kAfter = {50, 51, 52};

TEST(Rollback, EveryArchitectureReturnsExactly) {
  const auto dir = fresh_dir("rollback");
  const auto paths = every_architecture(dir);
  if (paths.size() < 4) std::printf("only %zu architecture(s): the RWKV models need the shared data\n", paths.size());
  for (const fs::path& path : paths) {
    SCOPED_TRACE(path.filename().string());
    const GgufFile f = GgufFile::open(path);
    const auto model = load_model(f);
    const int nv = model->n_vocab();
    for (int keep : {0, 2, 4}) {
      SCOPED_TRACE(fmt::format("keep {} of {}", keep, kSpeculated.size()));
      // Rolled back: the head, four speculated tokens in one batch, back to head + keep, then more.
      const auto a = model->new_context(32, 1);
      a->eval(kHead, false);
      a->mark_rollback();
      a->eval(kSpeculated, true);
      a->rollback(static_cast<int>(kHead.size()) + keep);
      EXPECT_EQ(a->n_past(), static_cast<int>(kHead.size()) + keep);
      const std::vector<float> got = a->eval(kAfter, true);
      // Fresh: the same tokens, never the rolled-back ones (the kept ones in the same batch
      // position they had: a batch of four cut at keep).
      const auto b = model->new_context(32, 1);
      b->eval(kHead, false);
      std::vector<int32_t> kept(kSpeculated.begin(), kSpeculated.begin() + keep);
      if (!kept.empty()) b->eval(kept, false);
      const std::vector<float> want = b->eval(kAfter, true);
      ASSERT_EQ(got.size(), want.size());
      ASSERT_EQ(got.size(), kAfter.size() * static_cast<size_t>(nv));
      double max_diff = 0;
      for (size_t i = 0; i < got.size(); ++i) max_diff = std::max(max_diff, std::abs(double(got[i]) - want[i]));
      EXPECT_EQ(max_diff, 0.0);
    }
    // Outside the marked range: an error, the context unchanged.
    const auto c = model->new_context(32, 1);
    EXPECT_THROW(c->rollback(0), std::runtime_error);  // no mark
    c->eval(kHead, false);
    c->mark_rollback();
    c->eval(kSpeculated, false);
    EXPECT_THROW(c->rollback(static_cast<int>(kHead.size()) - 1), std::runtime_error);
    EXPECT_THROW(c->rollback(static_cast<int>(kHead.size() + kSpeculated.size()) + 1), std::runtime_error);
    EXPECT_EQ(c->n_past(), static_cast<int>(kHead.size() + kSpeculated.size()));
  }
}

TEST(ContextState, ImportContinuesExactlyAndRefusesOtherShapes) {
  const auto dir = fresh_dir("context-state");
  const auto paths = every_architecture(dir);
  for (const fs::path& path : paths) {
    SCOPED_TRACE(path.filename().string());
    const GgufFile f = GgufFile::open(path);
    const auto model = load_model(f);
    const auto a = model->new_context(24, 1);
    a->eval(kHead, false);
    // Into a context of another size (the KV cache's row stride differs).
    const auto b = model->new_context(100, 1);
    b->import_state(a->export_state());
    EXPECT_EQ(b->n_past(), static_cast<int>(kHead.size()));
    EXPECT_EQ(b->eval(kAfter, true), a->eval(kAfter, true));
    // A state too long for the context.
    const auto small = model->new_context(4, 1);
    EXPECT_THROW(small->import_state(b->export_state()), std::runtime_error);
  }
  // Across architectures: refused, naming both shapes.
  if (paths.size() > 1) {
    const GgufFile f0 = GgufFile::open(paths[0]), f1 = GgufFile::open(paths[1]);
    const auto m0 = load_model(f0), m1 = load_model(f1);
    const auto c0 = m0->new_context(16, 1), c1 = m1->new_context(16, 1);
    c0->eval(kHead, false);
    try {
      c1->import_state(c0->export_state());
      ADD_FAILURE() << "imported a llama state into an RWKV context";
    } catch (const std::runtime_error& e) {
      EXPECT_NE(std::string(e.what()).find("llama"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("rwkv"), std::string::npos) << e.what();
    }
  }
}

// A low-bit draft of a model (every matrix q4_0; what a draft file is in practice).
fs::path quantized(const fs::path& in_path, const fs::path& out, TypeId type) {
  const GgufFile in = GgufFile::open(in_path);
  QuantizeOptions opts;
  opts.policy.default_type = type;
  opts.threads = 1;
  quantize_model(in, out, opts);
  return out;
}

// The target's greedy tokens, one by one.
std::vector<int32_t> greedy_alone(const Model& m, const std::vector<int32_t>& prompt, int n) {
  const auto ctx = m.new_context(128, 1);
  Sampler s({0.0f, 0, 1.0f, 0});
  std::vector<int32_t> out;
  const std::vector<float>* l = &ctx->eval(prompt, false);
  for (int i = 0; i < n; ++i) {
    out.push_back(s.sample(l->data(), m.n_vocab()));
    l = &ctx->eval({out.back()}, false);
  }
  return out;
}

TEST(Speculative, GreedyIsTheTargetAloneTokenForToken) {
  const auto dir = fresh_dir("spec-greedy");
  std::vector<std::pair<fs::path, fs::path>> targets;  // (target, draft)
  for (const fs::path& path : every_architecture(dir)) {
    const fs::path draft = quantized(path, dir / ("draft-" + path.filename().string()), TypeId::Q4_0);
    targets.emplace_back(path, draft);
    // A quantized target too: its decode kernels (one token) and batch kernels round differently,
    // so the verification batches must take the lone token's numerics.
    targets.emplace_back(quantized(path, dir / ("q8-" + path.filename().string()), TypeId::Q8_0), draft);
  }
  for (const auto& [path, draft_path] : targets) {
    SCOPED_TRACE(path.filename().string());
    const GgufFile tf = GgufFile::open(path), df = GgufFile::open(draft_path);
    const auto target = load_model(tf), draft = load_model(df);
    const std::vector<int32_t> prompt = {1, 30, 31, 32};
    const int n = 60;
    const std::vector<int32_t> want = greedy_alone(*target, prompt, n);
    int64_t drafted_without_min = 0;
    for (auto [draft_max, min_p] : {std::pair{1, 0.0f}, {3, 0.0f}, {8, 0.0f}, {8, 0.6f}, {8, 1.0f}}) {
      SCOPED_TRACE(fmt::format("draft-max {}, draft-min {}", draft_max, min_p));
      const auto tc = target->new_context(128, 1), dc = draft->new_context(128, 1);
      Sampler s({0.0f, 0, 1.0f, 0}), ds({0.0f, 0, 1.0f, 1});
      SpeculativeDecoder dec(*tc, *dc, s, ds, {draft_max, min_p, false});
      dec.start(prompt);
      std::vector<int32_t> got;
      while (static_cast<int>(got.size()) < n) {
        const auto out = dec.step(n - static_cast<int>(got.size()));
        ASSERT_FALSE(out.empty());
        ASSERT_LE(out.size(), static_cast<size_t>(draft_max + 1));
        got.insert(got.end(), out.begin(), out.end());
      }
      EXPECT_EQ(got, want);
      const SpeculativeStats& st = dec.stats();
      EXPECT_EQ(st.accepted + st.rounds, n);  // every round: its accepted proposals and one target token
      if (min_p == 0.0f) {
        EXPECT_GT(st.accepted, 0);  // a q4_0 draft of the same model agrees often
        if (draft_max == 8) drafted_without_min = st.drafted;
      } else if (min_p == 1.0f) {
        EXPECT_EQ(st.drafted, 0);  // the draft is never certain (softmax < 1): no proposals
      } else {
        EXPECT_LT(st.drafted, drafted_without_min);  // unsure proposals are left out
      }
    }
    // The target as its own draft: at temperature 0 every proposal is the target's next token.
    const auto tc = target->new_context(128, 1), dc = target->new_context(128, 1);
    Sampler s({0.0f, 0, 1.0f, 0}), ds({0.0f, 0, 1.0f, 1});
    SpeculativeDecoder dec(*tc, *dc, s, ds, {5, 0.0f, false});
    dec.start(prompt);
    std::vector<int32_t> got;
    while (static_cast<int>(got.size()) < n) {
      const auto out = dec.step(n - static_cast<int>(got.size()));
      ASSERT_FALSE(out.empty());
      got.insert(got.end(), out.begin(), out.end());
    }
    EXPECT_EQ(got, want);
    EXPECT_GT(dec.stats().drafted, 0);
    EXPECT_EQ(dec.stats().accepted, dec.stats().drafted);
  }
}

// The property greedy identity rests on: a batch evaluated with a lone token's numerics gives
// every token's logits bit for bit as evaluating the tokens one by one does; and a last token
// evaluated with the numerics of the whole batch (the prefill hand-over) gives that batch's last
// logits. Quantized models, whose decode kernels (a few tokens) and batch kernels round differently.
TEST(Numerics, BatchesTakeTheNumericsTheyAreGiven) {
  const auto dir = fresh_dir("numerics");
  for (const fs::path& path : every_architecture(dir)) {
    for (TypeId type : {TypeId::Q8_0, TypeId::Q4_0}) {
      SCOPED_TRACE(fmt::format("{} {}", path.filename().string(), static_cast<int>(type)));
      const fs::path q = quantized(path, dir / fmt::format("{}-{}", static_cast<int>(type), path.filename().string()), type);
      const GgufFile f = GgufFile::open(q);
      const auto m = load_model(f);
      const auto nv = static_cast<size_t>(m->n_vocab());
      const std::vector<int32_t> head = {1, 30, 31}, rest = {40, 41, 42, 43, 44, 45, 46};
      // One by one.
      const auto one = m->new_context(64, 1);
      one->eval(head, false);
      std::vector<float> want;
      for (int32_t t : rest) {
        const auto& l = one->eval({t}, false);
        want.insert(want.end(), l.begin(), l.begin() + static_cast<long>(nv));
      }
      // As one batch with a lone token's numerics.
      const auto batch = m->new_context(64, 1);
      batch->eval(head, false);
      batch->set_numerics_batch(1);
      const std::vector<float> got = batch->eval(rest, true);
      ASSERT_EQ(got.size(), want.size());
      EXPECT_TRUE(got == want) << "max |diff| " << [&] {
        double d = 0;
        for (size_t i = 0; i < got.size(); ++i) d = std::max(d, static_cast<double>(std::fabs(got[i] - want[i])));
        return d;
      }();
      // The hand-over: all but the last token in one context, the last in another after the
      // state moves, both with the whole batch's numerics, against the whole batch at once.
      std::vector<int32_t> all = head;
      all.insert(all.end(), rest.begin(), rest.end());
      const auto whole = m->new_context(64, 1);
      const std::vector<float> ref = whole->eval(all, false);
      const auto a = m->new_context(64, 1), b = m->new_context(64, 1);
      a->set_numerics_batch(static_cast<int>(all.size()));
      a->eval(std::vector<int32_t>(all.begin(), all.end() - 1), false);
      b->import_state(a->export_state());
      b->set_numerics_batch(static_cast<int>(all.size()));
      EXPECT_TRUE(b->eval({all.back()}, false) == ref);
    }
  }
}

// Pearson's chi-square of counts against probabilities (bins expected below 5 pooled), and its
// critical value at p = 1e-4 (Wilson-Hilferty).
struct Chi {
  double chi = 0, critical = 0;
  int df = 0;
};
Chi chi_square(const std::map<int32_t, int>& counts, const std::vector<float>& p, int total) {
  Chi c;
  double pooled_e = 0, pooled_o = 0;
  for (size_t v = 0; v < p.size(); ++v) {
    const double e = p[v] * total;
    const auto it = counts.find(static_cast<int32_t>(v));
    const double o = it == counts.end() ? 0 : it->second;
    if (e >= 5) {
      c.chi += (o - e) * (o - e) / e;
      ++c.df;
    } else {
      pooled_e += e;
      pooled_o += o;
    }
  }
  if (pooled_e > 0) {
    c.chi += (pooled_o - pooled_e) * (pooled_o - pooled_e) / std::max(pooled_e, 1e-9);
    ++c.df;
  }
  c.df -= 1;
  const double d = c.df, z = 3.719;
  c.critical = d * std::pow(1 - 2 / (9 * d) + z * std::sqrt(2 / (9 * d)), 3);
  return c;
}

// Sampled speculative decoding on stories260K, the draft drawing at a much higher temperature
// than the target (so q differs from p widely and a wrong rule shows): the first token's
// frequencies follow the target's distribution after the prompt, and the second token's, among
// runs whose first token was the most frequent, the target's distribution after that token.
// Returns the two chi-square results.
std::pair<Chi, Chi> sampled_runs(bool always_accept, int runs) {
  const GgufFile f = GgufFile::open(test::stories260K_gguf());
  const auto model = load_model(f);
  const Tokenizer tok = Tokenizer::from_gguf(f);
  const std::vector<int32_t> prompt = tok.encode("Tom and", true);
  const SamplerOptions target_opts{1.0f, 0, 1.0f, 0};
  const auto tc = model->new_context(16, 1), dc = model->new_context(16, 1);
  std::map<int32_t, int> first;
  std::map<int32_t, std::map<int32_t, int>> second;
  for (int r = 0; r < runs; ++r) {
    Sampler s({1.0f, 0, 1.0f, static_cast<uint64_t>(r)}), ds({2.5f, 0, 1.0f, static_cast<uint64_t>(r) + 1000003});
    SpeculativeDecoder dec(*tc, *dc, s, ds, {2, 0.0f, always_accept});
    dec.start(prompt);
    std::vector<int32_t> got;
    while (got.size() < 2) {  // rounds of up to two proposals: the second token is a proposal or a bonus
      const auto out = dec.step(3);
      got.insert(got.end(), out.begin(), out.end());
    }
    ++first[got[0]];
    ++second[got[0]][got[1]];
  }
  // The target's own distributions, from its logits.
  Sampler ref(target_opts);
  std::vector<float> p0, p1;
  const auto c = model->new_context(16, 1);
  ref.distribution(c->eval(prompt, false).data(), model->n_vocab(), p0);
  const int32_t mode = std::max_element(first.begin(), first.end(), [](auto& a, auto& b) { return a.second < b.second; })->first;
  ref.distribution(c->eval({mode}, false).data(), model->n_vocab(), p1);
  return {chi_square(first, p0, runs), chi_square(second[mode], p1, first[mode])};
}

TEST(Speculative, SampledTokensFollowTheTargetDistribution) {
  const auto [c0, c1] = sampled_runs(false, 3000);
  std::printf("first token: chi-square %.1f, %d df, critical %.1f; second: %.1f, %d df, critical %.1f\n", c0.chi, c0.df,
              c0.critical, c1.chi, c1.df, c1.critical);
  EXPECT_GE(c0.df, 3);
  EXPECT_GE(c1.df, 3);
  EXPECT_LT(c0.chi, c0.critical);
  EXPECT_LT(c1.chi, c1.critical);
}

TEST(Speculative, TheChiSquareTestCatchesABrokenRule) {
  // Always accepting the draft's proposals gives the draft's distribution, not the target's.
  const auto [c0, c1] = sampled_runs(true, 800);
  std::printf("always-accept: first token chi-square %.1f (critical %.1f), second %.1f (critical %.1f)\n", c0.chi,
              c0.critical, c1.chi, c1.critical);
  EXPECT_GT(c0.chi, c0.critical);
  EXPECT_GT(c1.chi, c1.critical);
}

std::string stdout_text(const std::string& out) {
  // generate prints the text then its statistics lines on stderr ("prompt: ..."): keep the text.
  const size_t at = out.find("prompt: ");
  return at == std::string::npos ? out : out.substr(0, at);
}

TEST(SpeculativeCli, GreedyDraftAndSamePrefillChangeNothing) {
  const auto dir = fresh_dir("spec-cli");
  // The F32 model, and a q8_0 one (batch and decode kernels round differently).
  for (const std::string& m : {test::stories260K_gguf().string(),
                               quantized(test::stories260K_gguf(), dir / "q8.gguf", TypeId::Q8_0).string()}) {
    SCOPED_TRACE(m);
    const std::string d = quantized(test::stories260K_gguf(), dir / "q4.gguf", TypeId::Q4_0).string();
    const std::string base = fmt::format("generate '{}' -p 'Once upon a time' -n 48 --temp 0 -t 1", m);
    const auto alone = test::run_cli(base);
    ASSERT_EQ(alone.exit_code, 0) << alone.output;
    const auto spec = test::run_cli(base + fmt::format(" --draft '{}' --draft-max 5 --draft-baseline", d));
    ASSERT_EQ(spec.exit_code, 0) << spec.output;
    EXPECT_EQ(stdout_text(spec.output), stdout_text(alone.output));
    EXPECT_NE(spec.output.find("speculative: "), std::string::npos) << spec.output;
    EXPECT_NE(spec.output.find("acceptance "), std::string::npos) << spec.output;
    EXPECT_NE(spec.output.find("target alone: 48 tokens, "), std::string::npos) << spec.output;
    EXPECT_NE(spec.output.find("x\n", spec.output.find("speedup ")), std::string::npos) << spec.output;
    // --prefill-model with the main file itself: the same text, and a KLD of zero.
    const auto same = test::run_cli(base + fmt::format(" --prefill-model '{}' --prefill-kld", m));
    ASSERT_EQ(same.exit_code, 0) << same.output;
    EXPECT_EQ(stdout_text(same.output), stdout_text(alone.output));
    EXPECT_NE(same.output.find("KLD(MODEL throughout || prefill by --prefill-model) mean 0,"), std::string::npos)
        << same.output;
    // A q4_0 prefill: runs, and costs a KLD above zero.
    const auto low = test::run_cli(base + fmt::format(" --prefill-model '{}' --prefill-kld", d));
    ASSERT_EQ(low.exit_code, 0) << low.output;
    EXPECT_NE(low.output.find("prefill-kld: "), std::string::npos) << low.output;
    EXPECT_EQ(low.output.find("mean 0,"), std::string::npos) << low.output;
  }
}

TEST(SpeculativeCli, CompanionsOfAnotherModelAreClearErrors) {
  const auto dir = fresh_dir("spec-bad");
  const std::string m = test::stories260K_gguf().string();
  const std::string base = fmt::format("generate '{}' -p 'Once upon a time' -n 4 --temp 0 -t 1", m);
  // Another vocabulary: one token's text changed in a copy.
  auto bytes = test::read_bytes(m);
  const size_t at = test::GgufHeaderWalker(bytes).value_offset("tokenizer.ggml.tokens", 300);
  bytes[at] = bytes[at] == 'q' ? 'z' : 'q';
  const fs::path other_vocab = dir / "other-vocab.gguf";
  test::write_bytes(other_vocab, bytes);
  for (const char* opt : {"--draft", "--prefill-model"}) {
    SCOPED_TRACE(opt);
    const auto r = test::run_cli(base + fmt::format(" {} '{}'", opt, other_vocab.string()));
    EXPECT_NE(r.exit_code, 0) << r.output;
    EXPECT_NE(r.output.find(fmt::format("{} {}: token 300", opt, other_vocab.string())), std::string::npos) << r.output;
    EXPECT_NE(r.output.find("give a quantization of the same model"), std::string::npos) << r.output;
    EXPECT_EQ(r.output.find("Segmentation"), std::string::npos);
  }
  // Another architecture (an RWKV file beside a LLaMA one).
  if (!test::shared_data_dir().empty() && fs::exists(rwkv_dir() / "tiny-rwkv-7v0-834K-FP32.bin")) {
    const fs::path rwkv = dir / "rwkv7.gguf";
    convert_to_gguf({rwkv_dir() / "tiny-rwkv-7v0-834K-FP32.bin", rwkv, std::nullopt, {}});
    for (const char* opt : {"--draft", "--prefill-model"}) {
      SCOPED_TRACE(opt);
      const auto r = test::run_cli(base + fmt::format(" {} '{}'", opt, rwkv.string()));
      EXPECT_NE(r.exit_code, 0) << r.output;
      EXPECT_NE(r.output.find("architecture 'rwkv7', but"), std::string::npos) << r.output;
    }
  }
  // Both at once, and option values out of range.
  for (const std::string& bad : {fmt::format(" --draft '{}' --prefill-model '{}'", m, m),
                                 fmt::format(" --draft '{}' --draft-max 0", m), fmt::format(" --draft '{}' --draft-min 2", m),
                                 std::string(" --prefill-kld"), std::string(" --draft /nonexistent.gguf")}) {
    SCOPED_TRACE(bad);
    const auto r = test::run_cli(base + bad);
    EXPECT_NE(r.exit_code, 0) << r.output;
    EXPECT_LT(r.exit_code, 128) << r.output;  // an error, not a signal
  }
}

}  // namespace
}  // namespace mixq
