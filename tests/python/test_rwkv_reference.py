"""mixq's RWKV-4 / 5.2 / 7 forward passes against an independent numpy (float64) implementation.

The weights are read straight from rwkv.cpp's files (its own layout, parsed here: not through
mixq's converter). The numpy graphs are written from the generations' definitions (RWKV-LM):
embedding -> LayerNorm ln0 -> per block [LayerNorm -> time mixing + residual, LayerNorm ->
channel mixing + residual] -> LayerNorm -> head, with token shift, and the WKV recurrences kept
as plain sums in float64 (no exponent tricks). rwkv.cpp stores RWKV-4's decay as -exp(w) and
RWKV-5.2's as exp(-exp(w)).

Two checks: the reference itself reproduces rwkv.cpp's expected logits for the bytes '"in'; and
mixq's log-probabilities over a 128-byte chunk of text (`mixq kld MODEL --save-base`, the scored
second half of the chunk) match the reference's, which exercises the recurrent state far longer
than three tokens. A third test checks the names and shapes of mixq's llama.cpp layout for
RWKV-7 against the gguf package's tables; a fourth loads mixq's llama.cpp-layout files (F32 and
quantized with llama.cpp types) in llama.cpp itself and runs them (llama-bench from the dev-time
oracle build; skipped without it).
"""
import struct

import gguf
import numpy as np
import pytest

from conftest import MIXQ, require_shared, run

N_CTX = 128
BOUND = 2e-4  # max |log p(mixq) - log p(numpy)|: float32 against float64


def read_rwkv_cpp(path):
    """rwkv.cpp's file: header, then tensors (n_dims, name length, type, dims ne0 first, name, data)."""
    b = path.read_bytes()
    magic, version, n_vocab, n_embd, n_layer, _ = struct.unpack_from("<Iiiiii", b, 0)
    assert magic == 0x67676D66
    o, w = 24, {}
    while o < len(b):
        n_dims, name_len, typ = struct.unpack_from("<iii", b, o)
        o += 12
        dims = struct.unpack_from(f"<{n_dims}i", b, o)
        o += 4 * n_dims
        name = b[o:o + name_len].decode()
        o += name_len
        n = int(np.prod(dims))
        assert typ == 0, f"{name}: only FP32 files here"
        w[name] = np.frombuffer(b, np.float32, n, o).astype(np.float64).reshape(tuple(reversed(dims)))
        o += 4 * n
    return n_layer, n_embd, w


def layer_norm(x, g, b, eps=1e-5):
    return (x - x.mean()) / np.sqrt(x.var() + eps) * g + b


def group_norm(x, heads, g, b, eps):
    x = x.reshape(heads, -1)
    x = (x - x.mean(axis=1, keepdims=True)) / np.sqrt(x.var(axis=1, keepdims=True) + eps)
    return x.reshape(-1) * g + b


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


