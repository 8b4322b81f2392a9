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

// Columns: id, name, family, block size, bytes per block, row header bytes, quantized,
// quantize_row, dequantize_row, description. Rows without a codec can still be sized (inspect,
// copy) but not converted. Keep the rows in id order.
constexpr TypeTraits kTypeTable[] = {
    {TypeId::F32, "f32", "float", 1, 4, 0, false, fl::quantize_row_f32, fl::dequantize_row_f32, "32-bit IEEE float"},
    {TypeId::F16, "f16", "float", 1, 2, 0, false, fl::quantize_row_f16, fl::dequantize_row_f16, "16-bit IEEE half", ActFormat::F16, nullptr},
    {TypeId::Q4_0, "q4_0", "legacy", 32, 18, 0, true, legacy::quantize_row_q4_0, legacy::dequantize_row_q4_0, "4-bit, f16 scale per 32", ActFormat::Q8_0, legacy::unpack_row_q4_0},
    {TypeId::Q4_1, "q4_1", "legacy", 32, 20, 0, true, legacy::quantize_row_q4_1, legacy::dequantize_row_q4_1, "4-bit, f16 scale and min per 32", ActFormat::Q8_1, legacy::unpack_row_q4_1},
    {TypeId::Q5_0, "q5_0", "legacy", 32, 22, 0, true, legacy::quantize_row_q5_0, legacy::dequantize_row_q5_0, "5-bit, f16 scale per 32", ActFormat::Q8_0, legacy::unpack_row_q5_0},
    {TypeId::Q5_1, "q5_1", "legacy", 32, 24, 0, true, legacy::quantize_row_q5_1, legacy::dequantize_row_q5_1, "5-bit, f16 scale and min per 32", ActFormat::Q8_1, legacy::unpack_row_q5_1},
    {TypeId::Q8_0, "q8_0", "legacy", 32, 34, 0, true, legacy::quantize_row_q8_0, legacy::dequantize_row_q8_0, "8-bit, f16 scale per 32", ActFormat::Q8_0, legacy::unpack_row_q8_0},
    {TypeId::Q8_1, "q8_1", "legacy", 32, 36, 0, true, legacy::quantize_row_q8_1, legacy::dequantize_row_q8_1, "8-bit, f16 scale and sum per 32 (activations)"},
    {TypeId::Q2_K, "q2_K", "kquants", 256, 84, 0, true, kq::quantize_row_q2_k, kq::dequantize_row_q2_k, "2-bit k-quant, 4-bit scales/mins per 16", ActFormat::Q8_K, kq::unpack_row_q2_k},
    {TypeId::Q3_K, "q3_K", "kquants", 256, 110, 0, true, kq::quantize_row_q3_k, kq::dequantize_row_q3_k, "3-bit k-quant, 6-bit scales per 16", ActFormat::Q8_K, kq::unpack_row_q3_k},
    {TypeId::Q4_K, "q4_K", "kquants", 256, 144, 0, true, kq::quantize_row_q4_k, kq::dequantize_row_q4_k, "4-bit k-quant, 6-bit scales/mins per 32", ActFormat::Q8_K, kq::unpack_row_q4_k},
    {TypeId::Q5_K, "q5_K", "kquants", 256, 176, 0, true, kq::quantize_row_q5_k, kq::dequantize_row_q5_k, "5-bit k-quant, 6-bit scales/mins per 32", ActFormat::Q8_K, kq::unpack_row_q5_k},
    {TypeId::Q6_K, "q6_K", "kquants", 256, 210, 0, true, kq::quantize_row_q6_k, kq::dequantize_row_q6_k, "6-bit k-quant, 8-bit scales per 16", ActFormat::Q8_K, kq::unpack_row_q6_k},
    {TypeId::Q8_K, "q8_K", "kquants", 256, 292, 0, true, kq::quantize_row_q8_k, kq::dequantize_row_q8_k, "8-bit k-quant (activations), f32 scale", ActFormat::Q8_K, kq::unpack_row_q8_k},
    {TypeId::IQ2_XXS, "iq2_xxs", "iq2", 256, 66, 0, true, nullptr, nullptr, "2.06 bpw lattice quant"},
    {TypeId::IQ2_XS, "iq2_xs", "iq2", 256, 74, 0, true, nullptr, nullptr, "2.31 bpw lattice quant"},
    {TypeId::IQ3_XXS, "iq3_xxs", "iq3", 256, 98, 0, true, nullptr, nullptr, "3.06 bpw lattice quant"},
    {TypeId::IQ1_S, "iq1_s", "iq1", 256, 50, 0, true, nullptr, nullptr, "1.56 bpw lattice quant"},
    {TypeId::IQ4_NL, "iq4_nl", "iq4", 32, 18, 0, true, iq4::quantize_row_iq4_nl, iq4::dequantize_row_iq4_nl, "4-bit non-linear, f16 scale per 32", ActFormat::Q8_0, iq4::unpack_row_iq4_nl},
    {TypeId::IQ3_S, "iq3_s", "iq3", 256, 110, 0, true, nullptr, nullptr, "3.44 bpw lattice quant"},
    {TypeId::IQ2_S, "iq2_s", "iq2", 256, 82, 0, true, nullptr, nullptr, "2.5 bpw lattice quant"},
    {TypeId::IQ4_XS, "iq4_xs", "iq4", 256, 136, 0, true, iq4::quantize_row_iq4_xs, iq4::dequantize_row_iq4_xs, "4.25 bpw non-linear, 6-bit scales per 32", ActFormat::Q8_K, iq4::unpack_row_iq4_xs},
    {TypeId::I8, "i8", "float", 1, 1, 0, false, nullptr, fl::dequantize_row_i8, "8-bit integer"},
    {TypeId::I16, "i16", "float", 1, 2, 0, false, nullptr, fl::dequantize_row_i16, "16-bit integer"},
    {TypeId::I32, "i32", "float", 1, 4, 0, false, nullptr, fl::dequantize_row_i32, "32-bit integer"},
    {TypeId::I64, "i64", "float", 1, 8, 0, false, nullptr, nullptr, "64-bit integer"},
    {TypeId::F64, "f64", "float", 1, 8, 0, false, nullptr, fl::dequantize_row_f64, "64-bit IEEE float"},
    {TypeId::IQ1_M, "iq1_m", "iq1", 256, 56, 0, true, nullptr, nullptr, "1.75 bpw lattice quant"},
    {TypeId::BF16, "bf16", "float", 1, 2, 0, false, fl::quantize_row_bf16, fl::dequantize_row_bf16, "bfloat16", ActFormat::BF16, nullptr},
    {TypeId::TQ1_0, "tq1_0", "ternary", 256, 54, 0, true, ternary::quantize_row_tq1_0, ternary::dequantize_row_tq1_0, "ternary, 1.69 bpw", ActFormat::Q8_K, ternary::unpack_row_tq1_0},
    {TypeId::TQ2_0, "tq2_0", "ternary", 256, 66, 0, true, ternary::quantize_row_tq2_0, ternary::dequantize_row_tq2_0, "ternary, 2.06 bpw", ActFormat::Q8_K, ternary::unpack_row_tq2_0},
    {TypeId::MXFP4, "mxfp4", "mxfp4", 32, 17, 0, true, nullptr, nullptr, "4-bit microscaling float (E2M1, E8M0 scale)"},
    // mixq's own formats: ids outside GGML's range, readable only by mixq.
    {TypeId::NF4, "nf4", "nf4", 64, 34, 0, true, nf4::quantize_row_nf4, nf4::dequantize_row_nf4, "NormalFloat4, f16 absmax per 64 (bitsandbytes)", ActFormat::F32, nullptr, nf4::quantize_row_nf4_calib},
    {TypeId::I8_ROW, "i8_row", "int8", 1, 1, 4, true, int8::quantize_row_i8_row, int8::dequantize_row_i8_row, "symmetric INT8, f32 scale per row (per channel)", ActFormat::Q8_0, int8::unpack_row_i8_row, int8::quantize_row_i8_row_calib},
    {TypeId::I8_MM, "i8_mm", "int8", 64, 68, 0, true, int8::quantize_row_i8_mm, int8::dequantize_row_i8_mm, "asymmetric INT8 min/max, f16 scale+min per 64", ActFormat::F32, nullptr, int8::quantize_row_i8_mm_calib},
    {TypeId::LB3, "lb3", "lowbit", 64, 28, 0, true, lowbit::quantize_row_lb3, lowbit::dequantize_row_lb3, "3-bit packed 8 per 3 bytes, f16 scale+zero per 64", ActFormat::F32, nullptr, lowbit::quantize_row_lb3_calib},
    {TypeId::LB2, "lb2", "lowbit", 64, 20, 0, true, lowbit::quantize_row_lb2, lowbit::dequantize_row_lb2, "2-bit packed 4 per byte, f16 scale+zero per 64", ActFormat::F32, nullptr, lowbit::quantize_row_lb2_calib},
};

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
