"""mixq's RWKV-7 logits against llama.cpp's, on the same file in llama.cpp's layout.

The tiny RWKV-7 model (rwkv.cpp's FP32 file) is converted by `mixq convert --layout llama.cpp`, then
quantized with llama.cpp types (`--compat llama.cpp`). llama.cpp's logits come from the dev-time
oracle (tests/oracle/llama_cpp_logits.cpp, built by scripts/llama_cpp_logits.sh against the llama.cpp
oracle build's libllama; skipped without it); mixq's from tests/tools/engine_logits.cpp. Both
evaluate the same 127 bytes of wiki text as one batch from an empty state.

- llama.cpp on the converted F32 file reproduces rwkv.cpp's expected logits after '"in' (the
  converter checked through another engine than mixq's).
- F32: mixq's logits equal llama.cpp's to float32 rounding at every position.
- Quantized (q8_0, q4_0): both engines round each product's input to Q8_0 blocks, so a last-bit
  difference upstream can flip one activation's rounding and move later logits by ~1e-3; the
  checks are that most positions agree to float32 rounding and that the KL divergence between the
  two engines is under 1% of the quantization's own (llama.cpp's quantized file against its F32).
"""
import os
import pathlib
import subprocess

import numpy as np
import pytest

from conftest import MIXQ, REPO, require_shared, run

N_TOKENS = 127


def oracle():
    """The llama.cpp logits program (built once by scripts/llama_cpp_logits.sh), or skip."""
    cache = pathlib.Path(os.environ.get("MIXQ_ORACLE_CACHE", pathlib.Path.home() / ".cache/mixq/oracles"))
    if not (cache / "llama.cpp-build/bin/libllama.so").exists():
        pytest.skip(f"llama.cpp oracle build not found in {cache} (build it as docs/BENCHMARKS.md says)")
    r = subprocess.run([str(REPO / "scripts/llama_cpp_logits.sh"), "--build"], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"llama.cpp logits oracle cannot be built: {r.stderr[-500:]}")
    return r.stdout.strip()


def llama_cpp_logits(prog, model, tokens, tmp_path):
    tok = tmp_path / "tokens.i32"
    np.asarray(tokens, "<i4").tofile(tok)
    out = tmp_path / "llama.f32"
    run(prog, model, tok, out, "-t", 1)
    return np.fromfile(out, np.float32).reshape(len(tokens), -1).astype(np.float64)


def mixq_logits(model, tokens, engine_logits_tool, tmp_path):
    out = tmp_path / "mixq.f32"
    run(engine_logits_tool, model, out, "-t", 1, *tokens)
    return np.fromfile(out, np.float32).reshape(len(tokens), -1).astype(np.float64)


def log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def kl(p_log, q_log):
    """Per-row KL(p || q) of two log-probability arrays."""
    return (np.exp(p_log) * (p_log - q_log)).sum(axis=-1)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("rwkv7-llama-layout")
    src = require_shared("rwkv-tiny/tiny-rwkv-7v0-834K-FP32.bin")
    f32 = d / "l-f32.gguf"
    run(MIXQ, "convert", src, f32, "--layout", "llama.cpp")
    out = {"f32": f32}
    for q in ("q8_0", "q4_0"):
        out[q] = d / f"l-{q}.gguf"
        run(MIXQ, "quantize", f32, out[q], q, "--compat", "llama.cpp")
    return out


def text_tokens():
    return list(require_shared("wikitext-2-raw/wiki.test.raw").read_bytes()[:N_TOKENS])


def test_llama_cpp_reproduces_rwkv_cpp_expected_logits(files, tmp_path):
    prog = oracle()
    expected = np.fromfile(require_shared("rwkv-tiny/expected-logits-7v0-834K.bin"), np.float32)
    got = llama_cpp_logits(prog, files["f32"], list(b'"in'), tmp_path)[-1]
    diff = np.abs(got - expected).max()
    print(f"\nllama.cpp on mixq's llama.cpp-layout F32 file vs rwkv.cpp's expected logits: max |diff| {diff:.3g}")
    assert diff <= 1e-4


def test_f32_logits_match_llama_cpp(files, engine_logits_tool, tmp_path):
    prog = oracle()
    tokens = text_tokens()
    a = mixq_logits(files["f32"], tokens, engine_logits_tool, tmp_path)
    b = llama_cpp_logits(prog, files["f32"], tokens, tmp_path)
    d = np.abs(a - b).max()
    k = kl(log_softmax(b), log_softmax(a))
    print(f"\nf32: {N_TOKENS} positions, max |logit diff| {d:.3g}, KL(llama.cpp || mixq) mean {k.mean():.3g} max {k.max():.3g}")
    assert d < 1e-5


@pytest.mark.parametrize("qtype", ["q8_0", "q4_0"])
def test_quantized_logits_match_llama_cpp(qtype, files, engine_logits_tool, tmp_path):
    prog = oracle()
    tokens = text_tokens()
    a = mixq_logits(files[qtype], tokens, engine_logits_tool, tmp_path)
    b = llama_cpp_logits(prog, files[qtype], tokens, tmp_path)
    f = llama_cpp_logits(prog, files["f32"], tokens, tmp_path)
    per_pos = np.abs(a - b).max(axis=1)
    k = kl(log_softmax(b), log_softmax(a))
    k_quant = kl(log_softmax(f), log_softmax(b))
    print(f"\n{qtype}: max |logit diff| {per_pos.max():.3g} (median over positions {np.median(per_pos):.3g}), "
          f"KL(llama.cpp || mixq) mean {k.mean():.3g} max {k.max():.3g}; llama.cpp's own quantization KL "
          f"(F32 || {qtype}) mean {k_quant.mean():.3g}")
    assert np.median(per_pos) < 1e-5
    assert k.mean() < 0.01 * k_quant.mean()
