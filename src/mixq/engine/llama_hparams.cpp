// The llama.* hyperparameters: read, then checked against each other and against the tensors
// before anything is sized from them. The forward pass trusts these numbers (RoPE rotates n_rot
// values inside each head, attention indexes heads by n_embd / n_head, the KV cache is sized by
// n_head_kv), so a file whose keys disagree with its tensors must be refused here, with the key,
// the file and what was expected, and never reach it.
//
// Rules (each with a test in tests/unit/test_model_validation.cpp):
//   llama.embedding_length          1 .. 2^20, = the row length of token_embd.weight
//   vocabulary (token_embd rows)    1 .. 2^31-1; = llama.vocab_size and the length of
//                                   tokenizer.ggml.tokens when present; output.weight, when
//                                   present, is [embedding_length, vocabulary]
//   llama.block_count               1 .. 2^16; no blk.N.* tensor with N >= block_count
//   llama.attention.head_count      divides embedding_length (head size = embedding / heads)
//   llama.attention.head_count_kv   divides head_count (grouped-query attention); default head_count
//   llama.feed_forward_length       1 .. 2^24
//   llama.context_length            1 .. 2^26 (default 2048)
//   llama.rope.dimension_count      even, 2 .. head size (default: the head size)
//   llama.rope.freq_base            finite, > 0 (default 10000)
//   llama.attention.layer_norm_rms_epsilon   finite, > 0 (default 1e-5)
// The per-layer tensor shapes that follow from these are checked where the tensors are looked
// up (LlamaModel's constructor); blk.0's are checked here too, to name the key that disagrees.
#include <charconv>
#include <cmath>
#include <limits>
#include <optional>
#include <stdexcept>
#include <string>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "mixq/engine/llama_model.h"

