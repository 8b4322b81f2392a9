"""`mixq convert` on foreign formats, checked with the gguf package and independent parsers."""
import struct

import gguf
import numpy as np
import pytest

from conftest import MIXQ, require_shared, run

import subprocess


def fields(reader):
    return {k: v for k, v in reader.fields.items() if not k.startswith("GGUF.")}


def test_llama2c_matches_llama_cpp_converter(tmp_path):
    ckpt = require_shared("stories260K/stories260K.bin")
    ref_path = require_shared("stories260K/stories260K-f32.llamacpp.gguf")
    ref = gguf.GGUFReader(ref_path)
    out = tmp_path / "s.gguf"
    run(MIXQ, "convert", ckpt, out)  # tok512.bin beside the checkpoint is found on its own
    ours = gguf.GGUFReader(out)
    fa, fb = fields(ref), fields(ours)
    assert list(fa) == list(fb)
    for key in fa:
        assert fa[key].types == fb[key].types, key
        assert fa[key].contents() == fb[key].contents(), key
    assert [(t.name, list(t.shape), t.tensor_type) for t in ref.tensors] == \
           [(t.name, list(t.shape), t.tensor_type) for t in ours.tensors]
    for a, b in zip(ref.tensors, ours.tensors):
        assert np.array_equal(np.asarray(a.data), np.asarray(b.data)), a.name
    assert out.read_bytes() == ref_path.read_bytes()


def test_llama2c_f16(tmp_path):
    ckpt = require_shared("stories260K/stories260K.bin")
    out = tmp_path / "s16.gguf"
    run(MIXQ, "convert", ckpt, out, "--outtype", "f16")
    r = gguf.GGUFReader(out)
    types = {t.name: t.tensor_type.name for t in r.tensors}
    assert types["blk.0.attn_q.weight"] == "F16" and types["blk.0.attn_norm.weight"] == "F32"


