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
- RWKV-5.2 is an RWKV-6 without its data-dependent parts: written as llama.cpp's `rwkv6` by this
  file's own writer (not mixq's), it gives rwkv.cpp's expected 5v2 logits in llama.cpp.
- RWKV-6 (issue 11): `mixq convert --layout llama.cpp` of the RWKV-5.2 file writes that rwkv6 file;
  llama.cpp reproduces the expected logits on it, mixq's logits equal llama.cpp's on it and on its
  `--compat llama.cpp` quantizations (the same checks as RWKV-7's), and the types mixq chose are
  llama-quantize's. The data-dependent path (ddlerp and decay LoRAs, llama.cpp's older separate
  lerps, rescale_every_n_layers) has no real model here: files with random non-zero LoRAs, written
  by this file's writer (not mixq's), give the same logits in mixq and llama.cpp.
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


def write_rwkv6_from_rwkv5(src, out, tokens_from, value_scale=8.0, lora_dim=32, random_lora=None, fused=True,
                           rescale_every=0):
    """RWKV-5.2 (rwkv.cpp's FP32 file, parsed by test_rwkv_reference.read_rwkv_cpp) written as llama.cpp's
    `rwkv6` architecture with the gguf package, independently of mixq: RWKV-6 with its data-dependent
    parts switched off. Token-shift lerps are 1 - rwkv.cpp's mix vectors (RWKV-6 computes
    x + (prev - x) * lerp), the ddlerp LoRA (time_mix_w1/w2, lerp_x) and the decay LoRA are zero, the
    static decay is log(-log(d)) of rwkv.cpp's stored d = exp(-exp(w)), and the value matrix is
    scaled by 8: llama.cpp's rwkv6 GroupNorm uses eps 64e-5 where RWKV-5.2 uses 1e-5, and the
    wkv output is linear in v, so GroupNorm(8 y, 64e-5) = GroupNorm(y, 1e-5) (x8 is exact in binary).

    random_lora=SEED instead fills the ddlerp LoRA (time_mix_w1/w2, lerp_x) and the decay LoRA with
    random non-zero values (a real RWKV-6's data-dependent path, on RWKV-5.2's other weights);
    fused=False writes the five lerps separately (llama.cpp's older form); rescale_every sets
    rescale_every_n_layers."""
    import gguf
    from test_rwkv_reference import read_rwkv_cpp

    n_layer, E, w = read_rwkv_cpp(src)
    H = w["blocks.0.att.time_decay"].shape[0]
    S, X = E // H, lora_dim
    f32 = lambda a: np.ascontiguousarray(a, dtype=np.float32)  # noqa: E731
    if random_lora is None:
        zeros = lambda *shape: np.zeros(shape, np.float32)  # noqa: E731
    else:
        # N(0, 0.1): the LoRAs move the logits by up to ~6 (mean ~0.6) while the model stays well
        # conditioned; at 0.3 two F32 engines (and each against float64) already differ by ~5e-3.
        rng = np.random.default_rng(random_lora)
        zeros = lambda *shape: rng.normal(0, 0.1, shape).astype(np.float32)  # noqa: E731
    tf = gguf.GGUFReader(tokens_from).fields["tokenizer.ggml.tokens"]
    g = gguf.GGUFWriter(out, "rwkv6")
    g.add_block_count(n_layer)
    g.add_context_length(1048576)
    g.add_embedding_length(E)
    g.add_feed_forward_length(w["blocks.0.ffn.key.weight"].shape[0])
    g.add_wkv_head_size(S)
    g.add_time_mix_extra_dim(X)
    g.add_time_decay_extra_dim(X)
    g.add_layer_norm_eps(1e-5)
    g.add_rescale_every_n_layers(rescale_every)
    g.add_token_shift_count(2)
    g.add_vocab_size(256)
    g.add_tokenizer_model("rwkv")
    g.add_token_list([bytes(tf.parts[i]) for i in tf.data])
    g.add_add_bos_token(False)
    g.add_tensor("token_embd.weight", f32(w["emb.weight"]))
    g.add_tensor("token_embd_norm.weight", f32(w["blocks.0.ln0.weight"]))
    g.add_tensor("token_embd_norm.bias", f32(w["blocks.0.ln0.bias"]))
    for l in range(n_layer):
        a, f, b = f"blocks.{l}.att.", f"blocks.{l}.ffn.", f"blk.{l}."
        lerp = lambda name: 1 - w[name].reshape(-1)  # noqa: E731
        for dst, s in (("attn_norm", "ln1"), ("attn_norm_2", "ln2")):
            g.add_tensor(f"{b}{dst}.weight", f32(w[f"blocks.{l}.{s}.weight"]))
            g.add_tensor(f"{b}{dst}.bias", f32(w[f"blocks.{l}.{s}.bias"]))
        g.add_tensor(b + "time_mix_w1.weight", zeros(5 * X, E))
        g.add_tensor(b + "time_mix_w2.weight", zeros(5, E, X))
        g.add_tensor(b + "time_mix_lerp_x.weight", zeros(1, 1, E))
        mixes = [zeros(E) if random_lora is not None else np.zeros(E)]
        mixes += [lerp(a + m) for m in ("time_mix_k", "time_mix_v", "time_mix_r", "time_mix_g")]
        if fused:
            g.add_tensor(b + "time_mix_lerp_fused.weight", f32(np.stack(mixes).reshape(5, 1, 1, E)))  # w k v r g
        else:
            for m, v in zip("wkvrg", mixes):
                g.add_tensor(f"{b}time_mix_lerp_{m}.weight", f32(v.reshape(1, 1, E)))
        g.add_tensor(b + "time_mix_first.weight", f32(w[a + "time_faaaa"].reshape(H, S)))
        g.add_tensor(b + "time_mix_decay.weight", f32(np.log(-np.log(w[a + "time_decay"].reshape(-1)))))
        g.add_tensor(b + "time_mix_decay_w1.weight", zeros(X, E))
        g.add_tensor(b + "time_mix_decay_w2.weight", zeros(E, X))
        for dst, s in (("key", "key"), ("receptance", "receptance"), ("gate", "gate"), ("output", "output")):
            g.add_tensor(f"{b}time_mix_{dst}.weight", f32(w[f"{a}{s}.weight"]))
        g.add_tensor(b + "time_mix_value.weight", f32(w[a + "value.weight"] * value_scale))
        g.add_tensor(b + "time_mix_ln.weight", f32(w[a + "ln_x.weight"]))
        g.add_tensor(b + "time_mix_ln.bias", f32(w[a + "ln_x.bias"]))
        g.add_tensor(b + "channel_mix_lerp_k.weight", f32(lerp(f + "time_mix_k").reshape(1, 1, E)))
        g.add_tensor(b + "channel_mix_lerp_r.weight", f32(lerp(f + "time_mix_r").reshape(1, 1, E)))
        for m in ("key", "value", "receptance"):
            g.add_tensor(f"{b}channel_mix_{m}.weight", f32(w[f"{f}{m}.weight"]))
    g.add_tensor("output_norm.weight", f32(w["ln_out.weight"]))
    g.add_tensor("output_norm.bias", f32(w["ln_out.bias"]))
    g.add_tensor("output.weight", f32(w["head.weight"]))
    g.write_header_to_file()
    g.write_kv_data_to_file()
    g.write_tensors_to_file()
    g.close()


