"""Writes the fuzzer's seed GGUFs (standard library only, independent of mixq's writer)."""
import pathlib
import struct

OUT = pathlib.Path(__file__).parent / "corpus"


def s(text: str) -> bytes:
    b = text.encode()
    return struct.pack("<Q", len(b)) + b


def kv(key: str, vtype: int, payload: bytes) -> bytes:
    return s(key) + struct.pack("<I", vtype) + payload


def gguf(kvs, tensors, data: bytes, version=3, align=32) -> bytes:
    head = b"GGUF" + struct.pack("<IQQ", version, len(tensors), len(kvs)) + b"".join(kvs)
    for name, dims, ttype, offset in tensors:
        head += s(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
        head += struct.pack("<IQ", ttype, offset)
    pad = (-len(head)) % align if tensors else 0
    return head + b"\0" * pad + data


def main():
    OUT.mkdir(exist_ok=True)
    every_type = [
        kv("u8", 0, struct.pack("<B", 7)), kv("i8", 1, struct.pack("<b", -7)),
        kv("u16", 2, struct.pack("<H", 700)), kv("i16", 3, struct.pack("<h", -700)),
        kv("u32", 4, struct.pack("<I", 70000)), kv("i32", 5, struct.pack("<i", -70000)),
        kv("f32", 6, struct.pack("<f", 1.5)), kv("bool", 7, b"\x01"), kv("str", 8, s("hello")),
        kv("u64", 10, struct.pack("<Q", 2**63)), kv("i64", 11, struct.pack("<q", -(2**40))),
        kv("f64", 12, struct.pack("<d", 2.25)),
        kv("strs", 9, struct.pack("<IQ", 8, 2) + s("a") + s("bc")),
        kv("nested", 9, struct.pack("<IQ", 9, 2) + struct.pack("<IQ", 4, 1) + struct.pack("<I", 1)
           + struct.pack("<IQ", 4, 0)),
    ]
    (OUT / "metadata.gguf").write_bytes(gguf(every_type, [], b""))
    f32 = struct.pack("<4f", 1, 2, 3, 4)
    (OUT / "tensor-f32.gguf").write_bytes(
        gguf([kv("general.architecture", 8, s("llama"))], [("blk.0.attn_q.weight", [2, 2], 0, 0)], f32))
    q4_0 = struct.pack("<H", 0x3C00) + bytes(range(16))  # one Q4_0 block: d = 1.0
    (OUT / "tensor-q4_0.gguf").write_bytes(
        gguf([kv("general.alignment", 4, struct.pack("<I", 64))], [("t", [32], 2, 0), ("u", [32], 2, 64)],
             q4_0 + b"\0" * (64 - len(q4_0)) + q4_0, align=64))
    # A 2 x 4 matrix with outlier columns 1 and 3 kept beside it (quantize --outliers).
    cols = struct.pack("<2i", 1, 3)
    vals = struct.pack("<4H", 0x3C00, 0x4000, 0x4200, 0x4400)  # f16 1, 2, 3, 4
    (OUT / "outliers.gguf").write_bytes(
        gguf([kv("mixq.outlier_columns", 4, struct.pack("<I", 2))],
             [("w", [4, 2], 0, 0), ("w.outlier_cols", [2], 26, 32), ("w.outlier_vals", [2, 2], 1, 64)],
             struct.pack("<8f", 1, 0, 3, 0, 5, 0, 7, 0) + b"\0" * 0 + cols + b"\0" * 24 + vals))
    (OUT / "v2.gguf").write_bytes(gguf([kv("k", 8, s("v"))], [("t", [4], 0, 0)], f32, version=2))
    tiny_llamas()


def arr(elem_type: int, payloads) -> bytes:
    return struct.pack("<IQ", elem_type, len(payloads)) + b"".join(payloads)


def f16(x: float) -> bytes:
    return struct.pack("<e", x)


def tensor_bytes(ttype: int, n: int, rng) -> bytes:
    """n values of a small random tensor: F32 (0), F16 (1), Q4_0 (2, blocks of 32) or Q8_0 (8)."""
    if ttype == 0:
        return b"".join(struct.pack("<f", rng.uniform(-0.5, 0.5)) for _ in range(n))
    if ttype == 1:
        return b"".join(f16(rng.uniform(-0.5, 0.5)) for _ in range(n))
    if ttype == 2:
        return b"".join(f16(0.05) + bytes(rng.randrange(256) for _ in range(16)) for _ in range(n // 32))
    if ttype == 8:
        return b"".join(f16(0.005) + bytes(rng.randrange(256) for _ in range(32)) for _ in range(n // 32))
    raise ValueError(ttype)


def gpt2_byte_letters():
    """GPT-2's byte alphabet: printable bytes stand for themselves, the rest map to U+0100 on."""
    printable = list(range(0x21, 0x7F)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    letters, extra = {}, 0
    for b in range(256):
        if b in printable:
            letters[b] = chr(b)
        else:
            letters[b] = chr(0x100 + extra)
            extra += 1
    return [letters[b] for b in range(256)]


def llama_model(rng, n_embd=32, n_layer=2, n_head=4, n_head_kv=2, n_ff=64, tokenizer="llama", tied=False,
                types=None, outliers=False) -> bytes:
    """A LLaMA-shaped model small enough for the fuzzer (fuzz_model) to run in microseconds."""
    types = types or {}
    if tokenizer == "llama":
        tokens = ["<unk>", "<s>", "</s>"] + ["<0x%02X>" % b for b in range(256)] + [
            "\u2581", "a", "\u2581a", "b", "ab", "\u2581the", "t", "h", "e", "th", "the"]
        ttypes = [2, 3, 3] + [6] * 256 + [1] * 11
        tok_kvs = [kv("tokenizer.ggml.model", 8, s("llama")),
                   kv("tokenizer.ggml.tokens", 9, arr(8, [s(t) for t in tokens])),
                   kv("tokenizer.ggml.scores", 9, arr(6, [struct.pack("<f", -i / 10) for i in range(len(tokens))])),
                   kv("tokenizer.ggml.token_type", 9, arr(5, [struct.pack("<i", t) for t in ttypes])),
                   kv("tokenizer.ggml.bos_token_id", 4, struct.pack("<I", 1)),
                   kv("tokenizer.ggml.eos_token_id", 4, struct.pack("<I", 2)),
                   kv("tokenizer.ggml.unknown_token_id", 4, struct.pack("<I", 0))]
    else:
        letters = gpt2_byte_letters()
        merges = [("a", "b"), ("t", "h"), ("th", "e"), ("\u0120", "t"), ("\u0120t", "h"), ("\u0120th", "e"),
                  ("x", "zz")]  # the last names a piece that is not a token: skipped
        tokens = letters + [l + r for l, r in merges] + ["<|endoftext|>"]
        ttypes = [1] * (len(tokens) - 1) + [3]
        tok_kvs = [kv("tokenizer.ggml.model", 8, s("gpt2")), kv("tokenizer.ggml.pre", 8, s("smollm")),
                   kv("tokenizer.ggml.tokens", 9, arr(8, [s(t) for t in tokens])),
                   kv("tokenizer.ggml.token_type", 9, arr(5, [struct.pack("<i", t) for t in ttypes])),
                   kv("tokenizer.ggml.merges", 9, arr(8, [s(l + " " + r) for l, r in merges])),
                   kv("tokenizer.ggml.bos_token_id", 4, struct.pack("<I", len(tokens) - 1)),
                   kv("tokenizer.ggml.eos_token_id", 4, struct.pack("<I", len(tokens) - 1))]
    n_vocab = len(tokens)
    kvd = n_embd // n_head * n_head_kv
    kvs = [kv("general.architecture", 8, s("llama")),
           kv("llama.embedding_length", 4, struct.pack("<I", n_embd)),
           kv("llama.block_count", 4, struct.pack("<I", n_layer)),
           kv("llama.feed_forward_length", 4, struct.pack("<I", n_ff)),
           kv("llama.attention.head_count", 4, struct.pack("<I", n_head)),
           kv("llama.attention.head_count_kv", 4, struct.pack("<I", n_head_kv)),
           kv("llama.context_length", 4, struct.pack("<I", 64)),
           kv("llama.rope.dimension_count", 4, struct.pack("<I", n_embd // n_head)),
           kv("llama.rope.freq_base", 6, struct.pack("<f", 10000.0)),
           kv("llama.attention.layer_norm_rms_epsilon", 6, struct.pack("<f", 1e-5))] + tok_kvs
    shapes = [("token_embd.weight", [n_embd, n_vocab]), ("output_norm.weight", [n_embd])]
    if not tied:
        shapes.append(("output.weight", [n_embd, n_vocab]))
    for l in range(n_layer):
        b = "blk.%d." % l
        shapes += [(b + "attn_norm.weight", [n_embd]), (b + "attn_q.weight", [n_embd, n_embd]),
                   (b + "attn_k.weight", [n_embd, kvd]), (b + "attn_v.weight", [n_embd, kvd]),
                   (b + "attn_output.weight", [n_embd, n_embd]), (b + "ffn_norm.weight", [n_embd]),
                   (b + "ffn_gate.weight", [n_embd, n_ff]), (b + "ffn_down.weight", [n_ff, n_embd]),
                   (b + "ffn_up.weight", [n_embd, n_ff])]
    tensors, data = [], b""
    def add(name, dims, ttype, payload):
        nonlocal data
        data += b"\0" * ((-len(data)) % 32)
        tensors.append((name, dims, ttype, len(data)))
        data += payload
    for name, dims in shapes:
        n = dims[0] * (dims[1] if len(dims) > 1 else 1)
        ttype = 0 if len(dims) == 1 else next((t for k, t in types.items() if k in name), 0)
        add(name, dims, ttype, struct.pack("<%df" % n, *([1.0] * n)) if len(dims) == 1 else tensor_bytes(ttype, n, rng))
    if outliers:  # two outlier columns beside blk.0.attn_q.weight (which must be quantized)
        kvs.append(kv("mixq.outlier_columns", 4, struct.pack("<I", 2)))
        add("blk.0.attn_q.weight.outlier_cols", [2], 26, struct.pack("<2i", 3, n_embd - 1))
        add("blk.0.attn_q.weight.outlier_vals", [2, n_embd], 1, tensor_bytes(1, 2 * n_embd, rng))
    return gguf(kvs, tensors, data)


def tiny_llamas():
    import random
    rng = random.Random(12)
    (OUT / "llama-spm.gguf").write_bytes(llama_model(rng, n_embd=16, n_ff=32))
    (OUT / "llama-spm-quant.gguf").write_bytes(
        llama_model(rng, n_layer=1, types={"attn_q": 2, "attn_k": 8, "attn_v": 8, "ffn": 8, "token_embd": 8,
                                           "output.weight": 2}, outliers=True))
    (OUT / "llama-gpt2-tied.gguf").write_bytes(
        llama_model(rng, n_embd=16, n_layer=1, n_head=2, n_head_kv=1, n_ff=24, tokenizer="gpt2", tied=True,
                    types={"attn_output": 1}))


if __name__ == "__main__":
    main()
