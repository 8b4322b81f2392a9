#include "mixq/engine/whisper_model.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <map>
#include <stdexcept>

#include <fmt/format.h>

#include "mixq/engine/whisper_audio.h"
#include "mixq/formats/half.h"
#include "mixq/util/thread_pool.h"

namespace mixq {

namespace {

struct Linear {
  std::vector<float> w, b;  // w: [out][in]; b empty when the layer has none
  int64_t in = 0, out = 0;
  bool f16_input = false;  // an F16 weight: ggml rounds the input to F16 for the product
  std::string name;        // the weight's tensor name (empty for the convolutions)
};
struct Norm {
  std::vector<float> g, b;
};
struct Attention {
  Linear q, k, v, o;
  Norm ln;
};
struct Block {
  Attention self, cross;
  Linear fc1, fc2;
  Norm mlp_ln;
};

// Eight lanes as a GCC/clang vector: the compiler emits SIMD multiplies and adds for any target.
using Lanes = float __attribute__((vector_size(32)));

__attribute__((target_clones("avx512f", "avx2,fma", "default"))) float dot(const float* a, const float* b,
                                                                                 int64_t n) {
  Lanes acc0 = {}, acc1 = {};
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    Lanes x0, y0, x1, y1;
    std::memcpy(&x0, a + i, 32);
    std::memcpy(&y0, b + i, 32);
    std::memcpy(&x1, a + i + 8, 32);
    std::memcpy(&y1, b + i + 8, 32);
    acc0 += x0 * y0;
    acc1 += x1 * y1;
  }
  acc0 += acc1;
  float r = ((acc0[0] + acc0[1]) + (acc0[2] + acc0[3])) + ((acc0[4] + acc0[5]) + (acc0[6] + acc0[7]));
  for (; i < n; ++i) r += a[i] * b[i];
  return r;
}

// ggml's GELU as whisper.cpp runs it on the CPU: the tanh form, looked up in a table of F16
// inputs holding F16 results (so input and output are rounded to F16); 0 below -10, x above 10.
// OpenAI's Whisper uses the erf form; the two differ by up to about 1e-3.
float gelu(float x) {
  if (x <= -10.0f) return 0.0f;
  if (x >= 10.0f) return x;
  const float h = round_fp16(x);
  return round_fp16(0.5f * h * (1.0f + std::tanh(0.79788456080286535588f * h * (1.0f + 0.044715f * h * h))));
}

void round_to_f16(float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] = round_fp16(x[i]);
}

// y[t0..t0+4)[o0..o0+2) = W[o] . x[t]: a 4 x 2 tile of dot products, so each weight and input
// vector loaded feeds several multiply-adds. Compiled for AVX-512, AVX2+FMA and plain x86-64; the
// loader picks the clone the CPU runs.
__attribute__((target_clones("avx512f", "avx2,fma", "default"))) void dot_tile_4x2(const float* w, const float* x,
                                                                                  int64_t n, float* out) {
  Lanes acc[4][2] = {};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    Lanes w0, w1;
    std::memcpy(&w0, w + i, 32);
    std::memcpy(&w1, w + n + i, 32);
    for (int t = 0; t < 4; ++t) {
      Lanes xv;
      std::memcpy(&xv, x + t * n + i, 32);
      acc[t][0] += w0 * xv;
      acc[t][1] += w1 * xv;
    }
  }
  for (int t = 0; t < 4; ++t) {
    for (int o = 0; o < 2; ++o) {
      const Lanes a = acc[t][o];
      float r = ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
      for (int64_t k = i; k < n; ++k) r += w[o * n + k] * x[t * n + k];
      out[t * 2 + o] = r;
    }
  }
}

// What a forward pass consults besides the weights: the activation observer and the weights
// replaced for a measurement probe (by tensor name; none in plain inference).
struct Hooks {
  const WhisperActivationObserver* observer = nullptr;
  const std::map<std::string, Linear>* overrides = nullptr;
};

