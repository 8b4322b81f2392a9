// Tokenizers against llama.cpp's own test vectors (../shared/data/gguf-vocab: .inp texts separated
// by "\n__ggml_vocab_test__\n", .out the expected ids, one line per text).
#include <fstream>
#include <sstream>

#include "mixq/engine/tokenizer.h"
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

TEST(Tokenizer, Stories260KRoundTrip) {
  MIXQ_REQUIRE_SHARED("stories260K/stories260K-f32.llamacpp.gguf");
  const Tokenizer tok =
      Tokenizer::from_gguf(GgufFile::open(test::shared_data_dir() / "stories260K/stories260K-f32.llamacpp.gguf"));
  const std::string text = "Once upon a time, there was a little girl named Lily.";
  const auto ids = tok.encode(text, true);
  ASSERT_FALSE(ids.empty());
  EXPECT_EQ(ids[0], tok.bos());
  EXPECT_EQ(tok.decode(ids), " " + text);  // SentencePiece's leading space comes back
}

}  // namespace
}  // namespace mixq
