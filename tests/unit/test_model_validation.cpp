// Damaged models are refused with the key, the file and what was expected (issue 12): the
// hyperparameters against the tensors (engine/llama_hparams.cpp) and the tokenizer's metadata
// (engine/tokenizer.cpp). Each variant is the bundled stories260K model with one thing changed.
#include <cmath>
#include <functional>
#include <limits>
#include <optional>

#include <fmt/format.h>

#include "gguf_patch.h"
#include "mixq/engine/llama_model.h"
#include "mixq/engine/tokenizer.h"
#include "test_support.h"

namespace mixq {
namespace {

std::filesystem::path bundled_model() { return test::source_dir() / "assets/stories260K/stories260K-f32.gguf"; }

std::filesystem::path work_dir() {
  const auto d = test::temp_dir() / "model-validation";
  std::filesystem::create_directories(d);
  return d;
}

// The bundled model with some keys replaced (nullopt: removed) and, optionally, output.weight
// replaced by a zero tensor of another shape.
std::filesystem::path variant(const std::string& name, const std::vector<std::pair<std::string, std::optional<GgufValue>>>& keys,
                              std::optional<std::vector<int64_t>> output_shape = std::nullopt) {
  const GgufFile src = GgufFile::open(bundled_model());
  const auto path = work_dir() / (name + ".gguf");
  GgufWriter w(path);
  w.copy_metadata(src);
  for (const auto& [k, v] : keys) {
    if (v) {
      w.set(k, *v);
    } else {
      w.remove(k);
    }
  }
  auto shape_of = [&](const GgufTensor& t) {
    return output_shape && t.name == "output.weight" ? *output_shape : t.shape;
  };
  for (const auto& t : src.tensors()) w.add_tensor(t.name, shape_of(t), t.type->id);
  for (const auto& t : src.tensors()) {
    if (output_shape && t.name == "output.weight") {
      std::vector<uint8_t> zeros(static_cast<size_t>((*output_shape)[0] * (*output_shape)[1]) * 4);
      w.write_tensor_data(zeros);
    } else {
      w.write_tensor_data(t.bytes());
    }
  }
  w.finish();
  return path;
}

// The message LlamaModel (or, with tokenizer, Tokenizer::from_gguf) throws for path, or "" when it loads.
std::string load_error(const std::filesystem::path& path, bool tokenizer = false) {
  try {
    const GgufFile f = GgufFile::open(path);
    if (tokenizer) {
      Tokenizer::from_gguf(f);
    } else {
      LlamaModel m(f);
    }
  } catch (const std::runtime_error& e) {
    return e.what();
  }
  return "";
}

#define EXPECT_REFUSED(path, tokenizer, ...)                                                   \
  do {                                                                                       \
    const std::string what_ = load_error(path, tokenizer);                                   \
    ASSERT_FALSE(what_.empty()) << path << " was accepted";                                  \
    EXPECT_NE(what_.find(path.string()), std::string::npos) << "the file is not named: " << what_; \
    for (const char* part_ : {__VA_ARGS__}) EXPECT_NE(what_.find(part_), std::string::npos) << what_; \
  } while (0)

TEST(ModelValidation, BundledModelLoads) {
  EXPECT_EQ(load_error(bundled_model()), "");
  EXPECT_EQ(load_error(bundled_model(), true), "");
  // A copy with every key re-set to its own value loads too (the writer path the variants use).
  EXPECT_EQ(load_error(variant("same", {})), "");
}

// Issue 12, case 1: one byte (dimension_count 8 -> 100) made rope() write past each head.
TEST(ModelValidation, RopeDimensionCountLargerThanTheHeadIsRefused) {
  std::vector<uint8_t> b = test::read_bytes(bundled_model());
  const size_t at = test::GgufHeaderWalker(b).value_offset("llama.rope.dimension_count");
  ASSERT_EQ(b[at], 8);  // u32 8: the head size of stories260K (64 / 8 heads)
  b[at] = 100;
  const auto path = work_dir() / "rope100.gguf";
  test::write_bytes(path, b);
  EXPECT_REFUSED(path, false, "llama.rope.dimension_count is 100", "head size is 8", "expected an even number from 2 to 8");
  // Every command that runs the model says so and exits 1 (it used to crash).
  const auto r = test::run_cli(fmt::format("generate '{}' -p 'Once upon a time' -n 2 -t 1", path.string()));
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("llama.rope.dimension_count is 100"), std::string::npos) << r.output;
}

TEST(ModelValidation, EveryHyperparameterIsCheckedAgainstTheTensors) {
  const double nan = std::numeric_limits<double>::quiet_NaN(), inf = std::numeric_limits<double>::infinity();
  struct Case {
    std::string name, key;
    std::optional<GgufValue> value;
    std::vector<const char*> expect;
  };
  const std::vector<Case> cases = {
      {"rope-odd", "llama.rope.dimension_count", GgufValue::u32(7), {"dimension_count is 7", "even number from 2 to 8"}},
      {"rope-zero", "llama.rope.dimension_count", GgufValue::u32(0), {"dimension_count is 0", "even number from 2 to 8"}},
      {"heads-not-divisor", "llama.attention.head_count", GgufValue::u32(7), {"head_count is 7", "does not divide llama.embedding_length 64"}},
      {"heads-zero", "llama.attention.head_count", GgufValue::u32(0), {"head_count is 0", "expected 1 .. 64"}},
      {"heads-too-many", "llama.attention.head_count", GgufValue::u32(128), {"head_count is 128", "expected 1 .. 64"}},
      {"kv-not-divisor", "llama.attention.head_count_kv", GgufValue::u32(3), {"head_count_kv is 3", "does not divide llama.attention.head_count 8"}},
      {"kv-vs-attn-k", "llama.attention.head_count_kv", GgufValue::u32(8), {"head_count_kv is 8", "blk.0.attn_k.weight has 32 rows", "8 x 8 = 64"}},
      {"kv-above-heads", "llama.attention.head_count_kv", GgufValue::u32(16), {"head_count_kv is 16", "expected 1 .. 8"}},
      {"embd-vs-tensor", "llama.embedding_length", GgufValue::u32(128), {"embedding_length is 128", "token_embd.weight holds rows of 64 values"}},
      // Values that do not fit an int must not wrap around into plausible ones (2^32 + 64 -> 64).
      {"embd-wraps", "llama.embedding_length", GgufValue::u64((uint64_t{1} << 32) + 64), {"embedding_length is 4294967360", "expected 1 .. 1048576"}},
      {"embd-string", "llama.embedding_length", GgufValue::string("64"), {"embedding_length is a str, expected an integer"}},
      {"blocks-fewer", "llama.block_count", GgufValue::u32(4), {"block_count is 4", "blk.4.", "of block 4"}},
      {"blocks-more", "llama.block_count", GgufValue::u32(6), {"missing tensor blk.5."}},
      {"blocks-zero", "llama.block_count", GgufValue::u32(0), {"block_count is 0", "expected 1 .. 65536"}},
      {"ff-vs-tensor", "llama.feed_forward_length", GgufValue::u32(100), {"feed_forward_length is 100", "blk.0.ffn_gate.weight has 172 rows"}},
      {"ff-missing", "llama.feed_forward_length", std::nullopt, {"missing metadata key llama.feed_forward_length"}},
      {"ctx-zero", "llama.context_length", GgufValue::u32(0), {"context_length is 0", "expected 1 .. 67108864"}},
      {"ctx-huge", "llama.context_length", GgufValue::u64(uint64_t{1} << 40), {"context_length is 1099511627776"}},
      {"vocab-size", "llama.vocab_size", GgufValue::u32(500), {"llama.vocab_size is 500", "token_embd.weight has 512 rows"}},
      {"tokens-fewer", "tokenizer.ggml.tokens", GgufValue::string_array({"a", "b"}), {"tokenizer.ggml.tokens lists 2 tokens", "512 rows"}},
      {"eps-nan", "llama.attention.layer_norm_rms_epsilon", GgufValue::f32(static_cast<float>(nan)), {"layer_norm_rms_epsilon is nan", "finite number greater than 0"}},
      {"eps-inf", "llama.attention.layer_norm_rms_epsilon", GgufValue::f64(inf), {"layer_norm_rms_epsilon is inf"}},
      {"eps-zero", "llama.attention.layer_norm_rms_epsilon", GgufValue::f32(0.0f), {"layer_norm_rms_epsilon is 0"}},
      {"eps-negative", "llama.attention.layer_norm_rms_epsilon", GgufValue::f32(-1e-5f), {"layer_norm_rms_epsilon is -1e-05"}},
      {"eps-string", "llama.attention.layer_norm_rms_epsilon", GgufValue::string("1e-5"), {"layer_norm_rms_epsilon is a str, expected a number"}},
      {"base-negative", "llama.rope.freq_base", GgufValue::f32(-10000.0f), {"freq_base is -10000", "finite number greater than 0"}},
      {"base-nan", "llama.rope.freq_base", GgufValue::f32(static_cast<float>(nan)), {"freq_base is nan"}},
      // Finite as a double, infinite as the float the engine uses.
      {"base-overflows-float", "llama.rope.freq_base", GgufValue::f64(1e300), {"freq_base is 1e+300"}},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    const auto path = variant(c.name, {{c.key, c.value}});
    const std::string what = load_error(path);
    ASSERT_FALSE(what.empty()) << c.name << " was accepted";
    EXPECT_NE(what.find(path.string()), std::string::npos) << "the file is not named: " << what;
    for (const char* part : c.expect) EXPECT_NE(what.find(part), std::string::npos) << what;
  }
  // The output head must match the vocabulary of the embedding.
  const auto out = variant("output-shape", {}, std::vector<int64_t>{64, 256});
  EXPECT_REFUSED(out, false, "output.weight has shape [64, 256], expected [64, 512]");
  // Optional keys fall back to their defaults.
  const auto defaults = variant("defaults", {{"llama.rope.dimension_count", std::nullopt},
                                             {"llama.context_length", std::nullopt},
                                             {"llama.attention.head_count_kv", std::nullopt},
                                             {"llama.attention.layer_norm_rms_epsilon", std::nullopt}});
  // head_count_kv defaults to head_count (8), which disagrees with attn_k's 32 rows here.
  EXPECT_REFUSED(defaults, false, "head_count_kv is 8");
  const auto defaults_kv = variant("defaults-kv", {{"llama.rope.dimension_count", std::nullopt},
                                                   {"llama.context_length", std::nullopt},
                                                   {"llama.attention.layer_norm_rms_epsilon", std::nullopt}});
  const GgufFile f = GgufFile::open(defaults_kv);
  const LlamaModel m(f);
  EXPECT_EQ(m.hparams().n_rot, 8);
  EXPECT_EQ(m.hparams().n_ctx_train, 2048);
  EXPECT_FLOAT_EQ(m.hparams().rms_eps, 1e-5f);
}

// Issue 12, case 2: a byte token spelled <0x-F> made the tokenizer write byte_tokens_[-15].
TEST(ModelValidation, ByteTokenWithASignIsRefused) {
  std::vector<uint8_t> b = test::read_bytes(bundled_model());
  const size_t at = test::GgufHeaderWalker(b).value_offset("tokenizer.ggml.tokens", 4);
  ASSERT_EQ(std::string(b.begin() + static_cast<ptrdiff_t>(at), b.begin() + static_cast<ptrdiff_t>(at) + 6), "<0x01>");
  b[at + 3] = '-';
  b[at + 4] = 'F';
  const auto path = work_dir() / "byte-minus.gguf";
  test::write_bytes(path, b);
  EXPECT_REFUSED(path, true, "token 4 '<0x-F>' is a byte token", "<0xHH> with two hex digits");
  const auto r = test::run_cli(fmt::format("generate '{}' -p 'Once upon a time' -n 2 -t 1", path.string()));
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("'<0x-F>' is a byte token"), std::string::npos) << r.output;
  // Not hex: a message, not a bare "stoi".
  b[at + 3] = 'Z';
  b[at + 4] = 'Z';
  test::write_bytes(path, b);
  EXPECT_REFUSED(path, true, "token 4 '<0xZZ>' is a byte token");
}