// y[t][o] = W[o] . x[t] + b[o] for n rows of x; the observer, when there is one, sees the input.
// An override of the weight (same shape, bias kept) replaces it.
void linear(ThreadPool& pool, const Hooks& hooks, const Linear& stored, const float* x_in, int64_t n, float* y) {
  const Linear& l = [&]() -> const Linear& {
    if (!hooks.overrides || hooks.overrides->empty() || stored.name.empty()) return stored;
    const auto it = hooks.overrides->find(stored.name);
    return it == hooks.overrides->end() ? stored : it->second;
  }();
  if (hooks.observer && *hooks.observer && !l.name.empty()) (*hooks.observer)(l.name, x_in, n, l.in);
  std::vector<float> rounded;
  const float* x = x_in;
  if (l.f16_input) {
    rounded.assign(x_in, x_in + n * l.in);
    round_to_f16(rounded.data(), n * l.in);
    x = rounded.data();
  }
  const float* w = l.w.data();
  auto bias = [&](int64_t o) { return l.b.empty() ? 0.0f : l.b[o]; };
  constexpr int64_t kOutChunk = 64, kRows = 4;
  const int64_t chunks = (l.out + kOutChunk - 1) / kOutChunk;
  const int64_t row_groups = (n + kRows - 1) / kRows;
  pool.parallel_for(row_groups * chunks, [&](int64_t job) {
    const int64_t t0 = (job / chunks) * kRows, o0 = (job % chunks) * kOutChunk, o1 = std::min(l.out, o0 + kOutChunk);
    if (t0 + kRows <= n) {
      float tile[8];
      int64_t o = o0;
      for (; o + 2 <= o1; o += 2) {
        dot_tile_4x2(w + o * l.in, x + t0 * l.in, l.in, tile);
        for (int t = 0; t < 4; ++t) {
          y[(t0 + t) * l.out + o] = tile[t * 2] + bias(o);
          y[(t0 + t) * l.out + o + 1] = tile[t * 2 + 1] + bias(o + 1);
        }
      }
      for (; o < o1; ++o) {
        for (int64_t t = t0; t < t0 + kRows; ++t) y[t * l.out + o] = dot(w + o * l.in, x + t * l.in, l.in) + bias(o);
      }
      return;
    }
    for (int64_t t = t0; t < n; ++t) {
      for (int64_t o = o0; o < o1; ++o) y[t * l.out + o] = dot(w + o * l.in, x + t * l.in, l.in) + bias(o);
    }
  });
}

void layer_norm(const Norm& nm, const float* x, int64_t n, int64_t d, float* y) {
  for (int64_t t = 0; t < n; ++t) {
    const float* xt = x + t * d;
    double mean = 0, var = 0;
    for (int64_t i = 0; i < d; ++i) mean += xt[i];
    mean /= d;
    for (int64_t i = 0; i < d; ++i) var += (xt[i] - mean) * (xt[i] - mean);
    var /= d;
    const float inv = static_cast<float>(1.0 / std::sqrt(var + 1e-5));
    for (int64_t i = 0; i < d; ++i) y[t * d + i] = (xt[i] - static_cast<float>(mean)) * inv * nm.g[i] + nm.b[i];
  }
}

