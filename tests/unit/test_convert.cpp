// `convert_to_gguf` on foreign formats: llama2.c (against llama.cpp's own conversion), rwkv.cpp
// (every tensor's bytes kept), Hugging Face safetensors directories (names, q/k permutation,
// tokenizer, validation), format detection, and clear errors for malformed inputs.
#include <cstring>
#include <fstream>
#include <map>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "mixq/convert/convert.h"
#include "mixq/convert/llama2c.h"
#include "mixq/convert/rwkv_cpp.h"
#include "mixq/formats/half.h"
#include "mixq/io/gguf.h"
#include "test_support.h"

namespace mixq {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

fs::path fresh_dir(const std::string& name) {
  auto d = test::temp_dir() / name;
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

void write_file(const fs::path& p, const std::vector<uint8_t>& bytes) {
  std::ofstream f(p, std::ios::binary);
  f.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
}

std::vector<uint8_t> read_file(const fs::path& p) { return test::read_raw<uint8_t>(p); }

template <typename T>
void put(std::vector<uint8_t>& b, T v) {
  const auto* p = reinterpret_cast<const uint8_t*>(&v);
  b.insert(b.end(), p, p + sizeof v);
}

void put_str(std::vector<uint8_t>& b, const std::string& s) { b.insert(b.end(), s.begin(), s.end()); }

// Expects convert_to_gguf to throw with `needle` in its message and to leave no output behind.
void expect_error(const ConvertRequest& req, const std::string& needle) {
  try {
    convert_to_gguf(req);
    ADD_FAILURE() << "no error for " << req.input << " (expected '" << needle << "')";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(req.output));
}

std::vector<float> tensor_f32(const GgufTensor& t) {
  std::vector<float> v(static_cast<size_t>(t.n_elements()));
  dequantize_rows(t.type->id, t.data, v.data(), t.n_rows(), t.row_length());
  return v;
}

// ---------------------------------------------------------------------------------------------
// llama2.c

TEST(ConvertLlama2c, ByteIdenticalToLlamaCppConverter) {
  MIXQ_REQUIRE_SHARED("stories260K/stories260K.bin");
  const auto data = test::shared_data_dir() / "stories260K";
  const auto out = fresh_dir("conv-l2c") / "s.gguf";
  const ConvertResult r = convert_to_gguf({data / "stories260K.bin", out, std::nullopt, {}});  // finds tok512.bin
  EXPECT_EQ(r.format, ModelFormat::Llama2c);
  EXPECT_EQ(r.tensors, 48u);
  EXPECT_TRUE(read_file(out) == read_file(data / "stories260K-f32.llamacpp.gguf"));
}

TEST(ConvertLlama2c, F16StoresMatricesOnly) {
  MIXQ_REQUIRE_SHARED("stories260K/stories260K.bin");
  const auto data = test::shared_data_dir() / "stories260K";
  const auto out = fresh_dir("conv-l2c-f16") / "s.gguf";
  convert_to_gguf({data / "stories260K.bin", out, TypeId::F16, data / "tok512.bin"});
  const GgufFile f = GgufFile::open(out), ref = GgufFile::open(data / "stories260K-f32.llamacpp.gguf");
  EXPECT_EQ(f.find("general.file_type")->as_uint(), 1u);
  for (const auto& t : ref.tensors()) {
    const GgufTensor* o = f.find_tensor(t.name);
    ASSERT_NE(o, nullptr) << t.name;
    EXPECT_EQ(o->type->id, t.shape.size() >= 2 ? TypeId::F16 : TypeId::F32) << t.name;
    const auto a = tensor_f32(t), b = tensor_f32(*o);
    for (size_t i = 0; i < a.size(); ++i) {
      ASSERT_EQ(b[i], t.shape.size() >= 2 ? round_fp16(a[i]) : a[i]) << t.name << " " << i;
    }
  }
}

// A llama2.c model small enough to write here: GQA, unshared classifier (negative vocab size).
struct TinyLlama2c {
  int32_t dim = 8, hidden = 12, layers = 2, heads = 2, kv_heads = 1, vocab = 8, seq_len = 4;
  std::vector<float> weights;  // everything after the header, numbered so every tensor is distinct
  std::vector<uint8_t> file() {
    std::vector<uint8_t> b;
    for (int32_t v : {dim, hidden, layers, heads, kv_heads, -vocab, seq_len}) put(b, v);
    const int64_t kv = dim / heads * kv_heads;
    const int64_t n = vocab * dim + layers * (dim + dim * dim + 2 * kv * dim + dim * dim + dim + 3 * hidden * dim) +
                      dim + seq_len * (dim / heads) + vocab * dim;
    weights.resize(static_cast<size_t>(n));
    for (size_t i = 0; i < weights.size(); ++i) weights[i] = static_cast<float>(i) * 0.25f;
    for (float w : weights) put(b, w);
    return b;
  }
  static std::vector<uint8_t> tokenizer(const std::vector<std::string>& tokens) {
    std::vector<uint8_t> b;
    put<int32_t>(b, 16);
    for (size_t i = 0; i < tokens.size(); ++i) {
      put(b, -static_cast<float>(i));
      put(b, static_cast<int32_t>(tokens[i].size()));
      put_str(b, tokens[i]);
    }
    return b;
  }
};

TEST(ConvertLlama2c, GqaUnsharedClassifierAndVocabulary) {
  const auto dir = fresh_dir("conv-l2c-tiny");
  TinyLlama2c m;
  write_file(dir / "model.bin", m.file());
  write_file(dir / "tokenizer.bin",
             TinyLlama2c::tokenizer({"\n<unk>\n", "\n<s>\n", "\n</s>\n", "<0x0A>", " the", "", "a b", "x"}));
  convert_to_gguf({dir / "model.bin", dir / "out.gguf", std::nullopt, {}});
  const GgufFile f = GgufFile::open(dir / "out.gguf");
  const auto& tokens = f.find("tokenizer.ggml.tokens")->as_array();
  const auto& types = f.find("tokenizer.ggml.token_type")->as_array();
  const std::vector<std::string> want = {"<unk>", "<s>", "</s>", "<0x0A>", "\xe2\x96\x81the", "", "a\xe2\x96\x81" "b", "x"};
  const std::vector<int64_t> want_types = {2, 3, 3, 6, 1, 3, 1, 1};
  for (size_t i = 0; i < want.size(); ++i) {
    EXPECT_EQ(tokens[i].as_string(), want[i]);
    EXPECT_EQ(types[i].as_int(), want_types[i]) << i;
  }
  EXPECT_EQ(f.find("llama.attention.head_count_kv")->as_uint(), 1u);
  const GgufTensor* wk = f.find_tensor("blk.1.attn_k.weight");
  ASSERT_NE(wk, nullptr);
  EXPECT_EQ(wk->shape, (std::vector<int64_t>{8, 4}));
  // layer 1's wk follows the embedding, both layers' rms_att and wq, and layer 0's wk; no permutation
  const size_t wk1 = 8 * 8 + 2 * 8 + 2 * 64 + 32;
  const auto k = tensor_f32(*wk);
  for (size_t i = 0; i < k.size(); ++i) ASSERT_EQ(k[i], m.weights[wk1 + i]);
  // the classifier is the last tensor of the file, not the embedding
  const auto out = tensor_f32(*f.find_tensor("output.weight"));
  EXPECT_EQ(out.front(), m.weights[m.weights.size() - 64]);
}

TEST(ConvertLlama2c, MalformedInputsAreClearErrors) {
  const auto dir = fresh_dir("conv-l2c-bad");
  TinyLlama2c m;
  auto good = m.file();
  const auto tok = TinyLlama2c::tokenizer({"a", "b", "c", "d", "e", "f", "g", "h"});
  write_file(dir / "tokenizer.bin", tok);
  const fs::path out = dir / "o.gguf";

  write_file(dir / "cut.bin", {good.begin(), good.end() - 4});
  expect_error({dir / "cut.bin", out, std::nullopt, {}}, "truncated");
  auto longer = good;
  longer.resize(good.size() + 8);
  write_file(dir / "long.bin", longer);
  expect_error({dir / "long.bin", out, std::nullopt, {}}, "bytes follow the last tensor");
  std::vector<uint8_t> v1;
  put<uint32_t>(v1, 0x616b3432);
  put<int32_t>(v1, 1);
  v1.resize(256);
  write_file(dir / "v1.bin", v1);
  expect_error({dir / "v1.bin", out, std::nullopt, {}}, "only the v0");
  write_file(dir / "garbage.bin", std::vector<uint8_t>(64, 0xff));
  expect_error({dir / "garbage.bin", out, std::nullopt, {}}, "not a llama2.c checkpoint");
  write_file(dir / "tiny.bin", {1, 2});
  expect_error({dir / "tiny.bin", out, std::nullopt, {}}, "too short");
  write_file(dir / "short-tok.bin", {tok.begin(), tok.begin() + 20});
  write_file(dir / "model.bin", good);
  expect_error({dir / "model.bin", out, std::nullopt, dir / "short-tok.bin"}, "truncated");
  const auto lone = fresh_dir("conv-l2c-lone");
  write_file(lone / "model.bin", good);
  expect_error({lone / "model.bin", lone / "o.gguf", std::nullopt, {}}, "--tokenizer");
  expect_error({dir / "missing.bin", out, std::nullopt, {}}, "cannot open");
  expect_error({dir / "model.bin", out, TypeId::Q4_0, {}}, "use `mixq quantize`");
}

// ---------------------------------------------------------------------------------------------
// rwkv.cpp

struct RwkvTensorBytes {
  std::vector<int64_t> shape;
  uint32_t ggml_type;
  std::vector<uint8_t> bytes;
};

// The rwkv.cpp layout read independently of the converter.
std::map<std::string, RwkvTensorBytes> parse_rwkv(const fs::path& p) {
  const auto b = read_file(p);
  const std::map<int32_t, std::pair<uint32_t, std::pair<int, int>>> kTypes = {
      {0, {0, {1, 4}}}, {1, {1, {1, 2}}}, {2, {2, {32, 18}}}, {3, {3, {32, 20}}}, {7, {6, {32, 22}}},
      {8, {7, {32, 24}}}, {9, {8, {32, 34}}}};
  std::map<std::string, RwkvTensorBytes> out;
  size_t o = 24;
  auto i32 = [&] {
    int32_t v;
    std::memcpy(&v, b.data() + o, 4);
    o += 4;
    return v;
  };
  while (o < b.size()) {
    const int32_t nd = i32(), len = i32(), type = i32();
    RwkvTensorBytes t;
    int64_t n = 1;
    for (int d = 0; d < nd; ++d) n *= t.shape.emplace_back(i32());
    std::string name(reinterpret_cast<const char*>(b.data() + o), static_cast<size_t>(len));
    o += static_cast<size_t>(len);
    const auto& [ggml, block] = kTypes.at(type);
    t.ggml_type = ggml;
    const size_t nbytes = static_cast<size_t>(n / block.first * block.second);
    t.bytes.assign(b.begin() + static_cast<std::ptrdiff_t>(o), b.begin() + static_cast<std::ptrdiff_t>(o + nbytes));
    o += nbytes;
    out[name] = std::move(t);
  }
  return out;
}

TEST(ConvertRwkv, EveryTensorKeepsItsBytes) {
  MIXQ_REQUIRE_SHARED("rwkv-tiny/tiny-rwkv-7v0-834K-Q5_1.bin");
  const auto dir = fresh_dir("conv-rwkv");
  for (const char* name : {"tiny-rwkv-4v0-660K-FP32.bin", "tiny-rwkv-5v2-730K-FP32.bin", "tiny-rwkv-5v2-730K-FP16.bin",
                           "tiny-rwkv-7v0-834K-FP32.bin", "tiny-rwkv-7v0-834K-FP16.bin", "tiny-rwkv-7v0-834K-Q5_1.bin"}) {
    SCOPED_TRACE(name);
    const fs::path src = test::shared_data_dir() / "rwkv-tiny" / name;
    const auto expected = parse_rwkv(src);
    const ConvertResult r = convert_to_gguf({src, dir / "r.gguf", std::nullopt, {}});
    EXPECT_EQ(r.format, ModelFormat::RwkvCpp);
    const GgufFile f = GgufFile::open(dir / "r.gguf");
    const std::string arch = std::string("rwkv") + std::string(name).substr(10, 1);
    EXPECT_EQ(f.find("general.architecture")->as_string(), arch);
    EXPECT_EQ(f.find(arch + ".vocab_size")->as_uint(), 256u);
    EXPECT_EQ(f.find(arch + ".block_count")->as_uint(), arch == "rwkv4" ? 4u : 12u);
    ASSERT_EQ(f.tensors().size(), expected.size());
    for (const auto& t : f.tensors()) {
      const auto& e = expected.at(t.name);
      EXPECT_EQ(t.shape, e.shape) << t.name;
      EXPECT_EQ(static_cast<uint32_t>(t.type->id), e.ggml_type) << t.name;
      EXPECT_TRUE(std::vector<uint8_t>(t.data, t.data + t.nbytes) == e.bytes) << t.name;
    }
  }
}

TEST(ConvertRwkv, F16FromFp32MatchesRwkvCppsOwnFp16File) {
  MIXQ_REQUIRE_SHARED("rwkv-tiny/tiny-rwkv-7v0-834K-FP16.bin");
  const auto dir = fresh_dir("conv-rwkv-f16");
  const auto data = test::shared_data_dir() / "rwkv-tiny";
  convert_to_gguf({data / "tiny-rwkv-7v0-834K-FP32.bin", dir / "r.gguf", TypeId::F16, {}});
  const GgufFile f = GgufFile::open(dir / "r.gguf");
  const auto expected = parse_rwkv(data / "tiny-rwkv-7v0-834K-FP16.bin");
  for (const auto& t : f.tensors()) {
    const auto& e = expected.at(t.name);
    EXPECT_EQ(static_cast<uint32_t>(t.type->id), e.ggml_type) << t.name;
    EXPECT_TRUE(std::vector<uint8_t>(t.data, t.data + t.nbytes) == e.bytes) << t.name;
  }
}

std::vector<uint8_t> rwkv_file(int32_t version, int32_t tensor_type, size_t data_bytes) {
  std::vector<uint8_t> b;
  for (int32_t v : {int32_t{0x67676d66}, version, 256, 32, 1, tensor_type}) put(b, v);
  for (int32_t v : {2, 10, tensor_type, 32, 2}) put(b, v);
  put_str(b, "emb.weight");
  b.resize(b.size() + data_bytes, 0x11);
  return b;
}

TEST(ConvertRwkv, MalformedFilesAreClearErrors) {
  const auto dir = fresh_dir("conv-rwkv-bad");
  const fs::path out = dir / "o.gguf";
  write_file(dir / "ok.bin", rwkv_file(101, 2, 2 * 18));
  EXPECT_EQ(convert_to_gguf({dir / "ok.bin", out, std::nullopt, {}}).tensors, 1u);
  EXPECT_EQ(GgufFile::open(out).tensors()[0].type->id, TypeId::Q4_0);
  fs::remove(out);
  write_file(dir / "v100.bin", rwkv_file(100, 2, 2 * 18));
  expect_error({dir / "v100.bin", out, std::nullopt, {}}, "version 100");
  write_file(dir / "v99.bin", rwkv_file(99, 0, 64 * 4));
  expect_error({dir / "v99.bin", out, std::nullopt, {}}, "unsupported file version 99");
  write_file(dir / "cut.bin", rwkv_file(101, 0, 64 * 4 - 1));
  expect_error({dir / "cut.bin", out, std::nullopt, {}}, "truncated");
  write_file(dir / "type5.bin", rwkv_file(101, 5, 64));
  expect_error({dir / "type5.bin", out, std::nullopt, {}}, "unsupported type 5");
}

// ---------------------------------------------------------------------------------------------
// safetensors directories

struct StTensor {
  std::string name, dtype;
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;
};

std::vector<uint8_t> safetensors_bytes(const std::vector<StTensor>& ts) {
  json header = json::object();
  std::vector<uint8_t> data;
  for (const auto& t : ts) {
    header[t.name] = {{"dtype", t.dtype}, {"shape", t.shape}, {"data_offsets", {data.size(), data.size() + t.bytes.size()}}};
    data.insert(data.end(), t.bytes.begin(), t.bytes.end());
  }
  std::string h = header.dump();
  h.resize((h.size() + 7) / 8 * 8, ' ');
  std::vector<uint8_t> b;
  put<uint64_t>(b, h.size());
  put_str(b, h);
  b.insert(b.end(), data.begin(), data.end());
  return b;
}

// A one-layer llama: hidden 8, 2 heads of 4, 1 kv head, ffn 12, vocab 6. Value i of every tensor
// is i (at most 96: exact in F16 and BF16), so a row's first value tells which row it was.
struct TinyHf {
  std::string dtype = "F16";
  std::map<std::string, std::vector<int64_t>> shapes = {
      {"model.embed_tokens.weight", {6, 8}},        {"model.norm.weight", {8}},
      {"lm_head.weight", {6, 8}},                   {"model.layers.0.input_layernorm.weight", {8}},
      {"model.layers.0.self_attn.q_proj.weight", {8, 8}}, {"model.layers.0.self_attn.k_proj.weight", {4, 8}},
      {"model.layers.0.self_attn.v_proj.weight", {4, 8}}, {"model.layers.0.self_attn.o_proj.weight", {8, 8}},
      {"model.layers.0.post_attention_layernorm.weight", {8}}, {"model.layers.0.mlp.gate_proj.weight", {12, 8}},
      {"model.layers.0.mlp.up_proj.weight", {12, 8}}, {"model.layers.0.mlp.down_proj.weight", {8, 12}}};
  json config = {{"architectures", {"LlamaForCausalLM"}}, {"hidden_size", 8}, {"intermediate_size", 12},
                 {"num_hidden_layers", 1}, {"num_attention_heads", 2}, {"num_key_value_heads", 1},
                 {"vocab_size", 6}, {"rms_norm_eps", 1e-5}, {"rope_theta", 500000.0},
                 {"max_position_embeddings", 64}, {"bos_token_id", 0}, {"eos_token_id", 1}};
  json tokenizer = {
      {"added_tokens", {{{"id", 0}, {"content", "<s>"}, {"special", true}}, {{"id", 1}, {"content", "</s>"}, {"special", true}}}},
      {"pre_tokenizer", {{"type", "ByteLevel"}, {"use_regex", true}}},
      {"model", {{"type", "BPE"}, {"vocab", {{"<s>", 0}, {"</s>", 1}, {"a", 2}, {"b", 3}, {"ab", 4}}}, {"merges", json::array({json::array({"a", "b"})})}}}};

  static float value(size_t i) { return static_cast<float>(i); }
  std::vector<StTensor> tensors() const {
    std::vector<StTensor> out;
    for (const auto& [name, shape] : shapes) {
      StTensor t{name, shape.size() == 1 ? "F32" : dtype, shape, {}};
      int64_t n = 1;
      for (auto d : shape) n *= d;
      for (size_t i = 0; i < static_cast<size_t>(n); ++i) {
        const float v = value(i);
        if (t.dtype == "F32") put(t.bytes, v);
        else if (t.dtype == "F16") put(t.bytes, fp32_to_fp16(v));
        else put(t.bytes, fp32_to_bf16(v));
      }
      out.push_back(std::move(t));
    }
    return out;
  }
  void write(const fs::path& dir) const {
    write_file(dir / "model.safetensors", safetensors_bytes(tensors()));
    std::ofstream(dir / "config.json") << config.dump();
    std::ofstream(dir / "tokenizer.json") << tokenizer.dump();
  }
};

TEST(ConvertSafetensors, NamesPermutationAndTokenizer) {
  for (const char* dtype : {"F32", "F16", "BF16"}) {
    SCOPED_TRACE(dtype);
    const auto dir = fresh_dir("conv-st");
    TinyHf m;
    m.dtype = dtype;
    m.write(dir);
    const ConvertResult r = convert_to_gguf({dir, dir / "o.gguf", std::nullopt, {}});
    EXPECT_EQ(r.format, ModelFormat::SafetensorsDir);
    EXPECT_EQ(r.tensors, 12u);
    EXPECT_TRUE(r.warnings.empty());
    const GgufFile f = GgufFile::open(dir / "o.gguf");
    const TypeId want = find_type(std::string_view(dtype))->id;
    const GgufTensor* q = f.find_tensor("blk.0.attn_q.weight");
    ASSERT_NE(q, nullptr);
    EXPECT_EQ(q->type->id, want);
    EXPECT_EQ(q->shape, (std::vector<int64_t>{8, 8}));
    EXPECT_EQ(f.find_tensor("blk.0.attn_norm.weight")->type->id, TypeId::F32);
    // Each head of 4 rows [r0 r1 | r2 r3] (two rotary halves) becomes interleaved [r0 r2 r1 r3].
    const auto qv = tensor_f32(*q);
    const int order[8] = {0, 2, 1, 3, 4, 6, 5, 7};
    for (int row = 0; row < 8; ++row) {
      for (int c = 0; c < 8; ++c) ASSERT_EQ(qv[row * 8 + c], TinyHf::value(order[row] * 8 + c)) << row;
    }
    const auto kv = tensor_f32(*f.find_tensor("blk.0.attn_k.weight"));
    for (int row = 0; row < 4; ++row) EXPECT_EQ(kv[row * 8], TinyHf::value(order[row] * 8));
    const auto vv = tensor_f32(*f.find_tensor("blk.0.attn_v.weight"));  // v keeps its order
    EXPECT_EQ(vv[8], TinyHf::value(8));
    const GgufTensor* down = f.find_tensor("blk.0.ffn_down.weight");
    EXPECT_EQ(down->shape, (std::vector<int64_t>{12, 8}));

    EXPECT_EQ(f.find("llama.attention.head_count_kv")->as_uint(), 1u);
    EXPECT_EQ(f.find("llama.rope.freq_base")->as_float(), 500000.0);
    EXPECT_EQ(f.find("llama.context_length")->as_uint(), 64u);
    EXPECT_EQ(f.find("tokenizer.ggml.model")->as_string(), "gpt2");
    EXPECT_EQ(f.find("tokenizer.ggml.pre")->as_string(), "gpt2");
    const auto& tokens = f.find("tokenizer.ggml.tokens")->as_array();
    ASSERT_EQ(tokens.size(), 6u);
    EXPECT_EQ(tokens[4].as_string(), "ab");
    EXPECT_EQ(tokens[5].as_string(), "[PAD5]");
    const auto& types = f.find("tokenizer.ggml.token_type")->as_array();
    EXPECT_EQ(types[0].as_int(), 3);
    EXPECT_EQ(types[2].as_int(), 1);
    EXPECT_EQ(types[5].as_int(), 5);
    EXPECT_EQ(f.find("tokenizer.ggml.merges")->as_array()[0].as_string(), "a b");
    EXPECT_EQ(f.find("tokenizer.ggml.eos_token_id")->as_uint(), 1u);
  }
}

TEST(ConvertSafetensors, TiedEmbeddingsAndOuttype) {
  const auto dir = fresh_dir("conv-st-tied");
  TinyHf m;
  m.shapes.erase("lm_head.weight");
  m.config["tie_word_embeddings"] = true;
  m.write(dir);
  convert_to_gguf({dir, dir / "o.gguf", TypeId::BF16, {}});
  const GgufFile f = GgufFile::open(dir / "o.gguf");
  EXPECT_EQ(f.find_tensor("output.weight"), nullptr);
  EXPECT_EQ(f.find_tensor("token_embd.weight")->type->id, TypeId::BF16);
  EXPECT_EQ(f.find("general.file_type")->as_uint(), 32u);
  m.config["tie_word_embeddings"] = false;
  m.write(dir);
  expect_error({dir, dir / "o2.gguf", std::nullopt, {}}, "lm_head.weight");
}

TEST(ConvertSafetensors, SentencePieceTokenizerGetsScores) {
  const auto dir = fresh_dir("conv-st-spm");
  TinyHf m;
  m.tokenizer = {{"added_tokens", {{{"id", 1}, {"content", "<s>"}, {"special", true}}}},
                 {"model", {{"type", "BPE"}, {"byte_fallback", true}, {"unk_token", "<unk>"},
                            {"vocab", {{"<unk>", 0}, {"<s>", 1}, {"<0x0A>", 2}, {"\xe2\x96\x81t", 3}, {"he", 4}, {"x", 5}}},
                            {"merges", json::array()}}}};
  m.write(dir);
  convert_to_gguf({dir, dir / "o.gguf", std::nullopt, {}});
  const GgufFile f = GgufFile::open(dir / "o.gguf");
  EXPECT_EQ(f.find("tokenizer.ggml.model")->as_string(), "llama");
  EXPECT_EQ(f.find("tokenizer.ggml.unknown_token_id")->as_uint(), 0u);
  const auto& types = f.find("tokenizer.ggml.token_type")->as_array();
  const auto& scores = f.find("tokenizer.ggml.scores")->as_array();
  const std::vector<int64_t> want_types = {2, 3, 6, 1, 1, 1};
  const std::vector<double> want_scores = {0, 0, 0, -0.0, -1, -2};
  for (size_t i = 0; i < 6; ++i) {
    EXPECT_EQ(types[i].as_int(), want_types[i]) << i;
    EXPECT_EQ(scores[i].as_float(), want_scores[i]) << i;
  }
  EXPECT_EQ(f.find("tokenizer.ggml.merges"), nullptr);
}

TEST(ConvertSafetensors, UnrecognizedPreTokenizerWarns) {
  const auto dir = fresh_dir("conv-st-pre");
  TinyHf m;
  m.tokenizer["pre_tokenizer"] = {{"type", "Whitespace"}};
  m.write(dir);
  const ConvertResult r = convert_to_gguf({dir, dir / "o.gguf", std::nullopt, {}});
  ASSERT_EQ(r.warnings.size(), 1u);
  EXPECT_NE(r.warnings[0].find("not recognized"), std::string::npos);
  EXPECT_EQ(GgufFile::open(dir / "o.gguf").find("tokenizer.ggml.pre")->as_string(), "default");
}

TEST(ConvertSafetensors, ShardedIndex) {
  const auto dir = fresh_dir("conv-st-shards");
  TinyHf m;
  m.write(dir);
  fs::remove(dir / "model.safetensors");
  auto all = m.tensors();
  json map = json::object();
  for (int s = 0; s < 2; ++s) {
    std::vector<StTensor> part;
    const std::string file = fmt::format("model-0000{}-of-00002.safetensors", s + 1);
    for (size_t i = static_cast<size_t>(s); i < all.size(); i += 2) {
      part.push_back(all[i]);
      map[all[i].name] = file;
    }
    write_file(dir / file, safetensors_bytes(part));
  }
  std::ofstream(dir / "model.safetensors.index.json") << json{{"weight_map", map}}.dump();
  EXPECT_EQ(convert_to_gguf({dir, dir / "o.gguf", std::nullopt, {}}).tensors, 12u);
}

TEST(ConvertSafetensors, MalformedDirectoriesAreClearErrors) {
  const auto dir = fresh_dir("conv-st-bad");
  const fs::path out = dir / "o.gguf";
  TinyHf m;
  m.write(dir);
  const auto good = read_file(dir / "model.safetensors");
  auto rewrite = [&](std::vector<StTensor> ts) { write_file(dir / "model.safetensors", safetensors_bytes(ts)); };

  write_file(dir / "model.safetensors", {good.begin(), good.begin() + static_cast<std::ptrdiff_t>(good.size() / 2)});
  expect_error({dir, out, std::nullopt, {}}, "outside the file");
  auto huge = good;
  const uint64_t big = uint64_t{1} << 40;
  std::memcpy(huge.data(), &big, 8);
  write_file(dir / "model.safetensors", huge);
  expect_error({dir, out, std::nullopt, {}}, "runs past the end");
  auto notjson = good;
  notjson[8] = '[';
  notjson[9] = '[';
  write_file(dir / "model.safetensors", notjson);
  expect_error({dir, out, std::nullopt, {}}, "not JSON");

  auto ts = m.tensors();
  ts[0].shape = {7, 8};  // lm_head: 56 elements in the 96 bytes of F16 6x8
  rewrite(ts);
  expect_error({dir, out, std::nullopt, {}}, "its shape and dtype need");
  ts = m.tensors();
  ts[1].dtype = "Q4";
  rewrite(ts);
  expect_error({dir, out, std::nullopt, {}}, "unknown dtype Q4");
  ts = m.tensors();
  for (auto& t : ts) {
    if (t.name == "model.norm.weight") t.dtype = "I32";
  }
  rewrite(ts);
  expect_error({dir, out, std::nullopt, {}}, "dtype I32");
  ts = m.tensors();
  ts.push_back({"model.layers.0.self_attn.q_proj.bias", "F32", {8}, std::vector<uint8_t>(32)});
  rewrite(ts);
  expect_error({dir, out, std::nullopt, {}}, "q_proj.bias");
  ts = m.tensors();
  ts[4].shape = {6, 16};  // gate_proj: as many values as 12x8, the wrong shape
  rewrite(ts);
  expect_error({dir, out, std::nullopt, {}}, "config.json implies");
  // two tensors sharing bytes
  {
    json header = {{"a", {{"dtype", "F32"}, {"shape", {4}}, {"data_offsets", {0, 16}}}},
                   {"b", {{"dtype", "F32"}, {"shape", {4}}, {"data_offsets", {8, 24}}}}};
    std::string h = header.dump();
    std::vector<uint8_t> b;
    put<uint64_t>(b, h.size());
    put_str(b, h);
    b.resize(b.size() + 24);
    write_file(dir / "model.safetensors", b);
    expect_error({dir, out, std::nullopt, {}}, "overlap");
  }
  m.write(dir);
  for (const char* key : {"hidden_size", "num_hidden_layers", "vocab_size"}) {
    TinyHf bad = m;
    bad.config.erase(key);
    bad.write(dir);
    expect_error({dir, out, std::nullopt, {}}, key);
  }
  TinyHf wrong_type = m;
  wrong_type.config["hidden_size"] = "eight";
  wrong_type.write(dir);
  expect_error({dir, out, std::nullopt, {}}, "not a positive integer");
  TinyHf other_arch = m;
  other_arch.config["architectures"] = {"GPTNeoXForCausalLM"};
  other_arch.write(dir);
  expect_error({dir, out, std::nullopt, {}}, "GPTNeoXForCausalLM");
  TinyHf wordpiece = m;
  wordpiece.tokenizer["model"]["type"] = "WordPiece";
  wordpiece.write(dir);
  expect_error({dir, out, std::nullopt, {}}, "WordPiece");
  // Absurd layer counts are checked against the weights before anything is sized from them
  // (2^31 layers used to allocate until memory ran out).
  TinyHf many_layers = m;
  many_layers.config["num_hidden_layers"] = int64_t{1} << 31;
  many_layers.write(dir);
  expect_error({dir, out, std::nullopt, {}}, "hold no layer 2147483647");
  many_layers.config["num_hidden_layers"] = 2;
  many_layers.write(dir);
  expect_error({dir, out, std::nullopt, {}}, "hold no layer 1");
  // Deeply nested values (the error messages print them) are refused while parsing.
  for (const char* key : {"architectures", "rope_scaling"}) {
    m.write(dir);
    std::ofstream(dir / "config.json") << "{\"" << key << "\": " << std::string(100000, '[') << std::string(100000, ']')
                                        << "}";
    expect_error({dir, out, std::nullopt, {}}, "nests deeper than");
  }
  {
    m.write(dir);
    const std::string deep_header = "{\"x\": {\"dtype\": \"F32\", \"shape\": " + std::string(100000, '[') +
                                    std::string(100000, ']') + ", \"data_offsets\": [0, 0]}}";
    std::vector<uint8_t> b;
    put<uint64_t>(b, deep_header.size());
    put_str(b, deep_header);
    write_file(dir / "model.safetensors", b);
    expect_error({dir, out, std::nullopt, {}}, "nests deeper than");
  }
  {
    m.write(dir);
    std::ofstream(dir / "tokenizer.json") << "{\"added_tokens\": [{\"id\": " << std::string(100000, '[')
                                          << std::string(100000, ']') << "}]}";
    expect_error({dir, out, std::nullopt, {}}, "nests deeper than");
  }
  // A sharded index must name files inside the directory.
  for (const char* shard : {"../outside.safetensors", "/etc/passwd", "sub/../../x.safetensors"}) {
    m.write(dir);
    fs::rename(dir / "model.safetensors", dir / "inside.safetensors");
    json index = {{"weight_map", {{"model.norm.weight", "inside.safetensors"}, {"lm_head.weight", shard}}}};
    std::ofstream(dir / "model.safetensors.index.json") << index.dump();
    expect_error({dir, out, std::nullopt, {}}, "outside the model directory");
    fs::remove(dir / "model.safetensors.index.json");
    fs::remove(dir / "inside.safetensors");
  }
  m.write(dir);
  std::ofstream(dir / "config.json") << "{ not json";
  expect_error({dir, out, std::nullopt, {}}, "not valid JSON");
  m.write(dir);
  fs::remove(dir / "tokenizer.json");
  expect_error({dir, out, std::nullopt, {}}, "no tokenizer.json");
}

// ---------------------------------------------------------------------------------------------
// detection

TEST(ConvertDetect, FormatsAndUnconvertibleInputs) {
  const auto dir = fresh_dir("conv-detect");
  write_file(dir / "r.bin", rwkv_file(101, 0, 64 * 4));
  EXPECT_EQ(detect_model_format(dir / "r.bin"), ModelFormat::RwkvCpp);
  write_file(dir / "g.gguf", {'G', 'G', 'U', 'F', 3, 0, 0, 0});
  EXPECT_EQ(detect_model_format(dir / "g.gguf"), ModelFormat::Gguf);
  const auto empty = fresh_dir("conv-detect-empty");
  expect_error({empty, dir / "o.gguf", std::nullopt, {}}, "without config.json");
  TinyHf m;
  write_file(dir / "model.safetensors", safetensors_bytes(m.tensors()));
  expect_error({dir / "model.safetensors", dir / "o.gguf", std::nullopt, {}}, "single safetensors file");
}

}  // namespace
}  // namespace mixq
