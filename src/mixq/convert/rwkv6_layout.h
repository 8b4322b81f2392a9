// RWKV-5.2 written as llama.cpp's `rwkv6` architecture (`mixq convert --layout llama.cpp` of an
// RWKV-5.2 file). RWKV-5.2 is an RWKV-6 without its data-dependent parts, so the same model is:
//   - the token-shift mixes as RWKV-6's lerps: lerp = 1 - mix (RWKV-6 computes x + (prev - x) lerp,
//     rwkv.cpp x mix + prev (1 - mix)), fused as time_mix_lerp_fused [n_embd, 1, 1, 5] in the order
//     w, k, v, r, g (w: zeros, RWKV-5.2 has no decay mix); channel_mix_lerp_{k,r} the same way;
//   - the data-dependent lerp LoRA (time_mix_w1 [n_embd, 5 x 32], time_mix_w2 [32, n_embd, 5],
//     time_mix_lerp_x) and the decay LoRA (time_mix_decay_w1 [n_embd, 64], _w2 [64, n_embd]) as
//     zeros of RWKV-6 1.6B's widths, F32;
//   - time_mix_decay = log(-log d) of rwkv.cpp's stored d = exp(-exp(w)) (RWKV-6 computes
//     exp(-exp(time_mix_decay))), time_mix_first = time_faaaa as [head size, heads];
//   - time_mix_value x 8: llama.cpp's rwkv6 GroupNorm uses eps 64e-5 where RWKV-5.2 uses 1e-5; the
//     WKV output is linear in v, so GroupNorm(8 y, 64e-5) = GroupNorm(y, 1e-5), and x 8 is exact in
//     binary (checked: the scaled matrix decodes to exactly 8 x the original, else an error: F32
//     and F16 pass, requantized block types in general do not, so quantize after converting).
// Every other tensor keeps its bytes and type under llama.cpp's name; the vocabulary and the
// general.* keys are copied; the rwkv5.* keys become the rwkv6.* keys llama.cpp's loader reads.
// docs/BENCHMARKS.md has the checks against rwkv.cpp's expected logits and llama.cpp.
#pragma once

#include <filesystem>

#include "mixq/io/gguf.h"

namespace mixq {

// The widths of the zero LoRAs (llama.cpp's time_mix_extra_dim / time_decay_extra_dim).
inline constexpr int64_t kRwkv6MixLoraWidth = 32, kRwkv6DecayLoraWidth = 64;

// Writes `in` (general.architecture rwkv5, rwkv.cpp's names) as an rwkv6 file. Returns the number
// of tensors written; throws std::runtime_error naming a missing or misshapen tensor, or a value
// matrix whose type cannot hold 8 x its values exactly.
size_t convert_rwkv5_to_rwkv6(const GgufFile& in, const std::filesystem::path& out);

}  // namespace mixq
