// GgufWriter round trips through GgufFile: every value type, alignment, extension-type metadata,
// and no file left behind when writing does not finish.
#include <cmath>
#include <limits>
#include <vector>
#include <string>
#include <sstream>
#include <random>
#include <fstream>

#include "mixq/io/gguf.h"
#include "mixq/io/mapped_file.h"
#include "test_support.h"

namespace mixq {
namespace {

namespace fs = std::filesystem;

fs::path fresh_dir(const std::string& name) {
  auto d = test::temp_dir() / name;
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

TEST(GgufWriter, EveryValueTypeRoundTrips) {
  const auto dir = fresh_dir("writer-values");
  std::vector<GgufKeyValue> kvs = {
      {"u8", GgufValue::u8(255)},
      {"i8", GgufValue::i8(-128)},
      {"u16", GgufValue::u16(65535)},
      {"i16", GgufValue::i16(-32768)},
      {"u32", GgufValue::u32(4294967295u)},
      {"i32", GgufValue::i32(std::numeric_limits<int32_t>::min())},
      {"u64", GgufValue::u64(std::numeric_limits<uint64_t>::max())},
      {"i64", GgufValue::i64(std::numeric_limits<int64_t>::min())},
      {"f32", GgufValue::f32(-0.0f)},
      {"f32nan", GgufValue::f32(std::numeric_limits<float>::quiet_NaN())},
      {"f64", GgufValue::f64(1e-300)},
      {"bool", GgufValue::boolean(true)},
      {"str", GgufValue::string(std::string("with\0nul", 8))},
      {"strs", GgufValue::string_array({"a", "", "ccc"})},
      {"empty", GgufValue::array(GgufValueType::INT32, {})},
      {"nested", GgufValue::array(GgufValueType::ARRAY, {GgufValue::string_array({"x"}),
                                                         GgufValue::array(GgufValueType::STRING, {})})},
  };
  {
    GgufWriter w(dir / "v.gguf");
    for (const auto& kv : kvs) w.set(kv.key, kv.value);
    w.finish();
  }
  const GgufFile f = GgufFile::open(dir / "v.gguf");
  ASSERT_EQ(f.metadata().size(), kvs.size());
  for (size_t i = 0; i < kvs.size(); ++i) {
    EXPECT_EQ(f.metadata()[i].key, kvs[i].key);
    EXPECT_TRUE(f.metadata()[i].value == kvs[i].value) << kvs[i].key;  // bit patterns, NaN included
  }
  EXPECT_EQ(f.find("u64")->as_uint(), std::numeric_limits<uint64_t>::max());
  EXPECT_THROW(f.find("u64")->as_int(), GgufError);
  EXPECT_TRUE(std::signbit(f.find("f32")->as_float()));
}

TEST(GgufWriter, CustomAlignmentAndTensorData) {
  const auto dir = fresh_dir("writer-align");
  std::vector<uint8_t> a(18 * 3, 7), b(4 * 5, 9);
  {
    GgufWriter w(dir / "t.gguf", 64);
    w.add_tensor("a", {32, 3}, TypeId::Q4_0);
    w.add_tensor("b", {5}, TypeId::F32);
    w.write_tensor_data(a);
    w.write_tensor_data(b);
    w.finish();
    EXPECT_EQ(w.planned_file_size(), fs::file_size(dir / "t.gguf"));
  }
  const GgufFile f = GgufFile::open(dir / "t.gguf");
  EXPECT_EQ(f.alignment(), 64u);
  EXPECT_EQ(f.find("general.alignment")->as_uint(), 64u);
  EXPECT_EQ(f.data_offset() % 64, 0u);
  EXPECT_EQ(f.tensors()[1].offset % 64, 0u);
  EXPECT_TRUE(std::equal(a.begin(), a.end(), f.tensors()[0].data));
  EXPECT_TRUE(std::equal(b.begin(), b.end(), f.tensors()[1].data));
  EXPECT_EQ(fs::file_size(dir / "t.gguf") % 64, 0u);  // padded after the last tensor, as GGML does
}

// A tensor written in parts (quantize_model's slices) lays out the same file as written whole.
TEST(GgufWriter, TensorDataInPartsEqualsWhole) {
  const auto dir = fresh_dir("writer-parts");
  std::vector<uint8_t> a(18 * 3), b(4 * 5, 9);
  for (size_t i = 0; i < a.size(); ++i) a[i] = static_cast<uint8_t>(i);
  {
    GgufWriter w(dir / "whole.gguf", 64);
    w.add_tensor("a", {32, 3}, TypeId::Q4_0);
    w.add_tensor("b", {5}, TypeId::F32);
    w.write_tensor_data(a);
    w.write_tensor_data(b);
    w.finish();
  }
  {
    GgufWriter w(dir / "parts.gguf", 64);
    w.add_tensor("a", {32, 3}, TypeId::Q4_0);
    w.add_tensor("b", {5}, TypeId::F32);
    w.write_tensor_part({a.data(), 18});
    w.write_tensor_part({a.data() + 18, 0});
    EXPECT_THROW(w.write_tensor_data(b), GgufError);  // "a" is half written
    w.write_tensor_part({a.data() + 18, 36});
    EXPECT_THROW(w.write_tensor_part(std::vector<uint8_t>(21)), GgufError);  // past the end of "b"
    w.write_tensor_part(b);
    w.finish();
  }
  EXPECT_EQ(test::read_raw<uint8_t>(dir / "whole.gguf"), test::read_raw<uint8_t>(dir / "parts.gguf"));
}

TEST(GgufWriter, SizingOnlyLaysOutTheSameFileAndWritesNothing) {
  const auto dir = fresh_dir("writer-sizing");
  const auto declare = [](GgufWriter& w) {
    w.set("general.name", GgufValue::string("sizing"));
    w.add_tensor("a", {64, 3}, TypeId::NF4);  // an extension type adds the extension key
    w.add_tensor("b", {32, 5}, TypeId::Q4_0);
  };
  GgufWriter sizing = GgufWriter::sizing_only(64);
  declare(sizing);
  GgufWriter w(dir / "s.gguf", 64);
  declare(w);
  w.write_tensor_data(std::vector<uint8_t>(34 * 3));
  w.write_tensor_data(std::vector<uint8_t>(18 * 5));
  w.finish();
  EXPECT_EQ(sizing.planned_file_size(), fs::file_size(dir / "s.gguf"));
  EXPECT_EQ(sizing.planned_header_bytes(), w.planned_header_bytes());
  const GgufFile f = GgufFile::open(dir / "s.gguf");
  EXPECT_GT(f.data_offset(), sizing.planned_header_bytes());
  EXPECT_LE(f.data_offset(), sizing.planned_header_bytes() + 64);
  EXPECT_THROW(sizing.write_tensor_data(std::vector<uint8_t>(34 * 3)), GgufError);
  EXPECT_THROW(sizing.finish(), GgufError);
  EXPECT_EQ(test::files_in(dir).size(), 1u);  // only s.gguf
}

TEST(GgufWriter, ExtensionTypesAreRecorded) {
  const auto dir = fresh_dir("writer-ext");
  {
    GgufWriter w(dir / "e.gguf");
    w.add_tensor("a", {64, 2}, TypeId::NF4);
    w.add_tensor("b", {64, 2}, TypeId::Q8_0);
    w.add_tensor("c", {64, 1}, TypeId::NF4);
    w.write_tensor_data(std::vector<uint8_t>(68));
    w.write_tensor_data(std::vector<uint8_t>(136));
    w.write_tensor_data(std::vector<uint8_t>(34));
    w.finish();
  }
  const GgufFile f = GgufFile::open(dir / "e.gguf");
  const auto* key = f.find(kExtensionTypesKey);
  ASSERT_NE(key, nullptr);
  ASSERT_EQ(key->as_array().size(), 1u);
  EXPECT_EQ(key->as_array()[0].as_string(), "nf4");
  EXPECT_EQ(f.extension_types_used(), std::vector<std::string>{"nf4"});
}

TEST(GgufWriter, RefusesInconsistentUse) {
  const auto dir = fresh_dir("writer-misuse");
  GgufWriter w(dir / "m.gguf");
  w.add_tensor("a", {32}, TypeId::Q4_0);
  EXPECT_THROW(w.add_tensor("a", {32}, TypeId::Q4_0), GgufError);           // duplicate name
  EXPECT_THROW(w.add_tensor("b", {1, 1, 1, 1, 1}, TypeId::F32), GgufError);  // 5 dimensions
  EXPECT_THROW(w.add_tensor("c", {33}, TypeId::Q4_0), GgufError);           // row misfit
  EXPECT_THROW(w.write_tensor_data(std::vector<uint8_t>(17)), GgufError);   // wrong size
}

TEST(GgufWriter, UnfinishedWriteLeavesNoFile) {
  const auto dir = fresh_dir("writer-unfinished");
  try {
    GgufWriter w(dir / "u.gguf");
    w.add_tensor("a", {8}, TypeId::F32);
    w.add_tensor("b", {8}, TypeId::F32);
    w.write_tensor_data(std::vector<uint8_t>(32));
    throw std::runtime_error("interrupted");  // b is never written
  } catch (const std::runtime_error&) {
  }
  EXPECT_TRUE(test::files_in(dir).empty());
  GgufWriter w(dir / "v.gguf");
  w.add_tensor("a", {8}, TypeId::F32);
  EXPECT_THROW(w.finish(), GgufError);  // 0 of 1 tensors written
}

// The mapping's resident bytes (the Rss line of /proc/self/smaps for the mapping at `base`).
size_t resident_bytes_of_mapping(const void* base) {
  std::ifstream smaps("/proc/self/smaps");
  std::string line;
  bool ours = false;
  while (std::getline(smaps, line)) {
    if (line.find('-') != std::string::npos && line.find(' ') > line.find('-')) {
      unsigned long long start = 0;
      std::istringstream(line.substr(0, line.find('-'))) >> std::hex >> start;
      ours = start == reinterpret_cast<uintptr_t>(base);
    } else if (ours && line.rfind("Rss:", 0) == 0) {
      return std::stoull(line.substr(4)) * 1024;
    }
  }
  return 0;
}

// copy_out gives the bytes the mapping holds (read from the file, or from memory for a rewritten
// range and for memory outside the mapping), and reading the whole file through it leaves the
// mapping's pages untouched: none of them becomes resident.
TEST(MappedFile, CopyOutReadsWhatTheMappingHoldsWithoutFaultingItIn) {
  const auto dir = fresh_dir("mapped-copy-out");
  std::vector<uint8_t> bytes((5 << 20) + 123);
  std::mt19937 rng(3);
  for (auto& b : bytes) b = static_cast<uint8_t>(rng());
  {
    std::ofstream f(dir / "data.bin", std::ios::binary);
    f.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  }
  MappedFile m(dir / "data.bin");
  const uint8_t* base = m.bytes().data();
  std::vector<uint8_t> out(bytes.size());
  m.copy_out(base, bytes.size(), out.data());
  EXPECT_EQ(out, bytes);
  if (fs::exists("/proc/self/smaps")) {
    EXPECT_EQ(resident_bytes_of_mapping(base), 0u);
  }

  // A rewritten range (the engine's decode layouts) is read from memory, the rest from the file.
  const size_t at = 10000, n = 3000;
  ASSERT_TRUE(m.rewrite(base + at, n, 1, [&](uint8_t* p) {
    for (size_t i = 0; i < n; ++i) p[i] = static_cast<uint8_t>(~p[i]);
  }));
  for (const auto& [from, len] : std::vector<std::pair<size_t, size_t>>{{0, 0}, {9000, 5000}, {at, n}, {at + 1, 10},
                                                                       {20000, 4096}, {bytes.size() - 7, 7}}) {
    std::vector<uint8_t> got(len, 0xAA);
    m.copy_out(base + from, len, got.data());
    EXPECT_TRUE(std::equal(got.begin(), got.end(), base + from)) << from << " + " << len;
  }
  // Memory outside the mapping.
  std::vector<uint8_t> other = {1, 2, 3}, got(3);
  m.copy_out(other.data(), other.size(), got.data());
  EXPECT_EQ(got, other);
}

TEST(GgufWriter, LlamaCppFileRewritesIdentically) {
  const auto src_path = test::stories260K_gguf();
  const GgufFile src = GgufFile::open(src_path);
  EXPECT_EQ(src.metadata().size(), 19u);
  EXPECT_EQ(src.tensors().size(), 48u);
  EXPECT_EQ(src.find_tensor("blk.0.ffn_down.weight")->shape, (std::vector<int64_t>{172, 64}));
  const auto dir = fresh_dir("writer-rewrite");
  {
    GgufWriter w(dir / "r.gguf", src.alignment());
    w.copy_metadata(src);
    for (const auto& t : src.tensors()) w.add_tensor(t.name, t.shape, t.type->id);
    for (const auto& t : src.tensors()) w.write_tensor_data(t.bytes());
    w.finish();
  }
  const auto a = test::read_raw<uint8_t>(src_path), b = test::read_raw<uint8_t>(dir / "r.gguf");
  EXPECT_TRUE(a == b);
}

}  // namespace
}  // namespace mixq
