// The reference LLaMA forward pass on the real stories260K model.
#include "mixq/engine/llama_model.h"
#include "mixq/engine/tokenizer.h"
#include "test_support.h"

namespace mixq {
namespace {

TEST(LlamaEngine, Stories260KGreedyTextMatchesTheKnownText) {
  MIXQ_REQUIRE_SHARED("stories260K/stories260K-f32.llamacpp.gguf");
  const GgufFile f = GgufFile::open(test::shared_data_dir() / "stories260K/stories260K-f32.llamacpp.gguf");
  const LlamaModel model(f);
  const Tokenizer tok = Tokenizer::from_gguf(f);
  LlamaContext ctx(model, 256, 2);
  std::vector<int32_t> ids = tok.encode("Once upon a time", true);
  std::string text = tok.decode(ids);
  const std::string expected =
      "Once upon a time, there was a little girl named Lily. She loved to play outside in the park. One day, "
      "she saw a big, red ball. She wanted to play with it, but it was too high.";
  std::vector<int32_t> batch = ids;
  while (text.size() < expected.size() + 1) {
    const auto& logits = ctx.eval(batch, false);
    const int32_t next = static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
    if (next == tok.eos()) break;
    text += tok.decode_token(next);
    batch = {next};
  }
  // The decoded text starts with SentencePiece's space.
  EXPECT_EQ(text.substr(1, expected.size()), expected);
}

}  // namespace
}  // namespace mixq
