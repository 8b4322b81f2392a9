// GGUF (v2 and v3) reading and writing.
//
// Layout (little-endian): magic "GGUF", u32 version, u64 tensor count, u64 key-value count, the
// key-value pairs, the tensor infos (name, dims, type id, offset), padding to general.alignment,
// then the tensor data, each tensor starting at an aligned offset from the start of the data.
//
// The reader validates everything before anything points into the file (see gguf_reader.cpp for
// the rules) and keeps tensor data as views into a memory mapping. The writer streams: the header
// is computed from the declared tensors, then tensors are written one at a time into a temporary
// file that is renamed into place only when the last one is written.
#pragma once

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "mixq/formats/type_table.h"
#include "mixq/io/atomic_file.h"
#include "mixq/io/mapped_file.h"

namespace mixq {

class GgufError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

enum class GgufValueType : uint32_t {
  UINT8 = 0, INT8 = 1, UINT16 = 2, INT16 = 3, UINT32 = 4, INT32 = 5, FLOAT32 = 6, BOOL = 7,
  STRING = 8, ARRAY = 9, UINT64 = 10, INT64 = 11, FLOAT64 = 12,
};
const char* gguf_value_type_name(GgufValueType t);

// One metadata value. Scalars keep their exact GGUF type so a file read and written back is
// identical; arrays hold elements of one type (arrays of arrays are allowed by the format).
class GgufValue {
 public:
  GgufValue() = default;
  static GgufValue u8(uint8_t v) { return integer(GgufValueType::UINT8, v); }
  static GgufValue i8(int8_t v) { return integer(GgufValueType::INT8, v); }
  static GgufValue u16(uint16_t v) { return integer(GgufValueType::UINT16, v); }
  static GgufValue i16(int16_t v) { return integer(GgufValueType::INT16, v); }
  static GgufValue u32(uint32_t v) { return integer(GgufValueType::UINT32, v); }
  static GgufValue i32(int32_t v) { return integer(GgufValueType::INT32, v); }
  static GgufValue u64(uint64_t v);
  static GgufValue i64(int64_t v) { return integer(GgufValueType::INT64, v); }
  static GgufValue f32(float v);
  static GgufValue f64(double v);
  static GgufValue boolean(bool v);
  static GgufValue string(std::string v);
  static GgufValue array(GgufValueType elem_type, std::vector<GgufValue> elems);
  static GgufValue string_array(const std::vector<std::string>& v);

  GgufValueType type() const { return type_; }
  GgufValueType elem_type() const { return elem_type_; }
  bool is_integer() const;
  bool is_float() const { return type_ == GgufValueType::FLOAT32 || type_ == GgufValueType::FLOAT64; }

  // Accessors throw GgufError when the value is not of a compatible kind.
  int64_t as_int() const;       // any integer type (UINT64 values above INT64_MAX throw)
  uint64_t as_uint() const;     // any non-negative integer
  double as_float() const;      // any integer or float
  bool as_bool() const;
  const std::string& as_string() const;
  const std::vector<GgufValue>& as_array() const;

  // Human-readable rendering; arrays longer than max_elems are elided.
  std::string to_string(size_t max_elems = 8) const;
  bool operator==(const GgufValue& other) const;

 private:
  static GgufValue integer(GgufValueType t, int64_t v);
  GgufValueType type_ = GgufValueType::UINT8;
  GgufValueType elem_type_ = GgufValueType::UINT8;
  uint64_t bits_ = 0;  // integers (two's complement), bool, and float/double bit patterns
  std::string str_;
  // Immutable once built and shared by copies: a writer copying a tokenizer's metadata (arrays of
  // 50k-150k strings) copies pointers, not the arrays.
  std::shared_ptr<const std::vector<GgufValue>> arr_;
};

struct GgufKeyValue {
  std::string key;
  GgufValue value;
};

struct GgufTensor {
  std::string name;
  std::vector<int64_t> shape;     // ne[0] first: shape[0] is the row length
  const TypeTraits* type = nullptr;
  uint64_t offset = 0;            // from the start of the data section
  uint64_t nbytes = 0;
  const uint8_t* data = nullptr;  // into the mapping (null for a header-only parse)

