// Causal self-attention over a KV cache, shared by every attention architecture.
//
// Cache layout: per layer, K transposed per KV head ([head][dim][position], rows padded to whole
// attention tiles so a tile never reads past a row) so scores for consecutive positions are one
// vector FMA per dimension; V by position ([position][kv_dim]).
#pragma once

#include <string>
#include <vector>

#include "mixq/engine/kernels.h"
#include "mixq/util/thread_pool.h"

namespace mixq {

// Attention numerics. kLlamaCppF16 (the default): what llama.cpp's CPU backend computed for the
// shared reference figures (F16 KV cache; flash attention with F16 Q and F16 value accumulation,
// position by position), so perplexity figures compare digit for digit. kTiled: F16 KV cache, F32
// flash attention over tiles of 64 positions (newer llama.cpp builds). kF32: F32 KV
// cache and plain F32 softmax (the math reference that tests compare with numpy).
enum class AttentionMode { kLlamaCppF16, kTiled, kF32 };
// Parses "f16", "tiled" or "f32"; throws std::runtime_error naming the choices.
AttentionMode parse_attention_mode(const std::string& name);

struct AttentionShape {
  int n_head = 0, n_head_kv = 0, head_dim = 0;
  int q_dim() const { return n_head * head_dim; }
  int kv_dim() const { return n_head_kv * head_dim; }
};

class KvCache {
 public:
  KvCache(int n_layer, int n_ctx, AttentionShape shape);

  // Stores the K and V rows (n x kv_dim each) of positions [pos, pos + n) in layer l, rounded to
  // F16 as llama.cpp's default cache stores them unless mode is kF32.
  void store(int layer, int pos, int n, const float* k, const float* v, AttentionMode mode);
  // out (n x q_dim) = causal attention of q (n x q_dim, positions [pos, pos + n)) over the cached
  // positions 0 .. pos + t of layer l, grouped-query heads sharing KV heads, scaled by
  // 1/sqrt(head_dim).
  void attend(int layer, int pos, int n, const float* q, AttentionMode mode, const kernels::KernelSet& k,
              ThreadPool& pool, float* out) const;
  // Positions [0, n) of every layer, independent of the context size: K as [layer][kv_dim][n],
  // V as [layer][n][kv_dim]; load() takes what save() gave (n <= this cache's n_ctx).
  void save(int n, std::vector<float>& k, std::vector<float>& v) const;
  void load(int n, const std::vector<float>& k, const std::vector<float>& v);

 private:
  AttentionShape shape_;
  int n_layer_;
  int n_ctx_;
  int stride_;  // K cache row length: n_ctx rounded up to whole attention tiles
  std::vector<float> k_, v_;
};

}  // namespace mixq
