"""mixq's LLaMA forward pass against an independent numpy (float64) implementation.

The model is the real stories260K (llama.cpp's F32 GGUF, read with the `gguf` package). The numpy
code below is written from the architecture's definition only: embeddings; per layer RMSNorm ->
Q/K/V -> RoPE (llama.cpp's "normal" ordering: adjacent pairs) -> causal grouped-query attention ->
output projection + residual -> RMSNorm -> SwiGLU FFN + residual; final RMSNorm; output head.
tests/tools/engine_logits.cpp writes the logits mixq computes for the same tokens.

Error figure per position: max |mixq - numpy| / max |numpy| over that position's logits. Run with
`pytest -s` to see the figures.
"""
import subprocess

import gguf
import numpy as np
import pytest

from conftest import require_shared

MODEL = "stories260K/stories260K-f32.llamacpp.gguf"
F32_BOUND = 1e-4  # F32 KV cache and attention: only float32 rounding separates the two
F16_BOUND = 2e-2  # mixq's default llama.cpp-faithful F16 KV cache / attention numerics


# ---------------------------------------------------------------------------------------------
# The numpy reference


def _meta(reader: gguf.GGUFReader, key: str, default=None):
    field = reader.fields.get(key)
    if field is None:
        if default is None:
            raise KeyError(f"{MODEL}: missing metadata key {key}")
        return default
    return field.contents()


class Reference:
    """The weights of a llama-architecture GGUF as float64, and its forward pass."""

    def __init__(self, path):
        reader = gguf.GGUFReader(path)
        assert _meta(reader, "general.architecture") == "llama"
        self.n_embd = int(_meta(reader, "llama.embedding_length"))
        self.n_layer = int(_meta(reader, "llama.block_count"))
        self.n_head = int(_meta(reader, "llama.attention.head_count"))
        self.n_head_kv = int(_meta(reader, "llama.attention.head_count_kv", self.n_head))
        self.head_dim = self.n_embd // self.n_head
        self.n_rot = int(_meta(reader, "llama.rope.dimension_count", self.head_dim))
        self.freq_base = float(_meta(reader, "llama.rope.freq_base", 10000.0))
        self.eps = float(_meta(reader, "llama.attention.layer_norm_rms_epsilon"))
        self.n_ctx_train = int(_meta(reader, "llama.context_length"))
        self.bos = int(_meta(reader, "tokenizer.ggml.bos_token_id", 1))

        # The reader's numpy shape is GGUF's ne reversed: ne = [n_in, n_out] arrives as
        # (n_out, n_in), one output unit per row, so y = W @ x. Weights are used as stored (the
        # converter's Q/K row permutation for "normal" RoPE stays in place).
        self.w = {}
        for t in reader.tensors:
            assert t.tensor_type == gguf.GGMLQuantizationType.F32, t.name
            shape = tuple(int(d) for d in reversed(t.shape))
            self.w[t.name] = np.asarray(t.data, dtype=np.float32).reshape(shape).astype(np.float64)
        self.embd = self.w["token_embd.weight"]  # (n_vocab, n_embd)
        self.n_vocab = self.embd.shape[0]
        self.out = self.w.get("output.weight", self.embd)
        assert self.embd.shape == (self.n_vocab, self.n_embd)
        assert self.out.shape == (self.n_vocab, self.n_embd)

    def rms_norm(self, x, weight):
        # x: (n_tokens, n_embd)
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + self.eps) * weight

    def rope(self, x, positions):
        """x: (n_tokens, n_heads, head_dim). Rotates (x[2i], x[2i+1]) by pos * base^(-2i/n_rot)."""
        half = self.n_rot // 2
        inv_freq = self.freq_base ** (-2.0 * np.arange(half, dtype=np.float64) / self.n_rot)
        theta = np.asarray(positions, dtype=np.float64)[:, None] * inv_freq[None, :]  # (n_tokens, half)
        cos, sin = np.cos(theta)[:, None, :], np.sin(theta)[:, None, :]
        out = x.copy()
        even, odd = x[..., 0 : self.n_rot : 2], x[..., 1 : self.n_rot : 2]
        out[..., 0 : self.n_rot : 2] = even * cos - odd * sin
        out[..., 1 : self.n_rot : 2] = even * sin + odd * cos
        return out

    def forward(self, tokens):
        """Logits (n_tokens, n_vocab) for tokens at positions 0..n-1, float64."""
        n = len(tokens)
        hd, group = self.head_dim, self.n_head // self.n_head_kv
        pos = np.arange(n)
        x = self.embd[np.asarray(tokens)]  # (n, n_embd)
        causal = np.tril(np.ones((n, n), dtype=bool))
        for layer in range(self.n_layer):
            w = lambda name: self.w[f"blk.{layer}.{name}.weight"]  # noqa: E731
            xn = self.rms_norm(x, w("attn_norm"))
            q = (xn @ w("attn_q").T).reshape(n, self.n_head, hd)
            k = (xn @ w("attn_k").T).reshape(n, self.n_head_kv, hd)
            v = (xn @ w("attn_v").T).reshape(n, self.n_head_kv, hd)
            q, k = self.rope(q, pos), self.rope(k, pos)
            att = np.empty((n, self.n_head, hd))
            for h in range(self.n_head):
                kvh = h // group  # query heads [kvh*group, (kvh+1)*group) share KV head kvh
                scores = (q[:, h, :] @ k[:, kvh, :].T) / np.sqrt(hd)  # (n query, n key)
                scores = np.where(causal, scores, -np.inf)
                scores -= scores.max(axis=1, keepdims=True)
                p = np.exp(scores)
                p /= p.sum(axis=1, keepdims=True)
                att[:, h, :] = p @ v[:, kvh, :]
            x = x + att.reshape(n, self.n_embd) @ w("attn_output").T
            xn = self.rms_norm(x, w("ffn_norm"))
            gate, up = xn @ w("ffn_gate").T, xn @ w("ffn_up").T
            x = x + (gate / (1.0 + np.exp(-gate)) * up) @ w("ffn_down").T
        return self.rms_norm(x, self.w["output_norm.weight"]) @ self.out.T