  int64_t n_elements() const;
  int64_t row_length() const { return shape.empty() ? 1 : shape[0]; }
  int64_t n_rows() const { return n_elements() / row_length(); }
  std::span<const uint8_t> bytes() const { return {data, static_cast<size_t>(nbytes)}; }
};

// The layout of a tensor's bytes: 0 as the file stores them, else the tag GgufFile::rewrite_tensor
// gave them (engine/repack.h), for as long as the file's mapping lives.
inline uint8_t tensor_layout(const GgufTensor& t) { return t.data ? MappedFile::layout_at(t.data) : 0; }

inline constexpr uint32_t kGgufDefaultAlignment = 32;
inline constexpr int kGgufMaxDims = 4;
// Metadata key listing the mixq extension types a file uses (absent when it uses none).
inline constexpr const char* kExtensionTypesKey = "mixq.extension_types";

class GgufFile {
 public:
  // Maps and parses a file. Throws GgufError with the file name, what is wrong, where, and what
  // to do about it.
  static GgufFile open(const std::filesystem::path& path);
  // Parses bytes the caller keeps alive (used by the fuzzer and tests). `label` names the source
  // in error messages.
  static GgufFile parse(std::span<const uint8_t> bytes, std::string label);

  uint32_t version() const { return version_; }
  uint32_t alignment() const { return alignment_; }
  uint64_t data_offset() const { return data_offset_; }
  uint64_t file_size() const { return file_size_; }
  const std::string& label() const { return label_; }

  const std::vector<GgufKeyValue>& metadata() const { return kv_; }
  const GgufValue* find(std::string_view key) const;
  const std::vector<GgufTensor>& tensors() const { return tensors_; }
  const GgufTensor* find_tensor(std::string_view name) const;
  // Copies [p, p + n) of a tensor's bytes into dst (MappedFile::copy_out: read from the file, the
  // mapping's pages untouched; a memcpy for parse()d buffers and memory outside the file).
  void copy_out(const uint8_t* p, size_t n, void* dst) const {
    if (mapping_) {
      mapping_->copy_out(p, n, dst);
    } else if (n > 0) {
      std::memcpy(dst, p, n);
    }
  }
  // Releases a tensor's pages from resident memory after a streaming pass has used them
  // (no effect for parse()d buffers).
  void drop_pages(const GgufTensor& t) const {
    if (mapping_) mapping_->drop_pages(t.data, static_cast<size_t>(t.nbytes));
  }
  // Rewrites a tensor's bytes in place (MappedFile::rewrite: private pages, the file unchanged),
  // tagging them with `layout` (engine/repack.h's decode layouts; tensor_layout() reads the tag).
  // Const: what the tensor holds is the same, only its layout changes, and every reader of such
  // tensors asks tensor_layout(). Returns false, calling nothing, for a parse()d buffer (nothing
  // to make writable) or a tensor rewritten already.
  bool rewrite_tensor(const GgufTensor& t, uint8_t layout, const std::function<void(uint8_t*)>& fn) const {
    return mapping_ && t.nbytes > 0 && mapping_->rewrite(t.data, static_cast<size_t>(t.nbytes), layout, fn);
  }
  // Names of mixq extension types used by the tensors (empty for a file llama.cpp can load).
  std::vector<std::string> extension_types_used() const;

