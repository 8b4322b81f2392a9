#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>

#include <fmt/format.h>

#include "mixq/io/gguf.h"
#include "mixq/io/atomic_file.h"

namespace mixq {

namespace {

constexpr uint32_t kWriteVersion = 3;


uint64_t encoded_size(const GgufValue& v) {
  switch (v.type()) {
    case GgufValueType::UINT8: case GgufValueType::INT8: case GgufValueType::BOOL: return 1;
    case GgufValueType::UINT16: case GgufValueType::INT16: return 2;
    case GgufValueType::UINT32: case GgufValueType::INT32: case GgufValueType::FLOAT32: return 4;
    case GgufValueType::UINT64: case GgufValueType::INT64: case GgufValueType::FLOAT64: return 8;
    case GgufValueType::STRING: return 8 + v.as_string().size();
    case GgufValueType::ARRAY: {
      uint64_t n = 12;
      for (const auto& e : v.as_array()) n += encoded_size(e);
      return n;
    }
  }
  return 0;
}

// Serializes into a byte buffer; the header is small (metadata and tensor infos), the tensor
// data never passes through here.
class Encoder {
 public:
  std::vector<uint8_t> out;
  template <typename T>
  void scalar(T v) {
    const size_t at = out.size();
    out.resize(at + sizeof(T));
    std::memcpy(out.data() + at, &v, sizeof(T));
  }
  void string(const std::string& s) {
    scalar<uint64_t>(s.size());
    out.insert(out.end(), s.begin(), s.end());
  }
  void value(const GgufValue& v) {
    switch (v.type()) {
      case GgufValueType::UINT8: scalar<uint8_t>(static_cast<uint8_t>(v.as_uint())); break;
      case GgufValueType::INT8: scalar<int8_t>(static_cast<int8_t>(v.as_int())); break;
      case GgufValueType::UINT16: scalar<uint16_t>(static_cast<uint16_t>(v.as_uint())); break;
      case GgufValueType::INT16: scalar<int16_t>(static_cast<int16_t>(v.as_int())); break;
      case GgufValueType::UINT32: scalar<uint32_t>(static_cast<uint32_t>(v.as_uint())); break;
      case GgufValueType::INT32: scalar<int32_t>(static_cast<int32_t>(v.as_int())); break;
      case GgufValueType::FLOAT32: scalar<float>(static_cast<float>(v.as_float())); break;
      case GgufValueType::BOOL: scalar<uint8_t>(v.as_bool() ? 1 : 0); break;
      case GgufValueType::STRING: string(v.as_string()); break;
      case GgufValueType::UINT64: scalar<uint64_t>(v.as_uint()); break;
      case GgufValueType::INT64: scalar<int64_t>(v.as_int()); break;
      case GgufValueType::FLOAT64: scalar<double>(v.as_float()); break;
      case GgufValueType::ARRAY:
        scalar<uint32_t>(static_cast<uint32_t>(v.elem_type()));
        scalar<uint64_t>(v.as_array().size());
        for (const auto& e : v.as_array()) value(e);
        break;
    }
  }
};

}  // namespace

GgufWriter::GgufWriter(std::filesystem::path path, uint32_t alignment) : GgufWriter(std::move(path), alignment, false) {}

GgufWriter::GgufWriter(std::filesystem::path path, uint32_t alignment, bool sizing_only)
    : path_(std::move(path)), alignment_(alignment), sizing_only_(sizing_only) {
  if (alignment_ == 0 || (alignment_ & (alignment_ - 1)) != 0) {
    throw GgufError(fmt::format("alignment {} is not a power of two", alignment_));
  }
  if (alignment_ != kGgufDefaultAlignment) set("general.alignment", GgufValue::u32(alignment_));
}

// The AtomicFile removes its temporary file when destroyed unfinished.
GgufWriter::~GgufWriter() = default;

void GgufWriter::set(std::string key, GgufValue value) {
  if (header_written_) throw GgufError("metadata cannot change after tensor data has been written");
  if (key == "general.alignment") {
    // Tensor offsets depend on it, so it must be settled before any tensor is declared.
    if (value.type() != GgufValueType::UINT32 || value.as_uint() == 0 ||
        (value.as_uint() & (value.as_uint() - 1)) != 0) {
      throw GgufError("general.alignment must be a u32 power of two");
    }
    if (!tensors_.empty() && value.as_uint() != alignment_) {
      throw GgufError("general.alignment cannot change after tensors are declared");
    }
    alignment_ = static_cast<uint32_t>(value.as_uint());
  }
  // An index by key keeps copying a file with many keys linear.
  if (const auto it = key_index_.find(key); it != key_index_.end()) {
    kv_[it->second].value = std::move(value);
    return;
  }
  key_index_.emplace(key, kv_.size());
  kv_.push_back({std::move(key), std::move(value)});
}

void GgufWriter::remove(std::string_view key) {
  const auto it = key_index_.find(std::string(key));
  if (it == key_index_.end()) return;
  kv_.erase(kv_.begin() + static_cast<std::ptrdiff_t>(it->second));
  key_index_.clear();
  for (size_t i = 0; i < kv_.size(); ++i) key_index_.emplace(kv_[i].key, i);
}

void GgufWriter::copy_metadata(const GgufFile& src) {
  for (const auto& kv : src.metadata()) {
    // Recomputed from the tensors this writer declares.
    if (kv.key != kExtensionTypesKey) set(kv.key, kv.value);
  }
}

void GgufWriter::add_tensor(std::string name, std::vector<int64_t> shape, TypeId type) {
  if (header_written_) throw GgufError("tensors must be declared before tensor data is written");
  if (shape.empty() || shape.size() > kGgufMaxDims) {
    throw GgufError(fmt::format("tensor '{}' has {} dimensions (GGUF allows 1 to {})", name, shape.size(), kGgufMaxDims));
  }
  if (tensor_names_.contains(name)) throw GgufError(fmt::format("duplicate tensor name '{}'", name));
  const TypeTraits& tt = type_traits(type);
  if (!tt.fits_row(shape[0])) {
    throw GgufError(fmt::format("tensor '{}': rows of {} values do not fill whole {} blocks of {}", name, shape[0],
                                tt.name, tt.block_size));
  }
  int64_t rows = 1;
  for (size_t d = 1; d < shape.size(); ++d) rows *= shape[d];
  const uint64_t nbytes = static_cast<uint64_t>(rows) * tt.row_bytes(shape[0]);
  tensor_names_.insert(name);
  tensors_.push_back({std::move(name), std::move(shape), &tt, data_size_, nbytes});
  data_size_ = align_up(data_size_ + nbytes, alignment_);
  if (tt.is_extension()) record_extension_type(tt.name);
}

void GgufWriter::record_extension_type(const std::string& name) {
  // A reader must be able to tell, from metadata alone, that GGML tools cannot load this file.
  std::vector<GgufValue> names;
  if (const auto it = key_index_.find(std::string(kExtensionTypesKey));
      it != key_index_.end() && kv_[it->second].value.type() == GgufValueType::ARRAY) {
    names = kv_[it->second].value.as_array();
  }
  for (const auto& n : names) {
    if (n.type() == GgufValueType::STRING && n.as_string() == name) return;
  }
  names.push_back(GgufValue::string(name));
  set(kExtensionTypesKey, GgufValue::array(GgufValueType::STRING, std::move(names)));
}

uint64_t GgufWriter::key_value_bytes(const std::string& key, const GgufValue& value) {
  return 8 + key.size() + 4 + encoded_size(value);
}

uint64_t GgufWriter::planned_header_bytes() const {
  uint64_t header = 4 + 4 + 8 + 8;
  for (const auto& kv : kv_) header += key_value_bytes(kv.key, kv.value);
  for (const auto& t : tensors_) header += tensor_info_bytes(t.name, t.shape.size());
  return header;
}

uint64_t GgufWriter::planned_file_size() const {
  const uint64_t header = planned_header_bytes();
  if (tensors_.empty()) return header;
  return align_up(header, alignment_) + data_size_;
}

void GgufWriter::write_bytes(const void* p, size_t n) {
  try {
    file_->write(p, n);
  } catch (const std::runtime_error& e) {
    throw GgufError(e.what());
  }
  position_ += n;
}

void GgufWriter::pad_to(uint64_t position) {
  static const uint8_t zeros[256] = {};
  while (position_ < position) write_bytes(zeros, static_cast<size_t>(std::min<uint64_t>(256, position - position_)));
}

void GgufWriter::write_header() {
  if (sizing_only_) throw GgufError("internal: a sizing-only GGUF writer cannot write tensor data");
  try {
    file_ = std::make_unique<AtomicFile>(path_);
  } catch (const std::runtime_error& e) {
    throw GgufError(e.what());
  }
  Encoder e;
  e.scalar<uint32_t>(0x46554747);
  e.scalar<uint32_t>(kWriteVersion);
  e.scalar<uint64_t>(tensors_.size());
  e.scalar<uint64_t>(kv_.size());
  for (const auto& kv : kv_) {
    e.string(kv.key);
    e.scalar<uint32_t>(static_cast<uint32_t>(kv.value.type()));
    e.value(kv.value);
  }
  for (const auto& t : tensors_) {
    e.string(t.name);
    e.scalar<uint32_t>(static_cast<uint32_t>(t.shape.size()));
    for (int64_t d : t.shape) e.scalar<uint64_t>(static_cast<uint64_t>(d));
    e.scalar<uint32_t>(static_cast<uint32_t>(t.type->id));
    e.scalar<uint64_t>(t.offset);
  }
  write_bytes(e.out.data(), e.out.size());
  // GGML pads the header only when tensor data follows (vocab-only files end right after it).
  if (!tensors_.empty()) pad_to(align_up(position_, alignment_));
  header_written_ = true;
  data_start_ = position_;
}

void GgufWriter::write_tensor_part(std::span<const uint8_t> data) {
  if (!header_written_) write_header();
  if (next_tensor_ >= tensors_.size()) throw GgufError("more tensor data written than tensors declared");
  const Pending& t = tensors_[next_tensor_];
  if (part_written_ + data.size() > t.nbytes) {
    throw GgufError(fmt::format("tensor '{}': {} bytes given in parts, {} expected", t.name,
                                part_written_ + data.size(), t.nbytes));
  }
  if (part_written_ == 0) pad_to(data_start_ + t.offset);
  write_bytes(data.data(), data.size());
  part_written_ += data.size();
  if (part_written_ == t.nbytes) {
    pad_to(align_up(position_, alignment_));
    part_written_ = 0;
    ++next_tensor_;
  }
}

void GgufWriter::write_tensor_data(std::span<const uint8_t> data) {
  if (!header_written_) write_header();
  if (next_tensor_ >= tensors_.size()) throw GgufError("more tensor data written than tensors declared");
  const Pending& t = tensors_[next_tensor_];
  if (part_written_ != 0) throw GgufError(fmt::format("tensor '{}': written in parts and whole", t.name));
  if (data.size() != t.nbytes) {
    throw GgufError(fmt::format("tensor '{}': {} bytes given, {} expected", t.name, data.size(), t.nbytes));
  }
  pad_to(data_start_ + t.offset);
  write_bytes(data.data(), data.size());
  pad_to(align_up(position_, alignment_));  // GGML pads after every tensor, the last one too
  ++next_tensor_;
}

void GgufWriter::finish() {
  if (!header_written_) write_header();
  if (next_tensor_ != tensors_.size()) {
    throw GgufError(fmt::format("{} of {} tensors were written", next_tensor_, tensors_.size()));
  }
  try {
    file_->commit();
  } catch (const std::runtime_error& e) {
    throw GgufError(e.what());
  }
  file_.reset();
  finished_ = true;
}

}  // namespace mixq