# ---------------------------------------------------------------------------------------------
# Fixtures and helpers


@pytest.fixture(scope="module")
def model_path():
    return require_shared(MODEL)


@pytest.fixture(scope="module")
def ref(model_path):
    return Reference(model_path)


def make_tokens(ref: Reference, n: int, seed: int) -> list[int]:
    """BOS followed by n-1 ids drawn from a fixed generator in [3, n_vocab)."""
    rng = np.random.default_rng(seed)
    return [ref.bos] + [int(t) for t in rng.integers(3, ref.n_vocab, size=n - 1)]


def mixq_logits(tool, model_path, tmp_path, tokens, *flags) -> np.ndarray:
    out = tmp_path / "logits.bin"
    args = [str(tool), str(model_path), str(out), *flags, *(str(t) for t in tokens)]
    proc = subprocess.run(args, capture_output=True, text=True)
    assert proc.returncode == 0, f"{args[:6]}... failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    raw = np.fromfile(out, dtype="<f4")
    assert raw.size % len(tokens) == 0, f"{raw.size} floats for {len(tokens)} tokens"
    return raw.reshape(len(tokens), -1).astype(np.float64)


def relative_errors(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    """Per position: max |got - want| / max |want|."""
    return np.abs(got - want).max(axis=1) / np.abs(want).max(axis=1)


def check(label, got, want, bound):
    assert got.shape == want.shape, f"{label}: mixq logits {got.shape}, reference {want.shape}"
    assert np.all(np.isfinite(got)), f"{label}: non-finite logits from mixq"
    err = relative_errors(got, want)
    worst = int(np.argmax(err))
    print(f"\n{label}: {len(err)} positions, max relative error {err.max():.3e} at position {worst} "
          f"(bound {bound:.0e}); argmax agreement {np.mean(got.argmax(1) == want.argmax(1)):.3f}")
    bad = np.flatnonzero(err > bound)
    assert bad.size == 0, (
        f"{label}: {bad.size} positions exceed {bound:.0e}; first is position {bad[0]} "
        f"(error {err[bad[0]]:.3e}), worst {err.max():.3e} at position {worst}")
    return err


# ---------------------------------------------------------------------------------------------
# Tests


def test_reference_sanity(ref):
    """The numpy model is a working language model: it is not flat, and positions differ."""
    tokens = make_tokens(ref, 8, seed=7)
    logits = ref.forward(tokens)
    assert logits.shape == (8, ref.n_vocab)
    assert np.all(np.isfinite(logits))
    assert np.std(logits[0]) > 0.1
    assert not np.allclose(logits[3], logits[4])
    # Causality: appending tokens must not change the earlier positions.
    np.testing.assert_allclose(ref.forward(tokens[:5]), logits[:5], rtol=0, atol=1e-12)


def test_f32_attention_matches_reference(ref, model_path, engine_logits_tool, tmp_path):
    tokens = make_tokens(ref, 40, seed=2024)
    got = mixq_logits(engine_logits_tool, model_path, tmp_path, tokens, "--f32-attention")
    check("f32 attention, 40 tokens", got, ref.forward(tokens), F32_BOUND)


def test_f32_attention_split_eval_matches_reference(ref, model_path, engine_logits_tool, tmp_path):
    """Two eval() calls (17 tokens, then 23): the second attends through the KV cache of the first."""
    tokens = make_tokens(ref, 40, seed=2024)
    got = mixq_logits(engine_logits_tool, model_path, tmp_path, tokens, "--f32-attention", "--split", "17")
    check("f32 attention, 40 tokens, --split 17", got, ref.forward(tokens), F32_BOUND)


def test_default_f16_attention_is_the_same_model(ref, model_path, engine_logits_tool, tmp_path):
    tokens = make_tokens(ref, 40, seed=2024)
    got = mixq_logits(engine_logits_tool, model_path, tmp_path, tokens)
    check("default (f16 KV/attention), 40 tokens", got, ref.forward(tokens), F16_BOUND)


def test_f32_attention_full_context(ref, model_path, engine_logits_tool, tmp_path):
    n = min(128, ref.n_ctx_train)
    tokens = make_tokens(ref, n, seed=99)
    got = mixq_logits(engine_logits_tool, model_path, tmp_path, tokens, "--f32-attention", "-t", "3")
    check(f"f32 attention, {n} tokens", got, ref.forward(tokens), F32_BOUND)


@pytest.mark.parametrize("args", [
    [],                                        # nothing
    ["{model}"],                               # no output, no tokens
    ["{model}", "{out}"],                      # no tokens
    ["{model}", "{out}", "1", "x7"],           # not a token id
    ["{model}", "{out}", "1", "-3"],           # negative id
    ["{model}", "{out}", "1", "100000"],       # id past n_vocab
    ["{model}", "{out}", "--split", "2", "1", "5"],   # split must leave tokens for the second call
    ["{model}", "{out}", "-t", "0", "1", "5"],        # no threads
    ["{model}", "{out}", "--bogus", "1"],              # unknown option
    ["{missing}", "{out}", "1"],                       # no such model
])
def test_tool_rejects_bad_arguments(args, model_path, engine_logits_tool, tmp_path):
    subst = {"model": model_path, "out": tmp_path / "o.bin", "missing": tmp_path / "none.gguf"}
    argv = [str(engine_logits_tool)] + [a.format(**subst) for a in args]
    proc = subprocess.run(argv, capture_output=True, text=True)
    assert proc.returncode != 0, argv
    assert "mixq_engine_logits" in proc.stderr or "usage" in proc.stderr, proc.stderr
    assert not (tmp_path / "o.bin").exists()