 private:
  std::shared_ptr<MappedFile> mapping_;  // shared so copies of a GgufFile stay valid
  std::string label_;
  uint32_t version_ = 0;
  uint32_t alignment_ = kGgufDefaultAlignment;
  uint64_t data_offset_ = 0;
  uint64_t file_size_ = 0;
  std::vector<GgufKeyValue> kv_;
  std::vector<GgufTensor> tensors_;
  std::unordered_map<std::string, size_t> key_index_, tensor_index_;  // positions in kv_ / tensors_
  friend class GgufParser;
};

// Streaming GGUF v3 writer.
//   GgufWriter w(path);  w.set(...);  w.add_tensor(...) for each;  w.write_tensor_data(...) in the
//   same order;  w.finish();
// Nothing appears at `path` until finish() succeeds; a writer destroyed before that (an
// exception, an error) removes its temporary file. The file is written through AtomicFile
// (io/atomic_file.h), which sets the rules for symlinks, devices and interruptions.
class GgufWriter {
 public:
  explicit GgufWriter(std::filesystem::path path, uint32_t alignment = kGgufDefaultAlignment);
  // A writer that only lays a file out (keys and tensor infos, for planned_file_size() and
  // planned_header_bytes()): it has no path, and writing tensor data through it is an error.
  static GgufWriter sizing_only(uint32_t alignment = kGgufDefaultAlignment) {
    return GgufWriter(std::filesystem::path(), alignment, true);
  }
  ~GgufWriter();
  GgufWriter(const GgufWriter&) = delete;
  GgufWriter& operator=(const GgufWriter&) = delete;

  // Sets (or replaces) a metadata key; keys keep their first-set order. Setting
  // general.alignment changes the alignment (only before tensors are declared).
  void set(std::string key, GgufValue value);
  void remove(std::string_view key);
  // Copies every key of a file, in its order.
  void copy_metadata(const GgufFile& src);
  // Declares the next tensor. shape[0] is the row length; it must fill whole blocks of `type`.
  void add_tensor(std::string name, std::vector<int64_t> shape, TypeId type);
  // Writes the data of the next declared tensor; the first call writes the header.
  void write_tensor_data(std::span<const uint8_t> data);
  // The same in consecutive parts (a tensor quantized slice by slice): the tensor is complete,
  // and padded, once its parts add up to its size; a part past its end throws.
  void write_tensor_part(std::span<const uint8_t> data);
  // Flushes, syncs and renames the temporary file into place.
  void finish();

  const std::filesystem::path& path() const { return path_; }
  // Bytes written so far (the file's size after finish()).
  uint64_t bytes_written() const { return position_; }
  // Total size the finished file will have.
  uint64_t planned_file_size() const;
  // The header (magic .. last tensor info) before its alignment padding.
  uint64_t planned_header_bytes() const;
  // Bytes one metadata entry takes in the header.
  static uint64_t key_value_bytes(const std::string& key, const GgufValue& value);
  // Bytes one tensor-info entry takes in the header: its name, n_dims, dims, type and offset.
  static uint64_t tensor_info_bytes(const std::string& name, size_t n_dims) {
    return 8 + name.size() + 4 + 8 * n_dims + 4 + 8;
  }
  // v rounded up to a multiple of `alignment` (how GGUF pads the header and every tensor).
  static uint64_t align_up(uint64_t v, uint64_t alignment) { return (v + alignment - 1) / alignment * alignment; }

 private:
  GgufWriter(std::filesystem::path path, uint32_t alignment, bool sizing_only);
  void write_header();
  void record_extension_type(const std::string& name);
  void write_bytes(const void* p, size_t n);
  void pad_to(uint64_t position);

  std::filesystem::path path_;
  uint32_t alignment_;
  std::vector<GgufKeyValue> kv_;
  std::unordered_map<std::string, size_t> key_index_;  // kv_ position of each key
  std::unordered_set<std::string> tensor_names_;
  struct Pending {
    std::string name;
    std::vector<int64_t> shape;
    const TypeTraits* type;
    uint64_t offset, nbytes;
  };
  std::vector<Pending> tensors_;
  uint64_t data_size_ = 0;
  size_t next_tensor_ = 0;
  uint64_t part_written_ = 0;  // bytes of the next tensor written by write_tensor_part so far
  std::unique_ptr<AtomicFile> file_;
  uint64_t position_ = 0;
  uint64_t data_start_ = 0;
  bool header_written_ = false, finished_ = false;
  bool sizing_only_ = false;
};

}  // namespace mixq
