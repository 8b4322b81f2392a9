// Bounds-checked little-endian reading of a byte span, for the small binary formats mixq reads
// besides GGUF (rwkv.cpp models, llama2.c tokenizers, legacy imatrix files). Every overrun or
// explicit fail() throws std::runtime_error as "<context>: <what> (at byte N)".
#pragma once

#include <cstdint>
#include <cstring>
#include <span>
#include <stdexcept>
#include <string>

#include <fmt/format.h>

namespace mixq {

class ByteCursor {
 public:
  // context: what the bytes should be, e.g. "model.bin: not a valid rwkv.cpp model".
  ByteCursor(std::span<const uint8_t> bytes, std::string context) : b_(bytes), context_(std::move(context)) {}

  size_t pos() const { return pos_; }
  size_t remaining() const { return b_.size() - pos_; }
  bool at_end() const { return pos_ == b_.size(); }

  [[noreturn]] void fail(const std::string& what) const {
    throw std::runtime_error(fmt::format("{}: {} (at byte {})", context_, what, pos_));
  }

  template <typename T>
  T read(const char* what = "a number") {
    if (remaining() < sizeof(T)) fail(fmt::format("truncated: the file ends inside {}", what));
    T v;
    std::memcpy(&v, b_.data() + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }

  // The next n bytes, as a view.
  std::span<const uint8_t> take(size_t n, const char* what) {
    if (remaining() < n) fail(fmt::format("truncated: {} needs {} bytes, {} left", what, n, remaining()));
    const auto s = b_.subspan(pos_, n);
    pos_ += n;
    return s;
  }

  std::string take_string(size_t n, const char* what) {
    const auto s = take(n, what);
    return {reinterpret_cast<const char*>(s.data()), s.size()};
  }

 private:
  std::span<const uint8_t> b_;
  std::string context_;
  size_t pos_ = 0;
};

}  // namespace mixq