// Up to four query rows of one head (rows of q `stride` apart, as are the k and v rows):
// o_r = softmax(scale * q_r . k_j) v_j over nk keys, the probabilities rounded to F16 before they
// weight v (see attend). Each key is loaded once for all the rows. s: scratch for 4 * nk floats.
__attribute__((target_clones("avx512f", "avx2,fma", "default"))) void attend_rows(
    const float* q, int rows, const float* k, const float* v, int64_t nk, int64_t stride, int64_t dh, float scale,
    float* s, float* o) {
  const int64_t dv = dh - dh % 8;  // whole vectors of 8 lanes; the rest scalar
  const float* q1 = q + std::min(rows - 1, 1) * stride;  // short groups repeat a row
  const float* q2 = q + std::min(rows - 1, 2) * stride;
  const float* q3 = q + std::min(rows - 1, 3) * stride;
  for (int64_t j = 0; j < nk; ++j) {
    const float* kj = k + j * stride;
    Lanes a0 = {}, a1 = {}, a2 = {}, a3 = {};
    for (int64_t i = 0; i < dv; i += 8) {
      Lanes kv, x0, x1, x2, x3;
      std::memcpy(&kv, kj + i, 32);
      std::memcpy(&x0, q + i, 32);
      std::memcpy(&x1, q1 + i, 32);
      std::memcpy(&x2, q2 + i, 32);
      std::memcpy(&x3, q3 + i, 32);
      a0 += x0 * kv;
      a1 += x1 * kv;
      a2 += x2 * kv;
      a3 += x3 * kv;
    }
    const Lanes* acc[4] = {&a0, &a1, &a2, &a3};
    for (int r = 0; r < rows; ++r) {
      const Lanes& a = *acc[r];
      float sum = ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
      for (int64_t i = dv; i < dh; ++i) sum += q[r * stride + i] * kj[i];
      s[r * nk + j] = sum * scale;
    }
  }
  for (int r = 0; r < rows; ++r) {
    float* sr = s + r * nk;
    float* orow = o + r * stride;
    const float top = *std::max_element(sr, sr + nk);
    double sum = 0;
    for (int64_t j = 0; j < nk; ++j) {
      sr[j] = std::exp(sr[j] - top);
      sum += sr[j];
    }
    const float inv = static_cast<float>(1.0 / sum);
    for (int64_t j = 0; j < nk; ++j) sr[j] = round_fp16(sr[j] * inv);
    // The weighted sum in registers, 64 outputs at a time.
    int64_t i0 = 0;
    for (; i0 + 64 <= dh; i0 += 64) {
      Lanes acc[8] = {};
      for (int64_t j = 0; j < nk; ++j) {
        const Lanes w = {sr[j], sr[j], sr[j], sr[j], sr[j], sr[j], sr[j], sr[j]};
        const float* vj = v + j * stride + i0;
        for (int b = 0; b < 8; ++b) {
          Lanes x;
          std::memcpy(&x, vj + 8 * b, 32);
          acc[b] += w * x;
        }
      }
      std::memcpy(orow + i0, acc, sizeof(acc));
    }
    if (i0 < dh) {
      std::fill(orow + i0, orow + dh, 0.0f);
      for (int64_t j = 0; j < nk; ++j) {
        for (int64_t i = i0; i < dh; ++i) orow[i] += sr[j] * v[j * stride + i];
      }
    }
  }
}

// out[t] = softmax(scale * q[t] . k) v, per head; q: nq x d, k and v: nk x d, all three already
// rounded to F16 by the caller (whisper.cpp's F16 K/V caches and ggml's F16 products), the
// probabilities rounded to F16 before they weight v, as whisper.cpp's non-flash-attention path does.
void attend(ThreadPool& pool, const float* q, int64_t nq, const float* k, const float* v, int64_t nk, int64_t d,
            int heads, float scale, float* out) {
  const int64_t dh = d / heads, groups = (nq + 3) / 4;
  pool.parallel_for(groups * heads, [&](int64_t job) {
    const int64_t t = (job / heads) * 4, h = job % heads;
    const int rows = static_cast<int>(std::min<int64_t>(4, nq - t));
    thread_local std::vector<float> s;
    s.resize(static_cast<size_t>(4 * nk));
    attend_rows(q + t * d + h * dh, rows, k + h * dh, v + h * dh, nk, d, dh, scale, s.data(), out + t * d + h * dh);
  });
}

}  // namespace

struct WhisperModel::Impl {
  WhisperHparams hp;
  WhisperMelFilters filters;
  std::vector<std::string> vocab;
  Linear conv1, conv2;  // kernels reordered to [out][tap][in], applied to im2col columns
  std::vector<float> enc_pos, dec_pos, tok_emb;
  std::vector<Block> enc, dec;
  Norm enc_ln, dec_ln;
  bool tok_emb_f16 = false;
};

