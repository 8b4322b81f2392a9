#include "mixq/formats/type_table.h"

#include <algorithm>
#include <array>
#include <cctype>

#include <fmt/format.h>

#include "mixq/formats/float.h"
#include "mixq/formats/int8.h"
#include "mixq/formats/iq4.h"
#include "mixq/formats/kquants/kquants.h"
#include "mixq/formats/legacy.h"
#include "mixq/formats/lowbit.h"
#include "mixq/formats/nf4.h"
#include "mixq/formats/ternary.h"

namespace mixq {
namespace {

// Rows name only the columns that apply; the others keep TypeTraits' defaults (GCC's -Wextra would
// ask for every field of every row).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
// One row per type; the columns are TypeTraits' fields (type_table.h says what each means). Rows
// without a codec can still be sized (inspect, copy) but not converted. Keep the rows in id order.
constexpr TypeTraits kTypeTable[] = {
    {.id = TypeId::F32, .name = "f32", .family = "float", .block_size = 1, .block_bytes = 4, .row_header_bytes = 0, .quantized = false, .quantize_row = fl::quantize_row_f32, .dequantize_row = fl::dequantize_row_f32, .description = "32-bit IEEE float", .llama_ftype = 0},
    {.id = TypeId::F16, .name = "f16", .family = "float", .block_size = 1, .block_bytes = 2, .row_header_bytes = 0, .quantized = false, .quantize_row = fl::quantize_row_f16, .dequantize_row = fl::dequantize_row_f16, .description = "16-bit IEEE half", .act_format = ActFormat::F16, .llama_ftype = 1, .more_precise = TypeId::F32},
    {.id = TypeId::Q4_0, .name = "q4_0", .family = "legacy", .block_size = 32, .block_bytes = 18, .row_header_bytes = 0, .quantized = true, .quantize_row = legacy::quantize_row_q4_0, .dequantize_row = legacy::dequantize_row_q4_0, .description = "4-bit, f16 scale per 32", .act_format = ActFormat::Q8_0, .unpack_row = legacy::unpack_row_q4_0, .llama_ftype = 2, .more_precise = TypeId::Q5_0, .block_local = true},
    {.id = TypeId::Q4_1, .name = "q4_1", .family = "legacy", .block_size = 32, .block_bytes = 20, .row_header_bytes = 0, .quantized = true, .quantize_row = legacy::quantize_row_q4_1, .dequantize_row = legacy::dequantize_row_q4_1, .description = "4-bit, f16 scale and min per 32", .act_format = ActFormat::Q8_1, .unpack_row = legacy::unpack_row_q4_1, .llama_ftype = 3, .more_precise = TypeId::Q5_1},
    {.id = TypeId::Q5_0, .name = "q5_0", .family = "legacy", .block_size = 32, .block_bytes = 22, .row_header_bytes = 0, .quantized = true, .quantize_row = legacy::quantize_row_q5_0, .dequantize_row = legacy::dequantize_row_q5_0, .description = "5-bit, f16 scale per 32", .act_format = ActFormat::Q8_0, .unpack_row = legacy::unpack_row_q5_0, .llama_ftype = 8, .more_precise = TypeId::Q8_0, .block_local = true},
    {.id = TypeId::Q5_1, .name = "q5_1", .family = "legacy", .block_size = 32, .block_bytes = 24, .row_header_bytes = 0, .quantized = true, .quantize_row = legacy::quantize_row_q5_1, .dequantize_row = legacy::dequantize_row_q5_1, .description = "5-bit, f16 scale and min per 32", .act_format = ActFormat::Q8_1, .unpack_row = legacy::unpack_row_q5_1, .llama_ftype = 9, .more_precise = TypeId::Q8_0},
    {.id = TypeId::Q8_0, .name = "q8_0", .family = "legacy", .block_size = 32, .block_bytes = 34, .row_header_bytes = 0, .quantized = true, .quantize_row = legacy::quantize_row_q8_0, .dequantize_row = legacy::dequantize_row_q8_0, .description = "8-bit, f16 scale per 32", .act_format = ActFormat::Q8_0, .unpack_row = legacy::unpack_row_q8_0, .llama_ftype = 7, .more_precise = TypeId::F16, .block_local = true},
    {.id = TypeId::Q8_1, .name = "q8_1", .family = "legacy", .block_size = 32, .block_bytes = 36, .row_header_bytes = 0, .quantized = true, .quantize_row = legacy::quantize_row_q8_1, .dequantize_row = legacy::dequantize_row_q8_1, .description = "8-bit, f16 scale and sum per 32 (activations)", .weight = false},
    {.id = TypeId::Q2_K, .name = "q2_K", .family = "kquants", .block_size = 256, .block_bytes = 84, .row_header_bytes = 0, .quantized = true, .quantize_row = kq::quantize_row_q2_k, .dequantize_row = kq::dequantize_row_q2_k, .description = "2-bit k-quant, 4-bit scales/mins per 16", .act_format = ActFormat::Q8_K, .unpack_row = kq::unpack_row_q2_k, .llama_ftype = 10, .more_precise = TypeId::Q3_K, .llamacpp_fallback = TypeId::Q4_0},
    {.id = TypeId::Q3_K, .name = "q3_K", .family = "kquants", .block_size = 256, .block_bytes = 110, .row_header_bytes = 0, .quantized = true, .quantize_row = kq::quantize_row_q3_k, .dequantize_row = kq::dequantize_row_q3_k, .description = "3-bit k-quant, 6-bit scales per 16", .act_format = ActFormat::Q8_K, .unpack_row = kq::unpack_row_q3_k, .llama_ftype = 12, .more_precise = TypeId::Q4_K, .llamacpp_fallback = TypeId::Q4_0},
    {.id = TypeId::Q4_K, .name = "q4_K", .family = "kquants", .block_size = 256, .block_bytes = 144, .row_header_bytes = 0, .quantized = true, .quantize_row = kq::quantize_row_q4_k, .dequantize_row = kq::dequantize_row_q4_k, .description = "4-bit k-quant, 6-bit scales/mins per 32", .act_format = ActFormat::Q8_K, .unpack_row = kq::unpack_row_q4_k, .llama_ftype = 15, .more_precise = TypeId::Q5_K, .llamacpp_fallback = TypeId::Q5_0},
    {.id = TypeId::Q5_K, .name = "q5_K", .family = "kquants", .block_size = 256, .block_bytes = 176, .row_header_bytes = 0, .quantized = true, .quantize_row = kq::quantize_row_q5_k, .dequantize_row = kq::dequantize_row_q5_k, .description = "5-bit k-quant, 6-bit scales/mins per 32", .act_format = ActFormat::Q8_K, .unpack_row = kq::unpack_row_q5_k, .llama_ftype = 17, .more_precise = TypeId::Q6_K, .llamacpp_fallback = TypeId::Q5_1},
    {.id = TypeId::Q6_K, .name = "q6_K", .family = "kquants", .block_size = 256, .block_bytes = 210, .row_header_bytes = 0, .quantized = true, .quantize_row = kq::quantize_row_q6_k, .dequantize_row = kq::dequantize_row_q6_k, .description = "6-bit k-quant, 8-bit scales per 16", .act_format = ActFormat::Q8_K, .unpack_row = kq::unpack_row_q6_k, .llama_ftype = 18, .more_precise = TypeId::Q8_0, .llamacpp_fallback = TypeId::Q8_0},
    {.id = TypeId::Q8_K, .name = "q8_K", .family = "kquants", .block_size = 256, .block_bytes = 292, .row_header_bytes = 0, .quantized = true, .quantize_row = kq::quantize_row_q8_k, .dequantize_row = kq::dequantize_row_q8_k, .description = "8-bit k-quant (activations), f32 scale", .act_format = ActFormat::Q8_K, .unpack_row = kq::unpack_row_q8_k, .weight = false},
    {.id = TypeId::IQ2_XXS, .name = "iq2_xxs", .family = "iq2", .block_size = 256, .block_bytes = 66, .row_header_bytes = 0, .quantized = true, .quantize_row = nullptr, .dequantize_row = nullptr, .description = "2.06 bpw lattice quant", .llamacpp_fallback = TypeId::IQ4_NL},
    {.id = TypeId::IQ2_XS, .name = "iq2_xs", .family = "iq2", .block_size = 256, .block_bytes = 74, .row_header_bytes = 0, .quantized = true, .quantize_row = nullptr, .dequantize_row = nullptr, .description = "2.31 bpw lattice quant", .llamacpp_fallback = TypeId::IQ4_NL},
    {.id = TypeId::IQ3_XXS, .name = "iq3_xxs", .family = "iq3", .block_size = 256, .block_bytes = 98, .row_header_bytes = 0, .quantized = true, .quantize_row = nullptr, .dequantize_row = nullptr, .description = "3.06 bpw lattice quant", .llamacpp_fallback = TypeId::IQ4_NL},
    {.id = TypeId::IQ1_S, .name = "iq1_s", .family = "iq1", .block_size = 256, .block_bytes = 50, .row_header_bytes = 0, .quantized = true, .quantize_row = nullptr, .dequantize_row = nullptr, .description = "1.56 bpw lattice quant", .llamacpp_fallback = TypeId::IQ4_NL},
    {.id = TypeId::IQ4_NL, .name = "iq4_nl", .family = "iq4", .block_size = 32, .block_bytes = 18, .row_header_bytes = 0, .quantized = true, .quantize_row = iq4::quantize_row_iq4_nl, .dequantize_row = iq4::dequantize_row_iq4_nl, .description = "4-bit non-linear, f16 scale per 32", .act_format = ActFormat::Q8_0, .unpack_row = iq4::unpack_row_iq4_nl, .llama_ftype = 25, .more_precise = TypeId::Q5_0},
    {.id = TypeId::IQ3_S, .name = "iq3_s", .family = "iq3", .block_size = 256, .block_bytes = 110, .row_header_bytes = 0, .quantized = true, .quantize_row = nullptr, .dequantize_row = nullptr, .description = "3.44 bpw lattice quant", .llamacpp_fallback = TypeId::IQ4_NL},
    {.id = TypeId::IQ2_S, .name = "iq2_s", .family = "iq2", .block_size = 256, .block_bytes = 82, .row_header_bytes = 0, .quantized = true, .quantize_row = nullptr, .dequantize_row = nullptr, .description = "2.5 bpw lattice quant", .llamacpp_fallback = TypeId::IQ4_NL},
    {.id = TypeId::IQ4_XS, .name = "iq4_xs", .family = "iq4", .block_size = 256, .block_bytes = 136, .row_header_bytes = 0, .quantized = true, .quantize_row = iq4::quantize_row_iq4_xs, .dequantize_row = iq4::dequantize_row_iq4_xs, .description = "4.25 bpw non-linear, 6-bit scales per 32", .act_format = ActFormat::Q8_K, .unpack_row = iq4::unpack_row_iq4_xs, .llama_ftype = 30, .more_precise = TypeId::Q5_K, .llamacpp_fallback = TypeId::IQ4_NL},
    {.id = TypeId::I8, .name = "i8", .family = "float", .block_size = 1, .block_bytes = 1, .row_header_bytes = 0, .quantized = false, .quantize_row = nullptr, .dequantize_row = fl::dequantize_row_i8, .description = "8-bit integer"},
    {.id = TypeId::I16, .name = "i16", .family = "float", .block_size = 1, .block_bytes = 2, .row_header_bytes = 0, .quantized = false, .quantize_row = nullptr, .dequantize_row = fl::dequantize_row_i16, .description = "16-bit integer"},
    {.id = TypeId::I32, .name = "i32", .family = "float", .block_size = 1, .block_bytes = 4, .row_header_bytes = 0, .quantized = false, .quantize_row = nullptr, .dequantize_row = fl::dequantize_row_i32, .description = "32-bit integer"},
    {.id = TypeId::I64, .name = "i64", .family = "float", .block_size = 1, .block_bytes = 8, .row_header_bytes = 0, .quantized = false, .quantize_row = nullptr, .dequantize_row = nullptr, .description = "64-bit integer"},
    {.id = TypeId::F64, .name = "f64", .family = "float", .block_size = 1, .block_bytes = 8, .row_header_bytes = 0, .quantized = false, .quantize_row = nullptr, .dequantize_row = fl::dequantize_row_f64, .description = "64-bit IEEE float"},
    {.id = TypeId::IQ1_M, .name = "iq1_m", .family = "iq1", .block_size = 256, .block_bytes = 56, .row_header_bytes = 0, .quantized = true, .quantize_row = nullptr, .dequantize_row = nullptr, .description = "1.75 bpw lattice quant", .llamacpp_fallback = TypeId::IQ4_NL},
    {.id = TypeId::BF16, .name = "bf16", .family = "float", .block_size = 1, .block_bytes = 2, .row_header_bytes = 0, .quantized = false, .quantize_row = fl::quantize_row_bf16, .dequantize_row = fl::dequantize_row_bf16, .description = "bfloat16", .act_format = ActFormat::BF16, .llama_ftype = 32, .more_precise = TypeId::F32},
    {.id = TypeId::TQ1_0, .name = "tq1_0", .family = "ternary", .block_size = 256, .block_bytes = 54, .row_header_bytes = 0, .quantized = true, .quantize_row = ternary::quantize_row_tq1_0, .dequantize_row = ternary::dequantize_row_tq1_0, .description = "ternary, 1.69 bpw", .act_format = ActFormat::Q8_K, .unpack_row = ternary::unpack_row_tq1_0, .llamacpp_fallback = TypeId::Q4_0},
    {.id = TypeId::TQ2_0, .name = "tq2_0", .family = "ternary", .block_size = 256, .block_bytes = 66, .row_header_bytes = 0, .quantized = true, .quantize_row = ternary::quantize_row_tq2_0, .dequantize_row = ternary::dequantize_row_tq2_0, .description = "ternary, 2.06 bpw", .act_format = ActFormat::Q8_K, .unpack_row = ternary::unpack_row_tq2_0, .llamacpp_fallback = TypeId::Q4_0},
    {.id = TypeId::MXFP4, .name = "mxfp4", .family = "mxfp4", .block_size = 32, .block_bytes = 17, .row_header_bytes = 0, .quantized = true, .quantize_row = nullptr, .dequantize_row = nullptr, .description = "4-bit microscaling float (E2M1, E8M0 scale)"},
    // mixq's own formats: ids outside GGML's range, readable only by mixq.
    {.id = TypeId::NF4, .name = "nf4", .family = "nf4", .block_size = 64, .block_bytes = 34, .row_header_bytes = 0, .quantized = true, .quantize_row = nf4::quantize_row_nf4, .dequantize_row = nf4::dequantize_row_nf4, .description = "NormalFloat4, f16 absmax per 64 (bitsandbytes)", .quantize_row_calib = nf4::quantize_row_nf4_calib, .more_precise = TypeId::I8_MM},
    {.id = TypeId::I8_ROW, .name = "i8_row", .family = "int8", .block_size = 1, .block_bytes = 1, .row_header_bytes = 4, .quantized = true, .quantize_row = int8::quantize_row_i8_row, .dequantize_row = int8::dequantize_row_i8_row, .description = "symmetric INT8, f32 scale per row (per channel)", .act_format = ActFormat::Q8_0, .unpack_row = int8::unpack_row_i8_row, .quantize_row_calib = int8::quantize_row_i8_row_calib, .more_precise = TypeId::F16},
    {.id = TypeId::I8_MM, .name = "i8_mm", .family = "int8", .block_size = 64, .block_bytes = 68, .row_header_bytes = 0, .quantized = true, .quantize_row = int8::quantize_row_i8_mm, .dequantize_row = int8::dequantize_row_i8_mm, .description = "asymmetric INT8 min/max, f16 scale+min per 64", .quantize_row_calib = int8::quantize_row_i8_mm_calib, .more_precise = TypeId::F16},
    {.id = TypeId::LB3, .name = "lb3", .family = "lowbit", .block_size = 64, .block_bytes = 28, .row_header_bytes = 0, .quantized = true, .quantize_row = lowbit::quantize_row_lb3, .dequantize_row = lowbit::dequantize_row_lb3, .description = "3-bit packed 8 per 3 bytes, f16 scale+zero per 64", .act_format = ActFormat::Q8_0, .unpack_row = lowbit::unpack_row_lb3, .quantize_row_calib = lowbit::quantize_row_lb3_calib, .more_precise = TypeId::NF4},
    {.id = TypeId::LB2, .name = "lb2", .family = "lowbit", .block_size = 64, .block_bytes = 20, .row_header_bytes = 0, .quantized = true, .quantize_row = lowbit::quantize_row_lb2, .dequantize_row = lowbit::dequantize_row_lb2, .description = "2-bit packed 4 per byte, f16 scale+zero per 64", .act_format = ActFormat::Q8_0, .unpack_row = lowbit::unpack_row_lb2, .quantize_row_calib = lowbit::quantize_row_lb2_calib, .more_precise = TypeId::LB3},
};
#pragma GCC diagnostic pop

bool iequals(std::string_view a, std::string_view b) {
  return a.size() == b.size() &&
         std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return std::tolower(static_cast<unsigned char>(x)) == std::tolower(static_cast<unsigned char>(y));
         });
}

