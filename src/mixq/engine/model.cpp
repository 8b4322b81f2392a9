#include "mixq/engine/model.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <optional>
#include <stdexcept>
#include <unordered_set>

#include <fmt/format.h>

#include "mixq/engine/repack.h"
#include "mixq/formats/half.h"

namespace mixq {

namespace {
std::atomic<ActivationPrecision> g_default_activations{ActivationPrecision::kF32};
}  // namespace

ActivationPrecision parse_activation_precision(const std::string& name) {
  if (name == "f32") return ActivationPrecision::kF32;
  if (name == "f16") return ActivationPrecision::kF16;
  if (name == "bf16") return ActivationPrecision::kBF16;
  if (name == "q8") return ActivationPrecision::kQ8;
  throw std::runtime_error(fmt::format("unknown activation precision '{}': use f32 (the default), f16, bf16 or q8", name));
}

void set_default_activation_precision(ActivationPrecision p) { g_default_activations = p; }
ActivationPrecision default_activation_precision() { return g_default_activations; }

void round_activations(ActivationPrecision p, const float* x, size_t n, size_t row_length, float* out) {
  switch (p) {
    case ActivationPrecision::kF32:
      if (out != x) std::copy(x, x + n, out);
      return;
    case ActivationPrecision::kF16:
      for (size_t i = 0; i < n; ++i) out[i] = round_fp16(x[i]);
      return;
    case ActivationPrecision::kBF16:
      for (size_t i = 0; i < n; ++i) out[i] = bf16_to_fp32(fp32_to_bf16(x[i]));
      return;
    case ActivationPrecision::kQ8:
      // Blocks of 32 within each row (a shorter last block when the row length is not a multiple).
      for (size_t r0 = 0; r0 < n; r0 += row_length) {
        for (size_t b0 = r0; b0 < r0 + row_length; b0 += 32) {
          const size_t b1 = std::min(b0 + 32, r0 + row_length);
          float amax = 0;
          for (size_t i = b0; i < b1; ++i) amax = std::max(amax, std::abs(x[i]));
          const float d = amax / 127.0f, id = d != 0 ? 1.0f / d : 0.0f, dh = round_fp16(d);
          for (size_t i = b0; i < b1; ++i) out[i] = std::nearbyint(x[i] * id) * dh;
        }
      }
      return;
  }
}

const float* Context::graph_input(const float* x, int64_t row_length, int n) {
  if (activations_ == ActivationPrecision::kF32) return x;
  const auto len = static_cast<size_t>(row_length), count = len * static_cast<size_t>(n);
  std::vector<float>& r = rounded_[x];
  if (r.size() < count) {
    r.resize(count);
    // A new or moved copy: an address the product may have prepared for another input before.
    mm_.invalidate();
  }
  round_activations(activations_, x, count, len, r.data());
  return r.data();
}

void Context::matmul(const GgufTensor& w, const float* x, int n, float* y) {
  mm_(w, graph_input(x, w.row_length(), n), n, y);
}

void Context::matmuls(std::initializer_list<MatMul::Product> products, const float* x, int n) {
  if (products.size() == 0) return;
  mm_(products, graph_input(x, products.begin()->w->row_length(), n), n);
}

void Context::head_matmul(const GgufTensor& w, const float* x, int count, bool every_token, float* y) {
  if (every_token || numerics_batch() == 0) {
    matmul(w, x, count, y);
    return;
  }
  const NumericsBatchScope head(*this, count);
  matmul(w, x, count, y);
}

size_t Model::repack_for_decode(const kernels::KernelSet& k) {
  size_t bytes = 0;
  std::unordered_set<const GgufTensor*> seen;
  // Every hardware thread for the rewrite: a burst at load, before any context (and its thread
  // count) exists; created only when some matrix has a layout here.
  std::optional<ThreadPool> pool;
  for (const WeightUse& w : weights()) {
    const GgufTensor& t = *w.tensor;
    if (!seen.insert(&t).second || !kernels::has_repacked_layout(t.type->id)) continue;
    if (kernels::row_dot4_for(k, t.type->id) == nullptr || kernels::row_dot_for(k, t.type->id) == nullptr) continue;
    if (!pool) pool.emplace(0, 0);
    kernels::interleave_in_place(file_, t, &*pool);
    if (kernels::interleaved(t)) bytes += t.nbytes;
  }
  return bytes;
}

void Model::load_outliers() {
  for (const WeightUse& w : weights()) {
    if (outliers_.contains(w.tensor)) continue;
    OutlierColumns oc = load_outlier_columns(file_, *w.tensor);
    if (oc.k() > 0) outliers_.emplace(w.tensor, std::move(oc));
  }
}

Context::Context(const Model& model, int n_ctx, int n_threads)
    : model_(model), n_ctx_(n_ctx), pool_(n_threads), mm_(model, pool_), activations_(default_activation_precision()) {
  if (n_ctx <= 0) throw std::runtime_error(fmt::format("context size must be positive, got {}", n_ctx));
}

const std::vector<float>& Context::eval_from_layer_tail(int start, const float* x, int n, int first) {
  if (first < 0 || first >= n) {
    throw std::runtime_error(fmt::format("eval_from_layer_tail: first row {} is outside 0 .. {}", first, n - 1));
  }
  const std::vector<float>& all = eval_from_layer(start, x, n, true);
  tail_.assign(all.begin() + static_cast<ptrdiff_t>(first) * n_vocab(), all.end());
  return tail_;
}

void Context::check_blocks(int start, int stop, int n) const {
  if (start < 0 || stop <= start || stop > model_.n_layer()) {
    throw std::runtime_error(fmt::format("eval_blocks: blocks {} .. {} are outside 0 .. {}", start, stop - 1,
                                         model_.n_layer() - 1));
  }
  if (n_past_ != 0) throw std::runtime_error("eval_blocks: the context must be reset first");
  if (n <= 0 || n > n_ctx_) throw std::runtime_error(fmt::format("eval_blocks: {} tokens for a context of {}", n, n_ctx_));
}

const std::vector<float>& Context::eval_blocks(int start, int stop, const float* x, int n) {
  check_blocks(start, stop, n);
  const auto width = static_cast<size_t>(model_.layer_state_width());
  LayerObserver saved = std::move(layer_observer_);
  layer_observer_ = [&](int l, const float* state, int tokens) {
    if (l == stop) blocks_out_.assign(state, state + static_cast<size_t>(tokens) * width);
    if (saved) saved(l, state, tokens);
  };
  try {
    eval_from_layer_tail(start, x, n, n - 1);
  } catch (...) {
    layer_observer_ = std::move(saved);
    reset();
    throw;
  }
  layer_observer_ = std::move(saved);
  reset();
  return blocks_out_;
}

const std::vector<float>& Context::eval_tail(const std::vector<int32_t>& tokens, int first) {
  const int n = static_cast<int>(tokens.size());
  if (first < 0 || first >= n) throw std::runtime_error(fmt::format("eval_tail: first row {} is outside 0 .. {}", first, n - 1));
  const std::vector<float>& all = eval(tokens, true);
  tail_.assign(all.begin() + static_cast<ptrdiff_t>(first) * n_vocab(), all.end());
  return tail_;
}

void Context::check_batch(int n) const {
  if (n == 0) throw std::runtime_error("eval: no tokens");
  if (n_past_ + n > n_ctx_) {
    throw std::runtime_error(fmt::format("eval: {} tokens past {} exceed the context of {}", n, n_past_, n_ctx_));
  }
}

void Context::check_rollback(int mark, int p) const {
  if (mark < 0) throw std::runtime_error(fmt::format("rollback to {}: no mark_rollback() before", p));
  if (p < mark || p > n_past_) {
    throw std::runtime_error(fmt::format("rollback to {}: outside the marked range {} .. {}", p, mark, n_past_));
  }
}

void Context::check_import(const ContextState& state, size_t parts) const {
  const std::string shape = model_.state_shape();
  if (state.shape != shape) {
    throw std::runtime_error(
        fmt::format("import_state: the state is of a model '{}', this context's model is '{}'", state.shape, shape));
  }
  if (state.parts.size() != parts || state.n_past < 0 || state.n_past > n_ctx_) {
    throw std::runtime_error(fmt::format("import_state: a state of {} tokens ({} parts) does not fit a context of {}",
                                         state.n_past, state.parts.size(), n_ctx_));
  }
}

}  // namespace mixq