WhisperModel::WhisperModel(const WhisperFile& f) {
  if (f.tensors.empty()) {
    throw std::runtime_error(fmt::format("{}: the file holds no tensors (a header-only test file)", f.path().string()));
  }
  auto m = std::make_shared<Impl>();
  m->hp = f.hparams;
  m->filters = f.filters;
  m->vocab = f.vocab;
  auto get = [&](const std::string& name) {
    const WhisperTensor* t = f.find(name);
    if (!t) throw std::runtime_error(fmt::format("{}: no tensor '{}'", f.path().string(), name));
    std::vector<uint8_t> bytes(t->data.begin(), t->data.end());
    std::vector<float> v(static_cast<size_t>(t->elements()));
    dequantize_rows(t->type, bytes.data(), v.data(), t->rows(), t->ne[0]);
    return v;
  };
  auto lin = [&](const std::string& p, bool bias) {
    Linear l;
    l.w = get(p + ".weight");
    l.in = f.find(p + ".weight")->ne[0];
    l.out = f.find(p + ".weight")->ne[1];
    l.f16_input = f.find(p + ".weight")->type == TypeId::F16;
    l.name = p + ".weight";
    if (bias) l.b = get(p + ".bias");
    return l;
  };
  auto norm = [&](const std::string& p) { return Norm{get(p + ".weight"), get(p + ".bias")}; };
  auto attn = [&](const std::string& p) {
    return Attention{lin(p + ".query", true), lin(p + ".key", false), lin(p + ".value", true), lin(p + ".out", true),
                     norm(p + "_ln")};
  };
  auto block = [&](const std::string& p, bool cross) {
    Block b;
    b.self = attn(p + "attn");
    if (cross) b.cross = attn(p + "cross_attn");
    b.fc1 = lin(p + "mlp.0", true);
    b.fc2 = lin(p + "mlp.2", true);
    b.mlp_ln = norm(p + "mlp_ln");
    return b;
  };
  // Stored [out][in][3]; as a Linear over im2col columns [tap][in] they become [out][tap][in].
  auto conv = [&](const std::string& p) {
    const std::vector<float> k = get(p + ".weight");
    Linear l;
    l.out = f.find(p + ".weight")->ne[2];
    const int64_t in = f.find(p + ".weight")->ne[1];
    l.in = 3 * in;
    l.w.resize(k.size());
    for (int64_t o = 0; o < l.out; ++o) {
      for (int64_t i = 0; i < in; ++i) {
        for (int64_t tap = 0; tap < 3; ++tap) l.w[(o * 3 + tap) * in + i] = k[(o * in + i) * 3 + tap];
      }
    }
    l.b = get(p + ".bias");
    return l;
  };
  m->conv1 = conv("encoder.conv1");
  m->conv2 = conv("encoder.conv2");
  m->enc_pos = get("encoder.positional_embedding");
  m->dec_pos = get("decoder.positional_embedding");
  m->tok_emb = get("decoder.token_embedding.weight");
  m->tok_emb_f16 = f.find("decoder.token_embedding.weight")->type == TypeId::F16;
  // ggml's conv_1d multiplies F16 im2col columns by the kernel rounded to F16, whatever its type.
  round_to_f16(m->conv1.w.data(), static_cast<int64_t>(m->conv1.w.size()));
  round_to_f16(m->conv2.w.data(), static_cast<int64_t>(m->conv2.w.size()));
  for (int i = 0; i < m->hp.n_audio_layer; ++i) m->enc.push_back(block(fmt::format("encoder.blocks.{}.", i), false));
  for (int i = 0; i < m->hp.n_text_layer; ++i) m->dec.push_back(block(fmt::format("decoder.blocks.{}.", i), true));
  m->enc_ln = norm("encoder.ln_post");
  m->dec_ln = norm("decoder.ln");
  impl_ = std::move(m);
}

// The hooks of a pass: the model's observer and its weight overrides.
struct WhisperModel::Overrides {
  std::map<std::string, Linear> linear;  // by weight name
  std::vector<float> tok_emb;            // empty: the stored token embedding
};