const TypeTraits& checked_codec(TypeId type, int64_t n_per_row, bool quantize) {
  const TypeTraits& t = type_traits(type);
  if (quantize ? !t.can_quantize() : !t.can_dequantize()) {
    throw TypeError(fmt::format("type {} has no {} in mixq", t.name, quantize ? "quantizer" : "dequantizer"));
  }
  if (!t.fits_row(n_per_row)) {
    throw TypeError(fmt::format("type {} needs rows that are a multiple of {} values; this row has {}",
                                t.name, t.block_size, n_per_row));
  }
  return t;
}

}  // namespace

std::span<const TypeTraits> all_types() { return kTypeTable; }

const TypeTraits* find_type(uint32_t id) {
  for (const auto& t : kTypeTable) {
    if (static_cast<uint32_t>(t.id) == id) return &t;
  }
  return nullptr;
}

const TypeTraits* find_type(std::string_view name) {
  for (const auto& t : kTypeTable) {
    if (iequals(t.name, name)) return &t;
  }
  return nullptr;
}

const TypeTraits& type_traits(TypeId id) {
  const TypeTraits* t = find_type(static_cast<uint32_t>(id));
  if (!t) throw TypeError(fmt::format("unknown type id {}", static_cast<uint32_t>(id)));
  return *t;
}

