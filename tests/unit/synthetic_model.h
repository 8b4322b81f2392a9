// Small LLaMA-shaped GGUF models with random F32 weights, for tests that need a whole model.
#pragma once

#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "mixq/io/gguf.h"

namespace mixq::test {

struct SyntheticLlama {
  int n_layers = 4, n_embd = 256, n_head = 4, n_head_kv = 1, n_ff = 512, n_vocab = 512;
  bool tied = false;  // no output.weight: the head is the token embedding
};

inline void write_synthetic_llama(const std::filesystem::path& path, const SyntheticLlama& m, uint32_t seed = 1) {
  GgufWriter w(path);
  w.set("general.architecture", GgufValue::string("llama"));
  w.set("general.name", GgufValue::string("synthetic"));
  w.set("llama.block_count", GgufValue::u32(static_cast<uint32_t>(m.n_layers)));
  w.set("llama.embedding_length", GgufValue::u32(static_cast<uint32_t>(m.n_embd)));
  w.set("llama.feed_forward_length", GgufValue::u32(static_cast<uint32_t>(m.n_ff)));
  w.set("llama.attention.head_count", GgufValue::u32(static_cast<uint32_t>(m.n_head)));
  w.set("llama.attention.head_count_kv", GgufValue::u32(static_cast<uint32_t>(m.n_head_kv)));
  w.set("llama.context_length", GgufValue::u32(512));
  w.set("general.file_type", GgufValue::u32(0));
  const int64_t e = m.n_embd, kv = m.n_embd / m.n_head * m.n_head_kv;
  std::vector<std::pair<std::string, std::vector<int64_t>>> tensors = {{"token_embd.weight", {e, m.n_vocab}},
                                                                       {"output_norm.weight", {e}}};
  if (!m.tied) tensors.push_back({"output.weight", {e, m.n_vocab}});
  for (int l = 0; l < m.n_layers; ++l) {
    const std::string b = "blk." + std::to_string(l) + ".";
    tensors.push_back({b + "attn_norm.weight", {e}});
    tensors.push_back({b + "attn_q.weight", {e, e}});
    tensors.push_back({b + "attn_k.weight", {e, kv}});
    tensors.push_back({b + "attn_v.weight", {e, kv}});
    tensors.push_back({b + "attn_output.weight", {e, e}});
    tensors.push_back({b + "ffn_norm.weight", {e}});
    tensors.push_back({b + "ffn_gate.weight", {e, m.n_ff}});
    tensors.push_back({b + "ffn_down.weight", {m.n_ff, e}});
    tensors.push_back({b + "ffn_up.weight", {e, m.n_ff}});
  }
  for (const auto& [name, shape] : tensors) w.add_tensor(name, shape, TypeId::F32);
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, 0.02f);
  for (const auto& [name, shape] : tensors) {
    int64_t n = 1;
    for (auto d : shape) n *= d;
    std::vector<float> v(static_cast<size_t>(n));
    for (auto& x : v) x = shape.size() == 1 ? 1.0f : dist(rng);
    w.write_tensor_data({reinterpret_cast<const uint8_t*>(v.data()), v.size() * sizeof(float)});
  }
  w.finish();
}

}  // namespace mixq::test
