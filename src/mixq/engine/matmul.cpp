#include "mixq/engine/matmul.h"

#include <algorithm>
#include <stdexcept>

#include <fmt/format.h>

#include "mixq/engine/model.h"
#include "mixq/engine/repack.h"

namespace mixq {

namespace {

// Rows [r0, r1) of an interleaved w in the file's layout, in buf.
const uint8_t* unpacked_rows(const GgufTensor& w, int64_t r0, int64_t r1, std::vector<uint8_t>& buf) {
  buf.resize(static_cast<size_t>(r1 - r0) * w.type->row_bytes(w.row_length()));
  kernels::unpack_rows(w.type->id, w.data, w.n_rows(), w.row_length(), r0, r1, buf.data());
  return buf.data();
}

}  // namespace

MatMul::MatMul(const Model& model, ThreadPool& pool) : model_(model), pool_(pool), kernels_(&kernels::best_kernels()) {}

void MatMul::override_weight(const GgufTensor& original, const GgufTensor* replacement) {
  if (replacement == nullptr) {
    overrides_.erase(&original);
    return;
  }
  if (replacement->shape != original.shape) {
    throw std::runtime_error(fmt::format("override of {}: the replacement has another shape", original.name));
  }
  overrides_[&original] = replacement;
  invalidate();
}

const kernels::PreparedActs& MatMul::prepared(ActFormat f, const float* x, int n_tokens, int64_t n) {
  PreparedSlot& slot = prepared_[static_cast<int>(f)];
  if (!slot.valid || slot.source != x || slot.acts.n_tokens != n_tokens || slot.acts.n != n) {
    kernels::prepare_activations(f, x, n_tokens, n, slot.acts);
    slot.source = x;
    slot.valid = true;
  }
  return slot.acts;
}

void MatMul::get_rows(const GgufTensor& weight, const int32_t* ids, int n, float* out) {
  const GgufTensor& w = resolve(weight);
  const int64_t e = w.row_length();
  const size_t row = w.type->row_bytes(e);
  const OutlierColumns* oc = model_.outliers_of(w);
  const bool packed = kernels::interleaved(w);  // a tied head's rows: unpacked one by one
  std::vector<uint8_t> buf;
  for (int t = 0; t < n; ++t) {
    const int32_t id = ids[t];
    if (id < 0 || id >= w.n_rows()) throw std::runtime_error(fmt::format("eval: token id {} out of range", id));
    float* o = out + static_cast<size_t>(t) * static_cast<size_t>(e);
    w.type->dequantize_row(packed ? unpacked_rows(w, id, id + 1, buf) : w.data + static_cast<size_t>(id) * row, o, e);
    if (oc != nullptr) {
      for (int c = 0; c < oc->k(); ++c) {
        o[oc->cols[static_cast<size_t>(c)]] = oc->vals[static_cast<size_t>(id) * static_cast<size_t>(oc->k()) + static_cast<size_t>(c)];
      }
    }
  }
}

kernels::RowDotFn MatMul::decode_kernel(const GgufTensor& w, int n_tokens) const {
  const int path_tokens = numerics_batch_ > 0 ? numerics_batch_ : n_tokens;
  return path_tokens <= kRowDotMaxTokens ? kernels::row_dot_for(*kernels_, w.type->id) : nullptr;
}

int64_t MatMul::decode_rows_per_block(int64_t rows, bool inline_run) const {
  // About 8 blocks per thread (at least 16 rows each): enough for the threads to even out, few
  // enough that claiming them (an atomic on a line the threads share) stays off the profile.
  const int64_t wanted = inline_run ? 1 : 8 * static_cast<int64_t>(pool_.size());
  return std::max<int64_t>(16, ((rows + wanted - 1) / wanted + 15) / 16 * 16);
}

void MatMul::decode_rows(kernels::RowDotFn row_dot, const GgufTensor& w, bool packed, const kernels::PreparedActs& acts,
                         int n_tokens, int64_t r0, int64_t r1, float* y) const {
  const int64_t in = w.row_length(), out = w.n_rows();
  const size_t row_bytes = w.type->row_bytes(in);
  const uint8_t* rows = w.data;  // row r at rows + (r - first) * row_bytes
  int64_t first = 0;
  if (packed) {
    // Whole groups of four rows by the interleaved kernel; the rows past the last group are in
    // the file's layout. Without a four-row kernel (another set): the rows unpacked first.
    const kernels::RowDot4Fn dot4 = kernels::row_dot4_for(*kernels_, w.type->id);
    const int64_t g_end = std::min(r1, out / kernels::kRepackRows * kernels::kRepackRows);
    if (dot4 != nullptr && r0 % kernels::kRepackRows == 0 && g_end > r0) {
      for (int t = 0; t < n_tokens; ++t) {
        dot4(w.data + static_cast<size_t>(r0) * row_bytes, in, (g_end - r0) / kernels::kRepackRows, acts.row(t),
             y + static_cast<size_t>(t) * static_cast<size_t>(out) + r0);
      }
      r0 = g_end;
    }
    if (r0 < r1) {
      thread_local std::vector<uint8_t> buf;
      rows = unpacked_rows(w, r0, r1, buf);
      first = r0;
    }
  }
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* row = rows + static_cast<size_t>(r - first) * row_bytes;
    for (int t = 0; t < n_tokens; ++t) {
      y[static_cast<size_t>(t) * static_cast<size_t>(out) + r] = row_dot(row, in, acts.row(t));
    }
  }
}

