// Word errors (eval/wer.h) of reference/hypothesis pairs, for tests/python/test_whisper_eval.py's
// comparison with jiwer: reads `REFERENCE<TAB>HYPOTHESIS` lines on stdin and prints
// `SUBSTITUTIONS DELETIONS INSERTIONS REFERENCE_WORDS` per line.
#include <iostream>
#include <string>

#include "mixq/eval/wer.h"

int main() {
  std::string line;
  while (std::getline(std::cin, line)) {
    const size_t tab = line.find('\t');
    if (tab == std::string::npos) {
      std::cerr << "wer_pairs: expected REFERENCE<TAB>HYPOTHESIS, got: " << line << "\n";
      return 1;
    }
    const mixq::WordErrors e = mixq::word_errors(line.substr(0, tab), line.substr(tab + 1));
    std::cout << e.substitutions << ' ' << e.deletions << ' ' << e.insertions << ' ' << e.reference_words << '\n';
  }
  return 0;
}
