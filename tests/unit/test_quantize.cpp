// `mixq quantize` end to end: output types and values, reports, and bad input, full disks and
// interruptions that must leave no file behind.
#include <cmath>
#include <fstream>

#include <nlohmann/json.hpp>

#include "mixq/policy/presets.h"
#include "mixq/quantize/quantize_model.h"
#include "synthetic_model.h"
#include "test_support.h"

namespace mixq {
namespace {

namespace fs = std::filesystem;

class Quantize : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = test::temp_dir() / ::testing::UnitTest::GetInstance()->current_test_info()->name();
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    model_ = dir_ / "model.gguf";
    test::write_synthetic_llama(model_, {});
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string q(const fs::path& p) { return "'" + p.string() + "'"; }
  fs::path dir_, model_;
};

TEST_F(Quantize, OutputHasPlannedTypesAndCloseValues) {
  const fs::path out = dir_ / "out.gguf";
  const auto r = test::run_cli("quantize " + q(model_) + " " + q(out) + " q8_0 --tensor-type ffn_down=f16 -t 2 --report-json " +
                               q(dir_ / "report.json"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const GgufFile src = GgufFile::open(model_);
  const GgufFile dst = GgufFile::open(out);
  ASSERT_EQ(dst.tensors().size(), src.tensors().size());
  std::ifstream rep(dir_ / "report.json");
  const auto report = nlohmann::json::parse(rep);
  for (size_t i = 0; i < dst.tensors().size(); ++i) {
    const GgufTensor& a = src.tensors()[i];
    const GgufTensor& b = dst.tensors()[i];
    ASSERT_EQ(a.name, b.name);
    EXPECT_EQ(report["tensors"][i]["type"], b.type->name);
    if (a.shape.size() == 1) {
      EXPECT_EQ(b.type->id, TypeId::F32) << b.name;
    } else if (a.name.find("ffn_down") != std::string::npos) {
      EXPECT_EQ(b.type->id, TypeId::F16) << b.name;
    } else {
      // Q8_0 mix: everything Q8_0 (the head stays Q8_0 in llama.cpp's Q8_0 mix).
      EXPECT_EQ(b.type->id, TypeId::Q8_0) << b.name;
    }
    std::vector<float> x(static_cast<size_t>(a.n_elements())), y(x.size());
    dequantize_rows(a.type->id, a.data, x.data(), a.n_rows(), a.row_length());
    dequantize_rows(b.type->id, b.data, y.data(), b.n_rows(), b.row_length());
    double se = 0, ss = 0;
    for (size_t k = 0; k < x.size(); ++k) {
      se += (x[k] - y[k]) * (x[k] - y[k]);
      ss += x[k] * x[k];
    }
    EXPECT_LT(std::sqrt(se / ss), 0.01) << b.name;  // Q8_0 keeps ~0.3% relative error on Gaussian weights
  }
  EXPECT_EQ(dst.find("mixq.quantize.type")->as_string(), "q8_0");
  EXPECT_EQ(dst.find("general.file_type")->as_uint(), 7u);  // LLAMA_FTYPE_MOSTLY_Q8_0
  EXPECT_EQ(test::files_in(dir_).size(), 3u);  // model, output, report: no temporary left
}

TEST_F(Quantize, DryRunWritesNothingAndPredictsTheSize) {
  const fs::path out = dir_ / "out.gguf";
  const auto dry = test::run_cli("quantize " + q(model_) + " " + q(out) + " Q4_K_M --dry-run --report-json " + q(dir_ / "plan.json"));
  ASSERT_EQ(dry.exit_code, 0) << dry.output;
  EXPECT_FALSE(fs::exists(out));
  EXPECT_NE(dry.output.find("bits per weight"), std::string::npos);
  const auto plan = nlohmann::json::parse(std::ifstream(dir_ / "plan.json"));
  const auto real = test::run_cli("quantize " + q(model_) + " " + q(out) + " Q4_K_M");
  ASSERT_EQ(real.exit_code, 0) << real.output;
  EXPECT_EQ(plan["output_file_bytes"].get<uint64_t>(), fs::file_size(out));
}

TEST_F(Quantize, RuleMatchingNothingWarns) {
  const auto r = test::run_cli("quantize " + q(model_) + " " + q(dir_ / "o.gguf") + " q8_0 --tensor-type no_such_tensor=q4_0");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("warning: rule '--tensor-type no_such_tensor=q4_0' matched no tensor"), std::string::npos);
}

TEST_F(Quantize, BadInputIsAClearErrorAndLeavesNoFile) {
  const fs::path out = dir_ / "out.gguf";
  struct Case {
    std::string args, message;
  } cases[] = {
      {"quantize " + q(model_) + " " + q(out) + " q9_9", "unknown type 'q9_9'"},
      {"quantize " + q(model_) + " " + q(out) + " q8_0 --tensor-type 'attn_(=q4_0'", "bad regex"},
      {"quantize " + q(model_) + " " + q(out) + " q8_0 --layers first:x=q4_0", "layer spec"},
      {"quantize " + q(dir_ / "missing.gguf") + " " + q(out) + " q8_0", "cannot open"},
      {"quantize " + q(model_) + " " + q(out) + " nf4 --compat llama.cpp", "llama.cpp cannot load"},
      {"quantize " + q(model_) + " " + q(out) + " q8_0 --config " + q(dir_ / "none.json"), "cannot read --config"},
      {"quantize " + q(model_) + " " + q(out) + " q8_0 --imatrix " + q(model_), "not an importance matrix"},
      // llama-quantize's trailing THREADS must be a whole number, not a prefix of one.
      {"quantize " + q(model_) + " " + q(out) + " q8_0 2x", "THREADS '2x' is not a number"},
      {"quantize " + q(model_) + " " + q(out) + " q8_0 two", "THREADS 'two' is not a number"},
  };
  for (const auto& c : cases) {
    const auto r = test::run_cli(c.args);
    EXPECT_EQ(r.exit_code, 1) << c.args << "\n" << r.output;
    EXPECT_NE(r.output.find(c.message), std::string::npos) << c.args << "\n" << r.output;
    EXPECT_FALSE(fs::exists(out)) << c.args;
  }
  // A truncated model.
  const fs::path cut = dir_ / "cut.gguf";
  fs::copy_file(model_, cut);
  fs::resize_file(cut, fs::file_size(model_) / 2);
  const auto r = test::run_cli("quantize " + q(cut) + " " + q(out) + " q8_0");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.output.find("truncated"), std::string::npos) << r.output;
  EXPECT_EQ(test::files_in(dir_).size(), 2u);  // model and the truncated copy only
}

TEST_F(Quantize, FullDiskIsAClearErrorAndLeavesNoFile) {
  // A file-size limit makes writes fail part-way, as a full disk does (root ignores read-only
  // permissions, so this is the portable way to make writing fail in a test).
  const fs::path out = dir_ / "out.gguf";
  const auto r = test::run_cli("quantize " + q(model_) + " " + q(out) + " q8_0", "trap '' XFSZ; ulimit -f 64;");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("cannot write"), std::string::npos) << r.output;
  EXPECT_EQ(test::files_in(dir_).size(), 1u) << r.output;
}

