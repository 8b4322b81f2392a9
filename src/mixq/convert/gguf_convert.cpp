#include "mixq/convert/gguf_convert.h"

#include <vector>

#include <fmt/format.h>

namespace mixq {

namespace {

bool is_float_storage(TypeId t) { return t == TypeId::F32 || t == TypeId::F16 || t == TypeId::BF16; }

TypeId target_type(const GgufTensor& t, std::optional<TypeId> outtype) {
  if (!outtype) return t.type->id;
  if (*outtype == TypeId::F32) return TypeId::F32;
  if (t.shape.size() >= 2 && is_float_storage(t.type->id)) return *outtype;
  return t.type->id;
}

}  // namespace

ConvertStats convert_gguf(const GgufFile& in, const std::filesystem::path& out, std::optional<TypeId> outtype) {
  if (outtype && !is_float_storage(*outtype)) {
    throw TypeError(fmt::format("convert writes f32, f16 or bf16, not {}; use `mixq quantize` for block types",
                                type_traits(*outtype).name));
  }
  GgufWriter w(out, in.alignment());
  w.copy_metadata(in);
  if (outtype) {
    // llama.cpp's llama_ftype numbering: ALL_F32 = 0, MOSTLY_F16 = 1, MOSTLY_BF16 = 32.
    const uint32_t ftype = *outtype == TypeId::F32 ? 0 : *outtype == TypeId::F16 ? 1 : 32;
    w.set("general.file_type", GgufValue::u32(ftype));
  }
  ConvertStats stats;
  for (const auto& t : in.tensors()) w.add_tensor(t.name, t.shape, target_type(t, outtype));
  // One tensor at a time: peak memory is the largest tensor, not the model.
  std::vector<float> values;
  std::vector<uint8_t> bytes;
  for (const auto& t : in.tensors()) {
    const TypeId to = target_type(t, outtype);
    ++stats.tensors;
    if (to == t.type->id) {
      w.write_tensor_data(t.bytes());
    } else {
      values.resize(static_cast<size_t>(t.n_elements()));
      dequantize_rows(t.type->id, t.data, values.data(), t.n_rows(), t.row_length());
      const TypeTraits& tt = type_traits(to);
      bytes.resize(tt.row_bytes(t.row_length()) * static_cast<size_t>(t.n_rows()));
      quantize_rows(to, values.data(), bytes.data(), t.n_rows(), t.row_length());
      w.write_tensor_data(bytes);
      ++stats.converted;
    }
    in.drop_pages(t);
  }
  w.finish();
  stats.bytes_written = w.bytes_written();
  return stats;
}

}  // namespace mixq
