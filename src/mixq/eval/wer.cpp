#include "mixq/eval/wer.h"

#include <algorithm>

namespace mixq {

std::vector<std::string> wer_words(const std::string& text) {
  std::vector<std::string> words;
  std::string cur;
  for (const char ch : text) {
    const auto c = static_cast<unsigned char>(ch);
    if (c >= 0x80 || (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z')) {
      cur += static_cast<char>(c);
    } else if (c >= 'A' && c <= 'Z') {
      cur += static_cast<char>(c - 'A' + 'a');
    } else if (c == '\'') {
      continue;  // inside a word: "don't" is one word
    } else if (!cur.empty()) {
      words.push_back(std::move(cur));
      cur.clear();
    }
  }
  if (!cur.empty()) words.push_back(std::move(cur));
  return words;
}

double WordErrors::rate() const {
  if (reference_words == 0) return static_cast<double>(errors());
  return static_cast<double>(errors()) / static_cast<double>(reference_words);
}

WordErrors& WordErrors::operator+=(const WordErrors& o) {
  substitutions += o.substitutions;
  deletions += o.deletions;
  insertions += o.insertions;
  reference_words += o.reference_words;
  return *this;
}

WordErrors word_errors(const std::vector<std::string>& ref, const std::vector<std::string>& hyp) {
  // Cost of an alignment: (edits, deletions + insertions), compared lexicographically, so among the
  // shortest edit scripts the one with the most substitutions wins.
  struct Cell {
    int64_t edits = 0, gaps = 0, sub = 0, del = 0, ins = 0;
    bool operator<(const Cell& o) const { return edits != o.edits ? edits < o.edits : gaps < o.gaps; }
  };
  const size_t n = ref.size(), m = hyp.size();
  std::vector<Cell> prev(m + 1), row(m + 1);
  for (size_t j = 0; j <= m; ++j) prev[j] = {static_cast<int64_t>(j), static_cast<int64_t>(j), 0, 0, static_cast<int64_t>(j)};
  for (size_t i = 1; i <= n; ++i) {
    row[0] = prev[0];
    ++row[0].edits, ++row[0].gaps, ++row[0].del;
    for (size_t j = 1; j <= m; ++j) {
      Cell diag = prev[j - 1];
      if (ref[i - 1] != hyp[j - 1]) ++diag.edits, ++diag.sub;
      Cell del = prev[j];
      ++del.edits, ++del.gaps, ++del.del;
      Cell ins = row[j - 1];
      ++ins.edits, ++ins.gaps, ++ins.ins;
      row[j] = std::min({diag, del, ins});
    }
    std::swap(prev, row);
  }
  WordErrors e;
  e.substitutions = prev[m].sub;
  e.deletions = prev[m].del;
  e.insertions = prev[m].ins;
  e.reference_words = static_cast<int64_t>(n);
  return e;
}

WordErrors word_errors(const std::string& reference, const std::string& hypothesis) {
  return word_errors(wer_words(reference), wer_words(hypothesis));
}

}  // namespace mixq
