#include "mixq/io/rwkv_vocab.h"

#include <stdexcept>

#include <fmt/format.h>

namespace mixq {

std::string rwkv_escape_token(std::string_view bytes) {
  std::string s;
  for (const char ch : bytes) {
    const auto c = static_cast<unsigned char>(ch);
    if (c == '\\') {
      s += "\\\\";
    } else if (c == '\t') {
      s += "\\t";
    } else if (c == '\n') {
      s += "\\n";
    } else if (c == '\r') {
      s += "\\r";
    } else if (c >= 0x20 && c < 0x7f) {
      s += ch;
    } else {
      s += fmt::format("\\x{:02x}", c);
    }
  }
  return s;
}

std::string rwkv_unescape_token(std::string_view escaped) {
  auto hex = [&](char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    throw std::invalid_argument(fmt::format("bad \\x escape in token '{}'", escaped));
  };
  std::string s;
  for (size_t i = 0; i < escaped.size(); ++i) {
    if (escaped[i] != '\\') {
      s += escaped[i];
      continue;
    }
    if (++i == escaped.size()) throw std::invalid_argument(fmt::format("token '{}' ends in a lone backslash", escaped));
    switch (escaped[i]) {
      case 't': s += '\t'; break;
      case 'n': s += '\n'; break;
      case 'r': s += '\r'; break;
      case 'x':
        if (escaped.size() - i < 3) throw std::invalid_argument(fmt::format("bad \\x escape in token '{}'", escaped));
        s += static_cast<char>(hex(escaped[i + 1]) * 16 + hex(escaped[i + 2]));
        i += 2;
        break;
      default: s += escaped[i]; break;
    }
  }
  return s;
}

}  // namespace mixq