std::vector<float> WhisperModel::encoder_input(const std::vector<float>& samples, int threads) const {
  const Impl& m = *impl_;
  const WhisperHparams& hp = m.hp;
  ThreadPool pool(threads);
  const int64_t d = hp.n_audio_state, n_ctx = hp.n_audio_ctx, n_frames = 2 * n_ctx, n_mels = hp.n_mels;
  std::vector<float> mel = whisper_log_mel(samples, m.filters, static_cast<int>(n_frames));
  round_to_f16(mel.data(), static_cast<int64_t>(mel.size()));  // ggml's im2col is F16

  // Convolutions (kernel 3, padding 1) as ggml computes them: im2col columns [time][tap][in] (F16
  // values: the mel is rounded above, GELU's outputs are F16 already) times the kernels.
  auto im2col = [&](const std::vector<float>& in, int64_t channels, int64_t len, bool time_major, int stride) {
    const int64_t out_len = len / stride;
    std::vector<float> cols(static_cast<size_t>(out_len * 3 * channels), 0.0f);
    pool.parallel_for(out_len, [&](int64_t t) {
      for (int64_t tap = 0; tap < 3; ++tap) {
        const int64_t src = stride * t + tap - 1;
        if (src < 0 || src >= len) continue;
        float* c = cols.data() + (t * 3 + tap) * channels;
        for (int64_t i = 0; i < channels; ++i) c[i] = time_major ? in[src * channels + i] : in[i * len + src];
      }
    });
    return cols;
  };
  std::vector<float> c1(static_cast<size_t>(n_frames * d)), x(static_cast<size_t>(n_ctx * d));
  linear(pool, Hooks{}, m.conv1, im2col(mel, n_mels, n_frames, false, 1).data(), n_frames, c1.data());
  for (auto& v : c1) v = gelu(v);
  linear(pool, Hooks{}, m.conv2, im2col(c1, d, n_frames, true, 2).data(), n_ctx, x.data());
  for (size_t i = 0; i < x.size(); ++i) x[i] = gelu(x[i]) + m.enc_pos[i];
  return x;
}

WhisperAudioState WhisperModel::encode(const std::vector<float>& samples, int threads,
                                       std::vector<std::vector<float>>* block_inputs) const {
  return encode_from(0, encoder_input(samples, threads), threads, block_inputs);
}

