// Word error rate, as speech-recognition evaluations report it: the fewest word substitutions,
// deletions and insertions that turn the reference into the hypothesis (Levenshtein distance over
// words), divided by the number of reference words, after both texts are normalized.
//
// Normalization (the basic English form of Whisper's evaluations; documented so figures can be
// reproduced by hand): ASCII letters lower-cased; apostrophes removed ("don't" -> "dont", "Kennedy's"
// -> "kennedys"); every other ASCII character that is not a letter or a digit (punctuation, symbols,
// hyphens, whitespace) separates words; digits and non-ASCII bytes (UTF-8 letters) are kept as they
// are, so numbers are not spelled out ("1960" and "nineteen sixty" differ).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace mixq {

// The normalized words of a text.
std::vector<std::string> wer_words(const std::string& text);

struct WordErrors {
  int64_t substitutions = 0, deletions = 0, insertions = 0, reference_words = 0;
  int64_t errors() const { return substitutions + deletions + insertions; }
  // errors / reference words (0 when both are empty; errors / 0 is reported as errors, i.e. the
  // insertions of a hypothesis for an empty reference count one each).
  double rate() const;
  WordErrors& operator+=(const WordErrors& o);
};

// Word errors of the hypothesis against the reference (both normalized first). Of the alignments
// with the fewest edits, the counts are those of one with the most substitutions (fewest
// deletions + insertions), so "a b" -> "c" is one substitution and one deletion, never two
// deletions and one insertion.
WordErrors word_errors(const std::string& reference, const std::string& hypothesis);
WordErrors word_errors(const std::vector<std::string>& reference, const std::vector<std::string>& hypothesis);

}  // namespace mixq
