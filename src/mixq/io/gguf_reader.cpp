// GGUF parsing with validation. Rules, each with a test in tests/unit/test_gguf_validation.cpp:
// - magic "GGUF"; version 2 or 3 (v1 used 32-bit counts and is not supported); a version that
//   reads as a byte-swapped 2 or 3 means a big-endian file, which is refused;
// - every count and length is checked against the bytes left before anything is allocated, so a
//   forged count cannot make the reader allocate more than a small multiple of the file size;
// - arrays nest at most kMaxArrayDepth deep (no stack exhaustion);
// - keys and tensor names are unique; general.alignment, when present, is a u32 power of two;
// - tensors: 1 to 4 dimensions, each >= 1, element counts that do not overflow, known type ids,
//   row lengths that fill whole blocks, aligned offsets, data inside the file, no overlap.
#include <algorithm>
#include <bit>
#include <cstring>
#include <limits>
#include <type_traits>
#include <unordered_set>

#include <fmt/format.h>

#include "mixq/io/gguf.h"

namespace mixq {

namespace {
constexpr uint32_t kMagic = 0x46554747;  // "GGUF" read as a little-endian u32
constexpr int kMaxArrayDepth = 8;
constexpr uint64_t kMaxStringBytes = uint64_t{1} << 30;
}  // namespace

class GgufParser {
 public:
  GgufParser(std::span<const uint8_t> bytes, const std::string& label) : b_(bytes), label_(label) {}

  void parse(GgufFile& f) {
    f.label_ = label_;
    f.file_size_ = b_.size();
    if (b_.size() < 4) fail("file is too short to be GGUF (" + std::to_string(b_.size()) + " bytes)", 0);
    const uint32_t magic = read_u32();
    if (magic != kMagic) {
      fail(fmt::format("not a GGUF file: magic is {:02x} {:02x} {:02x} {:02x}, expected 47 47 55 46 (\"GGUF\")",
                       b_[0], b_[1], b_[2], b_[3]),
           0, "check that the path names a .gguf model");
    }
    need(4, "version");
    const uint32_t version = read_u32();
    if (version == 0x02000000u || version == 0x03000000u) {
      fail("big-endian GGUF files are not supported", 4, "convert the model on a little-endian machine");
    }
    if (version != 2 && version != 3) {
      fail(fmt::format("unsupported GGUF version {} (mixq reads versions 2 and 3)", version), 4,
           version == 1 ? "re-export the model with a current converter" : "");
    }
    f.version_ = version;
    need(16, "tensor and key counts");
    const uint64_t n_tensors = read_u64();
    const uint64_t n_kv = read_u64();
    // A key-value pair takes at least 8 (key length) + 4 (type) + 1 bytes; a tensor info at least
    // 8 + 4 + 8 + 4 + 8.
    if (n_kv > remaining() / 13) fail(fmt::format("key-value count {} is larger than the file can hold", n_kv), 16);
    if (n_tensors > remaining() / 32) {
      fail(fmt::format("tensor count {} is larger than the file can hold", n_tensors), 8);
    }

    f.kv_.reserve(n_kv);
    for (uint64_t i = 0; i < n_kv; ++i) {
      const size_t at = pos_;
      std::string key = read_string("metadata key");
      if (key.empty()) fail(fmt::format("metadata key #{} is empty", i), at);
      // The index find() uses, built here so lookups work during the parse.
      if (!f.key_index_.emplace(key, f.kv_.size()).second) fail(fmt::format("duplicate metadata key '{}'", key), at);
      need(4, [&] { return "value type of '" + key + "'"; });
      const uint32_t type = read_u32();
      GgufValue v = read_value(type, key, 0);
      f.kv_.push_back({std::move(key), std::move(v)});
    }

    if (const GgufValue* a = f.find("general.alignment")) {
      if (a->type() != GgufValueType::UINT32) fail("general.alignment must be a u32", 0);
      const uint64_t al = a->as_uint();
      if (al == 0 || !std::has_single_bit(al)) {
        fail(fmt::format("general.alignment is {}, not a power of two", al), 0);
      }
      f.alignment_ = static_cast<uint32_t>(al);
    }

    std::unordered_set<std::string> names;
    f.tensors_.reserve(n_tensors);
    for (uint64_t i = 0; i < n_tensors; ++i) f.tensors_.push_back(read_tensor_info(i, names, f.alignment_));

    const uint64_t data_offset = (pos_ + f.alignment_ - 1) / f.alignment_ * f.alignment_;
    f.data_offset_ = data_offset;
    const uint64_t data_size = data_offset <= b_.size() ? b_.size() - data_offset : 0;
    if (n_tensors > 0 && data_offset > b_.size()) fail("file ends before its tensor data", b_.size(), kTruncatedHint);

    std::vector<const GgufTensor*> by_offset;
    for (auto& t : f.tensors_) {
      if (t.offset > data_size || t.nbytes > data_size - t.offset) {
        fail(fmt::format("tensor '{}' data [{}, {}) lies past the end of the file (data section is {} bytes)", t.name,
                         t.offset, t.offset + t.nbytes, data_size),
             data_offset + std::min(t.offset, data_size), kTruncatedHint);
      }
      t.data = b_.data() + data_offset + t.offset;
      by_offset.push_back(&t);
    }
    std::sort(by_offset.begin(), by_offset.end(), [](auto* a, auto* c) { return a->offset < c->offset; });
    for (size_t i = 1; i < by_offset.size(); ++i) {
      const GgufTensor& prev = *by_offset[i - 1];
      if (prev.offset + prev.nbytes > by_offset[i]->offset) {
        fail(fmt::format("tensors '{}' and '{}' overlap", prev.name, by_offset[i]->name),
             data_offset + by_offset[i]->offset);
      }
    }
  }