def parse_rwkv_cpp(path):
    """rwkv.cpp's legacy layout, parsed independently of mixq: name -> (ne, type, raw bytes)."""
    b = path.read_bytes()
    _, _, _, _, _, _ = struct.unpack("<6I", b[:24])
    sizes = {0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 7: (32, 22), 8: (32, 24), 9: (32, 34)}
    names = {0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q5_0", 8: "Q5_1", 9: "Q8_0"}
    out, o = {}, 24
    while o < len(b):
        nd, kl, t = struct.unpack("<3i", b[o:o + 12])
        o += 12
        dims = struct.unpack(f"<{nd}i", b[o:o + 4 * nd])
        o += 4 * nd
        name = b[o:o + kl].decode()
        o += kl
        block, nbytes = sizes[t]
        size = int(np.prod(dims)) // block * nbytes
        out[name] = (list(dims), names[t], b[o:o + size])
        o += size
    return out


@pytest.mark.parametrize("name", ["tiny-rwkv-4v0-660K-FP32.bin", "tiny-rwkv-5v2-730K-FP32.bin",
                                  "tiny-rwkv-5v2-730K-FP16.bin", "tiny-rwkv-7v0-834K-FP32.bin",
                                  "tiny-rwkv-7v0-834K-FP16.bin", "tiny-rwkv-7v0-834K-Q5_1.bin"])
def test_rwkv_tensors_survive_bit_for_bit(name, tmp_path):
    src = require_shared(f"rwkv-tiny/{name}")
    expected = parse_rwkv_cpp(src)
    out = tmp_path / "r.gguf"
    run(MIXQ, "convert", src, out)
    r = gguf.GGUFReader(out)
    assert r.fields["general.architecture"].contents() == "rwkv" + name.split("-")[2][0]
    assert len(r.tensors) == len(expected)
    for t in r.tensors:
        dims, tname, raw = expected[t.name]
        assert [int(x) for x in t.shape] == dims, t.name
        assert t.tensor_type.name == tname, t.name
        assert np.asarray(t.data).tobytes() == raw, t.name


def expect_failure(*args, message):
    proc = subprocess.run([str(a) for a in args], capture_output=True, text=True)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert message in proc.stderr, proc.stderr


def test_bad_inputs_are_clear_errors(tmp_path):
    ckpt = require_shared("stories260K/stories260K.bin")
    cut = tmp_path / "cut.bin"
    cut.write_bytes(ckpt.read_bytes()[:50000])
    (tmp_path / "tokenizer.bin").write_bytes(require_shared("stories260K/tok512.bin").read_bytes())
    expect_failure(MIXQ, "convert", cut, tmp_path / "o.gguf", message="truncated")
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(b"\x01\x02" * 100)
    expect_failure(MIXQ, "convert", garbage, tmp_path / "o.gguf", message="not a llama2.c checkpoint")
    lone = tmp_path / "lone" / "model.bin"
    lone.parent.mkdir()
    lone.write_bytes(ckpt.read_bytes())
    expect_failure(MIXQ, "convert", lone, tmp_path / "o.gguf", message="--tokenizer")
    rwkv = require_shared("rwkv-tiny/tiny-rwkv-7v0-834K-FP16.bin")
    cut_rwkv = tmp_path / "cut-rwkv.bin"
    cut_rwkv.write_bytes(rwkv.read_bytes()[:100000])
    expect_failure(MIXQ, "convert", cut_rwkv, tmp_path / "o.gguf", message="truncated")
    expect_failure(MIXQ, "convert", tmp_path, tmp_path / "o.gguf", message="without config.json")
    assert not (tmp_path / "o.gguf").exists()


def test_quantize_takes_llama2c_directly(tmp_path):
    ckpt = require_shared("stories260K/stories260K.bin")
    out = tmp_path / "q.gguf"
    run(MIXQ, "quantize", ckpt, out, "Q4_K_M")
    r = gguf.GGUFReader(out)
    assert {t.name: t.tensor_type.name for t in r.tensors}["blk.0.ffn_down.weight"] == "F16"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q.gguf"]  # the temporary conversion is gone


def write_small_llama(path, pre="gpt2"):
    """A 2-layer GQA llama GGUF with random weights and a tiny BPE vocabulary (gguf package)."""
    w = gguf.GGUFWriter(str(path), "llama")
    embd, heads, kv, ff, vocab = 64, 4, 2, 96, 32
    for setter, v in [(w.add_block_count, 2), (w.add_embedding_length, embd), (w.add_feed_forward_length, ff),
                      (w.add_head_count, heads), (w.add_head_count_kv, kv), (w.add_context_length, 256),
                      (w.add_layer_norm_rms_eps, 1e-5), (w.add_rope_freq_base, 10000.0)]:
        setter(v)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(["<s>", "</s>", "<user>"] + [f"t{i}" for i in range(3, vocab)])
    w.add_token_types([3, 3, 4] + [1] * (vocab - 3))
    w.add_token_merges(["t 1", "t 2"])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    rng = np.random.default_rng(3)
    w.add_tensor("token_embd.weight", rng.normal(size=(vocab, embd)).astype(np.float32))
    w.add_tensor("output_norm.weight", rng.normal(size=embd).astype(np.float32))
    for i in range(2):
        shapes = {"attn_norm": (embd,), "attn_q": (embd, embd), "attn_k": (embd // heads * kv, embd),
                  "attn_v": (embd // heads * kv, embd), "attn_output": (embd, embd), "ffn_norm": (embd,),
                  "ffn_gate": (ff, embd), "ffn_up": (ff, embd), "ffn_down": (embd, ff)}
        for part, shape in shapes.items():
            w.add_tensor(f"blk.{i}.{part}.weight", rng.normal(size=shape).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.mark.parametrize("shards,dtype,pre", [(1, "F32", "gpt2"), (3, "F16", "smollm"), (2, "BF16", "llama-bpe")])
def test_safetensors_round_trip(shards, dtype, pre, tmp_path):
    import make_safetensors
    src = tmp_path / "small.gguf"
    write_small_llama(src, pre)
    make_safetensors.main(str(src), str(tmp_path / "hf"), shards, dtype)
    out = tmp_path / "back.gguf"
    run(MIXQ, "convert", tmp_path / "hf", out)
    a, b = gguf.GGUFReader(src), gguf.GGUFReader(out)
    ta = {t.name: t for t in a.tensors}
    tb = {t.name: t for t in b.tensors}
    assert set(ta) == set(tb)
    for name, t in ta.items():
        want = np.asarray(t.data)
        if want.ndim > 1 and dtype != "F32":
            want = want.astype(np.float16) if dtype == "F16" else make_safetensors.to_bf16_bits(want)
        assert tb[name].tensor_type.name == (dtype if want.ndim > 1 else "F32"), name
        assert np.asarray(tb[name].data).tobytes() == want.tobytes(), name  # the q/k permutation is undone exactly
    fa, fb = fields(a), fields(b)
    for key in ["llama.attention.head_count_kv", "llama.context_length", "llama.rope.freq_base",
                "tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens", "tokenizer.ggml.token_type",
                "tokenizer.ggml.merges", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id"]:
        assert fa[key].contents() == fb[key].contents(), key


def test_safetensors_sentencepiece_vocabulary(tmp_path):
    """stories260K through a Hugging Face directory: tensors and its llama vocabulary (tokens,
    scores, types) come back exactly as llama.cpp's converter wrote them."""
    import make_safetensors
    ref_path = require_shared("stories260K/stories260K-f32.llamacpp.gguf")
    make_safetensors.main(str(ref_path), str(tmp_path / "hf"))
    out = tmp_path / "back.gguf"
    run(MIXQ, "convert", tmp_path / "hf", out)
    a, b = gguf.GGUFReader(ref_path), gguf.GGUFReader(out)
    fa, fb = fields(a), fields(b)
    for key in ["tokenizer.ggml.model", "tokenizer.ggml.tokens", "tokenizer.ggml.token_type",
                "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id", "tokenizer.ggml.unknown_token_id"]:
        assert fa[key].contents() == fb[key].contents(), key
    sa = np.asarray(fa["tokenizer.ggml.scores"].contents(), np.float32)
    sb = np.asarray(fb["tokenizer.ggml.scores"].contents(), np.float32)
    assert sa.tobytes() == sb.tobytes()
    tb = {t.name: t for t in b.tensors}
    for t in a.tensors:
        assert np.asarray(t.data).tobytes() == np.asarray(tb[t.name].data).tobytes(), t.name


def test_malformed_safetensors(tmp_path):
    import make_safetensors
    src = tmp_path / "small.gguf"
    write_small_llama(src)
    hf = tmp_path / "hf"
    make_safetensors.main(str(src), str(hf))
    model = hf / "model.safetensors"
    good = model.read_bytes()
    model.write_bytes(good[:len(good) // 2])
    expect_failure(MIXQ, "convert", hf, tmp_path / "o.gguf", message="outside the file")
    model.write_bytes((10**12).to_bytes(8, "little") + good[8:])
    expect_failure(MIXQ, "convert", hf, tmp_path / "o.gguf", message="runs past the end")
    model.write_bytes(good)
    (hf / "config.json").write_text("{}")
    expect_failure(MIXQ, "convert", hf, tmp_path / "o.gguf", message="hidden_size")
    expect_failure(MIXQ, "convert", model, tmp_path / "o.gguf", message="single safetensors file")
    assert not (tmp_path / "o.gguf").exists()