void MatMul::operator()(std::initializer_list<Product> products, const float* x, int n_tokens) {
  // Grouped only where every product takes the plain in-place decode path; otherwise one by one.
  bool grouped = products.size() > 1;
  for (const Product& p : products) {
    if (p.w->row_length() != products.begin()->w->row_length()) {
      throw std::runtime_error(fmt::format("grouped product: {} and {} take inputs of different lengths", products.begin()->w->name, p.w->name));
    }
    const GgufTensor& w = resolve(*p.w);
    grouped = grouped && decode_kernel(w, n_tokens) != nullptr && model_.outliers_of(w) == nullptr;
  }
  if (!grouped) {
    for (const Product& p : products) (*this)(*p.w, x, n_tokens, p.y);
    return;
  }
  int64_t macs = 0;
  for (const Product& p : products) {
    if (observer_) observer_(*p.w, x, n_tokens);
    macs += p.w->row_length() * p.w->n_rows() * n_tokens;
  }
  // Every format's activations first (each format has its own slot, so these stay valid).
  std::vector<const kernels::PreparedActs*> acts;
  std::vector<char> packed;
  acts.reserve(products.size());
  for (const Product& p : products) {
    acts.push_back(&prepared(resolve(*p.w).type->act_format, x, n_tokens, p.w->row_length()));
    packed.push_back(kernels::interleaved(resolve(*p.w)) ? 1 : 0);
  }
  const bool inline_run = macs < kInlineMacs;
  row_blocks_.clear();
  int i = 0;
  for (const Product& p : products) {
    const int64_t rows = p.w->n_rows(), per = decode_rows_per_block(rows, inline_run);
    for (int64_t r0 = 0; r0 < rows; r0 += per) row_blocks_.push_back({i, r0, std::min(rows, r0 + per)});
    ++i;
  }
  const Product* ps = products.begin();
  const auto task = [&](int64_t t) {
    const RowBlock& b = row_blocks_[static_cast<size_t>(t)];
    const Product& p = ps[b.product];
    const GgufTensor& w = resolve(*p.w);
    const auto i = static_cast<size_t>(b.product);
    decode_rows(decode_kernel(w, n_tokens), w, packed[i] != 0, *acts[i], n_tokens, b.r0, b.r1, p.y);
  };
  const auto n_tasks = static_cast<int64_t>(row_blocks_.size());
  if (inline_run) {
    for (int64_t t = 0; t < n_tasks; ++t) task(t);
  } else {
    pool_.parallel_for(n_tasks, task);
  }
}