 private:
  static constexpr const char* kTruncatedHint = "the file looks truncated: download or copy it again";

  [[noreturn]] void fail(const std::string& what, size_t at, const std::string& hint = "") const {
    std::string msg = fmt::format("{}: {} (at byte {})", label_, what, at);
    if (!hint.empty()) msg += "; " + hint;
    throw GgufError(msg);
  }

  size_t remaining() const { return b_.size() - pos_; }

  // What is being read, for an error message: a string, or a callable that builds it, so that
  // the 100k+ elements of a tokenizer's arrays are read without building 100k+ descriptions.
  template <typename What>
  static std::string describe(const What& what) {
    if constexpr (std::is_invocable_v<const What&>) {
      return what();
    } else {
      return std::string(what);
    }
  }

  template <typename What>
  void need(uint64_t n, const What& what) const {
    if (n > remaining()) {
      fail(fmt::format("file ends inside {} (needs {} more bytes, {} left)", describe(what), n, remaining()), pos_,
           kTruncatedHint);
    }
  }

  template <typename T>
  T read_scalar() {
    T v;
    std::memcpy(&v, b_.data() + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }
  uint32_t read_u32() { return read_scalar<uint32_t>(); }
  uint64_t read_u64() { return read_scalar<uint64_t>(); }

  template <typename What>
  std::string read_string(const What& what) {
    need(8, [&] { return "the length of " + describe(what); });
    const size_t at = pos_;
    const uint64_t len = read_u64();
    if (len > kMaxStringBytes) fail(fmt::format("{} claims {} bytes", describe(what), len), at);
    need(len, what);
    std::string s(reinterpret_cast<const char*>(b_.data() + pos_), static_cast<size_t>(len));
    pos_ += len;
    return s;
  }

  static uint64_t min_encoded_size(uint32_t type) {
    switch (static_cast<GgufValueType>(type)) {
      case GgufValueType::UINT8: case GgufValueType::INT8: case GgufValueType::BOOL: return 1;
      case GgufValueType::UINT16: case GgufValueType::INT16: return 2;
      case GgufValueType::UINT32: case GgufValueType::INT32: case GgufValueType::FLOAT32: return 4;
      case GgufValueType::UINT64: case GgufValueType::INT64: case GgufValueType::FLOAT64:
      case GgufValueType::STRING: return 8;
      case GgufValueType::ARRAY: return 12;
    }
    return 0;
  }

  GgufValue read_value(uint32_t type, const std::string& key, int depth) {
    const size_t at = pos_;
    const uint64_t min = min_encoded_size(type);
    if (min == 0) fail(fmt::format("metadata key '{}' has unknown value type {}", key, type), at - 4);
    if (static_cast<GgufValueType>(type) != GgufValueType::ARRAY &&
        static_cast<GgufValueType>(type) != GgufValueType::STRING) {
      need(min, [&] { return "the value of '" + key + "'"; });
    }
    switch (static_cast<GgufValueType>(type)) {
      case GgufValueType::UINT8: return GgufValue::u8(read_scalar<uint8_t>());
      case GgufValueType::INT8: return GgufValue::i8(read_scalar<int8_t>());
      case GgufValueType::UINT16: return GgufValue::u16(read_scalar<uint16_t>());
      case GgufValueType::INT16: return GgufValue::i16(read_scalar<int16_t>());
      case GgufValueType::UINT32: return GgufValue::u32(read_scalar<uint32_t>());
      case GgufValueType::INT32: return GgufValue::i32(read_scalar<int32_t>());
      case GgufValueType::FLOAT32: return GgufValue::f32(read_scalar<float>());
      case GgufValueType::UINT64: return GgufValue::u64(read_scalar<uint64_t>());
      case GgufValueType::INT64: return GgufValue::i64(read_scalar<int64_t>());
      case GgufValueType::FLOAT64: return GgufValue::f64(read_scalar<double>());
      case GgufValueType::BOOL: {
        const uint8_t v = read_scalar<uint8_t>();
        if (v > 1) fail(fmt::format("metadata key '{}': bool value {} is neither 0 nor 1", key, v), at);
        return GgufValue::boolean(v != 0);
      }
      case GgufValueType::STRING: return GgufValue::string(read_string([&] { return "the value of '" + key + "'"; }));
      case GgufValueType::ARRAY: {
        if (depth >= kMaxArrayDepth) fail(fmt::format("metadata key '{}' nests arrays too deeply", key), at);
        need(12, [&] { return "the array header of '" + key + "'"; });
        const uint32_t elem_type = read_u32();
        const uint64_t elem_min = min_encoded_size(elem_type);
        if (elem_min == 0) fail(fmt::format("metadata key '{}' is an array of unknown type {}", key, elem_type), at);
        const uint64_t count = read_u64();
        if (count > remaining() / elem_min) {
          fail(fmt::format("metadata key '{}' claims {} array elements, more than the file can hold", key, count),
               at + 4, kTruncatedHint);
        }
        std::vector<GgufValue> elems;
        elems.reserve(count);
        for (uint64_t i = 0; i < count; ++i) elems.push_back(read_value(elem_type, key, depth + 1));
        return GgufValue::array(static_cast<GgufValueType>(elem_type), std::move(elems));
      }
    }
    fail("unreachable value type", at);
  }

  GgufTensor read_tensor_info(uint64_t index, std::unordered_set<std::string>& names, uint32_t alignment) {
    const size_t at = pos_;
    GgufTensor t;
    t.name = read_string([&] { return fmt::format("the name of tensor #{}", index); });
    if (t.name.empty()) fail(fmt::format("tensor #{} has an empty name", index), at);
    if (!names.insert(t.name).second) fail(fmt::format("duplicate tensor name '{}'", t.name), at);
    need(4, [&] { return "the dimension count of '" + t.name + "'"; });
    const uint32_t n_dims = read_u32();
    if (n_dims < 1 || n_dims > kGgufMaxDims) {
      fail(fmt::format("tensor '{}' has {} dimensions (GGUF allows 1 to {})", t.name, n_dims, kGgufMaxDims),
           pos_ - 4);
    }
    need(8ull * n_dims + 12, [&] { return "the shape, type and offset of '" + t.name + "'"; });
    int64_t n_elements = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      const uint64_t ne = read_u64();
      if (ne == 0 || ne > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) ||
          static_cast<int64_t>(ne) > std::numeric_limits<int64_t>::max() / n_elements) {
        fail(fmt::format("tensor '{}' dimension {} is {}: zero or too large", t.name, d, ne), pos_ - 8);
      }
      n_elements *= static_cast<int64_t>(ne);
      t.shape.push_back(static_cast<int64_t>(ne));
    }
    const uint32_t type = read_u32();
    t.type = find_type(type);
    if (!t.type) {
      fail(fmt::format("tensor '{}' has unknown type id {}", t.name, type), pos_ - 4,
           "the file may need a newer mixq, or it is damaged");
    }
    if (!t.type->fits_row(t.shape[0])) {
      fail(fmt::format("tensor '{}' has rows of {} values, not a multiple of {}'s block of {}", t.name, t.shape[0],
                       t.type->name, t.type->block_size),
           at);
    }
    t.offset = read_u64();
    if (t.offset % alignment != 0) {
      fail(fmt::format("tensor '{}' offset {} is not a multiple of the alignment {}", t.name, t.offset, alignment),
           pos_ - 8);
    }
    const uint64_t rows = static_cast<uint64_t>(n_elements / t.shape[0]);
    // Checked before TypeTraits::row_bytes multiplies: a forged row length must not wrap around.
    const uint64_t blocks = static_cast<uint64_t>(t.shape[0] / t.type->block_size);
    constexpr uint64_t kMax = std::numeric_limits<uint64_t>::max();
    if (blocks > (kMax - t.type->row_header_bytes) / t.type->block_bytes) {
      fail(fmt::format("tensor '{}' row size overflows", t.name), at);
    }
    const uint64_t row_bytes = t.type->row_bytes(t.shape[0]);
    if (rows > kMax / row_bytes) {
      fail(fmt::format("tensor '{}' byte size overflows", t.name), at);
    }
    t.nbytes = rows * row_bytes;
    return t;
  }

