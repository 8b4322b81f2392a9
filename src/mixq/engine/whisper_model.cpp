#include "mixq/engine/whisper_model.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <stdexcept>

#include <fmt/format.h>

#include "mixq/engine/whisper_audio.h"
#include "mixq/util/thread_pool.h"

namespace mixq {

namespace {

struct Linear {
  std::vector<float> w, b;  // w: [out][in]; b empty when the layer has none
  int64_t in = 0, out = 0;
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

float dot(const float* a, const float* b, int64_t n) {
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

float gelu(float x) { return 0.5f * x * (1.0f + std::erf(x * 0.70710678118654752f)); }

// y[t][o] = W[o] . x[t] + b[o] for n rows of x.
void linear(ThreadPool& pool, const Linear& l, const float* x, int64_t n, float* y) {
  constexpr int64_t kOutChunk = 64;
  const int64_t chunks = (l.out + kOutChunk - 1) / kOutChunk;
  pool.parallel_for(n * chunks, [&](int64_t job) {
    const int64_t t = job / chunks, o0 = (job % chunks) * kOutChunk, o1 = std::min(l.out, o0 + kOutChunk);
    const float* xt = x + t * l.in;
    for (int64_t o = o0; o < o1; ++o) {
      y[t * l.out + o] = dot(l.w.data() + o * l.in, xt, l.in) + (l.b.empty() ? 0.0f : l.b[o]);
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

// out[t] = softmax(q[t] . k / sqrt(dh)) v, per head; q: nq x d, k and v: nk x d.
void attend(ThreadPool& pool, const float* q, int64_t nq, const float* k, const float* v, int64_t nk, int64_t d,
            int heads, float* out) {
  const int64_t dh = d / heads;
  const float scale = 1.0f / std::sqrt(static_cast<float>(dh));
  pool.parallel_for(nq * heads, [&](int64_t job) {
    const int64_t t = job / heads, h = job % heads;
    std::vector<float> s(static_cast<size_t>(nk));
    const float* qt = q + t * d + h * dh;
    float top = -std::numeric_limits<float>::infinity();
    for (int64_t j = 0; j < nk; ++j) {
      s[j] = dot(qt, k + j * d + h * dh, dh) * scale;
      top = std::max(top, s[j]);
    }
    double sum = 0;
    for (auto& x : s) {
      x = std::exp(x - top);
      sum += x;
    }
    float* o = out + t * d + h * dh;
    std::fill(o, o + dh, 0.0f);
    for (int64_t j = 0; j < nk; ++j) {
      const float w = static_cast<float>(s[j] / sum);
      const float* vj = v + j * d + h * dh;
      for (int64_t i = 0; i < dh; ++i) o[i] += w * vj[i];
    }
  });
}

}  // namespace

struct WhisperModel::Impl {
  WhisperHparams hp;
  WhisperMelFilters filters;
  std::vector<std::string> vocab;
  std::vector<float> conv1_w, conv1_b, conv2_w, conv2_b, enc_pos, dec_pos, tok_emb;
  std::vector<Block> enc, dec;
  Norm enc_ln, dec_ln;
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
  m->conv1_w = get("encoder.conv1.weight");
  m->conv1_b = get("encoder.conv1.bias");
  m->conv2_w = get("encoder.conv2.weight");
  m->conv2_b = get("encoder.conv2.bias");
  m->enc_pos = get("encoder.positional_embedding");
  m->dec_pos = get("decoder.positional_embedding");
  m->tok_emb = get("decoder.token_embedding.weight");
  for (int i = 0; i < m->hp.n_audio_layer; ++i) m->enc.push_back(block(fmt::format("encoder.blocks.{}.", i), false));
  for (int i = 0; i < m->hp.n_text_layer; ++i) m->dec.push_back(block(fmt::format("decoder.blocks.{}.", i), true));
  m->enc_ln = norm("encoder.ln_post");
  m->dec_ln = norm("decoder.ln");
  impl_ = std::move(m);
}

WhisperTranscript WhisperModel::transcribe(const std::vector<float>& samples, int threads, int max_tokens) const {
  const Impl& m = *impl_;
  const WhisperHparams& hp = m.hp;
  ThreadPool pool(threads);
  const int64_t d = hp.n_audio_state, n_ctx = hp.n_audio_ctx, n_frames = 2 * n_ctx, n_mels = hp.n_mels;
  const std::vector<float> mel = whisper_log_mel(samples, m.filters, static_cast<int>(n_frames));

  // Convolutions: weights [out][in][3], inputs [in][time]; outputs [time][out] after GELU.
  std::vector<float> c1(static_cast<size_t>(n_frames * d)), x(static_cast<size_t>(n_ctx * d));
  pool.parallel_for(d, [&](int64_t o) {
    for (int64_t t = 0; t < n_frames; ++t) {
      float s = m.conv1_b[o];
      for (int64_t i = 0; i < n_mels; ++i) {
        const float* w = m.conv1_w.data() + (o * n_mels + i) * 3;
        const float* in = mel.data() + i * n_frames;
        for (int k = 0; k < 3; ++k) {
          const int64_t tt = t + k - 1;
          if (tt >= 0 && tt < n_frames) s += w[k] * in[tt];
        }
      }
      c1[t * d + o] = gelu(s);
    }
  });
  pool.parallel_for(d, [&](int64_t o) {
    for (int64_t t = 0; t < n_ctx; ++t) {
      float s = m.conv2_b[o];
      for (int k = 0; k < 3; ++k) {
        const int64_t tt = 2 * t + k - 1;
        if (tt < 0 || tt >= n_frames) continue;
        const float* in = c1.data() + tt * d;
        const float* w = m.conv2_w.data() + o * d * 3 + k;
        for (int64_t i = 0; i < d; ++i) s += w[i * 3] * in[i];
      }
      x[t * d + o] = gelu(s) + m.enc_pos[t * d + o];
    }
  });

  std::vector<float> h(x.size()), q(x.size()), kk(x.size()), vv(x.size()), a(x.size());
  std::vector<float> ff(static_cast<size_t>(n_ctx * 4 * d));
  for (const Block& b : m.enc) {
    layer_norm(b.self.ln, x.data(), n_ctx, d, h.data());
    linear(pool, b.self.q, h.data(), n_ctx, q.data());
    linear(pool, b.self.k, h.data(), n_ctx, kk.data());
    linear(pool, b.self.v, h.data(), n_ctx, vv.data());
    attend(pool, q.data(), n_ctx, kk.data(), vv.data(), n_ctx, d, hp.n_audio_head, a.data());
    linear(pool, b.self.o, a.data(), n_ctx, h.data());
    for (size_t i = 0; i < x.size(); ++i) x[i] += h[i];
    layer_norm(b.mlp_ln, x.data(), n_ctx, d, h.data());
    linear(pool, b.fc1, h.data(), n_ctx, ff.data());
    for (auto& v : ff) v = gelu(v);
    linear(pool, b.fc2, ff.data(), n_ctx, h.data());
    for (size_t i = 0; i < x.size(); ++i) x[i] += h[i];
  }
  std::vector<float> enc(x.size());
  layer_norm(m.enc_ln, x.data(), n_ctx, d, enc.data());

  // Cross-attention keys and values, once per layer.
  const size_t layers = m.dec.size();
  std::vector<std::vector<float>> ck(layers, std::vector<float>(x.size())), cv = ck;
  for (size_t l = 0; l < layers; ++l) {
    linear(pool, m.dec[l].cross.k, enc.data(), n_ctx, ck[l].data());
    linear(pool, m.dec[l].cross.v, enc.data(), n_ctx, cv[l].data());
  }

  // Special tokens as whisper.cpp numbers them.
  const bool multilingual = hp.n_vocab >= 51865;
  const int eot = multilingual ? 50257 : 50256, sot = eot + 1;
  const int shift = multilingual ? (hp.n_vocab - 51765 - 1) - 98 : 0;
  const int transcribe = 50358 + shift, no_timestamps = 50362 + shift;
  std::vector<int> prompt = {sot};
  if (multilingual) prompt.insert(prompt.end(), {sot + 1, transcribe});  // <|en|>
  prompt.push_back(no_timestamps);
  int space = -1;
  for (size_t i = 0; i < m.vocab.size(); ++i) {
    if (m.vocab[i] == " ") space = static_cast<int>(i);
  }

  const int64_t t_ctx = hp.n_text_ctx, vocab_n = hp.n_vocab;
  std::vector<std::vector<float>> sk(layers, std::vector<float>(static_cast<size_t>(t_ctx * d))), sv = sk;
  std::vector<float> y(d), yh(d), yq(d), ya(d), yf(4 * d), logits(vocab_n);
  WhisperTranscript out;
  std::vector<int> tokens = prompt;
  for (int64_t pos = 0; pos < t_ctx && static_cast<int>(out.tokens.size()) < max_tokens; ++pos) {
    const int tok = tokens[pos];
    for (int64_t i = 0; i < d; ++i) y[i] = m.tok_emb[tok * d + i] + m.dec_pos[pos * d + i];
    for (size_t l = 0; l < layers; ++l) {
      const Block& b = m.dec[l];
      layer_norm(b.self.ln, y.data(), 1, d, yh.data());
      linear(pool, b.self.q, yh.data(), 1, yq.data());
      linear(pool, b.self.k, yh.data(), 1, sk[l].data() + pos * d);
      linear(pool, b.self.v, yh.data(), 1, sv[l].data() + pos * d);
      attend(pool, yq.data(), 1, sk[l].data(), sv[l].data(), pos + 1, d, hp.n_text_head, ya.data());
      linear(pool, b.self.o, ya.data(), 1, yh.data());
      for (int64_t i = 0; i < d; ++i) y[i] += yh[i];
      layer_norm(b.cross.ln, y.data(), 1, d, yh.data());
      linear(pool, b.cross.q, yh.data(), 1, yq.data());
      attend(pool, yq.data(), 1, ck[l].data(), cv[l].data(), n_ctx, d, hp.n_text_head, ya.data());
      linear(pool, b.cross.o, ya.data(), 1, yh.data());
      for (int64_t i = 0; i < d; ++i) y[i] += yh[i];
      layer_norm(b.mlp_ln, y.data(), 1, d, yh.data());
      linear(pool, b.fc1, yh.data(), 1, yf.data());
      for (auto& v : yf) v = gelu(v);
      linear(pool, b.fc2, yf.data(), 1, yh.data());
      for (int64_t i = 0; i < d; ++i) y[i] += yh[i];
    }
    if (pos + 1 < static_cast<int64_t>(tokens.size())) continue;  // still reading the prompt
    layer_norm(m.dec_ln, y.data(), 1, d, yh.data());
    pool.parallel_for((vocab_n + 255) / 256, [&](int64_t c) {
      for (int64_t v = c * 256; v < std::min(vocab_n, (c + 1) * 256); ++v) {
        logits[v] = dot(m.tok_emb.data() + v * d, yh.data(), d);
      }
    });
    const bool first = out.tokens.empty();
    int best = -1;
    for (int64_t v = 0; v < vocab_n; ++v) {
      if (v > eot) continue;  // special tokens and timestamps
      if (first && (v == eot || v == space)) continue;
      if (best < 0 || logits[v] > logits[best]) best = static_cast<int>(v);
    }
    if (best == eot) break;
    out.tokens.push_back(best);
    tokens.push_back(best);
    if (best < static_cast<int>(m.vocab.size())) out.text += m.vocab[best];
  }
  return out;
}

}  // namespace mixq
