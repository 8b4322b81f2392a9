#include "mixq/engine/model.h"

#include <stdexcept>

#include <fmt/format.h>

namespace mixq {

void Model::load_outliers() {
  for (const WeightUse& w : weights()) {
    if (outliers_.contains(w.tensor)) continue;
    OutlierColumns oc = load_outlier_columns(file_, *w.tensor);
    if (oc.k() > 0) outliers_.emplace(w.tensor, std::move(oc));
  }
}

Context::Context(const Model& model, int n_ctx, int n_threads)
    : model_(model), n_ctx_(n_ctx), pool_(n_threads), mm_(model, pool_) {
  if (n_ctx <= 0) throw std::runtime_error(fmt::format("context size must be positive, got {}", n_ctx));
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