  std::span<const uint8_t> b_;
  const std::string& label_;
  size_t pos_ = 0;
};

GgufFile GgufFile::open(const std::filesystem::path& path) {
  std::shared_ptr<MappedFile> mapping;
  try {
    mapping = std::make_shared<MappedFile>(path);
  } catch (const std::runtime_error& e) {
    throw GgufError(e.what());
  }
  GgufFile f = parse(mapping->bytes(), path.string());
  f.mapping_ = std::move(mapping);
  return f;
}

GgufFile GgufFile::parse(std::span<const uint8_t> bytes, std::string label) {
  GgufFile f;
  GgufParser(bytes, label).parse(f);
  // Lookups by name happen once per tensor in several places: indexed, they stay linear for
  // files with very many keys or tensors.
  f.tensor_index_.reserve(f.tensors_.size());
  for (size_t i = 0; i < f.tensors_.size(); ++i) f.tensor_index_.emplace(f.tensors_[i].name, i);
  return f;
}

const GgufValue* GgufFile::find(std::string_view key) const {
  const auto it = key_index_.find(std::string(key));
  return it == key_index_.end() ? nullptr : &kv_[it->second].value;
}

const GgufTensor* GgufFile::find_tensor(std::string_view name) const {
  const auto it = tensor_index_.find(std::string(name));
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

std::vector<std::string> GgufFile::extension_types_used() const {
  std::vector<std::string> names;
  for (const auto& t : tensors_) {
    if (t.type->is_extension() && std::find(names.begin(), names.end(), t.type->name) == names.end()) {
      names.push_back(t.type->name);
    }
  }
  return names;
}

}  // namespace mixq