void MatMul::operator()(const GgufTensor& weight, const float* x, int n_tokens, float* y) {
  if (observer_) observer_(weight, x, n_tokens);
  const GgufTensor& w = resolve(weight);
  const int64_t in = w.row_length(), out = w.n_rows();
  const size_t row_bytes = w.type->row_bytes(in);
  const OutlierColumns* oc = model_.outliers_of(w);
  const bool packed = kernels::interleaved(w);
  if (oc != nullptr) {
    x_masked_.assign(x, x + static_cast<size_t>(n_tokens) * static_cast<size_t>(in));
    for (int t = 0; t < n_tokens; ++t) {
      for (int32_t c : oc->cols) x_masked_[static_cast<size_t>(t) * static_cast<size_t>(in) + static_cast<size_t>(c)] = 0.0f;
    }
    kernels::prepare_activations(w.type->act_format, x_masked_.data(), n_tokens, in, masked_acts_);
  }
  const kernels::PreparedActs& acts = oc != nullptr ? masked_acts_ : prepared(w.type->act_format, x, n_tokens, in);
  const kernels::KernelSet& k = *kernels_;
  // The outlier columns' share of rows [r0, r1), in F32 after the main product.
  const auto add_outliers = [&](int64_t r0, int64_t r1) {
    if (oc == nullptr) return;
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
  };
  // Products this small cost less than waking the workers: the calling thread does them alone.
  const bool inline_run = in * out * n_tokens < kInlineMacs ||
                          (inline_small_batches_ && n_tokens > kRowDotMaxTokens && in * out < kInlineBatchWeights);
  const auto run = [&](int64_t tasks, const std::function<void(int64_t)>& fn) {
    if (inline_run) {
      for (int64_t i = 0; i < tasks; ++i) fn(i);
    } else {
      pool_.parallel_for(tasks, fn);
    }
  };

  // Decode (a few tokens, or numerics_batch_ says so): each row is read once, as stored (four rows
  // at a time where w is interleaved), by the type's in-place kernel.
  if (const kernels::RowDotFn row_dot = decode_kernel(w, n_tokens)) {
    const int64_t rows_per_block = decode_rows_per_block(out, inline_run);
    run((out + rows_per_block - 1) / rows_per_block, [&](int64_t task) {
      const int64_t r0 = task * rows_per_block, r1 = std::min(out, r0 + rows_per_block);
      decode_rows(row_dot, w, packed, acts, n_tokens, r0, r1, y);
      add_outliers(r0, r1);
    });
    return;
  }

  // Prefill of an integer type with a panel kernel: each task unpacks 2 panels of 16 rows once,
  // repacks them (kernels.h, PackedPanel) and runs them against 4 tokens per kernel call.
  if (k.panel_int8 != nullptr && w.type->unpack_row != nullptr) {
    constexpr int64_t kRowsPerTask = 2 * kernels::kPanelRows;
    run((out + kRowsPerTask - 1) / kRowsPerTask, [&](int64_t task) {
      thread_local std::vector<kernels::PreparedRow> rows(kRowsPerTask);
      thread_local kernels::PackedPanel panels[2];
      thread_local std::vector<uint8_t> unpacked;
      const int64_t r0 = task * kRowsPerTask, r1 = std::min(out, r0 + kRowsPerTask);
      const uint8_t* src = packed ? unpacked_rows(w, r0, r1, unpacked) : w.data + static_cast<size_t>(r0) * row_bytes;
      for (int64_t r = r0; r < r1; ++r) {
        kernels::prepare_row(*w.type, src + static_cast<size_t>(r - r0) * row_bytes, in, rows[static_cast<size_t>(r - r0)]);
      }
      int np = 0;
      for (int64_t p0 = r0; p0 < r1; p0 += kernels::kPanelRows, ++np) {
        const kernels::PreparedRow* prow[kernels::kPanelRows];
        const int nr = static_cast<int>(std::min<int64_t>(kernels::kPanelRows, r1 - p0));
        for (int i = 0; i < nr; ++i) prow[i] = &rows[static_cast<size_t>(p0 - r0 + i)];
        kernels::pack_panel(prow, nr, panels[np]);
      }
      const kernels::PackedPanel* pp[2] = {&panels[0], &panels[np - 1]};
      for (int t = 0; t < n_tokens; t += 4) {
        k.panel_int8(pp, np, acts, t, std::min(4, n_tokens - t), y + static_cast<size_t>(t) * static_cast<size_t>(out) + r0, out);
      }
      add_outliers(r0, r1);
    });
    return;
  }

  constexpr int64_t kRowsPerTask = 8;
  run((out + kRowsPerTask - 1) / kRowsPerTask, [&](int64_t task) {
    thread_local std::vector<kernels::PreparedRow> rows(kRowsPerTask);
    thread_local std::vector<uint8_t> unpacked;
    const int64_t r0 = task * kRowsPerTask, r1 = std::min(out, r0 + kRowsPerTask);
    const uint8_t* src = packed ? unpacked_rows(w, r0, r1, unpacked) : w.data + static_cast<size_t>(r0) * row_bytes;
    for (int64_t r = r0; r < r1; ++r) {
      kernels::prepare_row(*w.type, src + static_cast<size_t>(r - r0) * row_bytes, in, rows[static_cast<size_t>(r - r0)]);
    }
    if (!rows[0].integer && r1 - r0 >= 4) {
      // F32 rows: four at a time against every token (KernelSet::dot_f32_tile).
      int64_t r = r0;
      for (; r + 4 <= r1; r += 4) {
        const float* four[4] = {rows[static_cast<size_t>(r - r0)].f.data(), rows[static_cast<size_t>(r - r0 + 1)].f.data(),
                                rows[static_cast<size_t>(r - r0 + 2)].f.data(), rows[static_cast<size_t>(r - r0 + 3)].f.data()};
        k.dot_f32_tile(acts.n_pad, four, acts.f_row(0), acts.n_pad, n_tokens, y + r, out);
      }
      for (; r < r1; ++r) {
        for (int t = 0; t < n_tokens; ++t) {
          y[static_cast<size_t>(t) * static_cast<size_t>(out) + r] = kernels::dot(k, rows[static_cast<size_t>(r - r0)], acts, t);
        }
      }
      add_outliers(r0, r1);
      return;
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
    add_outliers(r0, r1);
  });
}

}  // namespace mixq
