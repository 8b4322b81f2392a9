#include "mixq/engine/unicode.h"

#include <algorithm>
#include <array>

namespace mixq::unicode {

namespace {

CodePointClass classify_slow(uint32_t cp) {
  if (cp > 0x10FFFF) return CodePointClass::kOther;
  const detail::ClassRun* end = detail::kClassRuns + detail::kClassRunCount;
  const detail::ClassRun* it =
      std::upper_bound(detail::kClassRuns, end, cp, [](uint32_t v, const detail::ClassRun& r) { return v < r.first; });
  return (it - 1)->cls;  // the table starts at U+0000, so `it` is never the first entry
}

// Latin-1 goes through a table: almost every code point of most texts is there.
const std::array<CodePointClass, 256>& latin1_classes() {
  static const std::array<CodePointClass, 256> table = [] {
    std::array<CodePointClass, 256> t{};
    for (uint32_t cp = 0; cp < 256; ++cp) t[cp] = classify_slow(cp);
    return t;
  }();
  return table;
}

struct ByteAlphabet {
  std::array<uint32_t, 256> to_cp{};
  std::array<std::string, 256> piece;
  int from_cp[0x144];  // code points U+0000..U+0143 cover the whole alphabet
};

const ByteAlphabet& byte_alphabet() {
  static const ByteAlphabet a = [] {
    ByteAlphabet t;
    std::fill(std::begin(t.from_cp), std::end(t.from_cp), -1);
    uint32_t next = 0x100;
    for (uint32_t b = 0; b < 256; ++b) {
      const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      t.to_cp[b] = printable ? b : next++;
      t.from_cp[t.to_cp[b]] = static_cast<int>(b);
      append_utf8(t.piece[b], t.to_cp[b]);
    }
    return t;
  }();
  return a;
}

bool is_continuation(unsigned char c) { return (c & 0xC0) == 0x80; }

}  // namespace

CodePointClass classify(uint32_t cp) { return cp < 256 ? latin1_classes()[cp] : classify_slow(cp); }

std::vector<CodePoint> decode_utf8(std::string_view text) {
  std::vector<CodePoint> out;
  out.reserve(text.size());
  const auto* s = reinterpret_cast<const unsigned char*>(text.data());
  const size_t n = text.size();
  for (size_t at = 0; at < n;) {
    const unsigned char c = s[at];
    uint32_t size = 0, cp = 0;
    if (c < 0x80) {
      size = 1, cp = c;
    } else if ((c & 0xE0) == 0xC0) {
      size = 2, cp = c & 0x1Fu;
    } else if ((c & 0xF0) == 0xE0) {
      size = 3, cp = c & 0x0Fu;
    } else if ((c & 0xF8) == 0xF0) {
      size = 4, cp = c & 0x07u;
    }
    bool ok = size > 0 && at + size <= n;
    for (uint32_t k = 1; ok && k < size; ++k) {
      ok = is_continuation(s[at + k]);
      cp = (cp << 6) | (s[at + k] & 0x3Fu);
    }
    // Well-formed means the shortest encoding, and no surrogates or values past U+10FFFF.
    static constexpr uint32_t kMinForSize[5] = {0, 0, 0x80, 0x800, 0x10000};
    ok = ok && cp >= kMinForSize[size] && cp <= 0x10FFFF && !(cp >= 0xD800 && cp <= 0xDFFF);
    if (!ok) {
      out.push_back({c, static_cast<uint32_t>(at), 1, CodePointClass::kOther});
      ++at;
      continue;
    }
    out.push_back({cp, static_cast<uint32_t>(at), size, classify(cp)});
    at += size;
  }
  return out;
}

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

uint32_t byte_to_code_point(uint8_t b) { return byte_alphabet().to_cp[b]; }

int code_point_to_byte(uint32_t cp) { return cp < 0x144 ? byte_alphabet().from_cp[cp] : -1; }

const std::string& byte_piece(uint8_t b) { return byte_alphabet().piece[b]; }

std::vector<Piece> split_gpt2(const std::vector<CodePoint>& cps, const std::vector<Piece>& pieces) {
  // The pattern sees letters, numbers, whitespace and "the rest" (punctuation included).
  enum Kind { kRest, kLetter, kNumber, kSpace };
  auto kind = [&](uint32_t i) {
    switch (cps[i].cls) {
      case CodePointClass::kLetter: return kLetter;
      case CodePointClass::kNumber: return kNumber;
      case CodePointClass::kWhitespace: return kSpace;
      default: return kRest;
    }
  };
  std::vector<Piece> out;
  out.reserve(pieces.size() * 2);
  for (const Piece& p : pieces) {
    for (uint32_t i = p.begin; i < p.end;) {
      const uint32_t c = cps[i].value;
      // 's|'t|'re|'ve|'m|'ll|'d  (ASCII, case-sensitive). They come first in the alternation, so
      // they win over ' being the start of a punctuation run.
      if (c == '\'' && i + 1 < p.end) {
        const uint32_t c1 = cps[i + 1].value;
        const uint32_t c2 = i + 2 < p.end ? cps[i + 2].value : 0;
        uint32_t len = 0;
        if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd') {
          len = 2;
        } else if ((c1 == 'r' && c2 == 'e') || (c1 == 'v' && c2 == 'e') || (c1 == 'l' && c2 == 'l')) {
          len = 3;
        }
        if (len > 0) {
          out.push_back({i, i + len});
          i += len;
          continue;
        }
      }
      //  ?\p{L}+ |  ?\p{N}+ |  ?[^\s\p{L}\p{N}]+ : an optional ASCII space, then a run of one kind.
      const uint32_t head = (c == ' ' && i + 1 < p.end) ? i + 1 : i;
      const Kind k = kind(head);
      if (k != kSpace) {
        uint32_t j = head + 1;
        while (j < p.end && kind(j) == k) ++j;
        out.push_back({i, j});
        i = j;
        continue;
      }
      // \s+(?!\S) | \s+ : a whitespace run. When something other than whitespace follows, the run
      // gives back its last code point, which then starts the next match (usually " word").
      uint32_t j = i + 1;
      while (j < p.end && kind(j) == kSpace) ++j;
      if (j < p.end && j - i > 1) --j;
      out.push_back({i, j});
      i = j;
    }
  }
  return out;
}

std::vector<Piece> split_digit_triples(const std::vector<CodePoint>& cps, const std::vector<Piece>& pieces) {
  auto digit = [&](uint32_t i) { return cps[i].value >= '0' && cps[i].value <= '9'; };
  std::vector<Piece> out;
  out.reserve(pieces.size());
  for (const Piece& p : pieces) {
    uint32_t gap = p.begin;
    for (uint32_t i = p.begin; i + 3 <= p.end;) {
      if (digit(i) && digit(i + 1) && digit(i + 2)) {
        if (gap < i) out.push_back({gap, i});
        out.push_back({i, i + 3});
        gap = i = i + 3;
      } else {
        ++i;
      }
    }
    if (gap < p.end) out.push_back({gap, p.end});
  }
  return out;
}

}  // namespace mixq::unicode