def test_rwkv5_is_rwkv6_without_data_dependence_in_llama_cpp(files, tmp_path):
    """The claim the rwkv6 layout for RWKV-5.2 rests on (issue 11): RWKV-5.2 written as llama.cpp's rwkv6
    (write_rwkv6_from_rwkv5) gives rwkv.cpp's expected logits after '"in' in llama.cpp. Without the
    value scale (GroupNorm eps 64e-5 applied to RWKV-5.2's own y) it does not: the scale is needed."""
    prog = oracle()
    src = require_shared("rwkv-tiny/tiny-rwkv-5v2-730K-FP32.bin")
    expected = np.fromfile(require_shared("rwkv-tiny/expected-logits-5v2-730K.bin"), np.float32)
    diffs = {}
    for scale in (8.0, 1.0):
        out = tmp_path / f"r6-x{scale:g}.gguf"
        write_rwkv6_from_rwkv5(src, out, files["f32"], value_scale=scale)
        diffs[scale] = np.abs(llama_cpp_logits(prog, out, list(b'"in'), tmp_path)[-1] - expected).max()
    print(f"\nRWKV-5.2 as llama.cpp rwkv6 vs rwkv.cpp's expected logits: max |diff| {diffs[8.0]:.3g} "
          f"(value x8), {diffs[1.0]:.3g} (unscaled)")
    assert diffs[8.0] <= 1e-4
    assert diffs[1.0] > 1e-2


