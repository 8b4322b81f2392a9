"""Builds a Hugging Face-style safetensors model directory from a llama GGUF (standard library,
numpy and the gguf package only), undoing llama.cpp's q/k row permutation, so `mixq convert` can
be checked against the GGUF it came from.  Usage: make_safetensors.py IN.gguf OUT_DIR [--shards N]"""
import json
import pathlib
import sys

import gguf
import numpy as np

HF_NAMES = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
            "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
            "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}


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


def write_safetensors(path: pathlib.Path, tensors: dict):
    header, blobs, offset = {}, [], 0
    for name, arr in tensors.items():
        raw = arr.tobytes()
        dtype = {np.float32: "F32", np.float16: "F16"}[arr.dtype.type]
        header[name] = {"dtype": dtype, "shape": list(arr.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    head = json.dumps(header).encode()
    head += b" " * ((-len(head)) % 8)
    path.write_bytes(len(head).to_bytes(8, "little") + head + b"".join(blobs))


def main(src: str, out: str, shards: int = 1, dtype=np.float32):
    r = gguf.GGUFReader(src)
    f = {k: v.contents() for k, v in r.fields.items() if not k.startswith("GGUF.")}
    heads, kv_heads = f["llama.attention.head_count"], f["llama.attention.head_count_kv"]
    out_dir = pathlib.Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for t in r.tensors:
        w = gguf.quants.dequantize(t.data, t.tensor_type).reshape([int(x) for x in reversed(t.shape)])
        if ".attn_q." in t.name:
            w = unpermute(w, heads)
        elif ".attn_k." in t.name:
            w = unpermute(w, kv_heads)
        tensors[hf_name(t.name)] = np.ascontiguousarray(w.astype(dtype if w.ndim > 1 else np.float32))
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
        (out_dir / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    config = {"architectures": ["LlamaForCausalLM"], "hidden_size": f["llama.embedding_length"],
              "intermediate_size": f["llama.feed_forward_length"], "num_hidden_layers": f["llama.block_count"],
              "num_attention_heads": heads, "num_key_value_heads": kv_heads,
              "rms_norm_eps": f["llama.attention.layer_norm_rms_epsilon"],
              "rope_theta": f.get("llama.rope.freq_base", 10000.0),
              "max_position_embeddings": f["llama.context_length"],
              "vocab_size": len(f["tokenizer.ggml.tokens"]), "tie_word_embeddings": "lm_head.weight" not in tensors,
              "bos_token_id": f.get("tokenizer.ggml.bos_token_id"), "eos_token_id": f.get("tokenizer.ggml.eos_token_id")}
    (out_dir / "config.json").write_text(json.dumps(config))
    vocab = {tok: i for i, tok in enumerate(f["tokenizer.ggml.tokens"])}
    merges = f.get("tokenizer.ggml.merges", [])
    (out_dir / "tokenizer.json").write_text(json.dumps({"model": {"type": "BPE", "vocab": vocab, "merges": merges},
                                                        "added_tokens": []}))


if __name__ == "__main__":
    args = sys.argv[1:]
    shards = int(args[args.index("--shards") + 1]) if "--shards" in args else 1
    main(args[0], args[1], shards)