class Rwkv:
    def __init__(self, path):
        self.n_layer, self.n_embd, self.w = read_rwkv_cpp(path)
        w = self.w
        self.version = 7 if "blocks.0.att.r_k" in w else 5 if "blocks.0.att.time_faaaa" in w else 4
        if self.version == 5:
            self.heads = w["blocks.0.att.time_decay"].shape[0]
        elif self.version == 7:
            self.heads = w["blocks.0.att.r_k"].shape[0]
        E = self.n_embd
        self.att_prev = [np.zeros(E) for _ in range(self.n_layer)]
        self.ffn_prev = [np.zeros(E) for _ in range(self.n_layer)]
        S = E // self.heads if self.version != 4 else 0
        self.state = [np.zeros((self.heads, S, S)) if self.version != 4 else (np.zeros(E), np.zeros(E))
                      for _ in range(self.n_layer)]

    def time_mix(self, l, x):
        w, p = self.w, f"blocks.{l}.att."
        prev, self.att_prev[l] = self.att_prev[l], x
        if self.version == 4:
            mix = lambda m: x * w[p + m] + prev * (1 - w[p + m])
            r = sigmoid(w[p + "receptance.weight"] @ mix("time_mix_r"))
            k = w[p + "key.weight"] @ mix("time_mix_k")
            v = w[p + "value.weight"] @ mix("time_mix_v")
            num, den = self.state[l]
            bonus = np.exp(w[p + "time_first"] + k)
            out = (num + bonus * v) / (den + bonus)
            decay = np.exp(w[p + "time_decay"])  # stored -exp(w): per-token factor exp(-exp(w))
            self.state[l] = (decay * num + np.exp(k) * v, decay * den + np.exp(k))
            return w[p + "output.weight"] @ (r * out)
        H = self.heads
        if self.version == 5:
            mix = lambda m: x * w[p + m] + prev * (1 - w[p + m])
            r = (w[p + "receptance.weight"] @ mix("time_mix_r")).reshape(H, -1)
            k = (w[p + "key.weight"] @ mix("time_mix_k")).reshape(H, -1)
            v = (w[p + "value.weight"] @ mix("time_mix_v")).reshape(H, -1)
            g = w[p + "gate.weight"] @ mix("time_mix_g")
            g = g * sigmoid(g)
            decay = w[p + "time_decay"].reshape(H, -1)
            u = w[p + "time_faaaa"].reshape(H, -1)
            kv = k[:, :, None] * v[:, None, :]  # [head, key i, value j]
            s = self.state[l]
            y = np.einsum("hi,hij->hj", r, u[:, :, None] * kv + s)
            self.state[l] = decay[:, :, None] * s + kv
            y = group_norm(y.reshape(-1), H, w[p + "ln_x.weight"], w[p + "ln_x.bias"], 1e-5)
            return w[p + "output.weight"] @ (y * g)
        # RWKV-7
        xx = prev - x
        xr, xw, xk, xv, xa, xg = (x + xx * w[p + "x_rwkvag"][i].reshape(-1) for i in range(6))
        r = w[p + "receptance.weight"] @ xr
        decay = np.exp(-0.606531 * sigmoid(w[p + "w0"].reshape(-1) + w[p + "w2"] @ np.tanh(w[p + "w1"] @ xw)))
        k = w[p + "key.weight"] @ xk
        v = w[p + "value.weight"] @ xv
        a = sigmoid(w[p + "a0"].reshape(-1) + w[p + "a2"] @ (w[p + "a1"] @ xa))
        g = w[p + "g2"] @ sigmoid(w[p + "g1"] @ xg)
        kk = (k * w[p + "k_k"].reshape(-1)).reshape(H, -1)
        kk = kk / np.maximum(np.linalg.norm(kk, axis=1, keepdims=True), 1e-12)
        k = k * (1 + (a - 1) * w[p + "k_a"].reshape(-1))
        if l == 0:
            self.v_first = v
        else:
            v = v + (self.v_first - v) * sigmoid(w[p + "v0"].reshape(-1) + w[p + "v2"] @ (w[p + "v1"] @ xv))
        rh, kh, vh, ah, wh = (t.reshape(H, -1) for t in (r, k, v, a, decay))
        s = self.state[l]  # [head, value i, key j]
        s = s * wh[:, None, :] + np.einsum("hij,hj,hk->hik", s, -kk, kk * ah) + vh[:, :, None] * kh[:, None, :]
        self.state[l] = s
        y = np.einsum("hij,hj->hi", s, rh).reshape(-1)
        y = group_norm(y, H, w[p + "ln_x.weight"], w[p + "ln_x.bias"], 64e-5)
        y = y + ((rh * kh * w[p + "r_k"]).sum(axis=1, keepdims=True) * vh).reshape(-1)
        return w[p + "output.weight"] @ (y * g)

    def channel_mix(self, l, x):
        w, p = self.w, f"blocks.{l}.ffn."
        prev, self.ffn_prev[l] = self.ffn_prev[l], x
        if self.version == 7:
            xk = x + (prev - x) * w[p + "x_k"].reshape(-1)
            return w[p + "value.weight"] @ np.square(np.maximum(w[p + "key.weight"] @ xk, 0))
        xk = x * w[p + "time_mix_k"] + prev * (1 - w[p + "time_mix_k"])
        xr = x * w[p + "time_mix_r"] + prev * (1 - w[p + "time_mix_r"])
        k = np.square(np.maximum(w[p + "key.weight"] @ xk, 0))
        return sigmoid(w[p + "receptance.weight"] @ xr) * (w[p + "value.weight"] @ k)

    def forward(self, token):
        w = self.w
        x = layer_norm(w["emb.weight"][token], w["blocks.0.ln0.weight"], w["blocks.0.ln0.bias"])
        for l in range(self.n_layer):
            b = f"blocks.{l}."
            x = x + self.time_mix(l, layer_norm(x, w[b + "ln1.weight"], w[b + "ln1.bias"]))
            x = x + self.channel_mix(l, layer_norm(x, w[b + "ln2.weight"], w[b + "ln2.bias"]))
        return w["head.weight"] @ layer_norm(x, w["ln_out.weight"], w["ln_out.bias"])