const TypeTraits& require_type(std::string_view name) {
  if (const TypeTraits* t = find_type(name)) return *t;
  std::string known;
  for (const auto& t : kTypeTable) {
    if (!t.can_quantize()) continue;
    if (!known.empty()) known += ", ";
    known += t.name;
  }
  throw TypeError(fmt::format("unknown type '{}'; types mixq can write: {}", name, known));
}

void quantize_rows(TypeId type, const float* src, void* dst, int64_t nrows, int64_t n_per_row,
                   const float* importance) {
  const TypeTraits& t = checked_codec(type, n_per_row, true);
  const size_t rb = t.row_bytes(n_per_row);
  for (int64_t r = 0; r < nrows; ++r) {
    t.quantize_row(src + r * n_per_row, static_cast<unsigned char*>(dst) + r * rb, n_per_row, importance);
  }
}

void dequantize_rows(TypeId type, const void* src, float* dst, int64_t nrows, int64_t n_per_row) {
  const TypeTraits& t = checked_codec(type, n_per_row, false);
  const size_t rb = t.row_bytes(n_per_row);
  for (int64_t r = 0; r < nrows; ++r) {
    t.dequantize_row(static_cast<const unsigned char*>(src) + r * rb, dst + r * n_per_row, n_per_row);
  }
}

}  // namespace mixq
