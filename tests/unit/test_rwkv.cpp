// The RWKV graphs (engine/rwkv_model.h) against rwkv.cpp's expected logits for its tiny test
// models, on the files mixq's own converter writes from rwkv.cpp's.
#include <cmath>
#include <algorithm>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "mixq/convert/convert.h"
#include "mixq/convert/rwkv_layout.h"
#include "mixq/engine/registry.h"
#include "mixq/engine/repack.h"
#include "mixq/engine/tokenizer.h"
#include "mixq/io/gguf.h"
#include "mixq/io/rwkv_vocab.h"
#include "mixq/policy/presets.h"
#include "mixq/quantize/quantize_model.h"
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

// Every position's logits of `tokens`: one batch, or one token at a time.
std::vector<float> all_logits(Context& ctx, const std::vector<int32_t>& tokens, bool one_by_one) {
  if (!one_by_one) return ctx.eval(tokens, true);
  std::vector<float> all;
  for (int32_t t : tokens) {
    const auto& l = ctx.eval({t}, true);
    all.insert(all.end(), l.begin(), l.end());
  }
  return all;
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
  struct PerModel {
    const char* ver;
    std::vector<Bound> bounds;
  };
  const std::vector<PerModel> models = {
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
  for (const PerModel& m : models) {
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

// RWKV-7 with its matrices interleaved in place for decode (engine/repack.h; the default where the
// kernels exist) against another open of the same file in the file's layout: a 12-token batch
// (prefill, rows unpacked) bit for bit, tokens one at a time to the F32 summation order.
TEST(RwkvEngine, InterleavedDecodeLayoutsKeepTheLogits) {
  MIXQ_REQUIRE_SHARED("rwkv-tiny/tiny-rwkv-7v0-834K-FP32.bin");
  const auto dir = fresh_dir("rwkv-interleaved");
  const fs::path f32 = dir / "v7.gguf";
  convert_to_gguf({rwkv_dir() / "tiny-rwkv-7v0-834K-FP32.bin", f32, std::nullopt, {}});
  const GgufFile in = GgufFile::open(f32);
  for (const TypeId type : {TypeId::Q8_0, TypeId::Q5_0}) {
    SCOPED_TRACE(type_traits(type).name);
    QuantizeOptions opts;
    opts.policy.default_type = type;
    opts.threads = 2;
    const fs::path q = dir / fmt::format("v7-{}.gguf", type_traits(type).name);
    quantize_model(in, q, opts);
    const GgufFile fa = GgufFile::open(q), fb = GgufFile::open(q);
    const auto packed = load_model(fa, true), plain = load_model(fb, false);
    int interleaved = 0;
    for (const WeightUse& use : packed->weights()) interleaved += kernels::interleaved(*use.tensor) ? 1 : 0;
    if (kernels::row_dot4_for(kernels::best_kernels(), type) == nullptr) {
      EXPECT_EQ(interleaved, 0);
      continue;
    }
    EXPECT_GT(interleaved, 0);
    const std::vector<int32_t> batch = {'"', 'i', 'n', ' ', 't', 'h', 'e', ' ', 'w', 'o', 'r', 'd'};
    const auto eval = [&](const Model& m, bool one_by_one) {
      const auto ctx = m.new_context(64, 2);
      return all_logits(*ctx, batch, one_by_one);
    };
    EXPECT_EQ(eval(*packed, false), eval(*plain, false));
    const auto [scale, d] = test::logit_gap(eval(*packed, true), eval(*plain, true));
    EXPECT_GT(scale, 0.1);
    EXPECT_LE(d, 1e-3 * scale);
    std::printf("%s: %d matrices interleaved, max |logit| %.3g, one at a time interleaved vs file rows %.3g\n",
                type_traits(type).name, interleaved, scale, d);
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

// ---------------------------------------------------------------------------------------------
// Bad input

// A copy of a GGUF with edits: `meta` may change keys; `edit` sees each tensor's name and shape
// and returns false to drop it (a tensor whose shape it changes gets zeroed F32 data).
void rewrite(const fs::path& in, const fs::path& out, const std::function<void(GgufWriter&)>& meta,
             const std::function<bool(std::string&, std::vector<int64_t>&)>& edit) {
  const GgufFile f = GgufFile::open(in);
  GgufWriter w(out);
  w.copy_metadata(f);
  meta(w);
  std::vector<std::pair<const GgufTensor*, std::vector<int64_t>>> kept;
  for (const auto& t : f.tensors()) {
    std::string name = t.name;
    std::vector<int64_t> shape = t.shape;
    if (!edit(name, shape)) continue;
    w.add_tensor(name, shape, shape == t.shape ? t.type->id : TypeId::F32);
    kept.emplace_back(&t, shape);
  }
  for (const auto& [t, shape] : kept) {
    if (shape == t->shape) {
      w.write_tensor_data(t->bytes());
    } else {
      int64_t n = 1;
      for (int64_t d : shape) n *= d;
      w.write_tensor_data(std::vector<uint8_t>(static_cast<size_t>(n) * 4, 0));
    }
  }
  w.finish();
}

std::string load_error(const fs::path& p) {
  try {
    const GgufFile f = GgufFile::open(p);
    load_model(f);
  } catch (const std::exception& e) {
    return e.what();
  }
  return "<no error>";
}

TEST(RwkvEngine, BadFilesAreClearErrors) {
  MIXQ_REQUIRE_SHARED("rwkv-tiny/tiny-rwkv-7v0-834K-FP32.bin");
  const auto dir = fresh_dir("rwkv-bad");
  const fs::path v7 = dir / "v7.gguf", v5 = dir / "v5.gguf", out = dir / "bad.gguf";
  convert_to_gguf({rwkv_dir() / "tiny-rwkv-7v0-834K-FP32.bin", v7, std::nullopt, {}});
  convert_to_gguf({rwkv_dir() / "tiny-rwkv-5v2-730K-FP32.bin", v5, std::nullopt, {}});
  const auto no_meta = [](GgufWriter&) {};
  const auto keep = [](std::string&, std::vector<int64_t>&) { return true; };
  auto expect = [&](const std::string& what) {
    const std::string e = load_error(out);
    EXPECT_NE(e.find(what), std::string::npos) << e;
    EXPECT_NE(e.find("bad.gguf"), std::string::npos) << e;  // names the file
    fs::remove(out);
  };
  rewrite(v7, out, no_meta, [](std::string& n, std::vector<int64_t>&) { return n != "blocks.3.att.key.weight"; });
  expect("missing tensor blocks.3.att.key.weight");
  rewrite(v7, out, no_meta, [](std::string& n, std::vector<int64_t>& s) {
    if (n == "blocks.2.ffn.value.weight") s = {256, 32};
    return true;
  });
  expect("tensor blocks.2.ffn.value.weight has shape [256, 32], expected [256, 64]");
  rewrite(v7, out, no_meta, [](std::string& n, std::vector<int64_t>& s) {
    if (n == "blocks.7.att.x_rwkvag") s = {64, 1, 5};
    return true;
  });
  expect("tensor blocks.7.att.x_rwkvag has shape [64, 1, 5], expected [64, 1, 6]");
  rewrite(v7, out, no_meta, [](std::string& n, std::vector<int64_t>& s) {
    if (n == "blocks.4.att.w0") s = {32, 1, 1};
    return true;
  });
  expect("tensor blocks.4.att.w0 has shape [32, 1, 1], expected 64 values");
  rewrite(v7, out, no_meta, [](std::string& n, std::vector<int64_t>&) { return n != "blocks.1.att.v1"; });
  expect("missing tensor blocks.1.att.v1");
  rewrite(v5, out, no_meta, [](std::string& n, std::vector<int64_t>& s) {
    if (n == "blocks.5.att.time_decay") s = {1, 16, 4};
    return true;
  });
  expect("tensor blocks.5.att.time_decay has shape [1, 16, 4], expected [1, 8, 8]");
  rewrite(v5, out, no_meta, [](std::string& n, std::vector<int64_t>&) { return n.find("att.gate") == std::string::npos; });
  expect("missing tensor blocks.0.att.gate.weight (RWKV-5.0/5.1");
  // Vocabulary: the head, the metadata and the embedding must agree.
  rewrite(v7, out, no_meta, [](std::string& n, std::vector<int64_t>& s) {
    if (n == "head.weight") s = {64, 300};
    return true;
  });
  expect("tensor head.weight has shape [64, 300], expected [64, 256]");
  rewrite(v7, out, [](GgufWriter& w) { w.set("rwkv7.vocab_size", GgufValue::u32(300)); }, keep);
  expect("tensor emb.weight has 256 rows but rwkv7.vocab_size is 300");
  // Generations the engine does not run.
  rewrite(v7, out, [](GgufWriter& w) { w.set("general.architecture", GgufValue::string("rwkv6qwen2")); }, keep);
  expect("architecture 'rwkv6qwen2' is not supported (supported: llama, rwkv4, rwkv5, rwkv6, rwkv7)");
  rewrite(v5, out, [](GgufWriter& w) { w.set("general.architecture", GgufValue::string("rwkv6")); }, keep);
  expect("missing tensor token_embd.weight (rwkv6 files are read in llama.cpp's layout only");
  rewrite(v7, out, [](GgufWriter& w) { w.set("general.architecture", GgufValue::string("rwkv9")); }, keep);
  expect("architecture 'rwkv9' is not supported");
  // A v7 file labelled rwkv5 lacks what RWKV-5 needs.
  rewrite(v7, out, [](GgufWriter& w) {
    w.set("general.architecture", GgufValue::string("rwkv5"));
    w.set("rwkv5.block_count", GgufValue::u32(12));
    w.set("rwkv5.embedding_length", GgufValue::u32(64));
  }, keep);
  expect("missing tensor blocks.0.att.gate.weight");
}

// ---------------------------------------------------------------------------------------------
// The layer state: what measure's probes restart from

TEST(RwkvEngine, EvalFromLayerWithAnOverrideEqualsAFullEval) {
  MIXQ_REQUIRE_SHARED("rwkv-tiny/tiny-rwkv-7v0-834K-FP32.bin");
  const auto dir = fresh_dir("rwkv-probe");
  const std::string text = "Once upon a time, there was a little cat who liked the sun.";
  const std::vector<int32_t> tokens(text.begin(), text.end());
  const int n = static_cast<int>(tokens.size());
  for (const char* ver : {"7v0-834K", "5v2-730K", "4v0-660K"}) {
    SCOPED_TRACE(ver);
    const fs::path f32 = dir / fmt::format("{}.gguf", ver), q4 = dir / fmt::format("{}-q4_0.gguf", ver);
    convert_to_gguf({rwkv_dir() / fmt::format("tiny-rwkv-{}-FP32.bin", ver), f32, std::nullopt, {}});
    const GgufFile f = GgufFile::open(f32);
    QuantizeOptions opts;
    opts.policy.default_type = TypeId::Q4_0;
    opts.threads = 2;
    quantize_model(f, q4, opts);
    const GgufFile fq = GgufFile::open(q4);
    const auto model = load_model(f);
    const int L = model->n_layer(), W = model->layer_state_width();
    const int n_embd = std::string(ver) == "4v0-660K" ? 128 : 64;
    EXPECT_EQ(W, std::string(ver) == "7v0-834K" ? 2 * n_embd : n_embd);  // RWKV-7 carries v_first
    EXPECT_EQ(model->max_context(), 0);
    // The state entering every block and the head, from one full eval.
    std::vector<std::vector<float>> states(static_cast<size_t>(L) + 1);
    const auto base = model->new_context(n, 2);
    base->set_layer_observer([&](int l, const float* x, int m) {
      states[static_cast<size_t>(l)].assign(x, x + static_cast<size_t>(m) * static_cast<size_t>(W));
    });
    const std::vector<float> base_logits = base->eval(tokens, true);
    for (const auto& st : states) ASSERT_EQ(st.size(), static_cast<size_t>(n * W));
    for (int start : {0, 1, L / 2, L - 1, L}) {
      const std::string name = start == L ? "head.weight" : fmt::format("blocks.{}.att.key.weight", start);
      SCOPED_TRACE(name);
      const GgufTensor* original = f.find_tensor(name);
      const GgufTensor* probe = fq.find_tensor(name);
      ASSERT_NE(probe->type->id, original->type->id);
      const auto full = model->new_context(n, 2);
      full->override_weight(*original, probe);
      const std::vector<float> want = full->eval(tokens, true);
      const auto part = model->new_context(n, 2);
      part->override_weight(*original, probe);
      const std::vector<float>& got = part->eval_from_layer(start, states[static_cast<size_t>(start)].data(), n, true);
      ASSERT_EQ(got.size(), want.size());
      double max_diff = 0, changed = 0;
      for (size_t i = 0; i < got.size(); ++i) {
        max_diff = std::max(max_diff, std::abs(static_cast<double>(got[i]) - want[i]));
        changed = std::max(changed, std::abs(static_cast<double>(want[i]) - base_logits[i]));
      }
      EXPECT_LE(max_diff, 1e-5);
      // The override changed the logits (4v0's blocks 1-3 hold only zeros: its training bug).
      if (std::string(ver) != "4v0-660K" || start == 0 || start == L) {
        EXPECT_GT(changed, 1e-4);
      }
      // Reset forgets the recurrent state: the same run again gives the same logits.
      part->reset();
      const std::vector<float>& again = part->eval_from_layer(start, states[static_cast<size_t>(start)].data(), n, true);
      EXPECT_EQ(again, want);
    }
    // weights(): every matrix once, each with its block, the head at n_layer.
    int heads = 0;
    for (const WeightUse& w : model->weights()) {
      const auto layer = w.tensor->name.rfind("blocks.", 0) == 0 ? std::stoi(w.tensor->name.substr(7)) : -1;
      if (w.tensor->name == "head.weight") {
        EXPECT_EQ(w.layer, L);
        ++heads;
      } else if (w.tensor->name == "emb.weight") {
        EXPECT_EQ(w.layer, 0);
      } else {
        EXPECT_EQ(w.layer, layer) << w.tensor->name;
      }
    }
    EXPECT_EQ(heads, 1);
  }
}

// ---------------------------------------------------------------------------------------------
// Every command on an RWKV file, through the CLI

TEST(RwkvCli, EveryCommandRuns) {
  MIXQ_REQUIRE_SHARED("rwkv-tiny/tiny-rwkv-7v0-834K-FP32.bin");
  MIXQ_REQUIRE_SHARED("wikitext-2-raw/wiki.test.raw");
  const auto dir = fresh_dir("rwkv-cli");
  const auto all = test::read_raw<char>(test::shared_data_dir() / "wikitext-2-raw" / "wiki.test.raw");
  {
    std::ofstream t(dir / "text.txt", std::ios::binary);
    t.write(all.data(), 8192);
  }
  const std::string d = dir.string() + "/";
  auto run = [&](const std::string& args) {
    const test::CliResult r = test::run_cli(args);
    EXPECT_EQ(r.exit_code, 0) << args << "\n" << r.output;
    return r.output;
  };
  run(fmt::format("convert '{}' '{}v7.gguf'", (rwkv_dir() / "tiny-rwkv-7v0-834K-FP32.bin").string(), d));
  run(fmt::format("quantize '{0}v7.gguf' '{0}v7-q8.gguf' q8_0", d));
  const std::string ppl = run(fmt::format("perplexity '{0}v7.gguf' -f '{0}text.txt' -c 128 --chunks 4 -t 2", d));
  EXPECT_NE(ppl.find("Final estimate: PPL"), std::string::npos) << ppl;
  const std::string kld = run(fmt::format("kld '{0}v7-q8.gguf' --base '{0}v7.gguf' -f '{0}text.txt' -c 128 --chunks 4 -t 2", d));
  EXPECT_NE(kld.find("KLD"), std::string::npos) << kld;
  run(fmt::format("imatrix '{0}v7.gguf' -f '{0}text.txt' -c 128 --chunks 4 -t 2 -o '{0}imatrix.gguf'", d));
  EXPECT_TRUE(fs::exists(dir / "imatrix.gguf"));
  run(fmt::format("measure '{0}v7.gguf' -f '{0}text.txt' -c 128 --chunks 2 --imatrix '{0}imatrix.gguf' "
                  "--types q8_0,q4_0 -t 2 -o '{0}m.json'", d));
  run(fmt::format("plan '{0}m.json' --target-bpw 14 -o '{0}plan.json' -q", d));
  run(fmt::format("quantize '{0}v7.gguf' '{0}v7-plan.gguf' q8_0 --plan '{0}plan.json'", d));
  run(fmt::format("perplexity '{0}v7-plan.gguf' -f '{0}text.txt' -c 128 --chunks 2 -t 2", d));
  const std::string gen = run(fmt::format("generate '{0}v7.gguf' -p 'Once upon a time' -n 24 --temp 0 -t 2", d));
  EXPECT_EQ(gen.rfind("Once upon a time", 0), 0u) << gen;
  EXPECT_NE(gen.find("generation: 24 tokens"), std::string::npos) << gen;
}

// ---------------------------------------------------------------------------------------------
// The byte-level tokenizer

TEST(RwkvTokenizer, ByteVocabularyFromTheConverter) {
  MIXQ_REQUIRE_SHARED("rwkv-tiny/tiny-rwkv-7v0-834K-FP32.bin");
  const auto dir = fresh_dir("rwkv-tok");
  convert_to_gguf({rwkv_dir() / "tiny-rwkv-7v0-834K-FP32.bin", dir / "v7.gguf", std::nullopt, {}});
  const GgufFile f = GgufFile::open(dir / "v7.gguf");
  const Tokenizer tok = Tokenizer::from_gguf(f);
  EXPECT_EQ(tok.model(), "rwkv");
  EXPECT_EQ(tok.size(), 256u);
  EXPECT_FALSE(tok.add_bos_token());
  EXPECT_EQ(tok.encode("\"in", true), kPrompt);  // no BOS, id = byte value
  std::string bytes;
  for (int b = 0; b < 256; ++b) bytes += static_cast<char>(b);
  const auto ids = tok.encode(bytes, true);
  ASSERT_EQ(ids.size(), 256u);
  for (int b = 0; b < 256; ++b) EXPECT_EQ(ids[static_cast<size_t>(b)], b);
  EXPECT_EQ(tok.decode(ids), bytes);  // invalid UTF-8 survives byte for byte
}

TEST(RwkvTokenizer, EscapesAndLongestMatch) {
  for (int b = 0; b < 256; ++b) {
    const std::string one(1, static_cast<char>(b));
    const std::string e = rwkv_escape_token(one);
    for (char c : e) EXPECT_TRUE(c >= 0x20 && c < 0x7f) << b;  // stored as printable ASCII
    EXPECT_EQ(rwkv_unescape_token(e), one) << b;
  }
  EXPECT_EQ(rwkv_escape_token("a\\b\n\xff"), "a\\\\b\\n\\xff");
  EXPECT_EQ(rwkv_unescape_token("\\x4A\\x4b"), "JK");
  EXPECT_THROW(rwkv_unescape_token("ab\\"), std::invalid_argument);
  EXPECT_THROW(rwkv_unescape_token("\\xg0"), std::invalid_argument);
  EXPECT_THROW(rwkv_unescape_token("\\x4"), std::invalid_argument);

  const auto dir = fresh_dir("rwkv-tok2");
  auto vocab = [&](const std::vector<std::string>& tokens, const std::string& name) {
    GgufWriter w(dir / name);
    w.set("general.architecture", GgufValue::string("rwkv7"));
    w.set("tokenizer.ggml.model", GgufValue::string("rwkv"));
    w.set("tokenizer.ggml.tokens", GgufValue::string_array(tokens));
    w.finish();
    return GgufFile::open(dir / name);
  };
  const Tokenizer t = Tokenizer::from_gguf(vocab({"a", "b", "ab", "abc", "\\n", "c"}, "v.gguf"));
  EXPECT_EQ(t.encode("abcab\nc", false), (std::vector<int32_t>{3, 2, 4, 5}));
  EXPECT_EQ(t.decode({3, 4}), "abc\n");
  try {
    Tokenizer::from_gguf(vocab({"a", "b\\x1"}, "bad.gguf"));
    ADD_FAILURE() << "no error";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("tokenizer.ggml.tokens[1]"), std::string::npos) << e.what();
  }
}

// ---------------------------------------------------------------------------------------------
// Policy: which RWKV tensor gets which type

std::vector<TensorDesc> rwkv7_tensors(int n_layers, int64_t e) {
  std::vector<TensorDesc> t = {{"emb.weight", {e, 512}}, {"blocks.0.ln0.weight", {e}}, {"ln_out.weight", {e}},
                               {"head.weight", {e, 512}}};
  for (int l = 0; l < n_layers; ++l) {
    const std::string b = fmt::format("blocks.{}.", l);
    t.push_back({b + "ln1.weight", {e}});
    t.push_back({b + "att.x_rwkvag", {e, 1, 6}});
    t.push_back({b + "att.w1", {e, 32}});
    t.push_back({b + "att.w0", {e, 1, 1}});
    for (const char* m : {"receptance", "key", "value", "output"}) t.push_back({b + "att." + m + ".weight", {e, e}});
    t.push_back({b + "ffn.key.weight", {e, 4 * e}});
    t.push_back({b + "ffn.value.weight", {4 * e, e}});
  }
  return t;
}

std::string type_of(const std::vector<TensorPlan>& plans, const std::string& name) {
  for (const auto& p : plans) {
    if (p.tensor.name == name) return type_traits(p.type).name;
  }
  return "<missing>";
}

TEST(RwkvPolicy, ComponentsOfBothLayouts) {
  using C = Component;
  const std::vector<std::pair<const char*, C>> names = {
      {"blocks.3.att.receptance.weight", C::TimeMixReceptance}, {"blocks.3.att.key.weight", C::TimeMixKey},
      {"blocks.3.att.value.weight", C::TimeMixValue},           {"blocks.3.att.gate.weight", C::TimeMixGate},
      {"blocks.3.att.output.weight", C::TimeMixOutput},         {"blocks.3.ffn.receptance.weight", C::ChannelMixReceptance},
      {"blocks.3.ffn.key.weight", C::ChannelMixKey},            {"blocks.3.ffn.value.weight", C::ChannelMixValue},
      {"blocks.3.att.w1", C::TimeMix},                          {"blocks.3.ffn.x_k", C::ChannelMix},
      {"blk.3.time_mix_receptance.weight", C::TimeMixReceptance}, {"blk.3.time_mix_key.weight", C::TimeMixKey},
      {"blk.3.time_mix_value.weight", C::TimeMixValue},         {"blk.3.time_mix_gate.weight", C::TimeMixGate},
      {"blk.3.time_mix_output.weight", C::TimeMixOutput},       {"blk.3.time_mix_w1.weight", C::TimeMix},
      {"blk.3.channel_mix_key.weight", C::ChannelMixKey},       {"blk.3.channel_mix_value.weight", C::ChannelMixValue},
      {"blk.3.channel_mix_receptance.weight", C::ChannelMixReceptance}};
  for (const auto& [name, c] : names) {
    const TensorRole r = classify_tensor(name, true);
    EXPECT_EQ(r.component, c) << name;
    EXPECT_EQ(r.layer, 3) << name;
  }
  EXPECT_EQ(classify_tensor("emb.weight", false).component, C::Embed);
  EXPECT_TRUE(classify_tensor("head.weight", false).is_head);
  EXPECT_EQ(parse_component_group("key"), (std::vector<C>{C::TimeMixKey, C::ChannelMixKey}));
  EXPECT_EQ(parse_component_group("receptance"), (std::vector<C>{C::TimeMixReceptance, C::ChannelMixReceptance}));
  EXPECT_EQ(parse_component_group("channel_mix"), (std::vector<C>{C::ChannelMixReceptance, C::ChannelMixKey, C::ChannelMixValue, C::ChannelMix}));
  EXPECT_EQ(parse_component_group("time_mix_output"), (std::vector<C>{C::TimeMixOutput}));
}

TEST(RwkvPolicy, RulesAddressRwkvMatrices) {
  const auto t = rwkv7_tensors(12, 256);
  const ModelInfo info = model_info_from_tensors(t, "rwkv7", 0, 0, 0, 0);
  EXPECT_EQ(info.n_layers, 12);
  PolicyOptions o;
  o.default_type = TypeId::Q4_K;
  o.tensor_type_rules = {parse_tensor_type_rule("blocks\\.5\\.att\\.value=q2_k")};
  o.layer_rules = {parse_layer_rule("first:2/time_mix=q8_0"), parse_layer_rule("all/value=q6_k"),
                   parse_layer_rule("all/head=q5_k"), parse_layer_rule("all/embed=i8_row")};
  apply_policy_config(nlohmann::ordered_json::parse(R"({"rules": {"blocks.*.ffn.key": "nf4", "layers.7.attention.receptance": "q5_0"}})"),
                      o, "p.json");
  const auto plans = plan_types(t, info, o);
  EXPECT_EQ(type_of(plans, "blocks.5.att.value.weight"), "q2_K");   // --tensor-type
  EXPECT_EQ(type_of(plans, "blocks.3.ffn.key.weight"), "nf4");      // policy file glob
  EXPECT_EQ(type_of(plans, "blocks.7.att.receptance.weight"), "q5_0");  // policy file, HF-style alias
  EXPECT_EQ(type_of(plans, "blocks.1.att.key.weight"), "q8_0");     // --layers first:2/time_mix
  EXPECT_EQ(type_of(plans, "blocks.1.ffn.key.weight"), "nf4");
  EXPECT_EQ(type_of(plans, "blocks.6.att.value.weight"), "q6_K");   // --layers all/value: both mixes
  EXPECT_EQ(type_of(plans, "blocks.6.ffn.value.weight"), "q6_K");
  EXPECT_EQ(type_of(plans, "blocks.6.att.key.weight"), "q4_K");     // default
  EXPECT_EQ(type_of(plans, "head.weight"), "q5_K");
  EXPECT_EQ(type_of(plans, "emb.weight"), "i8_row");
  // Mixing vectors and the low-rank matrices are never quantized.
  EXPECT_EQ(type_of(plans, "blocks.6.att.x_rwkvag"), "f32");
  EXPECT_EQ(type_of(plans, "blocks.6.att.w1"), "f32");
  EXPECT_EQ(type_of(plans, "blocks.6.att.w0"), "f32");
}

TEST(RwkvPolicy, BoundaryPresets) {
  const auto t = rwkv7_tensors(12, 256);
  const ModelInfo info = model_info_from_tensors(t, "rwkv7", 0, 0, 0, 0);
  auto plan = [&](const std::string& preset_name) {
    const auto preset = find_preset(preset_name);
    EXPECT_TRUE(preset.has_value()) << preset_name;
    PolicyOptions o;
    o.default_type = preset->default_type;
    o.preset_rules = preset->rules;
    return plan_types(t, info, o);
  };
  const auto k = plan("boundary:q4_k:q6_k");
  for (int l : {0, 1, 10, 11}) {
    EXPECT_EQ(type_of(k, fmt::format("blocks.{}.att.key.weight", l)), "q6_K") << l;
    EXPECT_EQ(type_of(k, fmt::format("blocks.{}.ffn.value.weight", l)), "q6_K") << l;
  }
  for (int l : {2, 5, 9}) EXPECT_EQ(type_of(k, fmt::format("blocks.{}.att.output.weight", l)), "q4_K") << l;
  EXPECT_EQ(type_of(k, "head.weight"), "q6_K");
  EXPECT_EQ(type_of(k, "emb.weight"), "q4_K");
  EXPECT_EQ(find_preset("boundary:q4_k:q6_k")->name, "boundary:q4_K:q6_K");
  const auto i8 = plan("boundary:nf4:int8");
  EXPECT_EQ(type_of(i8, "blocks.0.att.receptance.weight"), "i8_row");
  EXPECT_EQ(type_of(i8, "blocks.11.ffn.key.weight"), "i8_row");
  EXPECT_EQ(type_of(i8, "blocks.6.ffn.key.weight"), "nf4");
  EXPECT_EQ(type_of(i8, "head.weight"), "i8_row");
  EXPECT_EQ(type_of(i8, "emb.weight"), "nf4");
  // The plain form keeps its meaning: one step up at the edges.
  EXPECT_EQ(type_of(plan("boundary:q4_k"), "blocks.0.att.key.weight"), "q5_K");
  // Rows of 64 (the tiny models): k-quants fall back as llama.cpp does, nf4 / i8_row fit.
  const auto tiny = rwkv7_tensors(12, 64);
  const auto preset = find_preset("boundary:q4_k:q6_k");
  PolicyOptions o;
  o.default_type = preset->default_type;
  o.preset_rules = preset->rules;
  const auto small = plan_types(tiny, model_info_from_tensors(tiny, "rwkv7", 0, 0, 0, 0), o);
  EXPECT_EQ(type_of(small, "blocks.0.att.key.weight"), "q8_0");
  EXPECT_EQ(type_of(small, "blocks.5.att.key.weight"), "q5_0");
}

// ---------------------------------------------------------------------------------------------
// llama.cpp's RWKV-7 layout (convert/rwkv_layout.h)

TEST(RwkvLayout, LlamaCppLayoutLoadsAndRoundTrips) {
  MIXQ_REQUIRE_SHARED("rwkv-tiny/tiny-rwkv-7v0-834K-Q5_1.bin");
  const auto dir = fresh_dir("rwkv-layout");
  const auto expected = test::read_raw<float>(rwkv_dir() / "expected-logits-7v0-834K.bin");
  for (const char* format : {"FP32", "Q5_1"}) {
    SCOPED_TRACE(format);
    const fs::path src = rwkv_dir() / fmt::format("tiny-rwkv-7v0-834K-{}.bin", format);
    const fs::path rc = dir / fmt::format("rc-{}.gguf", format), lc = dir / fmt::format("lc-{}.gguf", format),
                   back = dir / fmt::format("back-{}.gguf", format);
    convert_to_gguf({src, rc, std::nullopt, {}});
    convert_to_gguf({src, lc, std::nullopt, {}}, RwkvLayout::LlamaCpp);
    convert_to_gguf({lc, back, std::nullopt, {}}, RwkvLayout::RwkvCpp);
    const GgufFile a = GgufFile::open(rc), l = GgufFile::open(lc), b = GgufFile::open(back);
    EXPECT_EQ(rwkv_layout_of(l), RwkvLayout::LlamaCpp);
    EXPECT_EQ(rwkv_layout_of(b), RwkvLayout::RwkvCpp);
    // Same bytes under llama.cpp's names, plus the unused block-0 value LoRA.
    EXPECT_EQ(l.tensors().size(), a.tensors().size() + 3);
    for (const GgufTensor& t : a.tensors()) {
      const GgufTensor* m = l.find_tensor(rwkv7_tensor_name(t.name, RwkvLayout::LlamaCpp));
      ASSERT_NE(m, nullptr) << t.name;
      EXPECT_EQ(m->type->id, t.type->id) << t.name;
      EXPECT_TRUE(std::equal(t.data, t.data + t.nbytes, m->data, m->data + m->nbytes)) << t.name;
      // And back: names, shapes, types and bytes as rwkv.cpp's layout had them.
      const GgufTensor* r = b.find_tensor(t.name);
      ASSERT_NE(r, nullptr) << t.name;
      EXPECT_EQ(r->shape, t.shape) << t.name;
      EXPECT_TRUE(std::equal(t.data, t.data + t.nbytes, r->data, r->data + r->nbytes)) << t.name;
    }
    EXPECT_EQ(b.tensors().size(), a.tensors().size());
    EXPECT_EQ(l.find_tensor("blk.0.time_mix_lerp_fused.weight")->shape, (std::vector<int64_t>{64, 1, 1, 6}));
    EXPECT_EQ(l.find_tensor("blk.0.time_mix_r_k.weight")->shape, (std::vector<int64_t>{64}));
    EXPECT_EQ(l.find("rwkv7.wkv.head_size")->as_int(), 64);
    // The engine gives the same logits from both layouts.
    const auto from_rc = prompt_logits(rc), from_lc = prompt_logits(lc);
    EXPECT_EQ(from_rc, from_lc);
    EXPECT_LE(compare(from_lc.data(), expected).max_abs, std::string(format) == "FP32" ? 1e-4 : 0.01);
  }
  // Quantizing the llama.cpp layout touches the same matrices as llama-quantize would.
  const GgufFile l = GgufFile::open(dir / "lc-FP32.gguf");
  QuantizeOptions opts;
  opts.policy.default_type = TypeId::Q8_0;
  opts.threads = 2;
  const QuantizeReport rep = quantize_model(l, dir / "lc-q8.gguf", opts);
  for (const TensorPlan& p : rep.plans) {
    const std::string& n = p.tensor.name;
    const bool matrix = n == "token_embd.weight" || n == "output.weight" || n.find("time_mix_key") != std::string::npos ||
                        n.find("time_mix_value") != std::string::npos || n.find("time_mix_receptance") != std::string::npos ||
                        n.find("time_mix_output") != std::string::npos || n.find("channel_mix_key") != std::string::npos ||
                        n.find("channel_mix_value") != std::string::npos;
    EXPECT_EQ(p.type == TypeId::Q8_0, matrix) << n;
  }
  EXPECT_LE(compare(prompt_logits(dir / "lc-q8.gguf").data(), expected).kld, 2e-5);
  // RWKV-7 converts both ways, RWKV-5.2 into llama.cpp's rwkv6 (below); nothing else.
  try {
    convert_to_gguf({rwkv_dir() / "tiny-rwkv-4v0-660K-FP32.bin", dir / "v4.gguf", std::nullopt, {}}, RwkvLayout::LlamaCpp);
    ADD_FAILURE() << "no error";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("converts RWKV-7 files"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("not 'rwkv4'"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(dir / "v4.gguf"));
}

// ---------------------------------------------------------------------------------------------
// llama.cpp's rwkv6 architecture: RWKV-5.2 converted into it (convert/rwkv6_layout.h), read by
// the engine's RWKV-6 graph (engine/rwkv6.cpp). tests/python/test_rwkv_llama_cpp.py runs these
// files, and RWKV-6 files with non-zero LoRAs, in llama.cpp itself.

TEST(RwkvLayout, Rwkv5AsLlamaCppRwkv6) {
  MIXQ_REQUIRE_SHARED("rwkv-tiny/tiny-rwkv-5v2-730K-FP16.bin");
  const auto dir = fresh_dir("rwkv6-layout");
  const auto expected = test::read_raw<float>(rwkv_dir() / "expected-logits-5v2-730K.bin");
  const fs::path v6 = dir / "v6.gguf";
  convert_to_gguf({rwkv_dir() / "tiny-rwkv-5v2-730K-FP32.bin", v6, std::nullopt, {}}, RwkvLayout::LlamaCpp);
  {
    const GgufFile f = GgufFile::open(v6);
    EXPECT_EQ(f.find("general.architecture")->as_string(), "rwkv6");
    EXPECT_EQ(f.find("rwkv6.wkv.head_size")->as_int(), 8);
    EXPECT_EQ(f.find("rwkv6.time_mix_extra_dim")->as_int(), 32);
    EXPECT_EQ(f.find("rwkv6.time_decay_extra_dim")->as_int(), 64);
    EXPECT_EQ(f.find("rwkv6.token_shift_count")->as_int(), 2);
    EXPECT_EQ(f.find("rwkv5.block_count"), nullptr);
    EXPECT_EQ(f.find("tokenizer.ggml.model")->as_string(), "rwkv");
    EXPECT_EQ(f.find_tensor("blk.0.time_mix_lerp_fused.weight")->shape, (std::vector<int64_t>{64, 1, 1, 5}));
    EXPECT_EQ(f.find_tensor("blk.0.time_mix_w1.weight")->shape, (std::vector<int64_t>{64, 160}));
    EXPECT_EQ(f.find_tensor("blk.0.time_mix_w2.weight")->shape, (std::vector<int64_t>{32, 64, 5}));
    EXPECT_EQ(f.find_tensor("blk.0.time_mix_first.weight")->shape, (std::vector<int64_t>{8, 8}));
    EXPECT_EQ(f.find_tensor("blk.0.time_mix_decay.weight")->shape, (std::vector<int64_t>{64}));
    const auto model = load_model(f);
    EXPECT_EQ(model->architecture(), "rwkv6");
    // Every matrix the graph multiplies by, the LoRAs included, with its block.
    std::vector<std::string> names;
    for (const WeightUse& w : model->weights()) {
      if (w.layer == 5) names.push_back(w.tensor->name);
    }
    for (const char* m : {"time_mix_w1", "time_mix_w2", "time_mix_decay_w1", "time_mix_decay_w2", "time_mix_gate",
                          "time_mix_value", "channel_mix_receptance"}) {
      EXPECT_NE(std::find(names.begin(), names.end(), fmt::format("blk.5.{}.weight", m)), names.end()) << m;
    }
  }
  // Policy rules address the new tensors by llama.cpp's names: the LoRAs are time mixing.
  for (const char* name : {"blk.3.time_mix_w1.weight", "blk.3.time_mix_decay_w2.weight", "blk.3.time_mix_lerp_fused.weight"}) {
    EXPECT_EQ(classify_tensor(name, true).component, Component::TimeMix) << name;
    EXPECT_EQ(classify_tensor(name, true).layer, 3) << name;
  }
  EXPECT_EQ(classify_tensor("blk.3.channel_mix_lerp_r.weight", true).component, Component::ChannelMix);
  EXPECT_EQ(classify_tensor("blk.3.time_mix_gate.weight", true).component, Component::TimeMixGate);
  for (bool one_by_one : {false, true}) {
    const LogitDiff d = compare(prompt_logits(v6, one_by_one).data(), expected);
    std::printf("5v2-730K as rwkv6 (%s): max|diff| %.3g\n", one_by_one ? "token by token" : "one batch", d.max_abs);
    EXPECT_LE(d.max_abs, 1e-4);
  }
  // FP16 matrices: x8 is exact in F16, so the rwkv6 file is the rwkv5 file's model. The logits are
  // not bit-equal: F16 products round their inputs to F16 (as ggml does), and RWKV-6's token shift
  // x + (prev - x) lerp differs from rwkv.cpp's x mix + prev (1 - mix) in the last bit, which moves
  // some of those roundings.
  const fs::path v5h = dir / "v5-fp16.gguf", v6h = dir / "v6-fp16.gguf";
  convert_to_gguf({rwkv_dir() / "tiny-rwkv-5v2-730K-FP16.bin", v5h, std::nullopt, {}});
  convert_to_gguf({rwkv_dir() / "tiny-rwkv-5v2-730K-FP16.bin", v6h, std::nullopt, {}}, RwkvLayout::LlamaCpp);
  EXPECT_EQ(GgufFile::open(v6h).find_tensor("blk.3.time_mix_value.weight")->type->id, TypeId::F16);
  const auto h5 = prompt_logits(v5h), h6 = prompt_logits(v6h);
  const LogitDiff h = compare(h6.data(), h5), h5e = compare(h5.data(), expected), h6e = compare(h6.data(), expected);
  std::printf("5v2-730K FP16 as rwkv6 vs as rwkv5: max|diff| %.3g, KLD %.3g; against the FP32 expected logits: "
              "KLD %.3g (rwkv6) and %.3g (rwkv5)\n", h.max_abs, h.kld, h6e.kld, h5e.kld);
  EXPECT_LE(h.max_abs, 0.01);
  EXPECT_LE(h.kld, 1e-6);
  // Quantizing touches the matrices llama-quantize does: the LoRAs, time_mix_first and the lerps stay F32.
  QuantizeOptions opts;
  opts.policy.default_type = TypeId::Q8_0;
  opts.threads = 2;
  const QuantizeReport rep = quantize_model(GgufFile::open(v6), dir / "v6-q8.gguf", opts);
  for (const TensorPlan& p : rep.plans) {
    const std::string& n = p.tensor.name;
    const bool lora_or_small = n.find("time_mix_w") != std::string::npos || n.find("decay") != std::string::npos ||
                               n.find("lerp") != std::string::npos || n.find("first") != std::string::npos ||
                               n.find("norm") != std::string::npos || n.find("time_mix_ln") != std::string::npos;
    EXPECT_EQ(p.type == TypeId::Q8_0, !lora_or_small) << n;
  }
  const LogitDiff q = compare(prompt_logits(dir / "v6-q8.gguf").data(), expected);
  std::printf("5v2-730K as rwkv6, q8_0: max|diff| %.3g, KLD %.3g\n", q.max_abs, q.kld);
  EXPECT_LE(q.kld, 1e-3);
  // A quantized RWKV-5.2 file: the value matrices' x8 does not survive requantization. Refused,
  // nothing written.
  const fs::path v5 = dir / "v5.gguf", v5q = dir / "v5-q5_1.gguf";
  convert_to_gguf({rwkv_dir() / "tiny-rwkv-5v2-730K-FP32.bin", v5, std::nullopt, {}});
  opts.policy.default_type = TypeId::Q5_1;
  quantize_model(GgufFile::open(v5), v5q, opts);
  try {
    convert_to_gguf({v5q, dir / "v6-from-q5_1.gguf", std::nullopt, {}}, RwkvLayout::LlamaCpp);
    ADD_FAILURE() << "no error";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("att.value.weight is q5_1: 8 x its values"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(dir / "v6-from-q5_1.gguf"));
}

// RWKV-5.2 converted into rwkv6 has all-zero LoRAs, which the engine skips: the logits over 200
// bytes of text (one batch, then one token at a time) are the very ones of the full computation,
// which an observer forces (it must see every product, and sees the LoRAs: 4 per block). In F32
// and in q8_0, where the zero matrices are quantized too. A LoRA whose output matrix is not all
// zeros is never skipped: Rwkv6DataDependentPath.
TEST(RwkvLayout, ZeroLorasOfAConvertedFileAreSkippedExactly) {
  MIXQ_REQUIRE_SHARED("rwkv-tiny/tiny-rwkv-5v2-730K-FP32.bin");
  const auto dir = fresh_dir("rwkv6-zero-lora");
  const fs::path v6 = dir / "v6.gguf", q8 = dir / "v6-q8_0.gguf";
  convert_to_gguf({rwkv_dir() / "tiny-rwkv-5v2-730K-FP32.bin", v6, std::nullopt, {}}, RwkvLayout::LlamaCpp);
  QuantizeOptions opts;
  opts.policy.default_type = TypeId::Q8_0;
  opts.policy.pure = true;  // the LoRAs too (llama-quantize's rules keep them F32)
  quantize_model(GgufFile::open(v6), q8, opts);
  std::vector<int32_t> text;
  for (const unsigned char c : std::string("The quick brown fox jumps over the lazy dog, then rests; ")) text.push_back(c);
  while (text.size() < 200) text.insert(text.end(), text.begin(), text.begin() + 57);
  text.resize(200);
  for (const fs::path& file : {v6, q8}) {
    SCOPED_TRACE(file.filename().string());
    const GgufFile f = GgufFile::open(file);
    const auto model = load_model(f);
    const auto run = [&](bool observe, bool one_by_one, int& lora_products) {
      lora_products = 0;
      const auto ctx = model->new_context(256, 2);
      if (observe) {
        ctx->set_matmul_observer([&](const GgufTensor& w, const float*, int) {
          if (w.name.find("time_mix_w") != std::string::npos || w.name.find("decay_w") != std::string::npos) ++lora_products;
        });
      }
      return all_logits(*ctx, text, one_by_one);
    };
    for (bool one_by_one : {false, true}) {
      int seen_skipped = 0, seen_full = 0;
      const auto skipped = run(false, one_by_one, seen_skipped), full = run(true, one_by_one, seen_full);
      EXPECT_EQ(skipped, full);
      EXPECT_GT(seen_full, 0);
      EXPECT_EQ(seen_full % 4, 0);
    }
  }
}

TEST(RwkvLayout, Rwkv6BadFilesAreClearErrors) {
  MIXQ_REQUIRE_SHARED("rwkv-tiny/tiny-rwkv-5v2-730K-FP32.bin");
  const auto dir = fresh_dir("rwkv6-bad");
  const fs::path v6 = dir / "v6.gguf", out = dir / "bad.gguf";
  convert_to_gguf({rwkv_dir() / "tiny-rwkv-5v2-730K-FP32.bin", v6, std::nullopt, {}}, RwkvLayout::LlamaCpp);
  const auto no_meta = [](GgufWriter&) {};
  const auto keep = [](std::string&, std::vector<int64_t>&) { return true; };
  auto expect = [&](const std::string& what) {
    const std::string e = load_error(out);
    EXPECT_NE(e.find(what), std::string::npos) << e;
    EXPECT_NE(e.find("bad.gguf"), std::string::npos) << e;
    fs::remove(out);
  };
  const auto drop = [](const char* name) {
    return [name](std::string& n, std::vector<int64_t>&) { return n != name; };
  };
  const auto reshape = [](const char* name, std::vector<int64_t> shape) {
    return [name, shape](std::string& n, std::vector<int64_t>& s) {
      if (n == name) s = shape;
      return true;
    };
  };
  rewrite(v6, out, no_meta, drop("blk.3.time_mix_decay_w2.weight"));
  expect("missing tensor blk.3.time_mix_decay_w2.weight");
  rewrite(v6, out, no_meta, drop("blk.4.time_mix_w1.weight"));
  expect("missing tensor blk.4.time_mix_w1.weight");
  rewrite(v6, out, no_meta, drop("blk.1.channel_mix_lerp_r.weight"));
  expect("missing tensor blk.1.channel_mix_lerp_r.weight");
  rewrite(v6, out, no_meta, drop("blk.2.time_mix_lerp_fused.weight"));
  expect("missing tensor blk.2.time_mix_lerp_fused.weight (or the five time_mix_lerp_{w,k,v,r,g})");
  rewrite(v6, out, no_meta, reshape("blk.2.time_mix_w2.weight", {32, 64, 4}));
  expect("tensor blk.2.time_mix_w2.weight has shape [32, 64, 4], expected [32, 64, 5]");
  rewrite(v6, out, no_meta, reshape("blk.5.time_mix_lerp_fused.weight", {64, 1, 1, 6}));
  expect("tensor blk.5.time_mix_lerp_fused.weight has shape [64, 1, 1, 6], expected [64, 1, 1, 5]");
  rewrite(v6, out, no_meta, reshape("blk.1.time_mix_first.weight", {64}));
  expect("tensor blk.1.time_mix_first.weight has shape [64], expected [8, 8]");
  rewrite(v6, out, no_meta, reshape("blk.0.time_mix_w1.weight", {64, 161}));
  expect("tensor blk.0.time_mix_w1.weight has 161 rows, expected 5 x time_mix_extra_dim");
  rewrite(v6, out, no_meta, reshape("blk.3.time_mix_decay_w1.weight", {64, 32}));
  expect("tensor blk.3.time_mix_decay_w1.weight has shape [64, 32], expected [64, 64]");
  rewrite(v6, out, [](GgufWriter& w) { w.set("rwkv6.time_mix_extra_dim", GgufValue::u32(16)); }, keep);
  expect("rwkv6.time_mix_extra_dim is 16 but tensor blk.0.time_mix_w1.weight says 32");
  rewrite(v6, out, [](GgufWriter& w) { w.set("rwkv6.token_shift_count", GgufValue::u32(1)); }, keep);
  expect("rwkv6.token_shift_count is 1");
  rewrite(v6, out, [](GgufWriter& w) { w.remove("rwkv6.wkv.head_size"); }, keep);
  expect("missing metadata key rwkv6.wkv.head_size");
  rewrite(v6, out, [](GgufWriter& w) { w.set("rwkv6.wkv.head_size", GgufValue::u32(6)); }, keep);
  expect("rwkv6.wkv.head_size 6 does not divide rwkv6.embedding_length 64");
}

// A copy of an rwkv6 file whose LoRAs (time_mix_w1/w2, time_mix_decay_w1/w2) and lerp_x hold
// deterministic non-zero values (|v| <= 0.1), with rescale_every_n_layers set; `w2_from` names a block
// whose time_mix_w2 values block 2 takes instead of its own (for the override check).
void with_loras(const fs::path& in, const fs::path& out, int rescale_every, int w2_from = -1) {
  const GgufFile f = GgufFile::open(in);
  GgufWriter w(out);
  w.copy_metadata(f);
  w.set("rwkv6.rescale_every_n_layers", GgufValue::u32(static_cast<uint32_t>(rescale_every)));
  const auto filled = [](const GgufTensor& t) {
    for (const char* m : {"time_mix_w1.", "time_mix_w2.", "time_mix_decay_w1.", "time_mix_decay_w2.", "time_mix_lerp_x."}) {
      if (t.name.find(m) != std::string::npos) return true;
    }
    return false;
  };
  for (const GgufTensor& t : f.tensors()) w.add_tensor(t.name, t.shape, filled(t) ? TypeId::F32 : t.type->id);
  for (const GgufTensor& t : f.tensors()) {
    if (!filled(t)) {
      w.write_tensor_data(t.bytes());
      continue;
    }
    std::string name = t.name;
    if (w2_from >= 0 && name == "blk.2.time_mix_w2.weight") name = fmt::format("blk.{}.time_mix_w2.weight", w2_from);
    const auto salt = static_cast<double>(std::hash<std::string>{}(name) % 1000);
    std::vector<float> v(static_cast<size_t>(t.n_elements()));
    for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<float>(0.1 * std::sin(0.7 * static_cast<double>(i) + salt));
    w.write_tensor_data({reinterpret_cast<const uint8_t*>(v.data()), v.size() * sizeof(float)});
  }
  w.finish();
}

TEST(RwkvEngine, Rwkv6DataDependentPath) {
  MIXQ_REQUIRE_SHARED("rwkv-tiny/tiny-rwkv-5v2-730K-FP32.bin");
  const auto dir = fresh_dir("rwkv6-lora");
  const fs::path v6 = dir / "v6.gguf", lora = dir / "lora.gguf", lora0 = dir / "lora-norescale.gguf",
                 swapped = dir / "lora-swapped.gguf";
  convert_to_gguf({rwkv_dir() / "tiny-rwkv-5v2-730K-FP32.bin", v6, std::nullopt, {}}, RwkvLayout::LlamaCpp);
  with_loras(v6, lora, 4);
  with_loras(v6, lora0, 0);
  with_loras(v6, swapped, 4, 3);
  const std::string text = "Once upon a time, there was";
  const std::vector<int32_t> tokens(text.begin(), text.end());
  const int n = static_cast<int>(tokens.size());
  const auto logits = [&](const fs::path& p, bool one_by_one) {
    const GgufFile f = GgufFile::open(p);
    const auto model = load_model(f);
    const auto ctx = model->new_context(n, 2);
    return all_logits(*ctx, tokens, one_by_one);
  };
  const auto max_diff = [](const std::vector<float>& a, const std::vector<float>& b) {
    EXPECT_EQ(a.size(), b.size());
    double d = 0;
    for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) d = std::max(d, std::abs(double(a[i]) - b[i]));
    return d;
  };
  const auto batch = logits(lora, false);
  // The per-token decay and token-shift LoRAs give the same result a token at a time.
  EXPECT_LE(max_diff(batch, logits(lora, true)), 1e-5);
  // The LoRAs and the rescaling change the model (else the checks below are empty).
  EXPECT_GT(max_diff(batch, logits(v6, false)), 0.1);
  EXPECT_GT(max_diff(batch, logits(lora0, false)), 0.01);
  // A block's state from one full eval, restarted with an override of a LoRA matrix (read through
  // per-mix views of time_mix_w2, which must see the override): equal to a file that holds it.
  const GgufFile f = GgufFile::open(lora);
  const auto model = load_model(f);
  std::vector<float> entering2;
  const auto base = model->new_context(n, 2);
  base->set_layer_observer([&](int l, const float* x, int m) {
    if (l == 2) entering2.assign(x, x + static_cast<size_t>(m) * static_cast<size_t>(model->layer_state_width()));
  });
  EXPECT_EQ(base->eval(tokens, true), batch);
  const auto part = model->new_context(n, 2);
  part->override_weight(*f.find_tensor("blk.2.time_mix_w2.weight"), f.find_tensor("blk.3.time_mix_w2.weight"));
  const std::vector<float> probed = part->eval_from_layer(2, entering2.data(), n, true);
  const auto want = logits(swapped, false);
  EXPECT_LE(max_diff(probed, want), 1e-5);
  EXPECT_GT(max_diff(want, batch), 1e-3);
}

}  // namespace
}  // namespace mixq