TEST_F(Quantize, ReadOnlyFileSystemIsAClearError) {
  // /proc accepts no new files, even from root (who ignores permission bits elsewhere).
  const auto r = test::run_cli("quantize " + q(model_) + " /proc/mixq-test-output.gguf q8_0");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.output.find("cannot write '/proc/mixq-test-output.gguf'"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists("/proc/mixq-test-output.gguf"));
}

TEST_F(Quantize, TensorOnlyFileWithoutArchitectureKeys) {
  // Only tensors, no metadata: layer rules infer the layer count from the blk.N names.
  const fs::path bare = dir_ / "bare.gguf";
  {
    const GgufFile src = GgufFile::open(model_);
    GgufWriter w(bare);
    for (const auto& t : src.tensors()) w.add_tensor(t.name, t.shape, t.type->id);
    for (const auto& t : src.tensors()) w.write_tensor_data(t.bytes());
    w.finish();
  }
  const fs::path out = dir_ / "out.gguf";
  const auto r = test::run_cli("quantize " + q(bare) + " " + q(out) + " q4_0 --layers last:1=q8_0");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const GgufFile f = GgufFile::open(out);
  EXPECT_EQ(f.find_tensor("blk.3.attn_q.weight")->type->id, TypeId::Q8_0);
  EXPECT_EQ(f.find_tensor("blk.2.attn_q.weight")->type->id, TypeId::Q4_0);
}

TEST_F(Quantize, MissingOutputDirectoryIsAClearError) {
  const auto r = test::run_cli("quantize " + q(model_) + " " + q(dir_ / "no" / "such" / "dir" / "o.gguf") + " q8_0");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.output.find("cannot write"), std::string::npos) << r.output;
}

TEST_F(Quantize, InterruptionLeavesNoFile) {
  const GgufFile in = GgufFile::open(model_);
  std::atomic<bool> cancel{false};
  QuantizeOptions opts;
  opts.policy.default_type = TypeId::Q8_0;
  opts.cancel = &cancel;
  int seen = 0;
  opts.on_progress = [&](const QuantizeProgress&) {
    if (++seen == 5) cancel = true;  // as the SIGINT handler does
  };
  const fs::path out = dir_ / "out.gguf";
  EXPECT_THROW(quantize_model(in, out, opts), QuantizeCancelled);
  EXPECT_EQ(seen, 5);
  EXPECT_EQ(test::files_in(dir_).size(), 1u);
}

