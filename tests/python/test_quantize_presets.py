"""`mixq quantize` with every llama.cpp preset on GGUFs written by the `gguf` package itself:
the per-tensor types equal llama-quantize's (reference-figures/typemaps) and the files load in the
gguf package with every tensor of that type."""
import pathlib

import gguf
import numpy as np
import pytest

from conftest import MIXQ, require_shared, run

MODELS = {
    # name: (layers, n_embd, heads, kv heads, n_ff, vocab, separate output)
    "syn-a": (16, 256, 4, 1, 768, 512, True),
    "syn-b": (32, 256, 4, 4, 512, 512, False),
}


def write_synthetic(path: pathlib.Path, layers, embd, heads, kv_heads, ff, vocab, output):
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(layers)
    w.add_embedding_length(embd)
    w.add_feed_forward_length(ff)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_context_length(512)
    w.add_file_type(0)
    rng = np.random.default_rng(0)
    kv = embd // heads * kv_heads

    def mat(rows, cols):
        return rng.normal(0, 0.02, size=(rows, cols)).astype(np.float32)

    w.add_tensor("token_embd.weight", mat(vocab, embd))
    w.add_tensor("output_norm.weight", np.ones(embd, np.float32))
    if output:
        w.add_tensor("output.weight", mat(vocab, embd))
    for i in range(layers):
        b = f"blk.{i}."
        w.add_tensor(b + "attn_norm.weight", np.ones(embd, np.float32))
        w.add_tensor(b + "attn_q.weight", mat(embd, embd))
        w.add_tensor(b + "attn_k.weight", mat(kv, embd))
        w.add_tensor(b + "attn_v.weight", mat(kv, embd))
        w.add_tensor(b + "attn_output.weight", mat(embd, embd))
        w.add_tensor(b + "ffn_norm.weight", np.ones(embd, np.float32))
        w.add_tensor(b + "ffn_gate.weight", mat(ff, embd))
        w.add_tensor(b + "ffn_down.weight", mat(embd, ff))
        w.add_tensor(b + "ffn_up.weight", mat(ff, embd))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def expected_types(tsv: pathlib.Path):
    lines = tsv.read_text().splitlines()
    if "failed" in lines[0]:
        return None
    return {name: t for name, _, t in (line.split("\t") for line in lines[2:])}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    paths = {}
    for name, spec in MODELS.items():
        paths[name] = d / f"{name}.gguf"
        write_synthetic(paths[name], *spec)
    return paths


def cases():
    mixes = ["Q2_K", "Q2_K_S", "Q3_K_S", "Q3_K_M", "Q3_K_L", "Q4_K_S", "Q4_K_M", "Q5_K_S", "Q5_K_M", "Q6_K",
             "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "IQ4_NL", "IQ4_XS"]
    return [(m, x) for m in ["syn-a", "syn-b", "stories260K"] for x in mixes]


@pytest.mark.parametrize("model,mix", cases())
def test_preset_types_match_llama_cpp(model, mix, models, tmp_path):
    expected = expected_types(require_shared(f"reference-figures/typemaps/{model}-{mix}.tsv"))
    src = models.get(model) or require_shared("stories260K/stories260K-f32.llamacpp.gguf")
    out = tmp_path / "out.gguf"
    run(MIXQ, "quantize", src, out, mix.lower(), "-t", "2")
    reader = gguf.GGUFReader(out)
    got = {t.name: t.tensor_type.name.lower() for t in reader.tensors}
    if expected is None:
        # llama.cpp refused this mix here (rows of 172); mixq falls back instead.
        assert got["blk.0.ffn_down.weight"] == "f16"
        return
    assert got == {k: v.lower() for k, v in expected.items()}
    # Every tensor decodes with the gguf package's own dequantizers.
    for t in reader.tensors:
        values = gguf.quants.dequantize(t.data, t.tensor_type)
        assert np.isfinite(values).all(), t.name