WhisperAudioState WhisperModel::encode_from(int first_block, std::vector<float> x, int threads,
                                            std::vector<std::vector<float>>* block_inputs) const {
  const Impl& m = *impl_;
  const WhisperHparams& hp = m.hp;
  const int64_t d = hp.n_audio_state, n_ctx = hp.n_audio_ctx;
  if (first_block < 0 || first_block > hp.n_audio_layer || static_cast<int64_t>(x.size()) != n_ctx * d) {
    throw std::invalid_argument(fmt::format("whisper: no encoder restart at block {} with {} values (want 0..{} and {})",
                                            first_block, x.size(), hp.n_audio_layer, n_ctx * d));
  }
  ThreadPool pool(threads);
  const Hooks hooks{&observer_, overrides_ ? &overrides_->linear : nullptr};
  if (block_inputs) block_inputs->assign(static_cast<size_t>(hp.n_audio_layer) + 1, {});
  std::vector<float> h(x.size()), q(x.size()), kk(x.size()), vv(x.size()), a(x.size());
  std::vector<float> ff(static_cast<size_t>(n_ctx * 4 * d));
  for (size_t l = static_cast<size_t>(first_block); l < m.enc.size(); ++l) {
    const Block& b = m.enc[l];
    if (block_inputs) (*block_inputs)[l] = x;
    layer_norm(b.self.ln, x.data(), n_ctx, d, h.data());
    linear(pool, hooks, b.self.q, h.data(), n_ctx, q.data());
    linear(pool, hooks, b.self.k, h.data(), n_ctx, kk.data());
    linear(pool, hooks, b.self.v, h.data(), n_ctx, vv.data());
    for (auto* t : {&q, &kk, &vv}) round_to_f16(t->data(), static_cast<int64_t>(t->size()));
    const float scale = 1.0f / std::sqrt(static_cast<float>(d / hp.n_audio_head));
    attend(pool, q.data(), n_ctx, kk.data(), vv.data(), n_ctx, d, hp.n_audio_head, scale, a.data());
    linear(pool, hooks, b.self.o, a.data(), n_ctx, h.data());
    for (size_t i = 0; i < x.size(); ++i) x[i] += h[i];
    layer_norm(b.mlp_ln, x.data(), n_ctx, d, h.data());
    linear(pool, hooks, b.fc1, h.data(), n_ctx, ff.data());
    for (auto& v : ff) v = gelu(v);
    linear(pool, hooks, b.fc2, ff.data(), n_ctx, h.data());
    for (size_t i = 0; i < x.size(); ++i) x[i] += h[i];
  }
  if (block_inputs) (*block_inputs)[m.enc.size()] = x;
  std::vector<float> enc(x.size());
  layer_norm(m.enc_ln, x.data(), n_ctx, d, enc.data());

  // Cross-attention keys and values, once per layer.
  const size_t layers = m.dec.size();
  WhisperAudioState st;
  st.cross_k.assign(layers, std::vector<float>(x.size()));
  st.cross_v = st.cross_k;
  // whisper.cpp stores them in F16, the keys scaled by dh^-1/4 first.
  const float kscale = std::pow(static_cast<float>(hp.n_text_state / hp.n_text_head), -0.25f);
  for (size_t l = 0; l < layers; ++l) {
    linear(pool, hooks, m.dec[l].cross.k, enc.data(), n_ctx, st.cross_k[l].data());
    linear(pool, hooks, m.dec[l].cross.v, enc.data(), n_ctx, st.cross_v[l].data());
    for (auto& v : st.cross_k[l]) v = round_fp16(v * kscale);
    round_to_f16(st.cross_v[l].data(), static_cast<int64_t>(st.cross_v[l].size()));
  }
  return st;
}

// The decoder over one window: its self-attention KV cache and the step that reads one token.
struct WhisperModel::Decoder {
  const Impl& m;
  const WhisperAudioState& audio;
  ThreadPool& pool;
  Hooks hooks;
  const std::vector<float>& tok_emb;  // the stored token embedding or its override
  bool tok_emb_f16;
  int64_t d, pos = 0;
  std::vector<std::vector<float>> sk, sv;
  std::vector<float> y, yh, yq, ya, yf;

  Decoder(const Impl& model, const WhisperAudioState& a, ThreadPool& p, const WhisperActivationObserver* observer,
          const Overrides* overrides)
      : m(model),
        audio(a),
        pool(p),
        hooks{observer, overrides ? &overrides->linear : nullptr},
        tok_emb(overrides && !overrides->tok_emb.empty() ? overrides->tok_emb : model.tok_emb),
        tok_emb_f16(model.tok_emb_f16 && &tok_emb == &model.tok_emb),
        d(model.hp.n_text_state) {
    const size_t cache = static_cast<size_t>(m.hp.n_text_ctx * d);
    sk.assign(m.dec.size(), std::vector<float>(cache));
    sv = sk;
    y.resize(d), yh.resize(d), yq.resize(d), ya.resize(d), yf.resize(4 * d);
    if (a.cross_k.size() != m.dec.size() || a.cross_v.size() != m.dec.size()) {
      throw std::invalid_argument("whisper: the audio state was encoded by a model with another layer count");
    }
  }

