#include "mixq/convert/ctranslate2.h"

#include <cstring>
#include <stdexcept>

#include <fmt/format.h>

#include "mixq/formats/half.h"
#include "mixq/io/byte_cursor.h"

namespace mixq {

namespace {

size_t dtype_bytes(Ct2Dtype t) {
  switch (t) {
    case Ct2Dtype::F32: case Ct2Dtype::I32: return 4;
    case Ct2Dtype::F16: case Ct2Dtype::BF16: case Ct2Dtype::I16: return 2;
    case Ct2Dtype::I8: return 1;
  }
  return 0;
}

std::string read_string(ByteCursor& in, const char* what) {
  const auto n = in.read<uint16_t>(what);
  if (n == 0) in.fail(fmt::format("an empty string for {}", what));
  std::string s = in.take_string(n, what);
  if (s.back() != '\0') in.fail(fmt::format("{} is not NUL-terminated", what));
  s.pop_back();
  return s;
}

}  // namespace

int64_t Ct2Variable::elements() const {
  int64_t n = 1;
  for (auto d : shape) n *= d;
  return n;
}

Ct2Model Ct2Model::open(const std::filesystem::path& model_bin) {
  Ct2Model m;
  m.path_ = model_bin;
  m.map_ = MappedFile(model_bin);
  ByteCursor in(m.map_.bytes(), model_bin.string() + ": not a valid CTranslate2 model");
  m.version = in.read<uint32_t>("the binary version");
  if (m.version < 1 || m.version > 6) {
    in.fail(fmt::format("binary version {} (mixq reads versions 1 to 6)", m.version));
  }
  if (m.version >= 2) {
    m.spec = read_string(in, "the spec name");
    m.revision = in.read<uint32_t>("the spec revision");
  }
  const auto count = in.read<uint32_t>("the variable count");
  if (count > 1000000) in.fail(fmt::format("{} variables", count));
  for (uint32_t i = 0; i < count; ++i) {
    Ct2Variable v;
    v.name = read_string(in, "a variable name");
    const auto rank = in.read<uint8_t>("a variable rank");
    if (rank > 8) in.fail(fmt::format("variable '{}' has rank {}", v.name, rank));
    int64_t n = 1;
    for (int d = 0; d < rank; ++d) {
      const auto dim = in.read<uint32_t>("a variable shape");
      if (dim == 0 || n > (int64_t{1} << 40) / dim) in.fail(fmt::format("variable '{}' has a dimension out of range", v.name));
      v.shape.push_back(dim);
      n *= dim;
    }
    const auto dtype = in.read<uint8_t>("a variable type");
    if (dtype > 5) in.fail(fmt::format("variable '{}' has unknown data type {}", v.name, dtype));
    v.dtype = static_cast<Ct2Dtype>(dtype);
    v.nbytes = in.read<uint32_t>("a variable size");
    if (v.nbytes != static_cast<size_t>(n) * dtype_bytes(v.dtype)) {
      in.fail(fmt::format("variable '{}' holds {} bytes, its shape and type need {}", v.name, v.nbytes,
                          static_cast<size_t>(n) * dtype_bytes(v.dtype)));
    }
    v.data = in.take(v.nbytes, "variable data").data();
    m.variables.push_back(std::move(v));
  }
  if (!in.at_end()) {
    const auto n_alias = in.read<uint32_t>("the alias count");
    if (n_alias > 1000000) in.fail(fmt::format("{} aliases", n_alias));
    for (uint32_t i = 0; i < n_alias; ++i) {
      std::string alias = read_string(in, "an alias");
      std::string target = read_string(in, "an alias target");
      m.aliases[std::move(alias)] = std::move(target);
    }
  }
  if (!in.at_end()) in.fail("bytes after the last alias");
  return m;
}

const Ct2Variable* Ct2Model::find(const std::string& name) const {
  for (const auto& v : variables) {
    if (v.name == name) return &v;
  }
  if (auto a = aliases.find(name); a != aliases.end()) {
    for (const auto& v : variables) {
      if (v.name == a->second) return &v;
    }
  }
  return nullptr;
}

const Ct2Variable& Ct2Model::get(const std::string& name) const {
  if (const Ct2Variable* v = find(name)) return *v;
  throw std::runtime_error(fmt::format("{}: the CTranslate2 model has no variable '{}'", path_.string(), name));
}

std::vector<float> Ct2Model::to_float(const Ct2Variable& v) const {
  const auto n = static_cast<size_t>(v.elements());
  std::vector<float> out(n);
  for (size_t i = 0; i < n; ++i) {
    switch (v.dtype) {
      case Ct2Dtype::F32: std::memcpy(&out[i], v.data + 4 * i, 4); break;
      case Ct2Dtype::F16: {
        uint16_t h;
        std::memcpy(&h, v.data + 2 * i, 2);
        out[i] = fp16_to_fp32(h);
        break;
      }
      case Ct2Dtype::BF16: {
        uint16_t h;
        std::memcpy(&h, v.data + 2 * i, 2);
        const uint32_t bits = static_cast<uint32_t>(h) << 16;
        std::memcpy(&out[i], &bits, 4);
        break;
      }
      case Ct2Dtype::I8: out[i] = static_cast<float>(static_cast<int8_t>(v.data[i])); break;
      case Ct2Dtype::I16: {
        int16_t x;
        std::memcpy(&x, v.data + 2 * i, 2);
        out[i] = x;
        break;
      }
      case Ct2Dtype::I32: {
        int32_t x;
        std::memcpy(&x, v.data + 4 * i, 4);
        out[i] = static_cast<float>(x);
        break;
      }
    }
  }
  return out;
}

}  // namespace mixq
