// The GGUF reader's validation rules, one test each: every malformed file is rejected with a
// GgufError that says what is wrong, and no input crashes the reader. Files are built byte by
// byte here, independently of the writer under test.
#include <cstring>
#include <random>

#include "mixq/io/gguf.h"
#include "test_support.h"

namespace mixq {
namespace {

class Bytes {
 public:
  template <typename T>
  Bytes& put(T v) {
    const auto* p = reinterpret_cast<const uint8_t*>(&v);
    b.insert(b.end(), p, p + sizeof(T));
    return *this;
  }
  Bytes& str(const std::string& s) {
    put<uint64_t>(s.size());
    b.insert(b.end(), s.begin(), s.end());
    return *this;
  }
  Bytes& header(uint32_t version, uint64_t n_tensors, uint64_t n_kv) {
    b.insert(b.end(), {'G', 'G', 'U', 'F'});
    return put(version).put(n_tensors).put(n_kv);
  }
  Bytes& kv_u32(const std::string& key, uint32_t v) { return str(key).put<uint32_t>(4).put(v); }
  Bytes& tensor(const std::string& name, std::vector<uint64_t> dims, uint32_t type, uint64_t offset) {
    str(name).put<uint32_t>(static_cast<uint32_t>(dims.size()));
    for (auto d : dims) put(d);
    return put(type).put(offset);
  }
  Bytes& pad(size_t align = 32) {
    while (b.size() % align) b.push_back(0);
    return *this;
  }
  Bytes& zeros(size_t n) {
    b.insert(b.end(), n, 0);
    return *this;
  }
  std::vector<uint8_t> b;
};

std::string parse_error(const std::vector<uint8_t>& bytes) {
  try {
    GgufFile::parse(bytes, "test.gguf");
  } catch (const GgufError& e) {
    return e.what();
  }
  return "<parsed>";
}

#define EXPECT_REJECTED(bytes, text) \
  EXPECT_NE(parse_error(bytes).find(text), std::string::npos) << parse_error(bytes)

// A small valid file: two keys, two F32 tensors.
std::vector<uint8_t> valid_file() {
  Bytes f;
  f.header(3, 2, 2).kv_u32("a.b", 1).str("name").put<uint32_t>(8).str("x");
  f.tensor("t0", {4, 2}, 0, 0).tensor("t1", {8}, 0, 32).pad().zeros(64);
  return f.b;
}

TEST(GgufValidation, ValidFileParses) {
  const auto f = GgufFile::parse(valid_file(), "test.gguf");
  EXPECT_EQ(f.tensors().size(), 2u);
  EXPECT_EQ(f.metadata().size(), 2u);
}

TEST(GgufValidation, WrongMagic) {
  auto b = valid_file();
  b[0] = 'X';
  EXPECT_REJECTED(b, "not a GGUF file");
}

TEST(GgufValidation, UnsupportedVersions) {
  for (uint32_t v : {1u, 4u}) {
    auto b = valid_file();
    std::memcpy(b.data() + 4, &v, 4);
    EXPECT_REJECTED(b, "unsupported GGUF version");
  }
}

TEST(GgufValidation, BigEndianFile) {
  auto b = valid_file();
  const uint32_t swapped = 0x03000000u;
  std::memcpy(b.data() + 4, &swapped, 4);
  EXPECT_REJECTED(b, "big-endian");
}

TEST(GgufValidation, EveryTruncationIsRejected) {
  const auto full = valid_file();
  for (size_t n = 0; n < full.size(); ++n) {
    const std::vector<uint8_t> cut(full.begin(), full.begin() + static_cast<long>(n));
    EXPECT_NE(parse_error(cut), "<parsed>") << "prefix of " << n << " bytes parsed";
  }
}

TEST(GgufValidation, CountsLargerThanTheFile) {
  EXPECT_REJECTED(Bytes().header(3, 0, uint64_t{1} << 60).b, "key-value count");
  EXPECT_REJECTED(Bytes().header(3, uint64_t{1} << 60, 0).b, "tensor count");
  EXPECT_REJECTED(Bytes().header(3, 0, 1).put<uint64_t>(uint64_t{1} << 62).zeros(16).b, "claims");
  EXPECT_REJECTED(Bytes().header(3, 0, 1).str("k").put<uint32_t>(9).put<uint32_t>(4).put<uint64_t>(uint64_t{1} << 40).b,
                  "more than the file can hold");
}

TEST(GgufValidation, ArraysNestedTooDeeply) {
  Bytes f;
  f.header(3, 0, 1).str("deep").put<uint32_t>(9);
  for (int i = 0; i < 64; ++i) f.put<uint32_t>(9).put<uint64_t>(1);
  f.put<uint32_t>(4).put<uint64_t>(0);
  EXPECT_REJECTED(f.b, "nests arrays too deeply");
}

TEST(GgufValidation, UnknownValueTypes) {
  EXPECT_REJECTED(Bytes().header(3, 0, 1).str("k").put<uint32_t>(13).zeros(8).b, "unknown value type 13");
  EXPECT_REJECTED(Bytes().header(3, 0, 1).str("k").put<uint32_t>(9).put<uint32_t>(99).put<uint64_t>(1).zeros(8).b,
                  "array of unknown type 99");
}

TEST(GgufValidation, BoolMustBeZeroOrOne) {
  EXPECT_REJECTED(Bytes().header(3, 0, 1).str("k").put<uint32_t>(7).put<uint8_t>(2).b, "neither 0 nor 1");
}

TEST(GgufValidation, DuplicateAndEmptyKeys) {
  EXPECT_REJECTED(Bytes().header(3, 0, 2).kv_u32("k", 1).kv_u32("k", 2).b, "duplicate metadata key 'k'");
  EXPECT_REJECTED(Bytes().header(3, 0, 1).kv_u32("", 1).b, "is empty");
}

TEST(GgufValidation, DuplicateTensorNames) {
  Bytes f;
  f.header(3, 2, 0).tensor("t", {8}, 0, 0).tensor("t", {8}, 0, 32).pad().zeros(64);
  EXPECT_REJECTED(f.b, "duplicate tensor name 't'");
}

TEST(GgufValidation, DimensionCountsAndSizes) {
  EXPECT_REJECTED(Bytes().header(3, 1, 0).tensor("t", {}, 0, 0).pad().zeros(32).b, "0 dimensions");
  EXPECT_REJECTED(Bytes().header(3, 1, 0).tensor("t", {1, 1, 1, 1, 1}, 0, 0).pad().zeros(32).b, "5 dimensions");
  EXPECT_REJECTED(Bytes().header(3, 1, 0).tensor("t", {4, 0}, 0, 0).pad().zeros(32).b, "zero or too large");
  EXPECT_REJECTED(Bytes().header(3, 1, 0).tensor("t", {uint64_t{1} << 40, uint64_t{1} << 40}, 0, 0).pad().zeros(32).b,
                  "zero or too large");
  // A row length whose byte size wraps around 64 bits.
  EXPECT_REJECTED(Bytes().header(3, 1, 0).tensor("t", {uint64_t{1} << 62}, 0, 0).pad().zeros(32).b, "overflows");
}

TEST(GgufValidation, UnknownTensorType) {
  EXPECT_REJECTED(Bytes().header(3, 1, 0).tensor("t", {8}, 4, 0).pad().zeros(32).b, "unknown type id 4");
  EXPECT_REJECTED(Bytes().header(3, 1, 0).tensor("t", {8}, 999, 0).pad().zeros(32).b, "unknown type id 999");
}

TEST(GgufValidation, RowsMustFillBlocks) {
  EXPECT_REJECTED(Bytes().header(3, 1, 0).tensor("t", {33}, 2, 0).pad().zeros(64).b, "not a multiple of q4_0");
}

TEST(GgufValidation, OffsetsAlignedInsideAndNotOverlapping) {
  EXPECT_REJECTED(Bytes().header(3, 1, 0).tensor("t", {8}, 0, 4).pad().zeros(64).b, "not a multiple of the alignment");
  EXPECT_REJECTED(Bytes().header(3, 1, 0).tensor("t", {8}, 0, 64).pad().zeros(32).b, "past the end of the file");
  EXPECT_REJECTED(Bytes().header(3, 2, 0).tensor("a", {16}, 0, 0).tensor("b", {8}, 0, 32).pad().zeros(96).b,
                  "overlap");
}

TEST(GgufValidation, AlignmentKey) {
  EXPECT_REJECTED(Bytes().header(3, 0, 1).kv_u32("general.alignment", 48).b, "not a power of two");
  EXPECT_REJECTED(Bytes().header(3, 0, 1).kv_u32("general.alignment", 0).b, "not a power of two");
  EXPECT_REJECTED(Bytes().header(3, 0, 1).str("general.alignment").put<uint32_t>(10).put<uint64_t>(32).b,
                  "must be a u32");
}

TEST(GgufValidation, RandomInputsNeverCrash) {
  std::mt19937 rng(2024);
  const auto base = valid_file();
  int parsed = 0;
  for (int i = 0; i < 4000; ++i) {
    std::vector<uint8_t> b;
    if (i % 2 == 0) {
      b.resize(rng() % 512);
      for (auto& x : b) x = static_cast<uint8_t>(rng());
      if (b.size() >= 4 && i % 4 == 0) std::memcpy(b.data(), "GGUF", 4);
    } else {
      b = base;
      for (int k = 0; k < 1 + static_cast<int>(rng() % 3); ++k) b[rng() % b.size()] = static_cast<uint8_t>(rng());
    }
    try {
      const auto f = GgufFile::parse(b, "random");
      unsigned sum = 0;
      for (const auto& t : f.tensors()) {
        for (uint8_t x : t.bytes()) sum += x;  // every tensor byte must lie inside the buffer
      }
      volatile unsigned sink = sum;
      (void)sink;
      ++parsed;
    } catch (const GgufError&) {
    }
  }
  EXPECT_GT(parsed, 0);  // some single-byte mutations (of padding, values) still parse
}

}  // namespace
}  // namespace mixq