namespace mixq {

namespace {

constexpr int64_t kMaxEmbedding = int64_t{1} << 20;
constexpr int64_t kMaxLayers = int64_t{1} << 16;
constexpr int64_t kMaxFeedForward = int64_t{1} << 24;
constexpr int64_t kMaxContext = int64_t{1} << 26;  // far above any released model (10M tokens)

[[noreturn]] void fail(const GgufFile& f, const std::string& what) {
  throw std::runtime_error(fmt::format("{}: {}", f.label(), what));
}

// An integer key within [lo, hi], or `fallback` when absent (nullopt: the key is required).
int64_t int_key(const GgufFile& f, const std::string& key, int64_t lo, int64_t hi, std::optional<int64_t> fallback) {
  const GgufValue* v = f.find(key);
  if (v == nullptr) {
    if (!fallback) fail(f, fmt::format("missing metadata key {} (a llama model needs it)", key));
    return *fallback;
  }
  if (!v->is_integer()) {
    fail(f, fmt::format("{} is a {}, expected an integer", key, gguf_value_type_name(v->type())));
  }
  // UINT64 values above INT64_MAX cannot be read as int64; they are out of range anyway.
  const bool huge = v->type() == GgufValueType::UINT64 && v->as_uint() > static_cast<uint64_t>(INT64_MAX);
  const int64_t x = huge ? INT64_MAX : v->as_int();
  if (x < lo || x > hi) {
    fail(f, fmt::format("{} is {}, expected {} .. {}", key, v->to_string(), lo, hi));
  }
  return x;
}

// A positive finite number key, or `fallback` when absent.
float positive_float_key(const GgufFile& f, const std::string& key, float fallback) {
  const GgufValue* v = f.find(key);
  if (v == nullptr) return fallback;
  if (!v->is_float() && !v->is_integer()) {
    fail(f, fmt::format("{} is a {}, expected a number", key, gguf_value_type_name(v->type())));
  }
  const double x = v->type() == GgufValueType::UINT64 ? static_cast<double>(v->as_uint()) : v->as_float();
  const auto xf = static_cast<float>(x);
  if (!std::isfinite(xf) || !(xf > 0.0f)) {
    fail(f, fmt::format("{} is {}, expected a finite number greater than 0", key, v->to_string()));
  }
  return xf;
}

// The N of a tensor named blk.N.*, or -1.
int64_t block_index(const std::string& name) {
  if (name.rfind("blk.", 0) != 0) return -1;
  const char* begin = name.data() + 4;
  const char* end = name.data() + name.size();
  int64_t n = -1;
  const auto [p, ec] = std::from_chars(begin, end, n);
  if (ec != std::errc() || p == begin || p == end || *p != '.') return -1;
  return n;
}

// shape[1] (the row count) of a 2-D tensor, or -1 when absent or not 2-D (the constructor then
// names the tensor).
int64_t rows_of(const GgufFile& f, const std::string& name) {
  const GgufTensor* t = f.find_tensor(name);
  return t != nullptr && t->shape.size() == 2 ? t->shape[1] : -1;
}

}  // namespace

LlamaHParams read_llama_hparams(const GgufFile& f) {
  LlamaHParams hp;
  const int64_t e = int_key(f, "llama.embedding_length", 1, kMaxEmbedding, std::nullopt);
  hp.n_embd = static_cast<int>(e);

  const GgufTensor* emb = f.find_tensor("token_embd.weight");
  if (emb == nullptr || emb->shape.size() != 2) {
    fail(f, emb == nullptr ? "missing tensor token_embd.weight"
                           : fmt::format("token_embd.weight has shape [{}], expected 2 dimensions [embedding_length, "
                                         "vocabulary]",
                                         fmt::join(emb->shape, ", ")));
  }
  if (emb->shape[0] != e) {
    fail(f, fmt::format("llama.embedding_length is {}, but token_embd.weight holds rows of {} values (shape [{}]): "
                        "expected them to agree",
                        e, emb->shape[0], fmt::join(emb->shape, ", ")));
  }
  const int64_t vocab = emb->shape[1];
  if (vocab > std::numeric_limits<int32_t>::max()) {
    fail(f, fmt::format("token_embd.weight has {} rows (tokens), more than a token id can index", vocab));
  }
  hp.n_vocab = static_cast<int>(vocab);
  if (f.find("llama.vocab_size") != nullptr) {
    const int64_t declared = int_key(f, "llama.vocab_size", 0, INT64_MAX, std::nullopt);
    if (declared != vocab) {
      fail(f, fmt::format("llama.vocab_size is {}, but token_embd.weight has {} rows (one per token): expected them "
                          "to agree",
                          declared, vocab));
    }
  }
  if (const GgufValue* tokens = f.find("tokenizer.ggml.tokens"); tokens != nullptr && tokens->type() == GgufValueType::ARRAY) {
    const size_t n = tokens->as_array().size();
    if (n != static_cast<uint64_t>(vocab)) {
      fail(f, fmt::format("tokenizer.ggml.tokens lists {} tokens, but token_embd.weight has {} rows (one per token): "
                          "expected them to agree",
                          n, vocab));
    }
  }
  if (const GgufTensor* out = f.find_tensor("output.weight"); out != nullptr && out->shape != emb->shape) {
    fail(f, fmt::format("output.weight has shape [{}], expected [{}, {}] (llama.embedding_length, the vocabulary of "
                        "token_embd.weight)",
                        fmt::join(out->shape, ", "), e, vocab));
  }

  const int64_t n_layer = int_key(f, "llama.block_count", 1, kMaxLayers, std::nullopt);
  hp.n_layer = static_cast<int>(n_layer);
  for (const auto& t : f.tensors()) {
    if (const int64_t b = block_index(t.name); b >= n_layer) {
      fail(f, fmt::format("llama.block_count is {}, but the file has tensor {} of block {}: expected block_count to "
                          "cover every blk.N tensor",
                          n_layer, t.name, b));
    }
  }

  const int64_t n_head = int_key(f, "llama.attention.head_count", 1, e, std::nullopt);
  if (e % n_head != 0) {
    fail(f, fmt::format("llama.attention.head_count is {}, which does not divide llama.embedding_length {}: expected "
                        "a divisor (the head size is embedding_length / head_count)",
                        n_head, e));
  }
  hp.n_head = static_cast<int>(n_head);
  const int64_t head_dim = e / n_head;
  const int64_t n_head_kv = int_key(f, "llama.attention.head_count_kv", 1, n_head, n_head);
  if (n_head % n_head_kv != 0) {
    fail(f, fmt::format("llama.attention.head_count_kv is {}, which does not divide llama.attention.head_count {}: "
                        "expected a divisor (each KV head serves head_count / head_count_kv query heads)",
                        n_head_kv, n_head));
  }
  hp.n_head_kv = static_cast<int>(n_head_kv);
  if (const int64_t k_rows = rows_of(f, "blk.0.attn_k.weight"); k_rows >= 0 && k_rows != head_dim * n_head_kv) {
    fail(f, fmt::format("llama.attention.head_count_kv is {}, but blk.0.attn_k.weight has {} rows: expected "
                        "head_count_kv x head size ({} x {} = {})",
                        n_head_kv, k_rows, n_head_kv, head_dim, head_dim * n_head_kv));
  }

  const int64_t n_ff = int_key(f, "llama.feed_forward_length", 1, kMaxFeedForward, std::nullopt);
  if (const int64_t ff_rows = rows_of(f, "blk.0.ffn_gate.weight"); ff_rows >= 0 && ff_rows != n_ff) {
    fail(f, fmt::format("llama.feed_forward_length is {}, but blk.0.ffn_gate.weight has {} rows: expected them to agree",
                        n_ff, ff_rows));
  }
  hp.n_ff = static_cast<int>(n_ff);

  hp.n_ctx_train = static_cast<int>(int_key(f, "llama.context_length", 1, kMaxContext, 2048));

  const int64_t n_rot = int_key(f, "llama.rope.dimension_count", 0, INT64_MAX, head_dim);
  if (n_rot < 2 || n_rot > head_dim || n_rot % 2 != 0) {
    fail(f, fmt::format("llama.rope.dimension_count is {}, but the head size is {} (llama.embedding_length {} / "
                        "llama.attention.head_count {}): expected an even number from 2 to {}",
                        n_rot, head_dim, e, n_head, head_dim));
  }
  hp.n_rot = static_cast<int>(n_rot);
  hp.rope_freq_base = positive_float_key(f, "llama.rope.freq_base", hp.rope_freq_base);
  hp.rms_eps = positive_float_key(f, "llama.attention.layer_norm_rms_epsilon", hp.rms_eps);
  return hp;
}

}  // namespace mixq
