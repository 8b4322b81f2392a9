// Unicode helpers for the byte-level BPE tokenizer: UTF-8 decoding that never fails, the code point
// classes the pre-tokenizer regexes use (\p{L}, \p{N}, \p{P}, \s), the GPT-2 byte <-> code point
// mapping, and the pre-tokenizer passes themselves.
//
// Pre-tokenizers are written by hand instead of with a regex engine: the GPT-2 pattern needs the
// lookahead \s+(?!\S), which neither std::regex (no \p{..}) nor RE2 (no lookahead) can express.
// A pre-tokenizer is a list of passes; each pass cuts every piece the previous pass produced, so a
// match never crosses an earlier cut (the way llama.cpp chains its regex lists).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace mixq::unicode {

enum class CodePointClass : uint8_t { kOther, kLetter, kNumber, kPunctuation, kWhitespace };

// The class of a code point (kOther for unassigned ones and anything above U+10FFFF).
CodePointClass classify(uint32_t cp);

struct CodePoint {
  uint32_t value;  // the decoded code point, or the byte itself for an invalid byte
  uint32_t offset;  // byte offset in the text
  uint32_t size;    // bytes (1 for an invalid byte)
  CodePointClass cls;
};

// Decodes UTF-8 without failing: a byte that does not start a well-formed sequence (lead byte, the
// right number of continuation bytes, shortest form, no surrogate, at most U+10FFFF) is a code point
// of its own, of class kOther, so text is never lost and every byte stays where it was.
std::vector<CodePoint> decode_utf8(std::string_view text);

// Appends the UTF-8 encoding of a code point (U+0000..U+10FFFF).
void append_utf8(std::string& out, uint32_t cp);

// GPT-2's byte-level alphabet: printable bytes ('!'..'~', U+00A1..U+00AC, U+00AE..U+00FF) stand for
// themselves; the other 68 bytes, in increasing order, become U+0100, U+0101, ...
uint32_t byte_to_code_point(uint8_t b);
// The inverse: the byte a code point stands for, or -1 when it is not in the alphabet.
int code_point_to_byte(uint32_t cp);
// The UTF-8 text of byte_to_code_point(b).
const std::string& byte_piece(uint8_t b);

// Pre-tokenizer passes. A piece is a half-open range [begin, end) of indices into the code points.
struct Piece {
  uint32_t begin, end;
};

// The GPT-2 pattern  's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
// applied within each piece.
std::vector<Piece> split_gpt2(const std::vector<CodePoint>& cps, const std::vector<Piece>& pieces);

// Keeps every match of a one-code-point class as a piece and the text between matches as pieces
// too. `runs`: a match is a maximal run ([..]+); otherwise every code point is its own match.
template <typename Pred>
std::vector<Piece> isolate(const std::vector<CodePoint>& cps, const std::vector<Piece>& pieces, Pred in_class,
                           bool runs) {
  std::vector<Piece> out;
  out.reserve(pieces.size());
  for (const Piece& p : pieces) {
    uint32_t gap = p.begin;
    for (uint32_t i = p.begin; i < p.end;) {
      if (!in_class(cps[i])) {
        ++i;
        continue;
      }
      uint32_t j = i + 1;
      if (runs) {
        while (j < p.end && in_class(cps[j])) ++j;
      }
      if (gap < i) out.push_back({gap, i});
      out.push_back({i, j});
      gap = i = j;
    }
    if (gap < p.end) out.push_back({gap, p.end});
  }
  return out;
}

// [0-9][0-9][0-9]: cuts three ASCII digits in a row out of each piece (leftmost first).
std::vector<Piece> split_digit_triples(const std::vector<CodePoint>& cps, const std::vector<Piece>& pieces);

namespace detail {
struct ClassRun {
  uint32_t first;  // first code point of the run; the run ends where the next one starts
  CodePointClass cls;
};
extern const ClassRun kClassRuns[];  // sorted, starting at U+0000 (unicode_data.cpp, generated)
extern const size_t kClassRunCount;
}  // namespace detail

}  // namespace mixq::unicode