# ---------------------------------------------------------------------------------------------
# RWKV-6: mixq's rwkv6 reader and its RWKV-5.2 -> rwkv6 conversion (issue 11)

RWKV6_QTYPES = ("q8_0", "q5_1")


@pytest.fixture(scope="module")
def files6(tmp_path_factory):
    d = tmp_path_factory.mktemp("rwkv6-llama-layout")
    src = require_shared("rwkv-tiny/tiny-rwkv-5v2-730K-FP32.bin")
    f32 = d / "r6-f32.gguf"
    run(MIXQ, "convert", src, f32, "--layout", "llama.cpp")
    out = {"f32": f32}
    for q in RWKV6_QTYPES:
        out[q] = d / f"r6-{q}.gguf"
        run(MIXQ, "quantize", f32, out[q], q, "--compat", "llama.cpp")
    return out


def test_rwkv6_conversion_gives_expected_logits_in_llama_cpp(files6, engine_logits_tool, tmp_path):
    prog = oracle()
    expected = np.fromfile(require_shared("rwkv-tiny/expected-logits-5v2-730K.bin"), np.float32)
    got = llama_cpp_logits(prog, files6["f32"], list(b'"in'), tmp_path)[-1]
    ours = mixq_logits(files6["f32"], list(b'"in'), engine_logits_tool, tmp_path)[-1]
    d_llama, d_mixq = np.abs(got - expected).max(), np.abs(ours - expected).max()
    print(f"\nmixq-converted rwkv6 F32 file vs rwkv.cpp's expected 5v2 logits: llama.cpp max |diff| {d_llama:.3g}, "
          f"mixq {d_mixq:.3g}")
    assert d_llama <= 1e-4
    assert d_mixq <= 1e-4


def test_rwkv6_f32_logits_match_llama_cpp(files6, engine_logits_tool, tmp_path):
    prog = oracle()
    tokens = text_tokens()
    a = mixq_logits(files6["f32"], tokens, engine_logits_tool, tmp_path)
    b = llama_cpp_logits(prog, files6["f32"], tokens, tmp_path)
    d = np.abs(a - b).max()
    print(f"\nrwkv6 f32: {N_TOKENS} positions, max |logit diff| {d:.3g}")
    assert d < 1e-5


