#include "mixq/engine/rwkv_model.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "mixq/convert/rwkv_layout.h"
#include "mixq/engine/repack.h"
#include "mixq/engine/rwkv_ops.h"

namespace mixq {

namespace {

class TensorLookup {
 public:
  explicit TensorLookup(const GgufFile& f) : f_(f) {}

  const GgufTensor* find(const std::string& name) const { return f_.find_tensor(name); }
  const std::string& label() const { return f_.label(); }

  // A tensor of exactly this shape.
  const GgufTensor* require(const std::string& name, std::vector<int64_t> shape) const {
    const GgufTensor* t = present(name);
    if (t->shape != shape) {
      throw std::runtime_error(fmt::format("{}: tensor {} has shape [{}], expected [{}]", f_.label(), name,
                                           fmt::join(t->shape, ", "), fmt::join(shape, ", ")));
    }
    return t;
  }
  // A vector of n values: [n], or [n, 1, ...] as rwkv.cpp keeps PyTorch's unit axes.
  const GgufTensor* vector(const std::string& name, int64_t n) const {
    const GgufTensor* t = present(name);
    if (t->shape.empty() || t->shape[0] != n || t->n_elements() != n) {
      throw std::runtime_error(fmt::format("{}: tensor {} has shape [{}], expected {} values ([{}] or [{}, 1, 1])",
                                           f_.label(), name, fmt::join(t->shape, ", "), n, n, n));
    }
    return t;
  }
  // A matrix with rows of `in` values; returns its row count (the low-rank widths of RWKV-7).
  int64_t rows_of(const std::string& name, int64_t in) const {
    const GgufTensor* t = present(name);
    if (t->shape.size() != 2 || t->shape[0] != in || t->shape[1] <= 0) {
      throw std::runtime_error(fmt::format("{}: tensor {} has shape [{}], expected [{}, N]", f_.label(), name,
                                           fmt::join(t->shape, ", "), in));
    }
    return t->shape[1];
  }

