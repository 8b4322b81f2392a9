// Importance-matrix collection (mixq imatrix) on the real stories260K model: what is collected,
// an independent recomputation, and the GGUF / legacy .dat round trips.
#include <cmath>
#include <cstring>
#include <fstream>
#include <sstream>

#include <fmt/format.h>

#include "mixq/calib/imatrix.h"
#include "mixq/calib/imatrix_collect.h"
#include "mixq/engine/llama_model.h"
#include "mixq/engine/tokenizer.h"
#include "test_support.h"

namespace mixq {
namespace {

namespace fs = std::filesystem;

constexpr const char* kModel = "stories260K/stories260K-f32.llamacpp.gguf";
constexpr const char* kText = "wikitext-2-raw/wiki.test.raw";
constexpr int kCtx = 128;
constexpr int kChunks = 4;

std::string text_prefix(size_t bytes) {
  std::ifstream in(test::shared_data_dir() / kText, std::ios::binary);
  std::string s(bytes, '\0');
  in.read(s.data(), static_cast<std::streamsize>(bytes));
  s.resize(static_cast<size_t>(in.gcount()));
  return s;
}

std::vector<float> f32_values(const GgufTensor& t) {
  EXPECT_EQ(t.type->id, TypeId::F32) << t.name;
  std::vector<float> v(static_cast<size_t>(t.n_elements()));
  std::memcpy(v.data(), t.data, v.size() * sizeof(float));
  return v;
}

class ImatrixCollect : public ::testing::Test {
 protected:
  void SetUp() override {
    if (test::shared_data_dir().empty() || !fs::exists(test::shared_data_dir() / kModel) ||
        !fs::exists(test::shared_data_dir() / kText)) {
      GTEST_SKIP() << "shared data not found (" << kModel << ", " << kText
                   << "): put ../shared/data beside the checkout or set MIXQ_SHARED_DATA";
    }
    dir_ = test::temp_dir() / "imatrix";
    fs::create_directories(dir_);
    file_ = std::make_unique<GgufFile>(GgufFile::open(test::shared_data_dir() / kModel));
    model_ = std::make_unique<LlamaModel>(*file_);
    tok_ = std::make_unique<Tokenizer>(Tokenizer::from_gguf(*file_));
    text_ = text_prefix(20000);
  }
  void TearDown() override {
    std::error_code ec;
    if (!dir_.empty()) fs::remove_all(dir_, ec);
  }

  ImatrixResult collect(bool process_output = false, bool f32_sums = true) const {
    ImatrixOptions o;
    o.f32_sums = f32_sums;
    o.n_ctx = kCtx;
    o.max_chunks = kChunks;
    o.threads = 2;
    o.process_output = process_output;
    o.datasets = {"wiki.prefix.raw"};
    return collect_imatrix(*model_, *tok_, text_, o);
  }

  // The tokens fed for chunk c, built here from the tokenizer alone (BOS replaces the first).
  std::vector<int32_t> chunk_tokens(int c) const {
    const std::vector<int32_t> all = tok_->encode(text_, true);
    std::vector<int32_t> chunk(all.begin() + c * kCtx, all.begin() + (c + 1) * kCtx);
    chunk[0] = tok_->bos();
    return chunk;
  }

