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


if __name__ == "__main__":
    main()