def log_softmax(z):
    z = z - z.max()
    return z - np.log(np.exp(z).sum())


VERSIONS = ["4v0-660K", "5v2-730K", "7v0-834K"]


@pytest.mark.parametrize("ver", VERSIONS)
def test_reference_reproduces_rwkv_cpp(ver):
    model = Rwkv(require_shared(f"rwkv-tiny/tiny-rwkv-{ver}-FP32.bin"))
    expected = np.fromfile(require_shared(f"rwkv-tiny/expected-logits-{ver}.bin"), np.float32)
    for t in b'"in':
        logits = model.forward(t)
    print(f"\n{ver}: numpy vs rwkv.cpp max |diff| {np.abs(logits - expected).max():.3g}")
    assert np.abs(logits - expected).max() < 1e-4


@pytest.mark.parametrize("ver", VERSIONS)
def test_mixq_matches_reference_over_a_chunk(ver, tmp_path):
    src = require_shared(f"rwkv-tiny/tiny-rwkv-{ver}-FP32.bin")
    text = require_shared("wikitext-2-raw/wiki.test.raw").read_bytes()[:2 * N_CTX]
    (tmp_path / "text.txt").write_bytes(text)
    run(MIXQ, "convert", src, tmp_path / "m.gguf")
    run(MIXQ, "kld", tmp_path / "m.gguf", "--save-base", tmp_path / "base.bin", "-f", tmp_path / "text.txt",
        "-c", N_CTX, "--chunks", 1, "-t", 2)
    raw = (tmp_path / "base.bin").read_bytes()
    n_vocab, n_ctx, n_chunks, first = struct.unpack_from("<4I", raw, 12)
    assert (n_vocab, n_ctx, n_chunks) == (256, N_CTX, 1)
    rows = n_ctx - 1 - first
    at = 40 + 4 * n_ctx * n_chunks + 8
    mixq_lp = np.frombuffer(raw, np.float32, rows * n_vocab, at).reshape(rows, n_vocab)
    model = Rwkv(src)
    worst = 0.0
    for pos in range(n_ctx - 1):
        logits = model.forward(text[pos])
        if pos >= first:
            worst = max(worst, float(np.abs(mixq_lp[pos - first] - log_softmax(logits)).max()))
    print(f"\n{ver}: {rows} positions after {first} tokens, max |log p diff| {worst:.3g}")
    assert worst < BOUND