 private:
  const GgufTensor* present(const std::string& name) const {
    const GgufTensor* t = f_.find_tensor(name);
    if (!t) throw std::runtime_error(fmt::format("{}: missing tensor {}", f_.label(), name));
    if (!t->type->can_dequantize()) {
      throw std::runtime_error(fmt::format("{}: tensor {} is {}, which mixq cannot decode", f_.label(), name, t->type->name));
    }
    return t;
  }
  const GgufFile& f_;
};

int64_t metadata_int(const GgufFile& f, const std::string& key) {
  const GgufValue* v = f.find(key);
  if (!v || !v->is_integer()) throw std::runtime_error(fmt::format("{}: missing metadata key {}", f.label(), key));
  return v->as_int();
}

// RWKV-6 hyperparameters, as llama_model_rwkv6 reads them: wkv.head_size (required),
// time_mix_extra_dim / time_decay_extra_dim (here the LoRA tensors' shapes, checked against the
// keys where present), rescale_every_n_layers (0 when absent), attention.layer_norm_epsilon, and
// token_shift_count, which llama.cpp's graph asserts is 2.
void load_rwkv6_hparams(const GgufFile& f, const TensorLookup& T, RwkvHParams& hp) {
  const int64_t E = hp.n_embd;
  hp.head_size = static_cast<int>(metadata_int(f, "rwkv6.wkv.head_size"));
  if (hp.head_size <= 0 || E % hp.head_size != 0) {
    throw std::runtime_error(fmt::format("{}: rwkv6.wkv.head_size {} does not divide rwkv6.embedding_length {}", f.label(),
                                         hp.head_size, E));
  }
  const int64_t mix_rows = T.rows_of("blk.0.time_mix_w1.weight", E);
  if (mix_rows % 5 != 0) {
    throw std::runtime_error(fmt::format("{}: tensor blk.0.time_mix_w1.weight has {} rows, expected 5 x "
                                         "time_mix_extra_dim (one LoRA per token-shift mix w, k, v, r, g)",
                                         f.label(), mix_rows));
  }
  hp.d_mix = static_cast<int>(mix_rows / 5);
  hp.d_decay = static_cast<int>(T.rows_of("blk.0.time_mix_decay_w1.weight", E));
  const auto check_key = [&](const char* key, int64_t want, const char* tensor) {
    if (const GgufValue* v = f.find(fmt::format("rwkv6.{}", key)); v && v->is_integer() && v->as_int() != want) {
      throw std::runtime_error(
          fmt::format("{}: rwkv6.{} is {} but tensor {} says {}", f.label(), key, v->as_int(), tensor, want));
    }
  };
  check_key("time_mix_extra_dim", hp.d_mix, "blk.0.time_mix_w1.weight");
  check_key("time_decay_extra_dim", hp.d_decay, "blk.0.time_mix_decay_w1.weight");
  check_key("token_shift_count", 2, "the graph (one attention and one channel-mix shift)");
  if (const GgufValue* v = f.find("rwkv6.rescale_every_n_layers"); v && v->is_integer()) {
    if (v->as_int() < 0) {
      throw std::runtime_error(fmt::format("{}: rwkv6.rescale_every_n_layers is {}", f.label(), v->as_int()));
    }
    hp.rescale_every = static_cast<int>(v->as_int());
  }
  if (const GgufValue* v = f.find("rwkv6.attention.layer_norm_epsilon"); v && (v->is_float() || v->is_integer())) {
    hp.norm_eps = static_cast<float>(v->as_float());
    if (!(hp.norm_eps >= 0.0f)) {
      throw std::runtime_error(fmt::format("{}: rwkv6.attention.layer_norm_epsilon is {}", f.label(), hp.norm_eps));
    }
  }
}

// One RWKV-6 block's own tensors (llama_model_rwkv6::load_arch_tensors' list); the ones RWKV-5.2
// shares (LayerNorms, key/value/receptance/gate/output, ln_x, channel-mix key/value) the caller loads.
void load_rwkv6_layer(const TensorLookup& T, int l, const RwkvHParams& hp, RwkvModel::Layer& L) {
  const int64_t E = hp.n_embd, S = hp.head_size, H = hp.n_head;
  const auto N = [&](const char* name) { return fmt::format("blk.{}.{}.weight", l, name); };
  L.ddlerp_w1 = T.require(N("time_mix_w1"), {E, 5 * int64_t{hp.d_mix}});
  L.ddlerp_w2 = T.require(N("time_mix_w2"), {hp.d_mix, E, 5});
  L.lerp_x = T.vector(N("time_mix_lerp_x"), E);
  if (T.find(N("time_mix_lerp_fused")) != nullptr) {
    L.lerp_fused = T.require(N("time_mix_lerp_fused"), {E, 1, 1, 5});
  } else {
    // llama.cpp's older files: five separate mixes (its loader asserts one form is present).
    if (T.find(N("time_mix_lerp_w")) == nullptr) {
      throw std::runtime_error(fmt::format("{}: missing tensor {} (or the five time_mix_lerp_{{w,k,v,r,g}})", T.label(),
                                           N("time_mix_lerp_fused")));
    }
    L.lerp_w = T.vector(N("time_mix_lerp_w"), E);
    L.lerp_k = T.vector(N("time_mix_lerp_k"), E);
    L.lerp_v = T.vector(N("time_mix_lerp_v"), E);
    L.lerp_r = T.vector(N("time_mix_lerp_r"), E);
    L.lerp_g = T.vector(N("time_mix_lerp_g"), E);
  }
  L.att_time_faaaa = T.require(N("time_mix_first"), {S, H});
  L.att_time_decay = T.vector(N("time_mix_decay"), E);
  L.decay_w1 = T.require(N("time_mix_decay_w1"), {E, hp.d_decay});
  L.decay_w2 = T.require(N("time_mix_decay_w2"), {hp.d_decay, E});
  L.ffn_x_k = T.vector(N("channel_mix_lerp_k"), E);
  L.ffn_x_r = T.vector(N("channel_mix_lerp_r"), E);
  L.ffn_receptance = T.require(N("channel_mix_receptance"), {E, E});
}

std::vector<float> decoded(const GgufTensor* t) {
  if (t == nullptr) return {};
  std::vector<float> v(static_cast<size_t>(t->n_elements()));
  kernels::dequantize_tensor(*t, v.data());
  return v;
}

}  // namespace

RwkvModel::RwkvModel(const GgufFile& f) : Model(f) {
  const GgufValue* arch = f.find("general.architecture");
  if (!arch || arch->type() != GgufValueType::STRING) {
    throw std::runtime_error(fmt::format("{}: no general.architecture key", f.label()));
  }
  const std::string a = arch->as_string();
  if (a == "rwkv4") {
    hp_.version = 4;
  } else if (a == "rwkv5") {
    hp_.version = 5;
  } else if (a == "rwkv6") {
    hp_.version = 6;
  } else if (a == "rwkv7") {
    hp_.version = 7;
  } else {
    throw std::runtime_error(
        fmt::format("{}: RWKV generation '{}' is not supported (supported: rwkv4, rwkv5 (5.2), rwkv6, rwkv7)", f.label(), a));
  }
  // RWKV-7 files may use llama.cpp's names and shapes (convert/rwkv_layout.h), RWKV-6 files must:
  // names below are rwkv.cpp's, N() gives the file's.
  const RwkvLayout layout = hp_.version == 6 ? RwkvLayout::LlamaCpp
                            : hp_.version == 7 ? rwkv_layout_of(f)
                                               : RwkvLayout::RwkvCpp;
  if (hp_.version == 6 && rwkv_layout_of(f) != RwkvLayout::LlamaCpp) {
    throw std::runtime_error(fmt::format("{}: missing tensor token_embd.weight (rwkv6 files are read in llama.cpp's "
                                         "layout only; rwkv.cpp's RWKV-6 names are not supported)",
                                         f.label()));
  }
  const auto N = [&](const std::string& rwkvcpp) { return rwkv7_tensor_name(rwkvcpp, layout); };
  const TensorLookup T(f);
  hp_.n_layer = static_cast<int>(metadata_int(f, a + ".block_count"));
  hp_.n_embd = static_cast<int>(metadata_int(f, a + ".embedding_length"));
  if (hp_.n_layer <= 0 || hp_.n_embd <= 0) {
    throw std::runtime_error(fmt::format("{}: {}.block_count {} / .embedding_length {} must be positive", f.label(), a,
                                         hp_.n_layer, hp_.n_embd));
  }
  const int64_t E = hp_.n_embd;
  hp_.n_vocab = static_cast<int>(T.rows_of(N("emb.weight"), E));
  if (const GgufValue* v = f.find(a + ".vocab_size"); v && v->is_integer() && v->as_int() != hp_.n_vocab) {
    throw std::runtime_error(fmt::format("{}: tensor {} has {} rows but {}.vocab_size is {}", f.label(), N("emb.weight"),
                                         hp_.n_vocab, a, v->as_int()));
  }
  const int64_t V = hp_.n_vocab;
  emb = T.require(N("emb.weight"), {E, V});
  head = T.require(N("head.weight"), {E, V});
  ln0_w = T.vector(N("blocks.0.ln0.weight"), E);
  ln0_b = T.vector(N("blocks.0.ln0.bias"), E);
  ln_out_w = T.vector(N("ln_out.weight"), E);
  ln_out_b = T.vector(N("ln_out.bias"), E);
  hp_.n_ff = static_cast<int>(T.rows_of(N("blocks.0.ffn.key.weight"), E));
  const int64_t F = hp_.n_ff;

  if (hp_.version == 5) {
    if (!T.find(N("blocks.0.att.gate.weight"))) {
      throw std::runtime_error(fmt::format("{}: missing tensor blocks.0.att.gate.weight (RWKV-5.0/5.1 files, without "
                                           "the gate, are not supported; RWKV-5.2 is)",
                                           f.label()));
    }
    const GgufTensor* decay = T.find(N("blocks.0.att.time_decay"));
    if (!decay) throw std::runtime_error(fmt::format("{}: missing tensor blocks.0.att.time_decay", f.label()));
    if (decay->shape.size() != 3 || decay->shape[0] != 1 || decay->shape[1] <= 0 || decay->shape[1] * decay->shape[2] != E) {
      throw std::runtime_error(fmt::format("{}: tensor blocks.0.att.time_decay has shape [{}], expected [1, head size, "
                                           "heads] with head size x heads = {}",
                                           f.label(), fmt::join(decay->shape, ", "), E));
    }
    hp_.head_size = static_cast<int>(decay->shape[1]);
  } else if (hp_.version == 6) {
    load_rwkv6_hparams(f, T, hp_);
    hp_.n_head = static_cast<int>(E / hp_.head_size);
  } else if (hp_.version == 7) {
    // rwkv.cpp keeps r_k as [head size, heads]; llama.cpp flattens it and records the head size.
    const std::string r_k_name = N("blocks.0.att.r_k");
    const GgufTensor* r_k = T.find(r_k_name);
    if (!r_k) throw std::runtime_error(fmt::format("{}: missing tensor {}", f.label(), r_k_name));
    if (layout == RwkvLayout::LlamaCpp) {
      hp_.head_size = static_cast<int>(metadata_int(f, a + ".wkv.head_size"));
      if (hp_.head_size <= 0 || E % hp_.head_size != 0) {
        throw std::runtime_error(fmt::format("{}: {}.wkv.head_size {} does not divide {}.embedding_length {}", f.label(), a,
                                             hp_.head_size, a, E));
      }
    } else {
      if (r_k->shape.size() != 2 || r_k->shape[0] <= 0 || r_k->shape[0] * r_k->shape[1] != E) {
        throw std::runtime_error(fmt::format("{}: tensor {} has shape [{}], expected [head size, heads] with head size "
                                             "x heads = {}",
                                             f.label(), r_k_name, fmt::join(r_k->shape, ", "), E));
      }
      hp_.head_size = static_cast<int>(r_k->shape[0]);
    }
    hp_.d_w = static_cast<int>(T.rows_of(N("blocks.0.att.w1"), E));
    hp_.d_a = static_cast<int>(T.rows_of(N("blocks.0.att.a1"), E));
    hp_.d_g = static_cast<int>(T.rows_of(N("blocks.0.att.g1"), E));
    hp_.d_v = hp_.n_layer > 1 ? static_cast<int>(T.rows_of(N("blocks.1.att.v1"), E)) : 0;
  }
  if (hp_.head_size > 0) {
    hp_.n_head = static_cast<int>(E / hp_.head_size);
    if (const GgufValue* v = f.find(a + ".wkv.head_size"); v && v->is_integer() && v->as_int() != hp_.head_size) {
      throw std::runtime_error(fmt::format("{}: {}.wkv.head_size is {} but the tensors have heads of {}", f.label(), a,
                                           v->as_int(), hp_.head_size));
    }
  }
  const int64_t S = hp_.head_size, H = hp_.n_head;

  for (int l = 0; l < hp_.n_layer; ++l) {
    const std::string b = fmt::format("blocks.{}.", l);
    Layer L{};
    L.ln1_w = T.vector(N(b + "ln1.weight"), E);
    L.ln1_b = T.vector(N(b + "ln1.bias"), E);
    L.ln2_w = T.vector(N(b + "ln2.weight"), E);
    L.ln2_b = T.vector(N(b + "ln2.bias"), E);
    L.att_receptance = T.require(N(b + "att.receptance.weight"), {E, E});
    L.att_key = T.require(N(b + "att.key.weight"), {E, E});
    L.att_value = T.require(N(b + "att.value.weight"), {E, E});
    L.att_output = T.require(N(b + "att.output.weight"), {E, E});
    L.ffn_key = T.require(N(b + "ffn.key.weight"), {E, F});
    L.ffn_value = T.require(N(b + "ffn.value.weight"), {F, E});
    if (hp_.version == 4 || hp_.version == 5) {
      L.att_mix_k = T.vector(N(b + "att.time_mix_k"), E);
      L.att_mix_v = T.vector(N(b + "att.time_mix_v"), E);
      L.att_mix_r = T.vector(N(b + "att.time_mix_r"), E);
      L.ffn_mix_k = T.vector(N(b + "ffn.time_mix_k"), E);
      L.ffn_mix_r = T.vector(N(b + "ffn.time_mix_r"), E);
      L.ffn_receptance = T.require(N(b + "ffn.receptance.weight"), {E, E});
    }
    if (hp_.version == 4) {
      L.att_time_first = T.vector(N(b + "att.time_first"), E);
      L.att_time_decay = T.vector(N(b + "att.time_decay"), E);
    }
    if (hp_.version == 5) {
      L.att_mix_g = T.vector(N(b + "att.time_mix_g"), E);
      L.att_time_decay = T.require(N(b + "att.time_decay"), {1, S, H});
      L.att_time_faaaa = T.require(N(b + "att.time_faaaa"), {1, S, H});
      L.att_gate = T.require(N(b + "att.gate.weight"), {E, E});
    }
    if (hp_.version == 6) {
      L.att_gate = T.require(N(b + "att.gate.weight"), {E, E});
      load_rwkv6_layer(T, l, hp_, L);
    }
    if (hp_.version == 5 || hp_.version == 6 || hp_.version == 7) {
      L.att_ln_x_w = T.vector(N(b + "att.ln_x.weight"), E);
      L.att_ln_x_b = T.vector(N(b + "att.ln_x.bias"), E);
    }
    if (hp_.version == 7) {
      L.x_rwkvag = layout == RwkvLayout::LlamaCpp ? T.require(N(b + "att.x_rwkvag"), {E, 1, 1, 6})
                                                  : T.require(N(b + "att.x_rwkvag"), {E, 1, 6});
      L.w0 = T.vector(N(b + "att.w0"), E);
      L.a0 = T.vector(N(b + "att.a0"), E);
      L.k_k = T.vector(N(b + "att.k_k"), E);
      L.k_a = T.vector(N(b + "att.k_a"), E);
      L.r_k = layout == RwkvLayout::LlamaCpp ? T.vector(N(b + "att.r_k"), E) : T.require(N(b + "att.r_k"), {S, H});
      L.w1 = T.require(N(b + "att.w1"), {E, hp_.d_w});
      L.w2 = T.require(N(b + "att.w2"), {hp_.d_w, E});
      L.a1 = T.require(N(b + "att.a1"), {E, hp_.d_a});
      L.a2 = T.require(N(b + "att.a2"), {hp_.d_a, E});
      L.g1 = T.require(N(b + "att.g1"), {E, hp_.d_g});
      L.g2 = T.require(N(b + "att.g2"), {hp_.d_g, E});
      if (l > 0) {  // block 0 makes v_first; the others mix it in (llama.cpp files carry an unused block-0 set)
        L.v0 = T.vector(N(b + "att.v0"), E);
        L.v1 = T.require(N(b + "att.v1"), {E, hp_.d_v});
        L.v2 = T.require(N(b + "att.v2"), {hp_.d_v, E});
      }
      L.ffn_x_k = T.vector(N(b + "ffn.x_k"), E);
    }
    layers.push_back(L);
  }
  load_outliers();
}

std::vector<WeightUse> RwkvModel::weights() const {
  std::vector<WeightUse> out{{emb, 0}, {head, hp_.n_layer}};
  for (int l = 0; l < hp_.n_layer; ++l) {
    const Layer& L = layers[static_cast<size_t>(l)];
    for (const GgufTensor* p : {L.att_receptance, L.att_key, L.att_value, L.att_gate, L.att_output, L.w1, L.w2, L.a1,
                                L.a2, L.v1, L.v2, L.g1, L.g2, L.ddlerp_w1, L.ddlerp_w2, L.decay_w1, L.decay_w2,
                                L.ffn_receptance, L.ffn_key, L.ffn_value}) {
      if (p != nullptr) out.push_back({p, l});
    }
  }
  return out;
}

std::string RwkvModel::state_shape() const {
  return fmt::format("{}: {} layers, embedding {}, head size {}", architecture(), hp_.n_layer, hp_.n_embd, hp_.head_size);
}

std::unique_ptr<Context> RwkvModel::new_context(int n_ctx, int n_threads) const {
  return std::make_unique<RwkvContext>(*this, n_ctx, n_threads);
}

RwkvContext::RwkvContext(const RwkvModel& model, int n_ctx, int n_threads)
    : Context(model, n_ctx, n_threads), rwkv_(model) {
  set_inline_small_batches(true);  // matmul.h: the workers sleep through the WKV steps
  ln0_w_ = decoded(model.ln0_w);
  ln0_b_ = decoded(model.ln0_b);
  ln_out_w_ = decoded(model.ln_out_w);
  ln_out_b_ = decoded(model.ln_out_b);
  for (const auto& L : model.layers) {
    LayerVectors v;
    v.ln1_w = decoded(L.ln1_w), v.ln1_b = decoded(L.ln1_b), v.ln2_w = decoded(L.ln2_w), v.ln2_b = decoded(L.ln2_b);
    v.att_mix_k = decoded(L.att_mix_k), v.att_mix_v = decoded(L.att_mix_v), v.att_mix_r = decoded(L.att_mix_r);
    v.att_mix_g = decoded(L.att_mix_g);
    v.time_first = decoded(L.att_time_first), v.time_decay = decoded(L.att_time_decay);
    v.time_faaaa = decoded(L.att_time_faaaa);
    v.ln_x_w = decoded(L.att_ln_x_w), v.ln_x_b = decoded(L.att_ln_x_b);
    v.x_rwkvag = decoded(L.x_rwkvag), v.w0 = decoded(L.w0), v.a0 = decoded(L.a0), v.v0 = decoded(L.v0);
    v.k_k = decoded(L.k_k), v.k_a = decoded(L.k_a), v.r_k = decoded(L.r_k);
    v.ffn_mix_k = decoded(L.ffn_mix_k), v.ffn_mix_r = decoded(L.ffn_mix_r), v.ffn_x_k = decoded(L.ffn_x_k);
    v.ffn_x_r = decoded(L.ffn_x_r);
    v.lerp_x = decoded(L.lerp_x);
    if (L.lerp_fused != nullptr) {
      v.lerp = decoded(L.lerp_fused);
    } else {
      for (const GgufTensor* m : {L.lerp_w, L.lerp_k, L.lerp_v, L.lerp_r, L.lerp_g}) {
        const auto one = decoded(m);
        v.lerp.insert(v.lerp.end(), one.begin(), one.end());
      }
    }
    vec_.push_back(std::move(v));
  }
  state_.resize(model.layers.size());
  reset();
}

void RwkvContext::reset() {
  const auto& hp = rwkv_.hparams();
  const auto E = static_cast<size_t>(hp.n_embd);
  for (auto& s : state_) {
    s.att_shift.assign(E, 0.0f);
    s.ffn_shift.assign(E, 0.0f);
    if (hp.version == 4) {
      s.aa.assign(E, 0.0f);
      s.bb.assign(E, 0.0f);
      // "No history yet": the running exponent starts far below any key, as in rwkv.cpp.
      s.pp.assign(E, -1e30f);
    } else {
      s.wkv.assign(E * static_cast<size_t>(hp.head_size), 0.0f);
    }
  }
  n_past_ = 0;
  mark_ = -1;
}

void RwkvContext::mark_rollback() {
  mark_ = n_past_;
  mark_state_ = state_;
}

void RwkvContext::rollback(int p) {
  check_rollback(mark_, p);
  if (p == n_past_) return;
  state_ = p == mark_ ? mark_state_ : history_[static_cast<size_t>(p - mark_ - 1)];
  n_past_ = p;
}

ContextState RwkvContext::export_state() const {
  ContextState out{rwkv_.state_shape(), n_past_, {}};
  for (const LayerState& s : state_) {
    for (const auto* v : {&s.att_shift, &s.ffn_shift, &s.aa, &s.bb, &s.pp, &s.wkv}) out.parts.push_back(*v);
  }
  return out;
}

void RwkvContext::import_state(const ContextState& in) {
  check_import(in, state_.size() * 6);
  size_t i = 0;
  for (const LayerState& s : state_) {
    for (const auto* v : {&s.att_shift, &s.ffn_shift, &s.aa, &s.bb, &s.pp, &s.wkv}) {
      if (in.parts[i++].size() != v->size()) throw std::runtime_error("import_state: a state part has the wrong size");
    }
  }
  i = 0;
  for (LayerState& s : state_) {
    for (auto* v : {&s.att_shift, &s.ffn_shift, &s.aa, &s.bb, &s.pp, &s.wkv}) *v = in.parts[i++];
  }
  n_past_ = in.n_past;
  mark_ = -1;
}

const std::vector<float>& RwkvContext::eval(const std::vector<int32_t>& tokens, bool all_logits) {
  const int n = static_cast<int>(tokens.size());
  check_batch(n);
  const int E = rwkv_.hparams().n_embd;
  x_.resize(static_cast<size_t>(n) * E);
  mm_.get_rows(*rwkv_.emb, tokens.data(), n, x_.data());
  const float eps = rwkv_.hparams().norm_eps;
  for (int t = 0; t < n; ++t) {
    rwkv::layer_norm(&x_[static_cast<size_t>(t) * E], ln0_w_.data(), ln0_b_.data(), E, &x_[static_cast<size_t>(t) * E], eps);
  }
  v_first_.assign(x_.size(), 0.0f);
  return run_layers(0, n, all_logits);
}

const std::vector<float>& RwkvContext::eval_from_layer(int start, const float* x, int n, bool all_logits) {
  const auto& hp = rwkv_.hparams();
  if (start < 0 || start > hp.n_layer) {
    throw std::runtime_error(fmt::format("eval_from_layer: layer {} is outside 0 .. {}", start, hp.n_layer));
  }
  if (n_past_ != 0) throw std::runtime_error("eval_from_layer: the context must be reset first");
  check_batch(n);
  mark_ = -1;  // blocks before `start` are not run: no state copies to roll back to
  const auto E = static_cast<size_t>(hp.n_embd), W = static_cast<size_t>(rwkv_.layer_state_width());
  x_.resize(static_cast<size_t>(n) * E);
  v_first_.assign(static_cast<size_t>(n) * E, 0.0f);
  for (size_t t = 0; t < static_cast<size_t>(n); ++t) {
    std::copy(x + t * W, x + t * W + E, &x_[t * E]);
    if (W > E) std::copy(x + t * W + E, x + t * W + 2 * E, &v_first_[t * E]);
  }
  return run_layers(start, n, all_logits);
}

void RwkvContext::observe(int layer, int n) {
  if (!layer_observer_) return;
  if (rwkv_.hparams().version != 7) {
    observe_layer(layer, x_.data(), n);
    return;
  }
  const auto E = static_cast<size_t>(rwkv_.hparams().n_embd);
  packed_.resize(static_cast<size_t>(n) * 2 * E);
  for (size_t t = 0; t < static_cast<size_t>(n); ++t) {
    std::copy(&x_[t * E], &x_[t * E] + E, &packed_[t * 2 * E]);
    std::copy(&v_first_[t * E], &v_first_[t * E] + E, &packed_[t * 2 * E + E]);
  }
  observe_layer(layer, packed_.data(), n);
}

void RwkvContext::norm_and_shift(const std::vector<float>& w, const std::vector<float>& b, std::vector<float>& carry,
                                 int n) {
  const auto E = static_cast<size_t>(rwkv_.hparams().n_embd), un = static_cast<size_t>(n);
  xn_.resize(un * E);
  prev_.resize(un * E);
  const float eps = rwkv_.hparams().norm_eps;
  for (size_t t = 0; t < un; ++t) rwkv::layer_norm(&x_[t * E], w.data(), b.data(), static_cast<int>(E), &xn_[t * E], eps);
  std::copy(carry.begin(), carry.end(), prev_.begin());
  std::copy(xn_.begin(), xn_.end() - static_cast<std::ptrdiff_t>(E), prev_.begin() + static_cast<std::ptrdiff_t>(E));
  std::copy(xn_.end() - static_cast<std::ptrdiff_t>(E), xn_.end(), carry.begin());
}

void RwkvContext::group_norm(float* x, int n, const LayerVectors& v, float eps) const {
  const auto& hp = rwkv_.hparams();
  const int E = hp.n_embd, S = hp.head_size;
  for (int t = 0; t < n; ++t) {
    for (int h = 0; h < hp.n_head; ++h) {
      float* g = x + static_cast<size_t>(t) * E + static_cast<size_t>(h) * S;
      rwkv::normalize(g, S, eps, g);
    }
    float* row = x + static_cast<size_t>(t) * E;
    for (int i = 0; i < E; ++i) row[i] = row[i] * v.ln_x_w[static_cast<size_t>(i)] + v.ln_x_b[static_cast<size_t>(i)];
  }
}

// k = relu(key @ xk)^2, then value @ k; RWKV-4/5/6 gate it with sigmoid(receptance @ xr), RWKV-7
// has no receptance here.
void RwkvContext::channel_mix(int l, int n) {
  const auto& hp = rwkv_.hparams();
  const RwkvModel::Layer& L = rwkv_.layers[static_cast<size_t>(l)];
  const LayerVectors& v = vec_[static_cast<size_t>(l)];
  const auto E = static_cast<size_t>(hp.n_embd), un = static_cast<size_t>(n);
  xk_.resize(un * E);
  ffn_k_.resize(un * static_cast<size_t>(hp.n_ff));
  out_.resize(un * E);
  if (hp.version == 7) {
    rwkv::shift_mix_delta(xn_.data(), prev_.data(), v.ffn_x_k.data(), un, E, xk_.data());
  } else {
    xr_.resize(un * E);
    r_.resize(un * E);
    if (hp.version == 6) {
      rwkv::shift_mix_delta(xn_.data(), prev_.data(), v.ffn_x_k.data(), un, E, xk_.data());
      rwkv::shift_mix_delta(xn_.data(), prev_.data(), v.ffn_x_r.data(), un, E, xr_.data());
    } else {
      rwkv::shift_mix_lerp(xn_.data(), prev_.data(), v.ffn_mix_k.data(), un, E, xk_.data());
      rwkv::shift_mix_lerp(xn_.data(), prev_.data(), v.ffn_mix_r.data(), un, E, xr_.data());
    }
    mm_.invalidate();
    matmul(*L.ffn_receptance, xr_.data(), n, r_.data());
  }
  mm_.invalidate();
  matmul(*L.ffn_key, xk_.data(), n, ffn_k_.data());
  for (float& k : ffn_k_) k = k > 0.0f ? k * k : 0.0f;
  mm_.invalidate();
  matmul(*L.ffn_value, ffn_k_.data(), n, out_.data());
  if (hp.version != 7) {
    for (size_t i = 0; i < out_.size(); ++i) out_[i] *= rwkv::sigmoid(r_[i]);
  }
}

const std::vector<float>& RwkvContext::run_layers(int start, int n, bool all_logits) {
  const auto& hp = rwkv_.hparams();
  const auto E = static_cast<size_t>(hp.n_embd);
  const auto un = static_cast<size_t>(n);
  if (mark_ >= 0) {  // room for this batch's per-token states (allocated once, reused)
    record_base_ = n_past_ - mark_;
    if (history_.size() < static_cast<size_t>(record_base_) + un) history_.resize(static_cast<size_t>(record_base_) + un, state_);
  }
  // Token t's LayerNorm output is the shift state after it.
  auto record_shift = [&](int l, bool ffn) {
    if (mark_ < 0) return;
    for (size_t t = 0; t < un; ++t) {
      auto& dst = ffn ? record_slot(l, t)->ffn_shift : record_slot(l, t)->att_shift;
      std::copy(&xn_[t * E], &xn_[t * E] + E, dst.begin());
    }
  };
  for (int l = start; l < hp.n_layer; ++l) {
    observe(l, n);
    LayerState& s = state_[static_cast<size_t>(l)];
    const LayerVectors& v = vec_[static_cast<size_t>(l)];
    norm_and_shift(v.ln1_w, v.ln1_b, s.att_shift, n);
    record_shift(l, false);
    switch (hp.version) {
      case 4: time_mix_v4(l, n); break;
      case 5: time_mix_v5(l, n); break;
      case 6: time_mix_v6(l, n); break;
      default: time_mix_v7(l, n); break;
    }
    for (size_t i = 0; i < x_.size(); ++i) x_[i] += out_[i];
    norm_and_shift(v.ln2_w, v.ln2_b, s.ffn_shift, n);
    record_shift(l, true);
    channel_mix(l, n);
    for (size_t i = 0; i < x_.size(); ++i) x_[i] += out_[i];
    if (hp.rescale_every > 0 && (l + 1) % hp.rescale_every == 0) {
      for (float& x : x_) x *= 0.5f;  // llama.cpp's rwkv6 graph: ggml_scale(cur, 0.5)
    }
  }
  observe(hp.n_layer, n);
  const int first = all_logits ? 0 : n - 1, count = n - first;
  xn_.resize(static_cast<size_t>(count) * E);
  for (int t = first; t < n; ++t) {
    rwkv::layer_norm(&x_[static_cast<size_t>(t) * E], ln_out_w_.data(), ln_out_b_.data(), static_cast<int>(E),
                     &xn_[static_cast<size_t>(t - first) * E], hp.norm_eps);
  }
  logits_.resize(static_cast<size_t>(count) * static_cast<size_t>(hp.n_vocab));
  mm_.invalidate();
  head_matmul(*rwkv_.head, xn_.data(), count, all_logits, logits_.data());
  n_past_ += n;
  return logits_;
}

}  // namespace mixq
