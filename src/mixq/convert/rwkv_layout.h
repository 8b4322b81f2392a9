// RWKV-7 in GGUF has two tensor layouts: rwkv.cpp's (what `mixq convert` writes from rwkv.cpp
// files: "emb.weight", "blocks.N.att.x_rwkvag" [n_embd, 1, 6], "blocks.N.att.r_k" [head size,
// heads], vectors as [n_embd, 1, 1]) and llama.cpp's (its rwkv7 architecture: "token_embd.weight",
// "blk.N.time_mix_lerp_fused.weight" [n_embd, 1, 1, 6], "blk.N.time_mix_r_k.weight" [n_embd],
// vectors as [n_embd], the LayerNorms as attn_norm / attn_norm_2 / time_mix_ln, and a block-0
// value-residual LoRA (time_mix_v0/v1/v2) that llama.cpp loads but never uses).
//
// Every tensor keeps its bytes: only names and shapes change (the fused token-shift mixes are the
// same six vectors r, w, k, v, a, g in the same order; unit axes come and go). Converting into
// llama.cpp's layout adds the unused block-0 value LoRA as zeros (F32, the a-LoRA's width, as
// llama.cpp's loader expects) and the hyperparameter keys its loader reads; converting back drops
// them. The engine (engine/rwkv_model.h) loads both. RWKV-5.2 files go one way only, into
// llama.cpp's rwkv6 architecture (convert/rwkv6_layout.h): a change of model form, not of names.
#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <string_view>

#include "mixq/io/gguf.h"

namespace mixq {

enum class RwkvLayout { RwkvCpp, LlamaCpp };

// "rwkv.cpp" / "llama.cpp"; nullopt for anything else.
std::optional<RwkvLayout> parse_rwkv_layout(std::string_view name);
const char* rwkv_layout_name(RwkvLayout l);
// llama.cpp's layout when the file has token_embd.weight, else rwkv.cpp's.
RwkvLayout rwkv_layout_of(const GgufFile& f);
// The name of an RWKV-7 tensor in `layout`, from its rwkv.cpp name ("blocks.3.att.key.weight").
// Names without a counterpart come back unchanged. The table also names the tensors RWKV-6 shares
// with RWKV-5.2 (att.gate, ffn.receptance: llama.cpp's rwkv6 names).
std::string rwkv7_tensor_name(std::string_view rwkvcpp_name, RwkvLayout layout);
// Rewrites an RWKV-7 GGUF in `to`'s layout, or an RWKV-5.2 one (general.architecture rwkv5) as
// llama.cpp's rwkv6 when `to` is LlamaCpp. Returns the number of tensors written; throws
// std::runtime_error for other files or a quantized tensor that would need new rows.
size_t convert_rwkv_layout(const GgufFile& in, const std::filesystem::path& out, RwkvLayout to);

}  // namespace mixq