  fs::path dir_;
  std::unique_ptr<GgufFile> file_;
  std::unique_ptr<LlamaModel> model_;
  std::unique_ptr<Tokenizer> tok_;
  std::string text_;
};

TEST_F(ImatrixCollect, EveryLayerMatrixHasAnEntryOfItsRowLength) {
  const ImatrixResult r = collect();
  EXPECT_EQ(r.chunks, kChunks);
  EXPECT_EQ(r.tokens, int64_t{kChunks} * kCtx);
  EXPECT_GT(r.ppl, 1.0);
  EXPECT_TRUE(std::isfinite(r.ppl));
  const ImportanceMatrix& m = r.matrix;
  EXPECT_EQ(m.chunk_count, kChunks);
  EXPECT_EQ(m.chunk_size, kCtx);
  EXPECT_EQ(m.datasets, std::vector<std::string>{"wiki.prefix.raw"});
  const int n_layer = model_->hparams().n_layer;
  ASSERT_EQ(n_layer, 5);
  EXPECT_EQ(m.weights.size(), static_cast<size_t>(7 * n_layer));
  EXPECT_EQ(m.sums.size(), m.weights.size());
  for (int l = 0; l < n_layer; ++l) {
    const auto& L = model_->layers[static_cast<size_t>(l)];
    for (const GgufTensor* t : {L.wq, L.wk, L.wv, L.wo, L.gate, L.up, L.down}) {
      const auto* w = m.find(t->name);
      ASSERT_NE(w, nullptr) << t->name;
      EXPECT_EQ(static_cast<int64_t>(w->size()), t->row_length()) << t->name;
      const ImatrixSums& s = m.sums.at(t->name);
      EXPECT_EQ(s.counts, std::vector<float>{static_cast<float>(kChunks * kCtx)}) << t->name;
      for (float v : *w) EXPECT_TRUE(std::isfinite(v) && v >= 0) << t->name;
    }
  }
  // llama-imatrix leaves out the head (and never sees token_embd.weight, a lookup) by default.
  EXPECT_EQ(m.find("output.weight"), nullptr);
  EXPECT_EQ(m.find("token_embd.weight"), nullptr);
  // q, k and v read the same normed input.
  EXPECT_EQ(m.sums.at("blk.3.attn_q.weight").in_sum2, m.sums.at("blk.3.attn_v.weight").in_sum2);

  const ImatrixResult with_output = collect(true);
  const auto* out = with_output.matrix.find("output.weight");
  ASSERT_NE(out, nullptr);
  EXPECT_EQ(out->size(), 64u);
  EXPECT_EQ(with_output.matrix.sums.at("output.weight").counts[0], static_cast<float>(kChunks * kCtx));
  EXPECT_EQ(with_output.matrix.weights.at("blk.1.ffn_down.weight"), m.weights.at("blk.1.ffn_down.weight"));
}

// Layer 0's attention input, recomputed from the embeddings: RMSNorm(token_embd[token]) * attn_norm.
TEST_F(ImatrixCollect, Layer0MatchesMeanSquaresOfTheNormedEmbeddings) {
  const ImatrixResult r = collect();
  const auto& hp = model_->hparams();
  const int n = hp.n_embd;
  const std::vector<float> embd = f32_values(*model_->token_embd);
  const std::vector<float> norm = f32_values(*model_->layers[0].attn_norm);
  std::vector<double> sum2(static_cast<size_t>(n), 0.0);
  for (int c = 0; c < kChunks; ++c) {
    for (int32_t id : chunk_tokens(c)) {
      const float* x = embd.data() + static_cast<size_t>(id) * static_cast<size_t>(n);
      double ss = 0;
      for (int j = 0; j < n; ++j) ss += static_cast<double>(x[j]) * x[j];
      const double scale = 1.0 / std::sqrt(ss / n + hp.rms_eps);
      for (int j = 0; j < n; ++j) {
        const double y = x[j] * scale * norm[static_cast<size_t>(j)];
        sum2[static_cast<size_t>(j)] += y * y;
      }
    }
  }
  const double count = kChunks * kCtx;
  for (const char* name : {"blk.0.attn_q.weight", "blk.0.attn_k.weight", "blk.0.attn_v.weight"}) {
    const std::vector<float>& got = *r.matrix.find(name);
    for (int j = 0; j < n; ++j) {
      const double want = sum2[static_cast<size_t>(j)] / count;
      EXPECT_NEAR(got[static_cast<size_t>(j)], want, 2e-5 * want + 1e-9) << name << " column " << j;
    }
  }
}

// Every tensor against the mean squares of the inputs an observer of our own stores (summed in
// double): the exact sums to float precision, llama-imatrix's float running sums close to them.
TEST_F(ImatrixCollect, MatchesTheInputsAnObserverSees) {
  const ImatrixResult exact = collect(false, false), f32 = collect(false, true);
  std::map<std::string, std::vector<double>> sum2;
  std::map<std::string, int64_t> rows;
  LlamaContext ctx(*model_, kCtx, 2);
  ctx.set_matmul_observer([&](const GgufTensor& w, const float* x, int n_tokens) {
    auto& s = sum2[w.name];
    s.resize(static_cast<size_t>(w.row_length()));
    for (int t = 0; t < n_tokens; ++t) {
      for (int64_t j = 0; j < w.row_length(); ++j) {
        const double v = x[static_cast<size_t>(t * w.row_length() + j)];
        s[static_cast<size_t>(j)] += v * v;
      }
    }
    rows[w.name] += n_tokens;
  });
  for (int c = 0; c < kChunks; ++c) {
    ctx.reset();
    ctx.eval(chunk_tokens(c), true);
  }
  size_t checked = 0;
  for (const auto& [name, s] : sum2) {
    if (!name.starts_with("blk.")) continue;
    ASSERT_EQ(rows[name], kChunks * kCtx) << name;
    const std::vector<float>& got = *exact.matrix.find(name);
    const std::vector<float>& got_f32 = *f32.matrix.find(name);
    ASSERT_EQ(got.size(), s.size()) << name;
    ASSERT_EQ(got_f32.size(), s.size()) << name;
    for (size_t j = 0; j < s.size(); ++j) {
      const double want = s[j] / static_cast<double>(rows[name]);
      EXPECT_NEAR(got[j], want, 1e-6 * want + 1e-12) << name << " column " << j;
      EXPECT_NEAR(got_f32[j], want, 2e-5 * want + 1e-12) << name << " column " << j;
    }
    ++checked;
  }
  EXPECT_EQ(checked, 35u);
}

TEST_F(ImatrixCollect, GgufRoundTripKeepsEveryNumberAndLlamaCppsLayout) {
  const ImatrixResult r = collect();
  const fs::path path = dir_ / "out.imatrix.gguf";
  write_imatrix_gguf(r.matrix, path);
  const ImportanceMatrix back = load_imatrix(path);
  EXPECT_EQ(back.weights, r.matrix.weights);
  ASSERT_EQ(back.sums.size(), r.matrix.sums.size());
  for (const auto& [name, s] : r.matrix.sums) {
    EXPECT_EQ(back.sums.at(name).in_sum2, s.in_sum2) << name;
    EXPECT_EQ(back.sums.at(name).counts, s.counts) << name;
  }
  EXPECT_EQ(back.chunk_count, kChunks);
  EXPECT_EQ(back.chunk_size, kCtx);
  EXPECT_EQ(back.datasets, r.matrix.datasets);

  // Key names, types and order; tensors sorted by name, in_sum2 then counts, 1-D F32.
  const GgufFile f = GgufFile::open(path);
  ASSERT_EQ(f.metadata().size(), 4u);
  EXPECT_EQ(f.metadata()[0].key, "general.type");
  EXPECT_EQ(f.metadata()[1].key, "imatrix.datasets");
  EXPECT_EQ(f.metadata()[2].key, "imatrix.chunk_count");
  EXPECT_EQ(f.metadata()[2].value.type(), GgufValueType::UINT32);
  EXPECT_EQ(f.metadata()[3].key, "imatrix.chunk_size");
  EXPECT_EQ(f.metadata()[3].value.type(), GgufValueType::UINT32);
  ASSERT_EQ(f.tensors().size(), 70u);
  EXPECT_EQ(f.tensors()[0].name, "blk.0.attn_k.weight.in_sum2");
  EXPECT_EQ(f.tensors()[1].name, "blk.0.attn_k.weight.counts");
  EXPECT_EQ(f.tensors()[2].name, "blk.0.attn_output.weight.in_sum2");
  for (size_t i = 0; i < f.tensors().size(); i += 2) {
    EXPECT_EQ(f.tensors()[i].shape.size(), 1u);
    EXPECT_EQ(f.tensors()[i + 1].shape, std::vector<int64_t>{1});
    EXPECT_EQ(f.tensors()[i].type->id, TypeId::F32);
    EXPECT_EQ(f.tensors()[i + 1].type->id, TypeId::F32);
    if (i >= 2) {
      EXPECT_LT(f.tensors()[i - 2].name, f.tensors()[i].name);
    }
  }
  // Written again from what was read: byte for byte the same file.
  const fs::path again = dir_ / "again.imatrix.gguf";
  write_imatrix_gguf(back, again);
  EXPECT_EQ(test::read_raw<uint8_t>(again), test::read_raw<uint8_t>(path));
}

TEST_F(ImatrixCollect, LegacyDatRoundTrip) {
  const ImatrixResult r = collect();
  const fs::path path = dir_ / "out.imatrix.dat";
  write_imatrix_dat(r.matrix, path);
  const ImportanceMatrix back = load_imatrix(path);
  EXPECT_TRUE(back.sums.empty());  // the legacy format keeps only means
  EXPECT_EQ(back.chunk_count, kChunks);
  EXPECT_EQ(back.datasets, r.matrix.datasets);
  ASSERT_EQ(back.weights.size(), r.matrix.weights.size());
  for (const auto& [name, w] : r.matrix.weights) {
    const std::vector<float>& got = back.weights.at(name);
    ASSERT_EQ(got.size(), w.size()) << name;
    for (size_t j = 0; j < w.size(); ++j) EXPECT_NEAR(got[j], w[j], 1e-6f * w[j]) << name << " column " << j;
  }
  // A .dat matrix cannot be written as GGUF sums: a clear error, no file.
  try {
    write_imatrix_gguf(back, dir_ / "from-dat.gguf");
    FAIL() << "a matrix without sums was written";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("legacy .dat"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(dir_ / "from-dat.gguf"));
}

TEST_F(ImatrixCollect, CommandWritesBothFormatsAndRejectsBadInput) {
  const fs::path text = dir_ / "calib.txt";
  std::ofstream(text, std::ios::binary) << text_;
  const std::string model = fmt::format("'{}'", (test::shared_data_dir() / kModel).string());
  const fs::path gguf = dir_ / "cli.imatrix.gguf", dat = dir_ / "cli.imatrix.dat";
  const auto a = test::run_cli(fmt::format("imatrix {} -f '{}' -o '{}' -c {} --chunks {} -t 2", model, text.string(),
                                           gguf.string(), kCtx, kChunks));
  ASSERT_EQ(a.exit_code, 0) << a.output;
  EXPECT_NE(a.output.find("Final estimate: PPL = "), std::string::npos) << a.output;
  const auto b = test::run_cli(fmt::format("imatrix {} -f '{}' -o '{}' -c {} --chunks {} -t 2 --output-format dat --no-ppl",
                                           model, text.string(), dat.string(), kCtx, kChunks));
  ASSERT_EQ(b.exit_code, 0) << b.output;
  const ImportanceMatrix mg = load_imatrix(gguf), md = load_imatrix(dat);
  const ImportanceMatrix want = collect().matrix;
  EXPECT_EQ(mg.weights, want.weights);
  EXPECT_EQ(mg.datasets, std::vector<std::string>{text.string()});
  EXPECT_EQ(md.weights.size(), want.weights.size());
  EXPECT_EQ(md.chunk_count, kChunks);

  const auto small = test::run_cli(fmt::format("imatrix {} -f '{}' -o '{}' -c 8", model, text.string(),
                                               (dir_ / "small.gguf").string()));
  EXPECT_EQ(small.exit_code, 1);
  EXPECT_NE(small.output.find("at least 16"), std::string::npos) << small.output;
  const fs::path tiny = dir_ / "tiny.txt";
  std::ofstream(tiny) << "Once upon a time.";
  const auto short_text = test::run_cli(fmt::format("imatrix {} -f '{}' -o '{}'", model, tiny.string(),
                                                    (dir_ / "short.gguf").string()));
  EXPECT_EQ(short_text.exit_code, 1);
  EXPECT_NE(short_text.output.find("two contexts"), std::string::npos) << short_text.output;
  EXPECT_FALSE(fs::exists(dir_ / "small.gguf"));
  EXPECT_FALSE(fs::exists(dir_ / "short.gguf"));
  const auto bad_format = test::run_cli(fmt::format("imatrix {} -f '{}' --output-format txt", model, text.string()));
  EXPECT_NE(bad_format.exit_code, 0);
}

}  // namespace
}  // namespace mixq
