#include "mixq/engine/llama_model.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <stdexcept>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "mixq/engine/repack.h"

namespace mixq {

namespace {

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
  kernels::dequantize_tensor(t, v.data());
  return v;
}

}  // namespace

LlamaModel::LlamaModel(const GgufFile& f) : Model(f) {
  const GgufValue* arch = f.find("general.architecture");
  if (!arch || arch->type() != GgufValueType::STRING) {
    throw std::runtime_error(fmt::format("{}: no general.architecture key", f.label()));
  }
  const std::string a = arch->as_string();
  if (a != "llama") {
    throw std::runtime_error(fmt::format("{}: architecture '{}' is not supported (supported: llama)", f.label(), a));
  }
  // Every hyperparameter checked against the others and the tensors (llama_hparams.cpp).
  hp_ = read_llama_hparams(f);
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
  load_outliers();
}

std::vector<WeightUse> LlamaModel::weights() const {
  std::vector<WeightUse> out{{token_embd, 0}};
  if (output != token_embd) out.push_back({output, hp_.n_layer});
  for (int l = 0; l < hp_.n_layer; ++l) {
    const Layer& L = layers[static_cast<size_t>(l)];
    for (const GgufTensor* p : {L.wq, L.wk, L.wv, L.wo, L.gate, L.up, L.down}) out.push_back({p, l});
  }
  return out;
}

std::string LlamaModel::state_shape() const {
  return fmt::format("llama: {} layers, KV width {} ({} KV heads of {})", hp_.n_layer, hp_.kv_dim(), hp_.n_head_kv,
                     hp_.head_dim());
}

ContextState LlamaContext::export_state() const {
  ContextState s{llama_.state_shape(), n_past_, {{}, {}}};
  kv_.save(n_past_, s.parts[0], s.parts[1]);
  return s;
}

void LlamaContext::import_state(const ContextState& s) {
  check_import(s, 2);
  kv_.load(s.n_past, s.parts[0], s.parts[1]);
  n_past_ = s.n_past;
  mark_ = -1;
}

std::unique_ptr<Context> LlamaModel::new_context(int n_ctx, int n_threads) const {
  return std::make_unique<LlamaContext>(*this, n_ctx, n_threads);
}

LlamaContext::LlamaContext(const LlamaModel& model, int n_ctx, int n_threads)
    : Context(model, n_ctx, n_threads),
      llama_(model),
      kv_(model.hparams().n_layer, n_ctx, {model.hparams().n_head, model.hparams().n_head_kv, model.hparams().head_dim()}) {
  const auto& hp = model.hparams();
  for (int i = 0; i < hp.n_rot / 2; ++i) {
    rope_inv_freq_.push_back(std::pow(hp.rope_freq_base, -2.0f * static_cast<float>(i) / static_cast<float>(hp.n_rot)));
  }
  for (const auto& L : model.layers) {
    norms_.push_back(decode_vector(*L.attn_norm));
    norms_.push_back(decode_vector(*L.ffn_norm));
  }
  norms_.push_back(decode_vector(*model.output_norm));
}

// Rotary position embedding on n_heads heads of one token ("normal" = adjacent pairs, llama.cpp's
// LLAMA_ROPE_TYPE_NORM for the llama architecture).
void LlamaContext::rope(float* v, int n_heads, int pos) const {
  const auto& hp = llama_.hparams();
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
  const int n = static_cast<int>(tokens.size());
  check_batch(n);
  x_.resize(static_cast<size_t>(n) * static_cast<size_t>(llama_.hparams().n_embd));
  mm_.get_rows(*llama_.token_embd, tokens.data(), n, x_.data());
  return run_layers(0, n, all_logits ? 0 : n - 1, all_logits);
}

const std::vector<float>& LlamaContext::eval_tail(const std::vector<int32_t>& tokens, int first) {
  const int n = static_cast<int>(tokens.size());
  check_batch(n);
  if (first < 0 || first >= n) throw std::runtime_error(fmt::format("eval_tail: first row {} is outside 0 .. {}", first, n - 1));
  x_.resize(static_cast<size_t>(n) * static_cast<size_t>(llama_.hparams().n_embd));
  mm_.get_rows(*llama_.token_embd, tokens.data(), n, x_.data());
  return run_layers(0, n, first, true);
}

const std::vector<float>& LlamaContext::eval_from_layer(int start, const float* x, int n, bool all_logits) {
  return eval_from_layer_tail(start, x, n, all_logits ? 0 : n - 1, all_logits);
}

const std::vector<float>& LlamaContext::eval_from_layer_tail(int start, const float* x, int n, int first) {
  return eval_from_layer_tail(start, x, n, first, first == 0);
}

const std::vector<float>& LlamaContext::eval_from_layer_tail(int start, const float* x, int n, int first,
                                                             bool every_token) {
  const auto& hp = llama_.hparams();
  if (start < 0 || start > hp.n_layer) {
    throw std::runtime_error(fmt::format("eval_from_layer: layer {} is outside 0 .. {}", start, hp.n_layer));
  }
  if (n_past_ != 0) throw std::runtime_error("eval_from_layer: the context must be reset first");
  if (n <= 0 || n > n_ctx_) throw std::runtime_error(fmt::format("eval_from_layer: {} tokens for a context of {}", n, n_ctx_));
  if (first < 0 || first >= n) {
    throw std::runtime_error(fmt::format("eval_from_layer_tail: first row {} is outside 0 .. {}", first, n - 1));
  }
  x_.assign(x, x + static_cast<size_t>(n) * static_cast<size_t>(hp.n_embd));
  return run_layers(start, n, first, every_token);
}

