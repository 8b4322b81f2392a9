// Word error rate (eval/wer.h), the test-set list and the per-position comparison of the Whisper
// evaluation (eval/whisper_eval.h). The end-to-end run on a real model is in
// tests/python/test_whisper_eval.py.
#include <cmath>
#include <filesystem>
#include <fstream>

#include <fmt/format.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include "mixq/eval/wer.h"
#include "mixq/eval/whisper_eval.h"

namespace mixq {
namespace {

namespace fs = std::filesystem;

using Words = std::vector<std::string>;

TEST(Wer, NormalizesCasePunctuationAndApostrophes) {
  EXPECT_EQ(wer_words("And so, my fellow Americans: ask not!"),
            (Words{"and", "so", "my", "fellow", "americans", "ask", "not"}));
  EXPECT_EQ(wer_words("Don't stop -- Kennedy's speech (1961)."), (Words{"dont", "stop", "kennedys", "speech", "1961"}));
  EXPECT_EQ(wer_words("vise-like grip"), (Words{"vise", "like", "grip"}));
  EXPECT_EQ(wer_words("  \t\n ...  "), Words{});
  EXPECT_EQ(wer_words("caf\xC3\xA9 au lait"), (Words{"caf\xC3\xA9", "au", "lait"}));  // UTF-8 kept
  EXPECT_EQ(wer_words("3.5 km"), (Words{"3", "5", "km"}));                            // numbers as they are
}

// Hand-checked: each expected count is the minimal edit script written out.
TEST(Wer, CountsSubstitutionsDeletionsAndInsertions) {
  auto check = [](const char* ref, const char* hyp, int64_t s, int64_t d, int64_t i, int64_t n) {
    const WordErrors e = word_errors(ref, hyp);
    EXPECT_EQ(e.substitutions, s) << ref << " | " << hyp;
    EXPECT_EQ(e.deletions, d) << ref << " | " << hyp;
    EXPECT_EQ(e.insertions, i) << ref << " | " << hyp;
    EXPECT_EQ(e.reference_words, n) << ref << " | " << hyp;
  };
  check("the cat sat", "The cat sat.", 0, 0, 0, 3);
  check("the cat sat", "the bat sat", 1, 0, 0, 3);                   // cat -> bat
  check("the cat sat on the mat", "the cat on the mat", 0, 1, 0, 6);  // sat deleted
  check("the cat sat", "the cat sat down", 0, 0, 1, 3);              // down inserted
  check("a b", "c", 1, 1, 0, 2);                                      // one substitution, not 2 del + 1 ins
  check("a b c d", "b c d e", 0, 1, 1, 4);                            // shift: delete a, insert e
  check("one two three", "", 0, 3, 0, 3);
  check("", "four five", 0, 0, 2, 0);
  check("ask not what your country can do for you", "ask what your country can do for you too", 0, 1, 1, 9);
}

TEST(Wer, RatesAndSums) {
  WordErrors e = word_errors("a b c d", "a x c");  // x for b, d deleted
  EXPECT_EQ(e.errors(), 2);
  EXPECT_DOUBLE_EQ(e.rate(), 0.5);
  e += word_errors("e f", "e f g");
  EXPECT_EQ(e.errors(), 3);
  EXPECT_EQ(e.reference_words, 6);
  EXPECT_DOUBLE_EQ(e.rate(), 0.5);
  EXPECT_DOUBLE_EQ(word_errors("", "").rate(), 0.0);
  EXPECT_DOUBLE_EQ(word_errors("a", "b c d").rate(), 3.0);  // WER can exceed 1
}

TEST(WhisperEval, ComparesLogitRowsAsKlDivergence) {
  const int n = 5;
  const std::vector<float> base = {1, 2, 3, 0, -1, 0, 0, 0, 0, 4};
  KldTokens same;
  compare_logit_rows(base.data(), base.data(), {2, 4}, n, same);
  ASSERT_EQ(same.size(), 2u);
  EXPECT_EQ(same.kld[0], 0.0);
  EXPECT_EQ(same.kld[1], 0.0);
  EXPECT_EQ(same.same_top[0], 1);
  EXPECT_EQ(same.delta_p[1], 0.0);
  // A uniform model against row 0: KL = sum p log p + log 5; NLL of token 2 = log 5.
  const std::vector<float> uniform(10, 0.0f);
  KldTokens t;
  compare_logit_rows(base.data(), uniform.data(), {2, 4}, n, t);
  double z = 0, plogp = 0;
  for (int v = 0; v < n; ++v) z += std::exp(base[v]);
  for (int v = 0; v < n; ++v) {
    const double p = std::exp(base[v]) / z;
    plogp += p * std::log(p);
  }
  EXPECT_NEAR(t.kld[0], plogp + std::log(5.0), 1e-6);
  EXPECT_NEAR(t.nll_model[0], std::log(5.0), 1e-12);
  EXPECT_NEAR(t.nll_base[0], std::log(z) - 3.0, 1e-6);
  EXPECT_EQ(t.same_top[0], 0);  // argmax 2 vs 0 (the first of equal values)
  EXPECT_GT(t.kld[1], 0.0);
}

TEST(WhisperEval, ReadsTestSetListsAndRefusesBadOnes) {
  const fs::path dir = fs::temp_directory_path() / fmt::format("mixq-whisper-eval-{}", ::getpid());
  fs::create_directories(dir);
  std::ofstream(dir / "a.wav") << "x";
  auto write = [&](const std::string& text) {
    std::ofstream(dir / "list.tsv") << text;
    return dir / "list.tsv";
  };
  auto error_of = [](const fs::path& p) {
    try {
      read_whisper_test_set(p);
    } catch (const std::exception& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  const auto items = read_whisper_test_set(write("# comment\n\na.wav\tHello there.\r\n" + (dir / "a.wav").string() +
                                                 "\tAgain.\n"));
  ASSERT_EQ(items.size(), 2u);
  EXPECT_EQ(items[0].audio, dir / "a.wav");
  EXPECT_EQ(items[0].reference, "Hello there.");
  EXPECT_EQ(items[1].audio, dir / "a.wav");
  EXPECT_NE(error_of(write("a.wav Hello\n")).find("list.tsv:1: expected AUDIO.wav<TAB>reference"), std::string::npos);
  EXPECT_NE(error_of(write("a.wav\t...\n")).find("list.tsv:1: the reference text has no words"), std::string::npos);
  EXPECT_NE(error_of(write("\n b.wav\tHi\n")).find("list.tsv:2: no audio file"), std::string::npos);
  EXPECT_NE(error_of(write("# nothing\n")).find("holds no utterances"), std::string::npos);
  EXPECT_NE(error_of(dir / "missing.tsv").find("cannot open"), std::string::npos);
  fs::remove_all(dir);
}

}  // namespace
}  // namespace mixq
