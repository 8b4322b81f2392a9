"""Builds a Hugging Face-style model directory (model.safetensors or shards + index, config.json,
tokenizer.json, tokenizer_config.json) from a llama GGUF, using the standard library, numpy and the
gguf package only. Tensors are dequantized and llama.cpp's q/k row permutation is undone, so
`mixq convert` on the directory must give back the GGUF's tensors (as F32, or as F16/BF16 when the
directory stores those).

Usage: make_safetensors.py IN.gguf OUT_DIR [--shards N] [--dtype F32|F16|BF16]"""
import argparse
import json
import pathlib

import gguf
import numpy as np

HF_NAMES = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
            "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
            "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}

# llama.cpp token types
CONTROL, USER_DEFINED, UNUSED = 3, 4, 5

# tokenizer.json pre_tokenizer structures behind llama.cpp's tokenizer.ggml.pre names
LLAMA3_PATTERN = ("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
                  "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")
PRE_TOKENIZERS = {
    "gpt2": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
    "smollm": {"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}]},
    "llama-bpe": {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": LLAMA3_PATTERN}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]},
}


def hf_name(name: str) -> str:
    if name == "token_embd.weight":
        return "model.embed_tokens.weight"
    if name == "output_norm.weight":
        return "model.norm.weight"
    if name == "output.weight":
        return "lm_head.weight"
    _, layer, part, _ = name.split(".")
    return f"model.layers.{layer}.{HF_NAMES[part]}.weight"


def unpermute(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp stores each head's rotary pairs interleaved; Hugging Face stores two halves."""
    rows, cols = w.shape
    hd = rows // heads
    return w.reshape(heads, hd // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)


def to_bf16_bits(w: np.ndarray) -> np.ndarray:
    """Round to nearest even, as torch and ggml do (no NaNs in these tensors)."""
    bits = w.astype(np.float32).view(np.uint32).astype(np.uint64)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)


def encode(arr: np.ndarray, dtype: str) -> bytes:
    if dtype == "F32":
        return arr.astype(np.float32).tobytes()
    if dtype == "F16":
        return arr.astype(np.float16).tobytes()
    return to_bf16_bits(arr).tobytes()


def write_safetensors(path: pathlib.Path, tensors: dict):
    """tensors: name -> (float32 array, dtype name)."""
    header, blobs, offset = {"__metadata__": {"format": "pt"}}, [], 0
    for name, (arr, dtype) in tensors.items():
        raw = encode(arr, dtype)
        header[name] = {"dtype": dtype, "shape": list(arr.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    head = json.dumps(header).encode()
    head += b" " * ((-len(head)) % 8)
    path.write_bytes(len(head).to_bytes(8, "little") + head + b"".join(blobs))


def tokenizer_files(f: dict) -> tuple[dict, dict]:
    """tokenizer.json and tokenizer_config.json for the GGUF's vocabulary."""
    tokens = f["tokenizer.ggml.tokens"]
    types = f.get("tokenizer.ggml.token_type", [1] * len(tokens))
    config = {k.removeprefix("tokenizer.ggml."): f[k] for k in ("tokenizer.ggml.add_bos_token",
                                                                 "tokenizer.ggml.add_eos_token") if k in f}
    unk = f.get("tokenizer.ggml.unknown_token_id")
    if unk is not None and unk < len(tokens):
        config["unk_token"] = tokens[unk]
    if "tokenizer.chat_template" in f:
        config["chat_template"] = f["tokenizer.chat_template"]
    vocab, added = {}, []
    for i, (tok, ty) in enumerate(zip(tokens, types)):
        if ty == UNUSED:
            continue  # the padding rows llama.cpp names [PADn]; the converter names them again
        vocab[tok] = i
        if ty in (CONTROL, USER_DEFINED):
            added.append({"id": i, "content": tok, "special": ty == CONTROL, "single_word": False,
                          "lstrip": False, "rstrip": False, "normalized": ty != CONTROL})
    if f["tokenizer.ggml.model"] == "llama":
        model = {"type": "BPE", "vocab": vocab, "merges": [], "byte_fallback": True, "fuse_unk": True,
                 "unk_token": config.get("unk_token")}
        tok = {"version": "1.0", "added_tokens": added, "normalizer": None, "pre_tokenizer": None, "model": model,
               "decoder": {"type": "Sequence", "decoders": [{"type": "ByteFallback"}, {"type": "Fuse"}]}}
    else:
        model = {"type": "BPE", "vocab": vocab, "merges": f.get("tokenizer.ggml.merges", []), "byte_fallback": False}
        tok = {"version": "1.0", "added_tokens": added, "normalizer": None,
               "pre_tokenizer": PRE_TOKENIZERS.get(f.get("tokenizer.ggml.pre", "gpt2")), "model": model,
               "decoder": {"type": "ByteLevel"}}
    return tok, config


def main(src: str, out: str, shards: int = 1, dtype: str = "F32"):
    r = gguf.GGUFReader(src)
    f = {k: v.contents() for k, v in r.fields.items() if not k.startswith("GGUF.")}
    heads, kv_heads = f["llama.attention.head_count"], f["llama.attention.head_count_kv"]
    out_dir = pathlib.Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for t in r.tensors:
        w = gguf.quants.dequantize(t.data, t.tensor_type).reshape([int(x) for x in reversed(t.shape)])
        w = np.asarray(w, dtype=np.float32)
        if ".attn_q." in t.name:
            w = unpermute(w, heads)
        elif ".attn_k." in t.name:
            w = unpermute(w, kv_heads)
        tensors[hf_name(t.name)] = (np.ascontiguousarray(w), dtype if w.ndim > 1 else "F32")
    names = list(tensors)
    if shards == 1:
        write_safetensors(out_dir / "model.safetensors", tensors)
    else:
        weight_map = {}
        for s in range(shards):
            part = {n: tensors[n] for n in names[s::shards]}
            file = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
            write_safetensors(out_dir / file, part)
            weight_map.update({n: file for n in part})
        (out_dir / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama",
              "hidden_size": f["llama.embedding_length"], "intermediate_size": f["llama.feed_forward_length"],
              "num_hidden_layers": f["llama.block_count"], "num_attention_heads": heads,
              "num_key_value_heads": kv_heads, "rms_norm_eps": f["llama.attention.layer_norm_rms_epsilon"],
              "rope_theta": f.get("llama.rope.freq_base", 10000.0),
              "max_position_embeddings": f["llama.context_length"],
              "vocab_size": len(f["tokenizer.ggml.tokens"]), "tie_word_embeddings": "lm_head.weight" not in tensors}
    for key, hf in (("bos_token_id", "bos_token_id"), ("eos_token_id", "eos_token_id"),
                    ("padding_token_id", "pad_token_id")):
        if f.get(f"tokenizer.ggml.{key}", 2**32 - 1) < len(f["tokenizer.ggml.tokens"]):  # -1: none
            config[hf] = f[f"tokenizer.ggml.{key}"]
    (out_dir / "config.json").write_text(json.dumps(config, indent=1))
    tok, tok_config = tokenizer_files(f)
    (out_dir / "tokenizer.json").write_text(json.dumps(tok, ensure_ascii=False))
    (out_dir / "tokenizer_config.json").write_text(json.dumps(tok_config, ensure_ascii=False))


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("gguf")
    ap.add_argument("out_dir")
    ap.add_argument("--shards", type=int, default=1)
    ap.add_argument("--dtype", choices=["F32", "F16", "BF16"], default="F32")
    a = ap.parse_args()
    main(a.gguf, a.out_dir, a.shards, a.dtype)