@pytest.mark.parametrize("qtype", RWKV6_QTYPES)
def test_rwkv6_quantized_logits_match_llama_cpp(qtype, files6, engine_logits_tool, tmp_path):
    """Weaker than RWKV-7's check, for a reason: both engines round each product's input to Q8_0 /
    Q8_1 blocks, the two are never bit-equal upstream (summation orders), and an activation on a
    rounding boundary rounds differently (docs/BENCHMARKS.md traces the first one, block 1, position
    14: an exact tie in llama.cpp). RWKV-5.2's slowly decaying state then carries the difference to
    every later position (~0.05 in the logits), where RWKV-7's soon forgets it. So: the first
    position agrees to float rounding, and both engines measure the same quantization loss."""
    prog = oracle()
    tokens = text_tokens()
    a = mixq_logits(files6[qtype], tokens, engine_logits_tool, tmp_path)
    b = llama_cpp_logits(prog, files6[qtype], tokens, tmp_path)
    f = log_softmax(llama_cpp_logits(prog, files6["f32"], tokens, tmp_path))
    per_pos = np.abs(a - b).max(axis=1)
    k_mixq, k_llama = kl(f, log_softmax(a)).mean(), kl(f, log_softmax(b)).mean()
    top1 = (a.argmax(axis=1) == b.argmax(axis=1)).mean()
    print(f"\nrwkv6 {qtype}: position 0 max |logit diff| {per_pos[0]:.3g}, all positions {per_pos.max():.3g} (median "
          f"{np.median(per_pos):.3g}); KL(F32 || quantized) mean: mixq {k_mixq:.3g}, llama.cpp {k_llama:.3g}; "
          f"same top token at {top1:.1%} of positions")
    assert per_pos[0] < 1e-5
    assert abs(k_mixq / k_llama - 1) < 0.2
    assert top1 >= 0.95


@pytest.mark.parametrize("qtype", RWKV6_QTYPES)
def test_rwkv6_compat_types_are_llama_quantizes(qtype, files6, tmp_path):
    """mixq's `--compat llama.cpp` types per tensor (the LoRAs, time_mix_first and the lerps stay F32)
    equal llama-quantize's own on the same file."""
    import gguf

    oracle()
    quantize = pathlib.Path(os.environ.get("MIXQ_ORACLE_CACHE", pathlib.Path.home() / ".cache/mixq/oracles"))
    quantize = quantize / "llama.cpp-build/bin/llama-quantize"
    if not quantize.exists():
        pytest.skip(f"{quantize} not found")
    ref = tmp_path / "lq.gguf"
    run(quantize, files6["f32"], ref, qtype.upper(), 1)
    types = lambda p: {t.name: t.tensor_type.name for t in gguf.GGUFReader(p).tensors}  # noqa: E731
    ours, theirs = types(files6[qtype]), types(ref)
    assert ours == theirs
    assert ours["blk.0.time_mix_w2.weight"] == "F32" and ours["blk.0.time_mix_key.weight"] == qtype.upper()


@pytest.mark.parametrize("fused,rescale_every", [(True, 6), (False, 0)])
def test_rwkv6_random_loras_match_llama_cpp(fused, rescale_every, files6, engine_logits_tool, tmp_path):
    """The data-dependent path, checked against llama.cpp alone: random non-zero ddlerp and decay LoRAs
    (and lerp_x, the decay mix), fused or separate lerps, with and without rescaling, in a file
    written by the gguf package. The LoRAs must move llama.cpp's logits (else the check is empty)."""
    prog = oracle()
    src = require_shared("rwkv-tiny/tiny-rwkv-5v2-730K-FP32.bin")
    tokens = text_tokens()
    out = tmp_path / "r6-random.gguf"
    write_rwkv6_from_rwkv5(src, out, files6["f32"], random_lora=7, fused=fused, rescale_every=rescale_every)
    a = mixq_logits(out, tokens, engine_logits_tool, tmp_path)
    b = llama_cpp_logits(prog, out, tokens, tmp_path)
    plain = llama_cpp_logits(prog, files6["f32"], tokens, tmp_path)
    d, effect = np.abs(a - b).max(), np.abs(b - plain).mean()
    print(f"\nrwkv6 random LoRAs ({'fused' if fused else 'separate'} lerps, rescale every {rescale_every}): "
          f"{N_TOKENS} positions, max |mixq - llama.cpp| {d:.3g}; the LoRAs move llama.cpp's logits by {effect:.3g} "
          f"on average")
    assert effect > 0.1
    assert d < 1e-4