def test_llama_cpp_layout_names_and_shapes(tmp_path):
    src = require_shared("rwkv-tiny/tiny-rwkv-7v0-834K-FP32.bin")
    out = tmp_path / "l.gguf"
    run(MIXQ, "convert", src, out, "--layout", "llama.cpp")
    reader = gguf.GGUFReader(out)
    arch = gguf.MODEL_ARCH.RWKV7
    n_layer, E = 12, 64
    known = {}
    for t in gguf.MODEL_TENSORS[arch]:
        fmt = gguf.TENSOR_NAMES[t]
        for bid in range(n_layer) if "{bid}" in fmt else [None]:
            known[fmt.format(bid=bid)] = t
    names = {t.name: [int(d) for d in t.shape] for t in reader.tensors}
    for name in names:
        base = name.rsplit(".", 1)[0]
        assert base in known, f"{name} is not one of llama.cpp's rwkv7 tensors"
    # Every tensor llama.cpp's rwkv7 loader requires, with its shape (ne0 first).
    d_w, d_a, d_g, d_v = 32, 32, 32, 32
    want = {"token_embd.weight": [E, 256], "token_embd_norm.weight": [E], "token_embd_norm.bias": [E],
            "output_norm.weight": [E], "output_norm.bias": [E], "output.weight": [E, 256]}
    for i in range(n_layer):
        b = f"blk.{i}."
        want.update({b + "attn_norm.weight": [E], b + "attn_norm.bias": [E], b + "attn_norm_2.weight": [E],
                     b + "attn_norm_2.bias": [E], b + "time_mix_w0.weight": [E], b + "time_mix_w1.weight": [E, d_w],
                     b + "time_mix_w2.weight": [d_w, E], b + "time_mix_a0.weight": [E], b + "time_mix_a1.weight": [E, d_a],
                     b + "time_mix_a2.weight": [d_a, E], b + "time_mix_v0.weight": [E],
                     b + "time_mix_v1.weight": [E, d_a if i == 0 else d_v], b + "time_mix_v2.weight": [d_a if i == 0 else d_v, E],
                     b + "time_mix_g1.weight": [E, d_g], b + "time_mix_g2.weight": [d_g, E],
                     b + "time_mix_lerp_fused.weight": [E, 1, 1, 6], b + "time_mix_k_k.weight": [E],
                     b + "time_mix_k_a.weight": [E], b + "time_mix_r_k.weight": [E], b + "time_mix_key.weight": [E, E],
                     b + "time_mix_value.weight": [E, E], b + "time_mix_receptance.weight": [E, E],
                     b + "time_mix_ln.weight": [E], b + "time_mix_ln.bias": [E], b + "time_mix_output.weight": [E, E],
                     b + "channel_mix_lerp_k.weight": [E, 1, 1], b + "channel_mix_key.weight": [E, 4 * E],
                     b + "channel_mix_value.weight": [4 * E, E]})
    assert names == want
    fields = reader.fields
    for key, value in [("rwkv7.wkv.head_size", 64), ("rwkv7.attention.decay_lora_rank", d_w),
                       ("rwkv7.attention.iclr_lora_rank", d_a), ("rwkv7.attention.value_residual_mix_lora_rank", d_v),
                       ("rwkv7.attention.gate_lora_rank", d_g), ("rwkv7.token_shift_count", 2),
                       ("rwkv7.block_count", n_layer), ("rwkv7.embedding_length", E)]:
        assert fields[key].contents() == value, key


def llama_bench():
    """llama.cpp's llama-bench from the dev-time oracle build (docs/BENCHMARKS.md), or MIXQ_LLAMA_BENCH."""
    import os
    import pathlib
    path = pathlib.Path(os.environ.get("MIXQ_LLAMA_BENCH",
                                       pathlib.Path.home() / ".cache/mixq/oracles/llama.cpp-build/bin/llama-bench"))
    if not path.exists():
        pytest.skip(f"llama.cpp's llama-bench not found at {path} (build the oracle as docs/BENCHMARKS.md says, or "
                    "set MIXQ_LLAMA_BENCH)")
    return path


@pytest.mark.parametrize("qtype", ["f32", "q8_0", "q5_1", "q4_0"])
def test_llama_cpp_loads_and_runs_mixq_rwkv7_files(qtype, tmp_path):
    """A file mixq converts to llama.cpp's layout, and quantizes with llama.cpp types, loads in llama.cpp as
    an rwkv7 model of that type and evaluates a prompt and generated tokens there (llama-bench)."""
    import json
    import subprocess
    bench = llama_bench()
    src = require_shared("rwkv-tiny/tiny-rwkv-7v0-834K-FP32.bin")
    f32 = tmp_path / "l-f32.gguf"
    run(MIXQ, "convert", src, f32, "--layout", "llama.cpp")
    model = f32
    if qtype != "f32":
        model = tmp_path / f"l-{qtype}.gguf"
        run(MIXQ, "quantize", f32, model, qtype, "--compat", "llama.cpp")
    r = subprocess.run([str(bench), "-m", str(model), "-p", "8", "-n", "8", "-t", "1", "-r", "1", "-o", "json"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = json.loads(r.stdout)
    assert [(x["n_prompt"], x["n_gen"]) for x in rows] == [(8, 0), (0, 8)]
    for x in rows:
        assert x["model_type"].startswith("rwkv7"), x["model_type"]
        assert qtype.upper() in x["model_type"] or (qtype == "f32" and "F32" in x["model_type"]), x["model_type"]
        assert x["avg_ts"] > 0