  // Reads `tok` at the next position; with logits (n_vocab floats), also predicts the next token.
  void step(int tok, float* logits) {
    const WhisperHparams& hp = m.hp;
    if (pos >= hp.n_text_ctx) {
      throw std::runtime_error(fmt::format("whisper: more than n_text_ctx = {} decoder tokens", hp.n_text_ctx));
    }
    if (tok < 0 || tok >= hp.n_vocab) {
      throw std::invalid_argument(fmt::format("whisper: token {} is outside the vocabulary (0..{})", tok, hp.n_vocab - 1));
    }
    const int64_t n_ctx = hp.n_audio_ctx;
    // whisper.cpp scales q and k by dh^-1/4 each, keeps the KV cache in F16 and multiplies q by
    // the F16 keys in F16.
    const float s = std::pow(static_cast<float>(d / hp.n_text_head), -0.25f);
    for (int64_t i = 0; i < d; ++i) y[i] = tok_emb[tok * d + i] + m.dec_pos[pos * d + i];
    for (size_t l = 0; l < m.dec.size(); ++l) {
      const Block& b = m.dec[l];
      layer_norm(b.self.ln, y.data(), 1, d, yh.data());
      linear(pool, hooks, b.self.q, yh.data(), 1, yq.data());
      linear(pool, hooks, b.self.k, yh.data(), 1, sk[l].data() + pos * d);
      linear(pool, hooks, b.self.v, yh.data(), 1, sv[l].data() + pos * d);
      float* kp = sk[l].data() + pos * d;
      float* vp = sv[l].data() + pos * d;
      for (int64_t i = 0; i < d; ++i) {
        yq[i] = round_fp16(yq[i] * s);
        kp[i] = round_fp16(kp[i] * s);
        vp[i] = round_fp16(vp[i]);
      }
      attend(pool, yq.data(), 1, sk[l].data(), sv[l].data(), pos + 1, d, hp.n_text_head, 1.0f, ya.data());
      linear(pool, hooks, b.self.o, ya.data(), 1, yh.data());
      for (int64_t i = 0; i < d; ++i) y[i] += yh[i];
      layer_norm(b.cross.ln, y.data(), 1, d, yh.data());
      linear(pool, hooks, b.cross.q, yh.data(), 1, yq.data());
      round_to_f16(yq.data(), d);
      attend(pool, yq.data(), 1, audio.cross_k[l].data(), audio.cross_v[l].data(), n_ctx, d, hp.n_text_head, s,
             ya.data());
      linear(pool, hooks, b.cross.o, ya.data(), 1, yh.data());
      for (int64_t i = 0; i < d; ++i) y[i] += yh[i];
      layer_norm(b.mlp_ln, y.data(), 1, d, yh.data());
      linear(pool, hooks, b.fc1, yh.data(), 1, yf.data());
      for (auto& v : yf) v = gelu(v);
      linear(pool, hooks, b.fc2, yf.data(), 1, yh.data());
      for (int64_t i = 0; i < d; ++i) y[i] += yh[i];
    }
    ++pos;
    if (!logits) return;
    layer_norm(m.dec_ln, y.data(), 1, d, yh.data());
    if (hooks.observer && *hooks.observer) (*hooks.observer)("decoder.token_embedding.weight", yh.data(), 1, d);
    if (tok_emb_f16) round_to_f16(yh.data(), d);
    const int64_t vocab_n = hp.n_vocab;
    pool.parallel_for((vocab_n + 255) / 256, [&](int64_t c) {
      for (int64_t v = c * 256; v < std::min(vocab_n, (c + 1) * 256); ++v) {
        logits[v] = dot(tok_emb.data() + v * d, yh.data(), d);
      }
    });
  }
};

void WhisperModel::set_weight_override(const std::string& name, std::vector<float> values) {
  const Impl& m = *impl_;
  // Copy on write: a copy of this model made before keeps its own overrides.
  auto o = overrides_ ? std::make_shared<Overrides>(*overrides_) : std::make_shared<Overrides>();
  if (name == "decoder.token_embedding.weight") {
    if (values.size() != m.tok_emb.size()) {
      throw std::invalid_argument(fmt::format("whisper: override of '{}' has {} values, want {}", name, values.size(),
                                              m.tok_emb.size()));
    }
    o->tok_emb = std::move(values);
    overrides_ = std::move(o);
    return;
  }
  const Linear* found = nullptr;
  for (const auto* blocks : {&m.enc, &m.dec}) {
    for (const Block& b : *blocks) {
      for (const Linear* l : {&b.self.q, &b.self.k, &b.self.v, &b.self.o, &b.cross.q, &b.cross.k, &b.cross.v,
                              &b.cross.o, &b.fc1, &b.fc2}) {
        if (!l->name.empty() && l->name == name) found = l;
      }
    }
  }
  if (!found) throw std::invalid_argument(fmt::format("whisper: no matrix weight '{}' to override", name));
  if (values.size() != found->w.size()) {
    throw std::invalid_argument(
        fmt::format("whisper: override of '{}' has {} values, want {}", name, values.size(), found->w.size()));
  }
  Linear l = *found;
  l.w = std::move(values);
  l.f16_input = false;  // a quantized weight: the product reads F32 inputs
  o->linear[name] = std::move(l);
  overrides_ = std::move(o);
}

