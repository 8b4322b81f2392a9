#include "mixq/engine/llama_model.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include <fmt/format.h>

#include "mixq/formats/half.h"
#include <fmt/ranges.h>

namespace mixq {

namespace {

int64_t require_int(const GgufFile& f, const std::string& key) {
  const GgufValue* v = f.find(key);
  if (!v || !v->is_integer()) throw std::runtime_error(fmt::format("{}: missing metadata key {}", f.label(), key));
  return v->as_int();
}

const GgufTensor* require_tensor(const GgufFile& f, const std::string& name, std::vector<int64_t> shape) {
  const GgufTensor* t = f.find_tensor(name);
  if (!t) throw std::runtime_error(fmt::format("{}: missing tensor {}", f.label(), name));
  if (t->shape != shape) {
    throw std::runtime_error(fmt::format("{}: tensor {} has shape [{}], expected [{}]", f.label(), name,
                                         fmt::join(t->shape, ", "), fmt::join(shape, ", ")));
  }
  if (!t->type->can_dequantize()) {
    throw std::runtime_error(fmt::format("{}: tensor {} is {}, which mixq cannot decode", f.label(), name, t->type->name));
  }
  return t;
}

void rms_norm(const float* x, const float* weight, int n, float eps, float* out) {
  double ss = 0;
  for (int i = 0; i < n; ++i) ss += static_cast<double>(x[i]) * x[i];
  const float scale = 1.0f / std::sqrt(static_cast<float>(ss / n) + eps);
  for (int i = 0; i < n; ++i) out[i] = x[i] * scale * weight[i];
}

// 1-D norm weights as floats (they are F32 in practice, but any type decodes).
std::vector<float> decode_vector(const GgufTensor& t) {
  std::vector<float> v(static_cast<size_t>(t.n_elements()));
  dequantize_rows(t.type->id, t.data, v.data(), t.n_rows(), t.row_length());
  return v;
}

}  // namespace

AttentionMode parse_attention_mode(const std::string& name) {
  if (name == "f16") return AttentionMode::kLlamaCppF16;
  if (name == "tiled") return AttentionMode::kTiled;
  if (name == "f32") return AttentionMode::kF32;
  throw std::runtime_error(fmt::format("unknown attention mode '{}': use f16 (llama.cpp's reference numerics, the "
                                       "default), tiled (F32 tiles over an F16 cache, newer llama.cpp) or f32",
                                       name));
}

LlamaModel::LlamaModel(const GgufFile& f) : file_(f) {
  const GgufValue* arch = f.find("general.architecture");
  if (!arch || arch->type() != GgufValueType::STRING) {
    throw std::runtime_error(fmt::format("{}: no general.architecture key", f.label()));
  }
  const std::string a = arch->as_string();
  if (a != "llama") {
    throw std::runtime_error(fmt::format("{}: architecture '{}' is not supported (supported: llama)", f.label(), a));
  }
  hp_.n_embd = static_cast<int>(require_int(f, "llama.embedding_length"));
  hp_.n_layer = static_cast<int>(require_int(f, "llama.block_count"));
  hp_.n_head = static_cast<int>(require_int(f, "llama.attention.head_count"));
  hp_.n_ff = static_cast<int>(require_int(f, "llama.feed_forward_length"));
  hp_.n_head_kv = f.find("llama.attention.head_count_kv") ? static_cast<int>(require_int(f, "llama.attention.head_count_kv"))
                                                          : hp_.n_head;
  hp_.n_ctx_train = f.find("llama.context_length") ? static_cast<int>(require_int(f, "llama.context_length")) : 2048;
  if (hp_.n_embd <= 0 || hp_.n_layer <= 0 || hp_.n_head <= 0 || hp_.n_head_kv <= 0 || hp_.n_embd % hp_.n_head ||
      hp_.n_head % hp_.n_head_kv) {
    throw std::runtime_error(fmt::format("{}: inconsistent llama hyperparameters", f.label()));
  }
  hp_.n_rot = f.find("llama.rope.dimension_count") ? static_cast<int>(require_int(f, "llama.rope.dimension_count"))
                                                   : hp_.head_dim();
  if (const GgufValue* v = f.find("llama.rope.freq_base")) hp_.rope_freq_base = static_cast<float>(v->as_float());
  if (const GgufValue* v = f.find("llama.attention.layer_norm_rms_epsilon")) hp_.rms_eps = static_cast<float>(v->as_float());
  const GgufTensor* emb = f.find_tensor("token_embd.weight");
  if (!emb || emb->shape.size() != 2) throw std::runtime_error(fmt::format("{}: missing tensor token_embd.weight", f.label()));
  hp_.n_vocab = static_cast<int>(emb->shape[1]);
  const int64_t e = hp_.n_embd, kv = hp_.kv_dim(), ff = hp_.n_ff, voc = hp_.n_vocab;
  token_embd = require_tensor(f, "token_embd.weight", {e, voc});
  output_norm = require_tensor(f, "output_norm.weight", {e});
  output = f.find_tensor("output.weight") ? require_tensor(f, "output.weight", {e, voc}) : token_embd;
  for (int l = 0; l < hp_.n_layer; ++l) {
    const std::string b = fmt::format("blk.{}.", l);
    layers.push_back({require_tensor(f, b + "attn_norm.weight", {e}), require_tensor(f, b + "attn_q.weight", {e, e}),
                      require_tensor(f, b + "attn_k.weight", {e, kv}), require_tensor(f, b + "attn_v.weight", {e, kv}),
                      require_tensor(f, b + "attn_output.weight", {e, e}), require_tensor(f, b + "ffn_norm.weight", {e}),
                      require_tensor(f, b + "ffn_gate.weight", {e, ff}), require_tensor(f, b + "ffn_up.weight", {e, ff}),
                      require_tensor(f, b + "ffn_down.weight", {ff, e})});
  }
  std::vector<const GgufTensor*> matrices{token_embd, output};
  for (const auto& L : layers) matrices.insert(matrices.end(), {L.wq, L.wk, L.wv, L.wo, L.gate, L.up, L.down});
  for (const GgufTensor* m : matrices) {
    if (outliers_.contains(m)) continue;
    OutlierColumns oc = load_outlier_columns(f, *m);
    if (oc.k() > 0) outliers_.emplace(m, std::move(oc));
  }
}

LlamaContext::LlamaContext(const LlamaModel& model, int n_ctx, int n_threads)
    : model_(model), n_ctx_(n_ctx), pool_(n_threads), kernels_(&kernels::best_kernels()) {
  const auto& hp = model.hparams();
  if (n_ctx <= 0) throw std::runtime_error(fmt::format("context size must be positive, got {}", n_ctx));
  const size_t per_layer = static_cast<size_t>(n_ctx) * static_cast<size_t>(hp.kv_dim());
  // K rows padded to whole attention tiles, so a tile never reads past the row.
  kv_stride_ = (n_ctx + kernels::kAttnTile - 1) / kernels::kAttnTile * kernels::kAttnTile;
  k_cache_.assign(static_cast<size_t>(kv_stride_) * hp.kv_dim() * static_cast<size_t>(hp.n_layer), 0.0f);
  v_cache_.assign(per_layer * static_cast<size_t>(hp.n_layer), 0.0f);
  for (int i = 0; i < hp.n_rot / 2; ++i) {
    rope_inv_freq_.push_back(std::pow(hp.rope_freq_base, -2.0f * static_cast<float>(i) / static_cast<float>(hp.n_rot)));
  }
  for (const auto& L : model.layers) {
    norms_.push_back(decode_vector(*L.attn_norm));
    norms_.push_back(decode_vector(*L.ffn_norm));
  }
  norms_.push_back(decode_vector(*model.output_norm));
}

const kernels::PreparedActs& LlamaContext::prepared(ActFormat f, const float* x, int n_tokens, int64_t n) {
  PreparedSlot& slot = prepared_[static_cast<int>(f)];
  if (!slot.valid || slot.source != x || slot.acts.n_tokens != n_tokens || slot.acts.n != n) {
    kernels::prepare_activations(f, x, n_tokens, n, slot.acts);
    slot.source = x;
    slot.valid = true;
  }
  return slot.acts;
}

// Each task decodes (or unpacks) a tile of weight rows once and applies it to every token.
void LlamaContext::matmul(const GgufTensor& w, const float* x, int n_tokens, float* y) {
  const int64_t in = w.row_length(), out = w.n_rows();
  const size_t row_bytes = w.type->row_bytes(in);
  if (observer_) observer_(w, x, n_tokens);
  // Outlier columns (formats/outliers.h): the quantized rows see the input without the outlier
  // entries; those go through the F16 columns in F32 after the main product.
  const OutlierColumns* oc = model_.outliers_of(w);
  if (oc != nullptr) {
    x_masked_.assign(x, x + static_cast<size_t>(n_tokens) * static_cast<size_t>(in));
    for (int t = 0; t < n_tokens; ++t) {
      for (int32_t c : oc->cols) x_masked_[static_cast<size_t>(t) * static_cast<size_t>(in) + static_cast<size_t>(c)] = 0.0f;
    }
    kernels::prepare_activations(w.type->act_format, x_masked_.data(), n_tokens, in, masked_acts_);
  }
  const kernels::PreparedActs& acts = oc != nullptr ? masked_acts_ : prepared(w.type->act_format, x, n_tokens, in);
  const kernels::KernelSet& k = *kernels_;
  constexpr int64_t kRowsPerTask = 8;
  pool_.parallel_for((out + kRowsPerTask - 1) / kRowsPerTask, [&](int64_t task) {
    thread_local std::vector<kernels::PreparedRow> rows(kRowsPerTask);
    const int64_t r0 = task * kRowsPerTask, r1 = std::min(out, r0 + kRowsPerTask);
    for (int64_t r = r0; r < r1; ++r) {
      kernels::prepare_row(*w.type, w.data + static_cast<size_t>(r) * row_bytes, in, rows[static_cast<size_t>(r - r0)]);
    }
    for (int t = 0; t < n_tokens; t += 2) {
      const int nt = std::min(2, n_tokens - t);
      int64_t r = r0;
      for (; r + 4 <= r1; r += 4) {
        const kernels::PreparedRow* four[4] = {&rows[static_cast<size_t>(r - r0)], &rows[static_cast<size_t>(r - r0 + 1)],
                                               &rows[static_cast<size_t>(r - r0 + 2)], &rows[static_cast<size_t>(r - r0 + 3)]};
        float out4[8];
        kernels::dot4(k, four, acts, t, nt, out4);
        for (int j = 0; j < nt; ++j) {
          std::copy(out4 + 4 * j, out4 + 4 * j + 4, y + static_cast<size_t>(t + j) * static_cast<size_t>(out) + r);
        }
      }
      for (; r < r1; ++r) {
        for (int j = 0; j < nt; ++j) {
          y[static_cast<size_t>(t + j) * static_cast<size_t>(out) + r] = kernels::dot(k, rows[static_cast<size_t>(r - r0)], acts, t + j);
        }
      }
    }
    if (oc != nullptr) {
      const int kc = oc->k();
      for (int64_t r = r0; r < r1; ++r) {
        const float* v = oc->vals.data() + static_cast<size_t>(r) * static_cast<size_t>(kc);
        for (int t = 0; t < n_tokens; ++t) {
          const float* xt = x + static_cast<size_t>(t) * static_cast<size_t>(in);
          float s = 0.0f;
          for (int c = 0; c < kc; ++c) s += v[c] * xt[oc->cols[static_cast<size_t>(c)]];
          y[static_cast<size_t>(t) * static_cast<size_t>(out) + r] += s;
        }
      }
    }
  });
}

// Rotary position embedding on n_heads heads of one token ("normal" = adjacent pairs, llama.cpp's
// LLAMA_ROPE_TYPE_NORM for the llama architecture).
void LlamaContext::rope(float* v, int n_heads, int pos) const {
  const auto& hp = model_.hparams();
  const int hd = hp.head_dim();
  for (int h = 0; h < n_heads; ++h) {
    float* x = v + h * hd;
    for (int i = 0; i < hp.n_rot / 2; ++i) {
      const float theta = static_cast<float>(pos) * rope_inv_freq_[static_cast<size_t>(i)];
      const float c = std::cos(theta), s = std::sin(theta);
      const int a = hp.rope_neox ? i : 2 * i, b = hp.rope_neox ? i + hp.n_rot / 2 : 2 * i + 1;
      const float x0 = x[a], x1 = x[b];
      x[a] = x0 * c - x1 * s;
      x[b] = x0 * s + x1 * c;
    }
  }
}

const std::vector<float>& LlamaContext::eval(const std::vector<int32_t>& tokens, bool all_logits) {
  const auto& hp = model_.hparams();
  const int n = static_cast<int>(tokens.size());
  if (n == 0) throw std::runtime_error("eval: no tokens");
  if (n_past_ + n > n_ctx_) {
    throw std::runtime_error(fmt::format("eval: {} tokens past {} exceed the context of {}", n, n_past_, n_ctx_));
  }
  const int e = hp.n_embd;
  std::vector<float>& x = x_;
  x.resize(static_cast<size_t>(n) * e);

  // Embeddings: decode the rows of the token ids.
  const size_t emb_row = model_.token_embd->type->row_bytes(e);
  for (int t = 0; t < n; ++t) {
    const int32_t id = tokens[static_cast<size_t>(t)];
    if (id < 0 || id >= hp.n_vocab) throw std::runtime_error(fmt::format("eval: token id {} out of range", id));
    model_.token_embd->type->dequantize_row(model_.token_embd->data + static_cast<size_t>(id) * emb_row,
                                             x.data() + static_cast<size_t>(t) * e, e);
    if (const OutlierColumns* oc = model_.outliers_of(*model_.token_embd)) {
      for (int c = 0; c < oc->k(); ++c) {
        x[static_cast<size_t>(t) * e + static_cast<size_t>(oc->cols[static_cast<size_t>(c)])] =
            oc->vals[static_cast<size_t>(id) * static_cast<size_t>(oc->k()) + static_cast<size_t>(c)];
      }
    }
  }
  return run_layers(0, n, all_logits);
}

const std::vector<float>& LlamaContext::eval_from_layer(int start, const float* x, int n, bool all_logits) {
  const auto& hp = model_.hparams();
  if (start < 0 || start > hp.n_layer) {
    throw std::runtime_error(fmt::format("eval_from_layer: layer {} is outside 0 .. {}", start, hp.n_layer));
  }
  if (n_past_ != 0) throw std::runtime_error("eval_from_layer: the context must be reset first");
  if (n <= 0 || n > n_ctx_) throw std::runtime_error(fmt::format("eval_from_layer: {} tokens for a context of {}", n, n_ctx_));
  x_.assign(x, x + static_cast<size_t>(n) * static_cast<size_t>(hp.n_embd));
  return run_layers(start, n, all_logits);
}

const std::vector<float>& LlamaContext::run_layers(int start, int n, bool all_logits) {
  const auto& hp = model_.hparams();
  const int e = hp.n_embd, kvd = hp.kv_dim(), hd = hp.head_dim(), ff = hp.n_ff;
  const auto un = static_cast<size_t>(n);
  for (auto* b : {&xn_, &q_, &att_, &tmp_}) b->resize(un * e);
  for (auto* b : {&k_, &v_}) b->resize(un * kvd);
  for (auto* b : {&gate_, &up_}) b->resize(un * ff);
  std::vector<float>&x = x_, &xn = xn_, &q = q_, &k = k_, &v = v_, &att = att_, &tmp = tmp_, &gate = gate_, &up = up_;
  const float att_scale = 1.0f / std::sqrt(static_cast<float>(hd));
  const int group = hp.n_head / hp.n_head_kv;
  for (int l = start; l < hp.n_layer; ++l) {
    if (layer_observer_) layer_observer_(l, x.data(), n);
    const auto& L = model_.layers[static_cast<size_t>(l)];
    const std::vector<float>&attn_norm = norms_[2 * static_cast<size_t>(l)], &ffn_norm = norms_[2 * static_cast<size_t>(l) + 1];
    for (int t = 0; t < n; ++t) rms_norm(&x[t * e], attn_norm.data(), e, hp.rms_eps, &xn[t * e]);
    invalidate_prepared();
    matmul(*L.wq, xn.data(), n, q.data());
    matmul(*L.wk, xn.data(), n, k.data());
    matmul(*L.wv, xn.data(), n, v.data());
    // The cache: K transposed per KV head ([head][dim][position]) so scores for consecutive
    // positions are one vector FMA per dimension; V by position ([position][kv_dim]).
    float* kc = k_cache_.data() + static_cast<size_t>(l) * static_cast<size_t>(kv_stride_) * kvd;
    float* vc = v_cache_.data() + static_cast<size_t>(l) * static_cast<size_t>(n_ctx_) * kvd;
    for (int t = 0; t < n; ++t) {
      rope(&q[t * e], hp.n_head, n_past_ + t);
      rope(&k[t * kvd], hp.n_head_kv, n_past_ + t);
      const size_t pos = static_cast<size_t>(n_past_ + t);
      // llama.cpp keeps its KV cache in F16 by default; store what it would store.
      for (int i = 0; i < kvd; ++i) {
        const float kv = attention_ != AttentionMode::kF32 ? round_fp16(k[t * kvd + i]) : k[t * kvd + i];
        kc[static_cast<size_t>(i) * static_cast<size_t>(kv_stride_) + pos] = kv;
        vc[pos * kvd + i] = attention_ != AttentionMode::kF32 ? round_fp16(v[t * kvd + i]) : v[t * kvd + i];
      }
    }
    // Causal attention, one (token, head) per task: llama.cpp's tiled flash attention (F32 Q,
    // tiles of 64 cached positions, online softmax with the running maximum, sums of each tile's
    // exponentials in double, F32 accumulation of V in position order).
    if (attention_ == AttentionMode::kLlamaCppF16) {
      // Tasks of four consecutive tokens of one head (the kernel interleaves their sequential parts).
      const int groups = (n + 3) / 4;
      pool_.parallel_for(static_cast<int64_t>(groups) * hp.n_head, [&](int64_t task) {
        const int t0 = static_cast<int>(task / hp.n_head) * 4, h = static_cast<int>(task % hp.n_head);
        const int kvh = h / group;
        const float* kt = kc + static_cast<size_t>(kvh) * hd * static_cast<size_t>(kv_stride_);
        const float* vh = vc + static_cast<size_t>(kvh) * hd;
        thread_local std::vector<float> scratch;
        scratch.resize(8 * static_cast<size_t>(n_past_ + t0 + 4 + 8));
        auto qp = [&](int t) { return &q[static_cast<size_t>(t) * e + static_cast<size_t>(h) * hd]; };
        auto op = [&](int t) { return &att[static_cast<size_t>(t) * e + static_cast<size_t>(h) * hd]; };
        if (t0 + 4 <= n) {
          const float* qs[4] = {qp(t0), qp(t0 + 1), qp(t0 + 2), qp(t0 + 3)};
          float* outs[4] = {op(t0), op(t0 + 1), op(t0 + 2), op(t0 + 3)};
          const int lens[4] = {n_past_ + t0 + 1, n_past_ + t0 + 2, n_past_ + t0 + 3, n_past_ + t0 + 4};
          kernels_->attn_f16_x4(qs, kt, kv_stride_, vh, kvd, hd, lens, att_scale, scratch.data(), outs);
        } else {
          for (int t = t0; t < n; ++t) {
            kernels_->attn_f16(qp(t), kt, kv_stride_, vh, kvd, hd, n_past_ + t + 1, att_scale, scratch.data(), op(t));
          }
        }
      });
    } else
    pool_.parallel_for(static_cast<int64_t>(n) * hp.n_head, [&](int64_t task) {
      constexpr int kTile = kernels::kAttnTile;
      const int t = static_cast<int>(task / hp.n_head), h = static_cast<int>(task % hp.n_head);
      const int kvh = h / group, len = n_past_ + t + 1;
      const float* qh = &q[static_cast<size_t>(t) * e + static_cast<size_t>(h) * hd];
      const float* kt = kc + static_cast<size_t>(kvh) * hd * static_cast<size_t>(kv_stride_);
      float* out = &att[static_cast<size_t>(t) * e + static_cast<size_t>(h) * hd];
      std::fill(out, out + hd, 0.0f);
      float s_tile[kTile];
      float m = -INFINITY, sum = 0.0f;
      for (int p0 = 0; p0 < len; p0 += kTile) {
        const int tl = std::min(kTile, len - p0);
        kernels_->attn_scores(qh, kt + p0, kv_stride_, hd, s_tile);
        float tile_max = -INFINITY;
        for (int p = 0; p < tl; ++p) tile_max = std::max(tile_max, s_tile[p] *= att_scale);
        if (tile_max > m) {
          const float ms = std::exp(m - tile_max);
          for (int i = 0; i < hd; ++i) out[i] *= ms;
          sum *= ms;
          m = tile_max;
        }
        sum = static_cast<float>(static_cast<double>(sum) + kernels_->exp_sum(s_tile, tl, m));
        kernels_->attn_accumulate(s_tile, tl, vc + static_cast<size_t>(p0) * kvd + static_cast<size_t>(kvh) * hd, kvd, hd, out);
      }
      const float inv = 1.0f / sum;
      for (int i = 0; i < hd; ++i) out[i] *= inv;
    });
    invalidate_prepared();
    matmul(*L.wo, att.data(), n, tmp.data());
    for (size_t i = 0; i < x.size(); ++i) x[i] += tmp[i];
    for (int t = 0; t < n; ++t) rms_norm(&x[t * e], ffn_norm.data(), e, hp.rms_eps, &xn[t * e]);
    invalidate_prepared();
    matmul(*L.gate, xn.data(), n, gate.data());
    matmul(*L.up, xn.data(), n, up.data());
    for (size_t i = 0; i < gate.size(); ++i) gate[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];  // SwiGLU
    invalidate_prepared();
    matmul(*L.down, gate.data(), n, tmp.data());
    for (size_t i = 0; i < x.size(); ++i) x[i] += tmp[i];
  }
  if (layer_observer_) layer_observer_(hp.n_layer, x.data(), n);
  const std::vector<float>& out_norm = norms_.back();
  const int first = all_logits ? 0 : n - 1, count = n - first;
  for (int t = first; t < n; ++t) rms_norm(&x[t * e], out_norm.data(), e, hp.rms_eps, &xn[(t - first) * e]);
  logits_.resize(static_cast<size_t>(count) * static_cast<size_t>(hp.n_vocab));
  invalidate_prepared();
  matmul(*model_.output, xn.data(), count, logits_.data());
  n_past_ += n;
  return logits_;
}

}  // namespace mixq
