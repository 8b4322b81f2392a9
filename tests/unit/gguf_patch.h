// Byte offsets of metadata values inside a GGUF file, found by walking the header with a few
// lines of independent code (not mixq's reader), so tests can damage one value the way a bad
// converter or a flipped byte would and check that mixq refuses the file.
#pragma once

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace mixq::test {

inline std::vector<uint8_t> read_bytes(const std::filesystem::path& p) {
  std::ifstream f(p, std::ios::binary);
  if (!f) throw std::runtime_error("cannot open " + p.string());
  return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

inline void write_bytes(const std::filesystem::path& p, const std::vector<uint8_t>& b) {
  std::ofstream f(p, std::ios::binary | std::ios::trunc);
  f.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
  if (!f) throw std::runtime_error("cannot write " + p.string());
}

class GgufHeaderWalker {
 public:
  explicit GgufHeaderWalker(const std::vector<uint8_t>& b) : b_(b) {}

  // Offset of the value of `key` (for an array, of element `elem`; for a string element, of its
  // first character). Throws when the key or element is absent.
  size_t value_offset(std::string_view key, int64_t elem = -1) {
    pos_ = 16;
    const uint64_t n_kv = u64();
    for (uint64_t i = 0; i < n_kv; ++i) {
      const uint64_t len = u64();
      const std::string k(reinterpret_cast<const char*>(b_.data() + pos_), len);
      pos_ += len;
      const uint32_t type = u32();
      if (k == key) {
        if (elem < 0) return pos_;
        if (type != kArray) throw std::runtime_error(std::string(key) + " is not an array");
        const uint32_t elem_type = u32();
        const uint64_t count = u64();
        if (static_cast<uint64_t>(elem) >= count) throw std::runtime_error(std::string(key) + ": no such element");
        for (int64_t j = 0; j < elem; ++j) skip(elem_type);
        if (elem_type == kString) pos_ += 8;
        return pos_;
      }
      skip(type);
    }
    throw std::runtime_error("no key " + std::string(key));
  }

 private:
  static constexpr uint32_t kString = 8, kArray = 9;
  uint64_t u64() {
    uint64_t v;
    std::memcpy(&v, b_.data() + pos_, 8);
    pos_ += 8;
    return v;
  }
  uint32_t u32() {
    uint32_t v;
    std::memcpy(&v, b_.data() + pos_, 4);
    pos_ += 4;
    return v;
  }
  void skip(uint32_t type) {
    static constexpr size_t kScalarBytes[13] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};
    if (type == kString) {
      pos_ += u64();
    } else if (type == kArray) {
      const uint32_t elem_type = u32();
      const uint64_t count = u64();
      for (uint64_t j = 0; j < count; ++j) skip(elem_type);
    } else if (type < 13) {
      pos_ += kScalarBytes[type];
    } else {
      throw std::runtime_error("unknown value type " + std::to_string(type));
    }
  }
  const std::vector<uint8_t>& b_;
  size_t pos_ = 0;
};

}  // namespace mixq::test