TEST_F(Quantize, ImatrixIsUsedAndRecorded) {
  // An importance matrix in llama.cpp's GGUF format that makes one column matter enormously.
  const GgufFile in = GgufFile::open(model_);
  const fs::path im = dir_ / "im.gguf";
  {
    GgufWriter w(im);
    w.set("general.type", GgufValue::string("imatrix"));
    w.set("imatrix.datasets", GgufValue::string_array({"synthetic"}));
    w.set("imatrix.chunk_count", GgufValue::u32(3));
    w.set("imatrix.chunk_size", GgufValue::u32(512));
    std::vector<std::pair<std::string, std::vector<float>>> data;
    for (const auto& t : in.tensors()) {
      if (t.shape.size() < 2) continue;
      std::vector<float> sums(static_cast<size_t>(t.row_length()), 1.0f);
      sums[0] = 1e6f;
      data.push_back({t.name, sums});
    }
    for (const auto& [name, sums] : data) {
      w.add_tensor(name + ".in_sum2", {static_cast<int64_t>(sums.size())}, TypeId::F32);
      w.add_tensor(name + ".counts", {1}, TypeId::F32);
    }
    for (const auto& [name, sums] : data) {
      w.write_tensor_data({reinterpret_cast<const uint8_t*>(sums.data()), sums.size() * 4});
      const float count = 3;
      w.write_tensor_data({reinterpret_cast<const uint8_t*>(&count), 4});
    }
    w.finish();
  }
  const ImportanceMatrix matrix = load_imatrix(im);
  ASSERT_EQ(matrix.weights.size(), 2u + 7u * 4u);  // the matrices: embeddings, head, 7 per layer
  EXPECT_FLOAT_EQ(matrix.find("output.weight")->at(0), 1e6f / 3);
  QuantizeOptions plain, weighted;
  plain.policy.default_type = weighted.policy.default_type = TypeId::Q4_0;
  weighted.imatrix = &matrix;
  weighted.policy.has_imatrix = true;
  quantize_model(in, dir_ / "plain.gguf", plain);
  quantize_model(in, dir_ / "weighted.gguf", weighted);
  const GgufFile a = GgufFile::open(dir_ / "plain.gguf"), b = GgufFile::open(dir_ / "weighted.gguf");
  EXPECT_EQ(b.find("quantize.imatrix.dataset")->as_string(), "synthetic");
  // The heavily weighted column 0 is reproduced better with the importance matrix.
  const GgufTensor& src = *in.find_tensor("blk.0.ffn_up.weight");
  double err_plain = 0, err_weighted = 0;
  std::vector<float> x(static_cast<size_t>(src.n_elements())), ya(x.size()), yb(x.size());
  dequantize_rows(TypeId::F32, src.data, x.data(), src.n_rows(), src.row_length());
  dequantize_rows(TypeId::Q4_0, a.find_tensor(src.name)->data, ya.data(), src.n_rows(), src.row_length());
  dequantize_rows(TypeId::Q4_0, b.find_tensor(src.name)->data, yb.data(), src.n_rows(), src.row_length());
  for (int64_t r = 0; r < src.n_rows(); ++r) {
    const size_t k = static_cast<size_t>(r * src.row_length());
    err_plain += std::fabs(x[k] - ya[k]);
    err_weighted += std::fabs(x[k] - yb[k]);
  }
  EXPECT_LT(err_weighted, err_plain * 0.5);
}

TEST_F(Quantize, LegacyDatImatrixIsRead) {
  // llama-imatrix's legacy layout: entries of (name, call count, values scaled by the call count),
  // then the chunk count and the dataset name.
  std::string bytes;
  auto put_i32 = [&](int32_t v) { bytes.append(reinterpret_cast<const char*>(&v), 4); };
  put_i32(1);
  const std::string name = "blk.0.attn_q.weight";
  put_i32(static_cast<int32_t>(name.size()));
  bytes += name;
  put_i32(4);  // calls
  put_i32(3);  // values
  for (float v : {4.0f, 8.0f, 12.0f}) bytes.append(reinterpret_cast<const char*>(&v), 4);
  put_i32(17);
  put_i32(4);
  bytes += "wiki";
  const fs::path dat = dir_ / "im.dat";
  std::ofstream(dat, std::ios::binary) << bytes;
  const ImportanceMatrix m = load_imatrix(dat);
  ASSERT_NE(m.find(name), nullptr);
  EXPECT_EQ(*m.find(name), (std::vector<float>{1.0f, 2.0f, 3.0f}));
  EXPECT_EQ(m.chunk_count, 17);
  EXPECT_EQ(m.datasets, std::vector<std::string>{"wiki"});
  std::ofstream(dat, std::ios::binary) << bytes.substr(0, 30);
  try {
    load_imatrix(dat);
    FAIL() << "a truncated .dat loaded";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("truncated"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace mixq