TEST(ModelValidation, TokenizerMetadataIsCheckedAgainstTheVocabulary) {
  const GgufFile src = GgufFile::open(bundled_model());
  const auto& tokens = src.find("tokenizer.ggml.tokens")->as_array();
  ASSERT_EQ(tokens.size(), 512u);
  auto floats = [](size_t n) { return GgufValue::array(GgufValueType::FLOAT32, std::vector<GgufValue>(n, GgufValue::f32(0))); };
  auto ints = [](size_t n) { return GgufValue::array(GgufValueType::INT32, std::vector<GgufValue>(n, GgufValue::i32(1))); };
  struct Case {
    std::string name, key;
    std::optional<GgufValue> value;
    std::vector<const char*> expect;
  };
  const std::vector<Case> cases = {
      {"scores-short", "tokenizer.ggml.scores", floats(511), {"tokenizer.ggml.scores has 511 entries", "tokenizer.ggml.tokens has 512"}},
      {"scores-long", "tokenizer.ggml.scores", floats(513), {"tokenizer.ggml.scores has 513 entries"}},
      {"scores-strings", "tokenizer.ggml.scores", GgufValue::string_array(std::vector<std::string>(512, "x")), {"tokenizer.ggml.scores[0] is a str, expected numbers"}},
      {"types-short", "tokenizer.ggml.token_type", ints(3), {"tokenizer.ggml.token_type has 3 entries"}},
      {"tokens-not-strings", "tokenizer.ggml.tokens", ints(512), {"tokenizer.ggml.tokens[0] is a i32", "expected strings"}},
      {"tokens-scalar", "tokenizer.ggml.tokens", GgufValue::u32(3), {"tokenizer.ggml.tokens is a u32, expected an array"}},
      {"tokens-empty", "tokenizer.ggml.tokens", GgufValue::string_array({}), {"tokenizer.ggml.tokens is empty"}},
      {"model-not-string", "tokenizer.ggml.model", GgufValue::u32(1), {"tokenizer.ggml.model is a u32, expected a string"}},
      {"bos-out-of-range", "tokenizer.ggml.bos_token_id", GgufValue::u32(512), {"bos_token_id is 512", "expected an id from 0 to 511"}},
      {"unk-negative", "tokenizer.ggml.unknown_token_id", GgufValue::i32(-5), {"unknown_token_id is -5"}},
      {"eos-string", "tokenizer.ggml.eos_token_id", GgufValue::string("2"), {"eos_token_id is a str, expected a token id"}},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    const auto path = variant("tok-" + c.name, {{c.key, c.value}});
    const std::string what = load_error(path, true);
    ASSERT_FALSE(what.empty()) << c.name << " was accepted";
    EXPECT_NE(what.find(path.string()), std::string::npos) << "the file is not named: " << what;
    for (const char* part : c.expect) EXPECT_NE(what.find(part), std::string::npos) << what;
  }
  // "None" spelled as -1 or as the u32 0xFFFFFFFF is accepted.
  const Tokenizer none = Tokenizer::from_gguf(GgufFile::open(variant(
      "tok-none", {{"tokenizer.ggml.padding_token_id", GgufValue::i32(-1)}, {"tokenizer.ggml.eos_token_id", GgufValue::u32(0xFFFFFFFFu)}})));
  EXPECT_EQ(none.pad(), -1);
  EXPECT_EQ(none.eos(), -1);
}

