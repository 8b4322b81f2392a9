// CTranslate2's model.bin (binary versions 1 to 6): u32 version, string spec name, u32 spec
// revision, u32 variable count, then per variable: string name, u8 rank, u32 dims[rank] (outermost
// first), u8 data type, u32 byte count, the bytes; then u32 alias count and (alias, target) string
// pairs. A string is u16 length (with the terminating NUL) then its bytes. Data types: 0 float32,
// 1 int8, 2 int16, 3 int32, 4 float16, 5 bfloat16. (Versions 1-2 wrote no spec name or revision.)
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "mixq/io/mapped_file.h"

namespace mixq {

enum class Ct2Dtype : uint8_t { F32 = 0, I8 = 1, I16 = 2, I32 = 3, F16 = 4, BF16 = 5 };

struct Ct2Variable {
  std::string name;
  std::vector<int64_t> shape;  // outermost first (row-major)
  Ct2Dtype dtype;
  const uint8_t* data = nullptr;
  size_t nbytes = 0;
  int64_t elements() const;
};

class Ct2Model {
 public:
  // Throws std::runtime_error "PATH: not a valid CTranslate2 model: WHAT (at byte N)".
  static Ct2Model open(const std::filesystem::path& model_bin);
  uint32_t version = 0;
  std::string spec;  // e.g. "WhisperSpec"
  uint32_t revision = 0;
  std::vector<Ct2Variable> variables;
  std::map<std::string, std::string> aliases;
  // The variable called `name` (or the one an alias names), or null.
  const Ct2Variable* find(const std::string& name) const;
  // The same, throwing "PATH: the CTranslate2 model has no variable 'NAME'" when absent.
  const Ct2Variable& get(const std::string& name) const;
  // Element `i` of a variable converted to float (F32, F16, BF16, I8, I16, I32).
  std::vector<float> to_float(const Ct2Variable& v) const;
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
  MappedFile map_;
};

}  // namespace mixq