void WhisperModel::clear_weight_overrides() { overrides_.reset(); }

int WhisperModel::n_vocab() const { return impl_->hp.n_vocab; }
int WhisperModel::n_audio_ctx() const { return impl_->hp.n_audio_ctx; }
const std::vector<std::string>& WhisperModel::vocab() const { return impl_->vocab; }

// Special tokens as whisper.cpp numbers them.
int WhisperModel::eot() const { return impl_->hp.n_vocab >= 51865 ? 50257 : 50256; }

std::vector<int> WhisperModel::prompt() const {
  const int n_vocab = impl_->hp.n_vocab;
  const bool multilingual = n_vocab >= 51865;
  const int sot = eot() + 1;
  const int shift = multilingual ? (n_vocab - 51765 - 1) - 98 : 0;
  const int transcribe = 50358 + shift, no_timestamps = 50362 + shift;
  std::vector<int> prompt = {sot};
  if (multilingual) prompt.insert(prompt.end(), {sot + 1, transcribe});  // <|en|>
  prompt.push_back(no_timestamps);
  return prompt;
}

WhisperTranscript WhisperModel::decode_greedy(const WhisperAudioState& audio, int threads, int max_tokens,
                                              std::vector<float>* step_logits) const {
  const Impl& m = *impl_;
  ThreadPool pool(threads);
  Decoder dec(m, audio, pool, &observer_, overrides_.get());
  const int end = eot();
  int space = -1;
  for (size_t i = 0; i < m.vocab.size(); ++i) {
    if (m.vocab[i] == " ") space = static_cast<int>(i);
  }
  const int64_t vocab_n = m.hp.n_vocab;
  std::vector<float> logits(static_cast<size_t>(vocab_n));
  const std::vector<int> prompt_tokens = prompt();
  for (size_t i = 0; i + 1 < prompt_tokens.size(); ++i) dec.step(prompt_tokens[i], nullptr);
  int next = prompt_tokens.back();
  WhisperTranscript out;
  while (dec.pos < m.hp.n_text_ctx && static_cast<int>(out.tokens.size()) < max_tokens) {
    dec.step(next, logits.data());
    if (step_logits) step_logits->insert(step_logits->end(), logits.begin(), logits.end());
    const bool first = out.tokens.empty();
    int best = -1;
    for (int64_t v = 0; v < vocab_n; ++v) {
      if (v > end) continue;  // special tokens and timestamps
      if (first && (v == end || v == space)) continue;
      if (best < 0 || logits[v] > logits[best]) best = static_cast<int>(v);
    }
    if (best == end) break;
    out.tokens.push_back(best);
    if (best < static_cast<int>(m.vocab.size())) out.text += m.vocab[best];
    next = best;
  }
  return out;
}

std::vector<float> WhisperModel::forced_logits(const WhisperAudioState& audio, const std::vector<int>& tokens,
                                               int threads) const {
  ThreadPool pool(threads);
  Decoder dec(*impl_, audio, pool, &observer_, overrides_.get());
  const size_t n = static_cast<size_t>(impl_->hp.n_vocab);
  std::vector<float> out(tokens.size() * n);
  for (size_t i = 0; i < tokens.size(); ++i) dec.step(tokens[i], out.data() + i * n);
  return out;
}

WhisperTranscript WhisperModel::transcribe(const std::vector<float>& samples, int threads, int max_tokens) const {
  return decode_greedy(encode(samples, threads), threads, max_tokens);
}

}  // namespace mixq