// Small vocabularies written from scratch: missing byte tokens, merges naming unknown tokens.
std::filesystem::path tiny_vocab(const std::string& name, const std::string& model, const std::vector<std::string>& tokens,
                                 const std::vector<std::pair<std::string, GgufValue>>& extra = {}) {
  const auto path = work_dir() / (name + ".gguf");
  GgufWriter w(path);
  w.set("tokenizer.ggml.model", GgufValue::string(model));
  w.set("tokenizer.ggml.tokens", GgufValue::string_array(tokens));
  for (const auto& [k, v] : extra) w.set(k, v);
  w.finish();
  return path;
}

TEST(ModelValidation, TinyVocabulariesNeverEmitInvalidIds) {
  // SentencePiece without byte tokens and without an unknown token (the default id 0 is a normal
  // token here, so name none): a character outside the vocabulary is dropped, never emitted as -1.
  const Tokenizer spm = Tokenizer::from_gguf(GgufFile::open(tiny_vocab(
      "spm-no-bytes", "llama", {"\xe2\x96\x81", "a", "\xe2\x96\x81" "a"},
      {{"tokenizer.ggml.unknown_token_id", GgufValue::i32(-1)}, {"tokenizer.ggml.add_bos_token", GgufValue::boolean(false)}})));
  EXPECT_EQ(spm.bos(), 1);  // the default id 1 exists
  EXPECT_EQ(spm.eos(), 2);
  EXPECT_EQ(spm.encode("a", false), (std::vector<int32_t>{2}));
  EXPECT_EQ(spm.encode("aq", false), (std::vector<int32_t>{2}));
  // A one-token vocabulary: the SentencePiece defaults (bos 1, eos 2) do not exist, so none.
  const Tokenizer one = Tokenizer::from_gguf(GgufFile::open(tiny_vocab("spm-one", "llama", {"a"})));
  EXPECT_EQ(one.bos(), -1);
  EXPECT_EQ(one.eos(), -1);
  EXPECT_EQ(one.unk(), 0);
  for (int32_t id : one.encode("ab c", true)) EXPECT_TRUE(id >= 0 && id < 1) << id;
  // GPT-2: merges naming pieces that are not tokens are skipped; malformed merges too.
  const Tokenizer bpe = Tokenizer::from_gguf(GgufFile::open(tiny_vocab(
      "bpe-unknown-merges", "gpt2", {"a", "b", "ab"},
      {{"tokenizer.ggml.merges", GgufValue::string_array({"x y", "a zz", "", " ", "nospace", "a b"})}})));
  EXPECT_EQ(bpe.encode("ab", false), (std::vector<int32_t>{2}));
  EXPECT_EQ(bpe.encode("abc", false), (std::vector<int32_t>{2}));  // 'c' has no token: dropped
  try {
    Tokenizer::from_gguf(GgufFile::open(
        tiny_vocab("bpe-merges-ints", "gpt2", {"a"}, {{"tokenizer.ggml.merges", GgufValue::array(GgufValueType::UINT8, {GgufValue::u8(1)})}})));
    FAIL() << "merges that are not strings were accepted";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("tokenizer.ggml.merges[0] is a u8"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace mixq
