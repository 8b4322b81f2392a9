#include "mixq/formats/kquants/affine_search.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "mixq/formats/half.h"
#include "mixq/formats/search_avx512.h"
#include "mixq/formats/search_isa.h"

namespace mixq::kq {
namespace {

// Four floats as one value: GCC and Clang lower its arithmetic to the target's 128-bit SIMD (SSE on
// baseline x86-64, NEON on ARM). Plain loops would stay scalar, because the sums below may not be
// reassociated, and wider generic vectors get split badly where the target lacks them.
using F4 = float __attribute__((vector_size(16)));

inline F4 load4(const float* p) {
  F4 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

inline float hsum(F4 v) { return (v[0] + v[2]) + (v[1] + v[3]); }

// Round to nearest, ties to even, valid for 0 <= v < 2^22: the add/subtract of 1.5 * 2^23 pushes
// the fraction bits out, and it vectorizes where a rounding instruction may not exist.
inline F4 round_small(F4 v) {
  constexpr float kMagic = 0x1.8p23f;
  return (v + kMagic) - kMagic;
}

// The best code in [0, code_max] for each value of a grid  code * scale + offset.
inline F4 codes_of(F4 x, float inv_scale, float offset, float code_max) {
  F4 v = (x - offset) * inv_scale;
  const F4 hi = F4{} + code_max;
  v = v > 0.0f ? v : F4{};
  v = v < hi ? v : hi;
  return round_small(v);
}

// Weighted sums of one sub-block that do not depend on the codes.
struct DataMoments {
  float sw, sx, sxx;
};

// Weighted sums over the codes l: sum w*l, sum w*l^2, sum w*x*l.
struct CodeMoments {
  float sl, sll, sxl;
};

// y = s * code + b. Storage forces s >= 0 and b <= 0 (b = -dmin * m with dmin, m >= 0).
struct Affine {
  float s, b;
};

// A least-squares fit and its gain: at the optimum the normal equations give
// sum w (x - y)^2 = sxx - (s * sxl + b * sx), so fits over the same data rank by gain alone,
// without the cancellation of computing the error itself.
struct Fit {
  Affine a;
  float gain;
  CodeMoments cm;
};

// Weighted least squares for (s, b) with the codes fixed, constrained to s >= 0, b <= 0. The
// objective is a convex quadratic, so when the free optimum leaves the quadrant the constrained one
// lies on an edge, where one variable is zero and the other solves its own normal equation (so
// the gain identity above still holds).
inline Fit solve_affine(const DataMoments& dm, const CodeMoments& cm) {
  const float det = dm.sw * cm.sll - cm.sl * cm.sl;
  if (det > 1e-6f * dm.sw * cm.sll) {
    const float inv = 1.0f / det;
    const Affine a{(dm.sw * cm.sxl - cm.sl * dm.sx) * inv, (cm.sll * dm.sx - cm.sl * cm.sxl) * inv};
    if (a.s >= 0 && a.b <= 0) return {a, a.s * cm.sxl + a.b * dm.sx, cm};
  }
  const float s = cm.sll > 0 && cm.sxl > 0 ? cm.sxl / cm.sll : 0.0f;
  const float b = dm.sw > 0 && dm.sx < 0 ? dm.sx / dm.sw : 0.0f;
  const Fit no_offset{{s, 0.0f}, s * cm.sxl, cm}, no_scale{{0.0f, b}, b * dm.sx, cm};
  return no_offset.gain >= no_scale.gain ? no_offset : no_scale;
}

template <int N>
CodeMoments code_moments(const float* x, const float* w, float inv_scale, float offset, float code_max) {
  F4 sl{}, sll{}, sxl{};
  for (int i = 0; i < N; i += 4) {
    const F4 xv = load4(x + i);
    const F4 l = codes_of(xv, inv_scale, offset, code_max);
    const F4 wl = load4(w + i) * l;
    sl += wl;
    sll += wl * l;
    sxl += wl * xv;
  }
  return {hsum(sl), hsum(sll), hsum(sxl)};
}

// Error of a sub-block decoded as dl * code - ml with the best codes for that grid, evaluated in
// the same float expression the dequantizer uses.
template <int N>
float grid_error(const float* x, const float* w, float dl, float ml, float code_max) {
  const float inv = dl > 0 ? 1.0f / dl : 0.0f;
  F4 err{};
  for (int i = 0; i < N; i += 4) {
    const F4 xv = load4(x + i);
    const F4 e = xv - (dl * codes_of(xv, inv, -ml, code_max) - ml);
    err += load4(w + i) * e * e;
  }
  return hsum(err);
}

template <int N>
void write_codes(const float* x, float dl, float ml, float code_max, uint8_t* codes) {
  const float inv = dl > 0 ? 1.0f / dl : 0.0f;
  for (int i = 0; i < N; i += 4) {
    const F4 l = codes_of(load4(x + i), inv, -ml, code_max);
    for (int k = 0; k < 4; ++k) codes[i + k] = static_cast<uint8_t>(l[k]);
  }
}

// Candidate inverse scales span code_max +- kGridHalfWidth over the value range, as in ggml's
// make_qkx2_quants; each candidate only proposes codes, the (s, b) that goes with them comes from
// least squares, so a coarse grid already lands close to the optimum.
constexpr float kGridHalfWidth = 1.0f;
constexpr int kGridSteps = 8;
// Alternating "codes for (s, b)" and "(s, b) for codes" after the grid: each step can only lower
// the error, and it rarely moves after two.
constexpr int kRefineSteps = 2;

// The continuous optimum of one sub-block, with the data sums later steps reuse.
struct SubBlockFit {
  Affine a;
  DataMoments dm;
  CodeMoments cm;  // of the codes that go with a
};

template <int N>
SubBlockFit fit_sub_block(const float* x, const float* w, float code_max) {
  F4 sw{}, sx{}, sxx{}, vmin = load4(x), vmax = vmin;
  for (int i = 0; i < N; i += 4) {
    const F4 xv = load4(x + i), wx = load4(w + i) * xv;
    sw += load4(w + i);
    sx += wx;
    sxx += wx * xv;
    vmin = xv < vmin ? xv : vmin;
    vmax = xv > vmax ? xv : vmax;
  }
  const DataMoments dm{hsum(sw), hsum(sx), hsum(sxx)};
  const float xmin = std::min(std::min(vmin[0], vmin[1]), std::min(vmin[2], vmin[3]));
  const float xmax = std::max(std::max(vmax[0], vmax[1]), std::max(vmax[2], vmax[3]));
  // The offset can only move values down, so the lowest representable value is min(xmin, 0).
  const float lo = std::min(xmin, 0.0f);
  const float range = xmax - lo;
  if (!(range > 0)) {
    const CodeMoments none{0, 0, 0};
    return {solve_affine(dm, none).a, dm, none};
  }

  // On the grid candidates every x - lo is >= 0, so only the upper clamp is needed; shifting once
  // here keeps the candidate loop to a multiply, a min and the rounding.
  float shifted[N];
  for (int i = 0; i < N; ++i) shifted[i] = x[i] - lo;
  Fit best{{0, 0}, -INFINITY, {0, 0, 0}};
  for (int step = 0; step <= kGridSteps; ++step) {
    const float inv = (code_max - kGridHalfWidth + 2 * kGridHalfWidth * step / kGridSteps) / range;
    const F4 hi = F4{} + code_max;
    F4 sl{}, sll{}, ssl{};
    for (int i = 0; i < N; i += 4) {
      const F4 xs = load4(shifted + i);
      F4 l = xs * inv;
      l = round_small(l < hi ? l : hi);
      const F4 wl = load4(w + i) * l;
      sl += wl;
      sll += wl * l;
      ssl += wl * xs;
    }
    // sum w x l = sum w (x - lo) l + lo * sum w l
    const CodeMoments cm{hsum(sl), hsum(sll), hsum(ssl) + lo * hsum(sl)};
    const Fit f = solve_affine(dm, cm);
    if (f.gain > best.gain) best = f;
  }
  for (int step = 0; step < kRefineSteps && best.a.s > 0; ++step) {
    const Fit f = solve_affine(dm, code_moments<N>(x, w, 1.0f / best.a.s, best.a.b, code_max));
    if (!(f.gain > best.gain)) break;
    best = f;
  }
  return {best.a, dm, best.cm};
}

// Error of y = s * code + b over a sub-block with its codes held fixed.
float fixed_code_error(const DataMoments& dm, const CodeMoments& cm, float s, float b) {
  return dm.sxx - 2 * (s * cm.sxl + b * dm.sx) + s * s * cm.sll + 2 * s * b * cm.sl + b * b * dm.sw;
}

// Below this integer scale one step is a large relative change, the optimum's codes no longer
// fit the rounded scale, and the fixed-code error misjudges the candidates (a sub-block far
// smaller than its super-block's largest, e.g. beside an outlier): there each candidate is scored
// by its real error with re-chosen codes.
constexpr int kExactScaleBelow = 8;

// The integer scale/minimum pair of one sub-block for given super-scales. The scale is the floor
// or ceiling of the continuous optimum; for each, the offset that best compensates its rounding
// (with the optimum's codes) is rounded down and up again. Re-choosing the codes afterwards can
// only lower the error of the pair chosen.
struct IntPair {
  int sc, m;
};

template <int N>
IntPair choose_integers(const float* x, const float* w, const SubBlockFit& f, float d, float dmin,
                        float code_max, int scale_max) {
  // v >= 0, so truncation is the floor (and avoids a libm call where SSE4.1 is not assumed).
  const auto floor_to_grid = [&](float v, float step) {
    return step > 0 ? std::min(static_cast<int>(v / step), scale_max) : 0;
  };
  const int sc0 = floor_to_grid(f.a.s, d);
  const bool exact = sc0 < kExactScaleBelow;
  IntPair best{sc0, 0};
  float best_err = INFINITY;
  for (int sc = sc0; sc <= std::min(sc0 + 1, scale_max); ++sc) {
    const float dl = d * static_cast<float>(sc);
    const float sl = sc > 0 ? f.cm.sl : 0.0f;
    const float b = f.dm.sw > 0 ? (f.dm.sx - dl * sl) / f.dm.sw : 0.0f;
    const int m0 = floor_to_grid(std::max(0.0f, -b), dmin);
    for (int m = m0; m <= std::min(m0 + 1, scale_max); ++m) {
      const float ml = dmin * static_cast<float>(m);
      const float err = exact ? grid_error<N>(x, w, dl, ml, code_max) : fixed_code_error(f.dm, f.cm, dl, -ml);
      if (err < best_err) {
        best = {sc, m};
        best_err = err;
      }
    }
  }
  return best;
}

struct Candidate {
  uint16_t d_half, dmin_half;
  int sc[kMaxSubBlocks], m[kMaxSubBlocks];
  double err;
};

template <int N>
Candidate quantize_scales(const float* x, const float* w, const SubBlockFit* fits, float d_target,
                          float dmin_target, float code_max, int scale_max) {
  Candidate c{};
  c.d_half = fp32_to_fp16(d_target);
  c.dmin_half = fp32_to_fp16(dmin_target);
  const float d = fp16_to_fp32(c.d_half), dmin = fp16_to_fp32(c.dmin_half);
  constexpr int kSubBlocks = kSuperBlock / N;
  for (int j = 0; j < kSubBlocks; ++j) {
    const IntPair p = choose_integers<N>(x + j * N, w + j * N, fits[j], d, dmin, code_max, scale_max);
    c.sc[j] = p.sc;
    c.m[j] = p.m;
    c.err += grid_error<N>(x + j * N, w + j * N, d * static_cast<float>(p.sc), dmin * static_cast<float>(p.m),
                           code_max);
  }
  return c;
}

// Least squares for (d, dmin) over the whole super-block with the integers and codes fixed: the
// super-scales are the one pair of parameters the per-sub-block search never saw.
template <int N>
bool refit_super_scales(const float* x, const float* w, const SubBlockFit* fits, const Candidate& c,
                        float code_max, float& d, float& dmin) {
  const float d0 = fp16_to_fp32(c.d_half), dmin0 = fp16_to_fp32(c.dmin_half);
  // y = d * a - dmin * k with a = sc * code and k = m, so every sum splits into per-sub-block
  // code moments times small integers.
  double saa = 0, sak = 0, skk = 0, sxa = 0, sxk = 0;
  for (int j = 0; j < kSuperBlock / N; ++j) {
    const float dl = d0 * static_cast<float>(c.sc[j]);
    // With a zero scale every code is 0 and the sub-block only constrains dmin.
    const CodeMoments cm = dl > 0 ? code_moments<N>(x + j * N, w + j * N, 1.0f / dl,
                                                    -(dmin0 * static_cast<float>(c.m[j])), code_max)
                                  : CodeMoments{0, 0, 0};
    const double sc = c.sc[j], m = c.m[j];
    saa += sc * sc * cm.sll;
    sak += sc * m * cm.sl;
    skk += m * m * fits[j].dm.sw;
    sxa += sc * cm.sxl;
    sxk += m * fits[j].dm.sx;
  }
  const double det = saa * skk - sak * sak;
  if (!(det > 1e-12 * saa * skk)) return false;
  d = static_cast<float>((sxa * skk - sak * sxk) / det);
  dmin = static_cast<float>((sxa * sak - saa * sxk) / det);
  return d > 0 && dmin >= 0;
}

constexpr int kSuperRefineSteps = 2;

template <int N>
void quantize_super_block(const float* x, const float* w, const AffineShape& shape, AffineSuperBlock& out) {
  constexpr int kSubBlocks = kSuperBlock / N;
  const auto code_max = static_cast<float>(shape.code_max);
  SubBlockFit fits[kSubBlocks];
  float max_s = 0, max_o = 0;
  for (int j = 0; j < kSubBlocks; ++j) {
    fits[j] = fit_sub_block<N>(x + j * N, w + j * N, code_max);
    max_s = std::max(max_s, fits[j].a.s);
    max_o = std::max(max_o, -fits[j].a.b);
  }

  Candidate best = quantize_scales<N>(x, w, fits, max_s / shape.scale_max, max_o / shape.scale_max, code_max,
                                      shape.scale_max);
  for (int step = 0; step < kSuperRefineSteps; ++step) {
    float d, dmin;
    if (!refit_super_scales<N>(x, w, fits, best, code_max, d, dmin)) break;
    const Candidate c = quantize_scales<N>(x, w, fits, d, dmin, code_max, shape.scale_max);
    if (!(c.err < best.err)) break;
    best = c;
  }

  out.d = best.d_half;
  out.dmin = best.dmin_half;
  const float d = fp16_to_fp32(best.d_half), dmin = fp16_to_fp32(best.dmin_half);
  for (int j = 0; j < kSubBlocks; ++j) {
    out.sc[j] = static_cast<uint8_t>(best.sc[j]);
    out.m[j] = static_cast<uint8_t>(best.m[j]);
    write_codes<N>(x + j * N, d * static_cast<float>(best.sc[j]), dmin * static_cast<float>(best.m[j]), code_max,
                   out.codes + j * N);
  }
}

}  // namespace

void quantize_affine_super_block(const float* x, const float* importance, const AffineShape& shape,
                                 AffineSuperBlock& out) {
  // Without importance every weight is 1 (the plain squared error). A sub-block whose importance
  // is all zero could decode to anything; fitting it with unit weights keeps it close to the data
  // instead of collapsing it to zero.
  float w[kSuperBlock];
  for (int j = 0; j < kSuperBlock; j += shape.sub_size) {
    float sum = 0;
    for (int i = j; i < j + shape.sub_size; ++i) sum += importance ? importance[i] : 0.0f;
    for (int i = j; i < j + shape.sub_size; ++i) w[i] = sum > 0 ? importance[i] : 1.0f;
  }
  if (shape.sub_size == 32 && search::isa() == search::Isa::avx512) {
    const search::AffineSearchParams p{shape.code_max, shape.scale_max, kGridHalfWidth,      kGridSteps,
                                       kRefineSteps,   kExactScaleBelow, kSuperRefineSteps};
    search::affine_super_block_32_avx512(x, w, p, &out.d, &out.dmin, out.sc, out.m, out.codes);
    return;
  }
  if (shape.sub_size == 16) {
    quantize_super_block<16>(x, w, shape, out);
  } else {
    quantize_super_block<32>(x, w, shape, out);
  }
}

void pack_scale_min_k4(const uint8_t* sc, const uint8_t* m, uint8_t* packed) {
  for (int j = 0; j < 4; ++j) {
    packed[j] = static_cast<uint8_t>(sc[j] | ((sc[j + 4] >> 4) << 6));
    packed[j + 4] = static_cast<uint8_t>(m[j] | ((m[j + 4] >> 4) << 6));
    packed[j + 8] = static_cast<uint8_t>((sc[j + 4] & 0xF) | ((m[j + 4] & 0xF) << 4));
  }
}

}  // namespace mixq::kq
