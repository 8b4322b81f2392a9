"""Seeds for fuzz_whisper_readers: a complete tiny whisper.cpp model (F16, one layer each, state 8)
prefixed with byte 0 (the whisper.cpp reader), and a small CTranslate2 model.bin prefixed with byte 1.
Usage: make_whisper_seeds.py OUT_DIR"""
import pathlib
import struct
import sys


def whisper_seed() -> bytes:
    vocab, actx, state, heads, layers, tctx, mels = 6, 2, 8, 2, 1, 2, 2
    out = struct.pack("<I11i", 0x67676D6C, vocab, actx, state, heads, layers, tctx, state, heads, layers, mels, 1)
    out += struct.pack("<2i", mels, 3) + struct.pack("<6f", *[0.5] * 6)
    toks = [b"a", b"b", b"<|endoftext|>"]
    out += struct.pack("<i", len(toks)) + b"".join(struct.pack("<I", len(t)) + t for t in toks)

    def tensor(name, ne, ttype):
        n = 1
        for d in ne:
            n *= d
        data = struct.pack(f"<{n}f", *[0.25] * n) if ttype == 0 else struct.pack(f"<{n}H", *[0x3400] * n)
        return struct.pack("<3i", len(ne), len(name), ttype) + struct.pack(f"<{len(ne)}i", *ne) + name.encode() + data

    def block(p, cross):
        t = b""
        for a in ["attn"] + (["cross_attn"] if cross else []):
            t += tensor(f"{p}{a}.query.weight", [state, state], 1) + tensor(f"{p}{a}.query.bias", [state], 0)
            t += tensor(f"{p}{a}.key.weight", [state, state], 1)
            t += tensor(f"{p}{a}.value.weight", [state, state], 1) + tensor(f"{p}{a}.value.bias", [state], 0)
            t += tensor(f"{p}{a}.out.weight", [state, state], 1) + tensor(f"{p}{a}.out.bias", [state], 0)
            t += tensor(f"{p}{a}_ln.weight", [state], 0) + tensor(f"{p}{a}_ln.bias", [state], 0)
        t += tensor(f"{p}mlp.0.weight", [state, 4 * state], 1) + tensor(f"{p}mlp.0.bias", [4 * state], 0)
        t += tensor(f"{p}mlp.2.weight", [4 * state, state], 1) + tensor(f"{p}mlp.2.bias", [state], 0)
        t += tensor(f"{p}mlp_ln.weight", [state], 0) + tensor(f"{p}mlp_ln.bias", [state], 0)
        return t

    out += tensor("encoder.positional_embedding", [state, actx], 0)
    out += tensor("encoder.conv1.weight", [3, mels, state], 1) + tensor("encoder.conv1.bias", [1, state], 0)
    out += tensor("encoder.conv2.weight", [3, state, state], 1) + tensor("encoder.conv2.bias", [1, state], 0)
    out += block("encoder.blocks.0.", False)
    out += tensor("encoder.ln_post.weight", [state], 0) + tensor("encoder.ln_post.bias", [state], 0)
    out += tensor("decoder.positional_embedding", [state, tctx], 0)
    out += tensor("decoder.token_embedding.weight", [state, vocab], 1)
    out += block("decoder.blocks.0.", True)
    out += tensor("decoder.ln.weight", [state], 0) + tensor("decoder.ln.bias", [state], 0)
    return out


def ct2_seed() -> bytes:
    def string(s):
        b = s.encode() + b"\0"
        return struct.pack("<H", len(b)) + b

    out = struct.pack("<I", 6) + string("WhisperSpec") + struct.pack("<I", 3) + struct.pack("<I", 3)
    out += string("encoder/num_heads") + struct.pack("<B", 0) + struct.pack("<BI", 2, 2) + struct.pack("<h", 2)
    out += string("decoder/embeddings/weight") + struct.pack("<B2I", 2, 3, 2) + struct.pack("<BI", 4, 12)
    out += struct.pack("<6H", *[0x3C00] * 6)
    out += string("encoder/layer_norm/gamma") + struct.pack("<BI", 1, 2) + struct.pack("<BI", 0, 8)
    out += struct.pack("<2f", 1.0, 2.0)
    out += struct.pack("<I", 1) + string("decoder/projection/weight") + string("decoder/embeddings/weight")
    return out


d = pathlib.Path(sys.argv[1])
(d / "whisper.seed").write_bytes(b"\0" + whisper_seed())
(d / "ct2.seed").write_bytes(b"\1" + ct2_seed())