const std::vector<float>& LlamaContext::eval_blocks(int start, int stop, const float* x, int n) {
  check_blocks(start, stop, n);
  x_.assign(x, x + static_cast<size_t>(n) * static_cast<size_t>(llama_.hparams().n_embd));
  return run_layers(start, stop, n, n - 1, false, true);
}

const std::vector<float>& LlamaContext::run_layers(int start, int n, int first_logit, bool every_token) {
  return run_layers(start, llama_.hparams().n_layer, n, first_logit, every_token, false);
}

const std::vector<float>& LlamaContext::run_layers(int start, int stop, int n, int first_logit, bool every_token,
                                                  bool state_only) {
  const auto& hp = llama_.hparams();
  const int e = hp.n_embd, kvd = hp.kv_dim(), ff = hp.n_ff;
  const auto un = static_cast<size_t>(n);
  for (auto* b : {&xn_, &q_, &att_, &tmp_}) b->resize(un * e);
  for (auto* b : {&k_, &v_}) b->resize(un * kvd);
  for (auto* b : {&gate_, &up_}) b->resize(un * ff);
  std::vector<float>&x = x_, &xn = xn_, &q = q_, &k = k_, &v = v_, &att = att_, &tmp = tmp_, &gate = gate_, &up = up_;
  // The per-token steps (norms, RoPE and the cache store, SwiGLU, residual adds) over blocks of
  // tokens on the pool: for a prompt batch they would otherwise leave the other threads waiting;
  // a few tokens stay on the calling thread. Each token's arithmetic is the same either way.
  const auto per_tokens = [&](int t_begin, const std::function<void(int, int)>& fn) {
    constexpr int kBlock = 16;
    const int count = n - t_begin;
    if (count < 2 * kBlock || pool_.size() == 1) {
      fn(t_begin, n);
      return;
    }
    pool_.parallel_for((count + kBlock - 1) / kBlock, [&](int64_t b) {
      const int t0 = t_begin + static_cast<int>(b) * kBlock;
      fn(t0, std::min(n, t0 + kBlock));
    });
  };
  for (int l = start; l < stop; ++l) {
    observe_layer(l, x.data(), n);
    const auto& L = llama_.layers[static_cast<size_t>(l)];
    const std::vector<float>&attn_norm = norms_[2 * static_cast<size_t>(l)], &ffn_norm = norms_[2 * static_cast<size_t>(l) + 1];
    per_tokens(0, [&](int t0, int t1) {
      for (int t = t0; t < t1; ++t) rms_norm(&x[t * e], attn_norm.data(), e, hp.rms_eps, &xn[t * e]);
    });
    mm_.invalidate();
    matmuls({{L.wq, q.data()}, {L.wk, k.data()}, {L.wv, v.data()}}, xn.data(), n);
    per_tokens(0, [&](int t0, int t1) {
      for (int t = t0; t < t1; ++t) {
        rope(&q[t * e], hp.n_head, n_past_ + t);
        rope(&k[t * kvd], hp.n_head_kv, n_past_ + t);
      }
      kv_.store(l, n_past_ + t0, t1 - t0, &k[t0 * kvd], &v[t0 * kvd], attention_);
    });
    kv_.attend(l, n_past_, n, q.data(), attention_, mm_.kernel_set(), pool_, att.data());
    mm_.invalidate();
    matmul(*L.wo, att.data(), n, tmp.data());
    per_tokens(0, [&](int t0, int t1) {
      for (int i = t0 * e; i < t1 * e; ++i) x[i] += tmp[i];
      for (int t = t0; t < t1; ++t) rms_norm(&x[t * e], ffn_norm.data(), e, hp.rms_eps, &xn[t * e]);
    });
    mm_.invalidate();
    matmuls({{L.gate, gate.data()}, {L.up, up.data()}}, xn.data(), n);
    per_tokens(0, [&](int t0, int t1) {
      for (size_t i = static_cast<size_t>(t0) * ff; i < static_cast<size_t>(t1) * ff; ++i) {
        gate[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];  // SwiGLU
      }
    });
    mm_.invalidate();
    matmul(*L.down, gate.data(), n, tmp.data());
    per_tokens(0, [&](int t0, int t1) {
      for (int i = t0 * e; i < t1 * e; ++i) x[i] += tmp[i];
    });
  }
  observe_layer(stop, x.data(), n);
  if (state_only) {
    blocks_out_.assign(x.begin(), x.begin() + static_cast<ptrdiff_t>(n) * e);
    reset();
    return blocks_out_;
  }
  const std::vector<float>& out_norm = norms_.back();
  const int first = first_logit, count = n - first;
  per_tokens(first, [&](int t0, int t1) {
    for (int t = t0; t < t1; ++t) rms_norm(&x[t * e], out_norm.data(), e, hp.rms_eps, &xn[(t - first) * e]);
  });
  logits_.resize(static_cast<size_t>(count) * static_cast<size_t>(hp.n_vocab));
  mm_.invalidate();
  head_matmul(*llama_.output, xn.data(), count, every_token, logits_.data());
  n_past_ += n;
  return logits_;
}

}  // namespace mixq
