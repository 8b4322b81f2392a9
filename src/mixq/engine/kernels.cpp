#include "mixq/engine/kernels.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <stdexcept>

#include <fmt/format.h>

#include "mixq/formats/half.h"

namespace mixq::kernels {

namespace {

int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

// A rounded code as int8. Finite activations give |v| <= 127; non-finite ones (a model whose
// activations overflowed) or subnormal block maxima (1 / d overflows to inf) would make the
// plain cast undefined behaviour: they saturate to +-127, NaN to 0.
int8_t saturate_int8(float v) {
  if (v >= -127.0f && v <= 127.0f) return static_cast<int8_t>(v);
  return v > 0.0f ? int8_t{127} : v < 0.0f ? int8_t{-127} : int8_t{0};
}

// std::roundf (halves away from zero) without the library call, which costs as much as the rest of
// decode's activation quantization: the sum rounds to an integer exactly when roundf would round
// up (checked against roundf for every float of magnitude <= 200; codes saturate beyond 127).
// The empty asm makes v a rounded float first, so the caller's x * id is never fused into an FMA
// with the addition.
inline float round_half_away(float v) {
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
  __asm__("" : "+x"(v));
  return std::trunc(v + std::copysign(0.49999997f, v));
#else
  return std::roundf(v);
#endif
}

// Q8_0 as ggml's quantize_row_q8_0_ref: d = amax / 127 (stored as f16), codes round(x / d) from the
// unrounded d. A last partial block (row lengths that are not a multiple of 32) counts only its
// values; the padding codes are zero.
void quantize_q8_0(const float* x, int64_t n, int64_t n_pad, int8_t* q, float* dx, float* dsum, bool q8_1) {
  static const ActBlockQuantizers* fast = avx2_act_block_quantizers();
  for (int64_t b = 0; b < n_pad / 32; ++b) {
    const int64_t i0 = b * 32, i1 = std::min(n, i0 + 32);
    float d = 0.0f;
    int32_t sums[2] = {0, 0};
    if (fast == nullptr || i1 - i0 != 32 || !fast->q8_0(x + i0, q + i0, &d, sums)) {
      float amax = 0.0f;
      for (int64_t i = i0; i < i1; ++i) amax = std::max(amax, std::fabs(x[i]));
      d = amax / 127.0f;
      const float id = d != 0.0f ? 1.0f / d : 0.0f;
      for (int64_t i = i0; i < i0 + 32; ++i) q[i] = i < i1 ? saturate_int8(round_half_away(x[i] * id)) : 0;
      for (int g = 0; g < 2; ++g) {
        for (int64_t i = i0 + 16 * g; i < i0 + 16 * g + 16; ++i) sums[g] += q[i];
      }
    }
    const float ds = round_fp16(d);
    for (int g = 0; g < 2; ++g) {
      dx[2 * b + g] = ds;
      dsum[2 * b + g] = ds * static_cast<float>(sums[g]);
    }
    if (q8_1) {
      // ggml's Q8_1 keeps s = f16(d * sum of the 32 codes), with the unrounded d; a weight minimum
      // that is shared by both halves multiplies it once.
      dsum[2 * b] = round_fp16(d * static_cast<float>(sums[0] + sums[1]));
      dsum[2 * b + 1] = 0.0f;
    }
  }
}

// Q8_K as ggml's quantize_row_q8_K_ref: the value of largest magnitude maps to -127, codes are
// rounded to nearest (ties to even) and capped at 127, d = 1 / iscale in f32. Partial last blocks as
// above.
void quantize_q8_k(const float* x, int64_t n, int64_t n_pad, int8_t* q, float* dx, float* dsum) {
  static const ActBlockQuantizers* fast = avx2_act_block_quantizers();
  for (int64_t b0 = 0; b0 < n_pad; b0 += 256) {
    const int64_t b1 = std::min(n_pad, b0 + 256), v1 = std::min(n, b1);
    float fd = 0.0f;
    int32_t fsums[16];
    if (fast != nullptr && v1 - b0 == 256 && fast->q8_k(x + b0, q + b0, &fd, fsums)) {
      for (int64_t g = 0; g < 16; ++g) {
        dx[b0 / 16 + g] = fd;
        dsum[b0 / 16 + g] = fd * static_cast<float>(fsums[g]);
      }
      continue;
    }
    float amax = 0.0f, vmax = 0.0f;
    for (int64_t i = b0; i < v1; ++i) {
      if (std::fabs(x[i]) > amax) {
        amax = std::fabs(x[i]);
        vmax = x[i];
      }
    }
    float d = 0.0f;
    if (amax == 0.0f) {
      std::fill(q + b0, q + b1, int8_t{0});
    } else {
      const float iscale = -127.0f / vmax;
      for (int64_t i = b0; i < b1; ++i) {
        q[i] = i < v1 ? static_cast<int8_t>(std::min(127.0f, std::nearbyint(iscale * x[i]))) : 0;
      }
      d = 1.0f / iscale;
    }
    for (int64_t g = b0 / 16; g < b1 / 16; ++g) {
      int sum = 0;
      for (int64_t i = 16 * g; i < 16 * g + 16; ++i) sum += q[i];
      dx[g] = d;
      dsum[g] = d * static_cast<float>(sum);
    }
  }
}

float dot_int8_scalar(int64_t n_pad, const int8_t* q, const float* scale, const float* offset, bool has_offset,
                      const int8_t* a, const float* dx, const float* dsum) {
  float acc = 0.0f;
  for (int64_t g = 0; g < n_pad / 16; ++g) {
    int32_t s = 0;
    for (int i = 0; i < 16; ++i) s += static_cast<int32_t>(q[16 * g + i]) * a[16 * g + i];
    acc += scale[g] * dx[g] * static_cast<float>(s);
  }
  if (has_offset) {
    for (int64_t g = 0; g < n_pad / 16; ++g) acc += offset[g] * dsum[g];
  }
  return acc;
}

float dot_f32_scalar(int64_t n_pad, const float* w, const float* x) {
  float acc = 0.0f;
  for (int64_t i = 0; i < n_pad; ++i) acc += w[i] * x[i];
  return acc;
}

double exp_sum_scalar(float* x, int64_t n, float m) {
  double sum = 0;
  for (int64_t i = 0; i < n; ++i) sum += (x[i] = std::exp(x[i] - m));
  return sum;
}

void attn_scores_scalar(const float* q, const float* kt, int64_t stride, int hd, float* s) {
  std::fill(s, s + kAttnTile, 0.0f);
  for (int i = 0; i < hd; ++i) {
    for (int p = 0; p < kAttnTile; ++p) s[p] = std::fma(q[i], kt[i * stride + p], s[p]);
  }
}

void attn_accumulate_scalar(const float* w, int n, const float* v, int64_t stride, int hd, float* out) {
  for (int p = 0; p < n; ++p) {
    for (int i = 0; i < hd; ++i) out[i] = std::fma(w[p], v[p * stride + i], out[i]);
  }
}

void dot_int8_x4_scalar(int64_t n_pad, const int8_t* const q[4], const float* const scale[4],
                        const float* const offset[4], const int8_t* const a[2], const float* const dx[2],
                        const float* const dsum[2], int nt, float* out) {
  for (int j = 0; j < nt; ++j) {
    for (int r = 0; r < 4; ++r) {
      out[j * 4 + r] = dot_int8_scalar(n_pad, q[r], scale[r], offset[r], offset[r] != nullptr, a[j], dx[j], dsum[j]);
    }
  }
}

void dot_f32_x4_scalar(int64_t n_pad, const float* const w[4], const float* const x[2], int nt, float* out) {
  for (int j = 0; j < nt; ++j) {
    for (int r = 0; r < 4; ++r) out[j * 4 + r] = dot_f32_scalar(n_pad, w[r], x[j]);
  }
}

void dot_f32_tile_scalar(int64_t n_pad, const float* const w[4], const float* x, int64_t ldx, int nt, float* y,
                         int64_t ldy) {
  for (int j = 0; j < nt; ++j) {
    for (int r = 0; r < 4; ++r) y[j * ldy + r] = dot_f32_scalar(n_pad, w[r], x + j * ldx);
  }
}

void attn_f16_scalar(const float* q, const float* kt, int64_t kstride, const float* v, int64_t vstride, int hd,
                     int len, float scale, float* /*scratch*/, float* out) {
  float q16[512];
  for (int i = 0; i < hd; ++i) {
    q16[i] = round_fp16(q[i]);
    out[i] = 0.0f;
  }
  float m = -INFINITY, sum = 0.0f;
  for (int p = 0; p < len; ++p) {
    float d = 0.0f;  // an FMA chain in dimension order, as the vector kernels compute it
    for (int i = 0; i < hd; ++i) d = std::fma(q16[i], kt[i * kstride + p], d);
    const float s = d * scale;
    float ms = 1.0f, vs = 1.0f;
    if (s > m) {
      ms = std::exp(m - s);
      m = s;
      for (int i = 0; i < hd; ++i) out[i] = round_fp16(out[i] * ms);
    } else {
      vs = std::exp(s - m);
    }
    for (int i = 0; i < hd; ++i) out[i] = round_fp16(std::fma(v[p * vstride + i], vs, out[i]));
    sum = sum * ms + vs;
  }
  const float inv = sum == 0.0f ? 0.0f : 1.0f / sum;
  for (int i = 0; i < hd; ++i) out[i] *= inv;
}

void attn_f16_x4_scalar(const float* const q[4], const float* kt, int64_t kstride, const float* v, int64_t vstride,
                        int hd, const int len[4], float scale, float* scratch, float* const out[4]) {
  for (int r = 0; r < 4; ++r) attn_f16_scalar(q[r], kt, kstride, v, vstride, hd, len[r], scale, scratch, out[r]);
}

void attn_tiled_scalar(const float* const q[], int nq, const float* kt, int64_t kstride, const float* v,
                       int64_t vstride, int hd, const int len[], float scale, float* const out[]) {
  for (int j = 0; j < nq; ++j) attn_tiled_reference(scalar_kernels(), q[j], kt, kstride, v, vstride, hd, len[j], scale, out[j]);
}

constexpr KernelSet kScalar{"scalar", dot_int8_scalar, dot_f32_scalar, dot_int8_x4_scalar, dot_f32_x4_scalar,
                            dot_f32_tile_scalar, exp_sum_scalar, attn_scores_scalar,
                            attn_accumulate_scalar, attn_f16_scalar,
                            attn_f16_x4_scalar, attn_tiled_scalar, nullptr, nullptr};

}  // namespace

void attn_tiled_reference(const KernelSet& k, const float* q, const float* kt, int64_t kstride, const float* v,
                          int64_t vstride, int hd, int len, float scale, float* out) {
  std::fill(out, out + hd, 0.0f);
  float s[kAttnTile];
  float m = -INFINITY, sum = 0.0f;
  for (int p0 = 0; p0 < len; p0 += kAttnTile) {
    const int tl = std::min(kAttnTile, len - p0);
    k.attn_scores(q, kt + p0, kstride, hd, s);
    float tile_max = -INFINITY;
    for (int p = 0; p < tl; ++p) tile_max = std::max(tile_max, s[p] *= scale);
    if (tile_max > m) {
      const float ms = std::exp(m - tile_max);
      for (int i = 0; i < hd; ++i) out[i] *= ms;
      sum *= ms;
      m = tile_max;
    }
    sum = static_cast<float>(static_cast<double>(sum) + k.exp_sum(s, tl, m));
    k.attn_accumulate(s, tl, v + static_cast<size_t>(p0) * static_cast<size_t>(vstride), vstride, hd, out);
  }
  const float inv = 1.0f / sum;
  for (int i = 0; i < hd; ++i) out[i] *= inv;
}

void prepare_activations(ActFormat format, const float* x, int n_tokens, int64_t n, PreparedActs& out) {
  out.format = format;
  out.n = n;
  out.n_pad = round_up(n, 32);
  out.n_tokens = n_tokens;
  const auto rows = static_cast<size_t>(n_tokens);
  const auto pad = static_cast<size_t>(out.n_pad);
  if (format == ActFormat::Q8_0 || format == ActFormat::Q8_1 || format == ActFormat::Q8_K) {
    out.q.resize(rows * pad);
    out.dx.resize(rows * pad / 16);
    out.dsum.resize(rows * pad / 16);
    out.qu.resize(rows * pad);
    out.nsum4.resize(rows * pad / 4);
    for (int t = 0; t < n_tokens; ++t) {
      const float* xt = x + static_cast<size_t>(t) * static_cast<size_t>(n);
      auto* qt = out.q.data() + t * pad;
      auto* dxt = out.dx.data() + t * pad / 16;
      auto* dst = out.dsum.data() + t * pad / 16;
      if (format != ActFormat::Q8_K) {
        quantize_q8_0(xt, n, out.n_pad, qt, dxt, dst, format == ActFormat::Q8_1);
      } else {
        quantize_q8_k(xt, n, out.n_pad, qt, dxt, dst);
      }
      auto* ut = out.qu.data() + t * pad;
      for (size_t i = 0; i < pad; ++i) ut[i] = static_cast<uint8_t>(static_cast<uint8_t>(qt[i]) ^ 0x80u);
      int32_t* nt = out.nsum4.data() + t * pad / 4;
      for (size_t i = 0; i < pad / 4; ++i) nt[i] = -(qt[4 * i] + qt[4 * i + 1] + qt[4 * i + 2] + qt[4 * i + 3]);
    }
    return;
  }
  out.f.resize(rows * pad);
  for (int t = 0; t < n_tokens; ++t) {
    const float* xt = x + static_cast<size_t>(t) * static_cast<size_t>(n);
    float* ft = out.f.data() + t * pad;
    for (int64_t i = 0; i < n; ++i) {
      switch (format) {
        case ActFormat::F16: ft[i] = round_fp16(xt[i]); break;
        case ActFormat::BF16: ft[i] = bf16_to_fp32(fp32_to_bf16(xt[i])); break;
        default: ft[i] = xt[i];
      }
    }
    std::fill(ft + n, ft + out.n_pad, 0.0f);
  }
}

void prepare_row(const TypeTraits& type, const void* row, int64_t n, PreparedRow& out) {
  const int64_t n_pad = round_up(n, 32);
  if (type.unpack_row != nullptr) {
    out.integer = true;
    out.q.resize(static_cast<size_t>(n_pad));
    out.scale.resize(static_cast<size_t>(n_pad / 16));
    out.offset.resize(static_cast<size_t>(n_pad / 16));
    type.unpack_row(row, out.q.data(), out.scale.data(), out.offset.data(), n);
    std::fill(out.q.begin() + n, out.q.end(), int8_t{0});
    for (int64_t g = (n + 15) / 16; g < n_pad / 16; ++g) out.scale[g] = out.offset[g] = 0.0f;
    out.has_offset = std::any_of(out.offset.begin(), out.offset.end(), [](float o) { return o != 0.0f; });
    return;
  }
  if (type.dequantize_row == nullptr) {
    throw std::runtime_error(fmt::format("the engine cannot decode weights of type {}", type.name));
  }
  out.integer = false;
  out.f.resize(static_cast<size_t>(n_pad));
  type.dequantize_row(row, out.f.data(), n);
  std::fill(out.f.begin() + n, out.f.end(), 0.0f);
}

void pack_panel(const PreparedRow* const rows[], int n_rows, PackedPanel& out) {
  if (n_rows < 1 || n_rows > kPanelRows) throw std::logic_error("pack_panel: 1 to 16 rows");
  const auto n_pad = static_cast<int64_t>(rows[0]->q.size());
  bool pairs = true, offsets = false;
  for (int r = 0; r < n_rows; ++r) {
    const PreparedRow& w = *rows[r];
    offsets = offsets || w.has_offset;
    for (size_t g = 0; pairs && g + 1 < w.scale.size(); g += 2) {
      pairs = w.scale[g] == w.scale[g + 1] && w.offset[g] == w.offset[g + 1];
    }
  }
  out.rows = n_rows;
  out.n_pad = n_pad;
  out.group = pairs ? 32 : 16;
  out.has_offset = offsets;
  const auto groups = static_cast<size_t>(n_pad / out.group), P = static_cast<size_t>(kPanelRows);
  const auto G = static_cast<size_t>(out.group), per = G / 16, chunks = static_cast<size_t>(n_pad / 4);
  out.q.resize(static_cast<size_t>(n_pad) * P);
  out.scale.resize(groups * P);
  out.offset.resize(groups * P);
  out.bias.resize(groups * P);
  for (size_t r = 0; r < P; ++r) {
    if (r >= static_cast<size_t>(n_rows)) {  // padding rows: zero codes, factors and biases
      for (size_t c = 0; c < chunks; ++c) std::memset(&out.q[c * 64 + 4 * r], 0, 4);
      for (size_t g = 0; g < groups; ++g) out.scale[g * P + r] = out.offset[g * P + r] = 0.0f, out.bias[g * P + r] = 0;
      continue;
    }
    const PreparedRow& w = *rows[r];
    for (size_t c = 0; c < chunks; ++c) std::memcpy(&out.q[c * 64 + 4 * r], &w.q[4 * c], 4);
    for (size_t g = 0; g < groups; ++g) {
      out.scale[g * P + r] = w.scale[g * per];
      out.offset[g * P + r] = w.has_offset ? w.offset[g * per] : 0.0f;
      int32_t sum = 0;
      for (size_t i = g * G; i < (g + 1) * G; ++i) sum += w.q[i];
      out.bias[g * P + r] = -128 * sum;
    }
  }
}

void dot4(const KernelSet& k, const PreparedRow* const rows[4], const PreparedActs& a, int t, int nt, float* out) {
  if (rows[0]->integer) {
    const int8_t* q[4];
    const float* sc[4];
    const float* off[4];
    for (int r = 0; r < 4; ++r) {
      q[r] = rows[r]->q.data();
      sc[r] = rows[r]->scale.data();
      off[r] = rows[r]->has_offset ? rows[r]->offset.data() : nullptr;
    }
    const int t1 = nt > 1 ? t + 1 : t;
    const int8_t* av[2] = {a.q_row(t), a.q_row(t1)};
    const float* dx[2] = {a.dx_row(t), a.dx_row(t1)};
    const float* ds[2] = {a.dsum_row(t), a.dsum_row(t1)};
    k.dot_int8_x4(a.n_pad, q, sc, off, av, dx, ds, nt, out);
    return;
  }
  const float* w[4] = {rows[0]->f.data(), rows[1]->f.data(), rows[2]->f.data(), rows[3]->f.data()};
  const float* x[2] = {a.f_row(t), a.f_row(nt > 1 ? t + 1 : t)};
  k.dot_f32_x4(a.n_pad, w, x, nt, out);
}

const KernelSet& scalar_kernels() { return kScalar; }

std::span<const KernelSet* const> available_kernel_sets() {
  static const std::vector<const KernelSet*> sets = [] {
    std::vector<const KernelSet*> v{&kScalar};
    if (const KernelSet* k = avx2_kernels()) v.push_back(k);
    if (const KernelSet* k = avx512_kernels()) v.push_back(k);
    return v;
  }();
  return sets;
}

const KernelSet& best_kernels() {
  static const KernelSet* best = [] {
    const auto sets = available_kernel_sets();
    if (const char* want = std::getenv("MIXQ_KERNELS"); want != nullptr && *want != '\0') {
      std::string names;
      for (const KernelSet* k : sets) {
        if (std::string_view(k->name) == want) return k;
        names += names.empty() ? k->name : fmt::format(", {}", k->name);
      }
      std::fputs(fmt::format("mixq: warning: MIXQ_KERNELS={} is not a kernel set this CPU runs ({}); using {}\n", want,
                             names, sets.back()->name)
                     .c_str(),
                 stderr);
    }
    return sets.back();
  }();
  return *best;
}

}  // namespace mixq::kernels
