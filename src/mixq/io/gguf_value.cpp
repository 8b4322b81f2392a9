#include <bit>
#include <cstring>

#include <fmt/format.h>

#include "mixq/io/gguf.h"

namespace mixq {

const char* gguf_value_type_name(GgufValueType t) {
  switch (t) {
    case GgufValueType::UINT8: return "u8";
    case GgufValueType::INT8: return "i8";
    case GgufValueType::UINT16: return "u16";
    case GgufValueType::INT16: return "i16";
    case GgufValueType::UINT32: return "u32";
    case GgufValueType::INT32: return "i32";
    case GgufValueType::FLOAT32: return "f32";
    case GgufValueType::BOOL: return "bool";
    case GgufValueType::STRING: return "str";
    case GgufValueType::ARRAY: return "arr";
    case GgufValueType::UINT64: return "u64";
    case GgufValueType::INT64: return "i64";
    case GgufValueType::FLOAT64: return "f64";
  }
  return "?";
}

GgufValue GgufValue::integer(GgufValueType t, int64_t v) {
  GgufValue r;
  r.type_ = t;
  r.bits_ = static_cast<uint64_t>(v);
  return r;
}

GgufValue GgufValue::u64(uint64_t v) {
  GgufValue r;
  r.type_ = GgufValueType::UINT64;
  r.bits_ = v;
  return r;
}

GgufValue GgufValue::f32(float v) {
  GgufValue r;
  r.type_ = GgufValueType::FLOAT32;
  r.bits_ = std::bit_cast<uint32_t>(v);
  return r;
}

GgufValue GgufValue::f64(double v) {
  GgufValue r;
  r.type_ = GgufValueType::FLOAT64;
  r.bits_ = std::bit_cast<uint64_t>(v);
  return r;
}

GgufValue GgufValue::boolean(bool v) {
  GgufValue r;
  r.type_ = GgufValueType::BOOL;
  r.bits_ = v ? 1 : 0;
  return r;
}

GgufValue GgufValue::string(std::string v) {
  GgufValue r;
  r.type_ = GgufValueType::STRING;
  r.str_ = std::move(v);
  return r;
}

GgufValue GgufValue::array(GgufValueType elem_type, std::vector<GgufValue> elems) {
  for (const auto& e : elems) {
    if (e.type_ != elem_type) {
      throw GgufError(fmt::format("array of {} holds an element of type {}", gguf_value_type_name(elem_type),
                                  gguf_value_type_name(e.type_)));
    }
  }
  GgufValue r;
  r.type_ = GgufValueType::ARRAY;
  r.elem_type_ = elem_type;
  r.arr_ = std::make_shared<const std::vector<GgufValue>>(std::move(elems));
  return r;
}

GgufValue GgufValue::string_array(const std::vector<std::string>& v) {
  std::vector<GgufValue> elems;
  elems.reserve(v.size());
  for (const auto& s : v) elems.push_back(string(s));
  return array(GgufValueType::STRING, std::move(elems));
}

bool GgufValue::is_integer() const {
  switch (type_) {
    case GgufValueType::UINT8: case GgufValueType::INT8: case GgufValueType::UINT16:
    case GgufValueType::INT16: case GgufValueType::UINT32: case GgufValueType::INT32:
    case GgufValueType::UINT64: case GgufValueType::INT64:
      return true;
    default:
      return false;
  }
}

int64_t GgufValue::as_int() const {
  if (!is_integer()) throw GgufError(fmt::format("expected an integer, found {}", gguf_value_type_name(type_)));
  if (type_ == GgufValueType::UINT64 && bits_ > static_cast<uint64_t>(INT64_MAX)) {
    throw GgufError(fmt::format("integer {} is out of range", bits_));
  }
  return static_cast<int64_t>(bits_);
}

uint64_t GgufValue::as_uint() const {
  if (type_ == GgufValueType::UINT64) return bits_;
  const int64_t v = as_int();
  if (v < 0) throw GgufError(fmt::format("expected a non-negative integer, found {}", v));
  return static_cast<uint64_t>(v);
}

double GgufValue::as_float() const {
  if (type_ == GgufValueType::FLOAT32) return std::bit_cast<float>(static_cast<uint32_t>(bits_));
  if (type_ == GgufValueType::FLOAT64) return std::bit_cast<double>(bits_);
  if (type_ == GgufValueType::UINT64) return static_cast<double>(bits_);
  if (is_integer()) return static_cast<double>(as_int());
  throw GgufError(fmt::format("expected a number, found {}", gguf_value_type_name(type_)));
}

bool GgufValue::as_bool() const {
  if (type_ != GgufValueType::BOOL) throw GgufError(fmt::format("expected a bool, found {}", gguf_value_type_name(type_)));
  return bits_ != 0;
}

const std::string& GgufValue::as_string() const {
  if (type_ != GgufValueType::STRING) throw GgufError(fmt::format("expected a string, found {}", gguf_value_type_name(type_)));
  return str_;
}

const std::vector<GgufValue>& GgufValue::as_array() const {
  if (type_ != GgufValueType::ARRAY) throw GgufError(fmt::format("expected an array, found {}", gguf_value_type_name(type_)));
  return *arr_;
}

std::string GgufValue::to_string(size_t max_elems) const {
  switch (type_) {
    case GgufValueType::STRING: {
      std::string s;
      for (char c : str_.size() > 120 ? str_.substr(0, 117) : str_) {
        // Keep one value on one line: escape control characters.
        if (c == '\n') s += "\\n";
        else if (c == '\t') s += "\\t";
        else if (static_cast<unsigned char>(c) < 0x20) s += fmt::format("\\x{:02x}", static_cast<unsigned char>(c));
        else s += c;
      }
      if (str_.size() > 120) s += "...";
      return fmt::format("\"{}\"", s);
    }
    case GgufValueType::BOOL: return bits_ ? "true" : "false";
    case GgufValueType::FLOAT32: return fmt::format("{}", static_cast<float>(as_float()));
    case GgufValueType::FLOAT64: return fmt::format("{}", as_float());
    case GgufValueType::UINT64: return fmt::format("{}", bits_);
    case GgufValueType::ARRAY: {
      const std::vector<GgufValue>& a = *arr_;
      std::string s = fmt::format("[{} x {}: ", a.size(), gguf_value_type_name(elem_type_));
      for (size_t i = 0; i < a.size() && i < max_elems; ++i) {
        if (i) s += ", ";
        s += a[i].to_string(max_elems);
      }
      if (a.size() > max_elems) s += ", ...";
      return s + "]";
    }
    default: return fmt::format("{}", as_int());
  }
}

bool GgufValue::operator==(const GgufValue& o) const {
  if (type_ != o.type_ || elem_type_ != o.elem_type_ || bits_ != o.bits_ || str_ != o.str_) return false;
  if (type_ != GgufValueType::ARRAY || arr_ == o.arr_) return true;
  return *arr_ == *o.arr_;
}

int64_t GgufTensor::n_elements() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

}  // namespace mixq
