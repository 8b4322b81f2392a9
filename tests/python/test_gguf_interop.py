"""mixq's GGUF files against the `gguf` Python package (llama.cpp's own reader), an independent
implementation of the format and of every GGML dequantizer."""
import json

import gguf
import numpy as np
import pytest

from conftest import MIXQ, REPO, TYPE_ZOO, require_shared, run

# The GGML types the core issue requires mixq to write.
REQUIRED = {"F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K",
            "IQ4_NL", "IQ4_XS"}

VOCAB_FILES = ["gguf-vocab/ggml-vocab-llama-spm.gguf", "gguf-vocab/ggml-vocab-gpt-2.gguf"]
MODEL_FILES = ["stories260K/stories260K-f32.llamacpp.gguf", "reference-figures/stories260K-calib40.imatrix.gguf"]


def field_value(field):
    """A metadata value as plain Python, float32 values as float32 so they compare exactly."""
    value = field.contents()
    if field.types[-1] == gguf.GGUFValueType.FLOAT32:
        return np.float32(value).tolist() if not isinstance(value, list) else np.float32(value).tolist()
    return value


def field_type(field):
    names = {t: t.name for t in gguf.GGUFValueType}
    mixq_names = {"UINT8": "u8", "INT8": "i8", "UINT16": "u16", "INT16": "i16", "UINT32": "u32", "INT32": "i32",
                  "FLOAT32": "f32", "BOOL": "bool", "STRING": "str", "ARRAY": "arr", "UINT64": "u64",
                  "INT64": "i64", "FLOAT64": "f64"}
    parts = [mixq_names[names[t]] for t in field.types]
    return parts[0] + "".join(f"[{p}]" for p in parts[1:])


def user_fields(reader):
    return {k: f for k, f in reader.fields.items() if not k.startswith("GGUF.")}


def test_gguf_package_dequantizes_mixq_files_like_mixq(tmp_path):
    zoo = tmp_path / "zoo.gguf"
    run(TYPE_ZOO, zoo)
    dequant = tmp_path / "zoo-f32.gguf"
    run(MIXQ, "convert", zoo, dequant, "--outtype", "f32")

    written = gguf.GGUFReader(zoo)
    mixq_values = {t.name: np.asarray(t.data) for t in gguf.GGUFReader(dequant).tensors}
    source = mixq_values["zoo.source"]
    seen = set()
    for t in written.tensors:
        if t.name == "zoo.source":
            continue
        expected_type = t.name.removeprefix("zoo.").upper()
        assert t.tensor_type.name == expected_type, f"{t.name} has type {t.tensor_type.name}"
        theirs = gguf.quants.dequantize(t.data, t.tensor_type).reshape(source.shape)
        ours = mixq_values[t.name]
        assert ours.dtype == np.float32 and ours.shape == source.shape
        # The gguf package's numpy dequantizers follow ggml's formulas in float32; allow only the
        # last-bit differences of a different evaluation order.
        np.testing.assert_allclose(ours, theirs, rtol=2e-6, atol=1e-9, err_msg=t.name)
        exact = np.mean(ours.view(np.uint32) == theirs.astype(np.float32).view(np.uint32))
        rmse = float(np.sqrt(np.mean((ours.astype(np.float64) - source) ** 2)))
        print(f"{expected_type:8s} bit-identical {exact:7.2%}  rmse vs source {rmse:.3g}")
        seen.add(expected_type)
    missing = REQUIRED - seen
    assert not missing, f"mixq cannot yet write: {sorted(missing)}"


@pytest.mark.parametrize("rel", MODEL_FILES + VOCAB_FILES)
def test_mixq_reads_metadata_intact(rel):
    path = require_shared(rel)
    reader = gguf.GGUFReader(path)
    report = json.loads(run(MIXQ, "inspect", "--json", path))
    fields = user_fields(reader)
    assert list(report["metadata"].keys()) == list(fields.keys())
    for key, field in fields.items():
        assert report["metadata_types"][key] == field_type(field), key
        ours = report["metadata"][key]
        theirs = field_value(field)
        if field.types[-1] == gguf.GGUFValueType.FLOAT32:
            ours = np.float32(ours).tolist()
        assert ours == theirs, key
    assert [t["name"] for t in report["tensors"]] == [t.name for t in reader.tensors]
    for ours, theirs in zip(report["tensors"], reader.tensors):
        assert ours["shape"] == [int(x) for x in theirs.shape]
        assert ours["type_id"] == int(theirs.tensor_type)
        assert ours["bytes"] == int(theirs.n_bytes)
        assert reader.data_offset + ours["offset"] == theirs.data_offset


@pytest.mark.parametrize("rel", MODEL_FILES + VOCAB_FILES)
def test_rewrite_reads_identically(rel, tmp_path):
    path = require_shared(rel)
    out = tmp_path / "rewritten.gguf"
    run(MIXQ, "convert", path, out)
    a, b = gguf.GGUFReader(path), gguf.GGUFReader(out)
    fa, fb = user_fields(a), user_fields(b)
    assert list(fa) == list(fb)
    for key in fa:
        assert fa[key].types == fb[key].types, key
        assert fa[key].contents() == fb[key].contents(), key
    assert [(t.name, list(t.shape), t.tensor_type) for t in a.tensors] == \
           [(t.name, list(t.shape), t.tensor_type) for t in b.tensors]
    for ta, tb in zip(a.tensors, b.tensors):
        assert np.array_equal(np.asarray(ta.data).view(np.uint8), np.asarray(tb.data).view(np.uint8)), ta.name
    # GGML's writer and mixq's lay files out the same way, so the bytes are the same too.
    assert path.read_bytes() == out.read_bytes()


def test_f16_conversion_matches_numpy(tmp_path):
    path = require_shared("stories260K/stories260K-f32.llamacpp.gguf")
    out = tmp_path / "f16.gguf"
    run(MIXQ, "convert", path, out, "--outtype", "f16")
    src, dst = gguf.GGUFReader(path), gguf.GGUFReader(out)
    assert int(dst.fields["general.file_type"].contents()) == 1
    for ts, td in zip(src.tensors, dst.tensors):
        if len(ts.shape) == 1:
            assert td.tensor_type == gguf.GGMLQuantizationType.F32, td.name
            continue
        assert td.tensor_type == gguf.GGMLQuantizationType.F16, td.name
        # numpy's float16 cast rounds to nearest even, as ggml does.
        assert np.array_equal(np.asarray(td.data).view(np.uint16), np.asarray(ts.data).astype(np.float16).view(np.uint16))


def test_outlier_columns_layout(tmp_path):
    """quantize --outliers: the gguf package reads the companion tensors, and they hold what
    formats/outliers.h says: ascending column indices and those columns of the source in f16."""
    src = REPO / "assets" / "stories260K" / "stories260K-f32.gguf"
    plain, out = tmp_path / "q4_0.gguf", tmp_path / "q4_0-outliers.gguf"
    run(MIXQ, "quantize", src, plain, "q4_0", "--pure")
    run(MIXQ, "quantize", src, out, "q4_0", "--pure", "--outliers", "4")
    source = {t.name: np.asarray(t.data) for t in gguf.GGUFReader(src).tensors}
    baseline = {t.name: t for t in gguf.GGUFReader(plain).tensors}
    reader = gguf.GGUFReader(out)
    assert int(reader.fields["mixq.outlier_columns"].contents()) == 4
    tensors = {t.name: t for t in reader.tensors}
    checked = 0
    for name, t in tensors.items():
        if name.endswith((".outlier_cols", ".outlier_vals")) or f"{name}.outlier_cols" not in tensors:
            continue
        cols = np.asarray(tensors[f"{name}.outlier_cols"].data)
        vals = np.asarray(tensors[f"{name}.outlier_vals"].data)
        assert tensors[f"{name}.outlier_cols"].tensor_type == gguf.GGMLQuantizationType.I32
        assert tensors[f"{name}.outlier_vals"].tensor_type == gguf.GGMLQuantizationType.F16
        x = source[name]
        assert cols.shape == (4,) and np.all(np.diff(cols) > 0) and cols[-1] < x.shape[1]
        assert vals.shape == (x.shape[0], 4)
        np.testing.assert_array_equal(vals, x[:, cols].astype(np.float16), err_msg=name)
        main = gguf.quants.dequantize(t.data, t.tensor_type).reshape(x.shape)
        # The outlier columns were zeroed before quantizing (q4_0 stores 0 exactly).
        np.testing.assert_array_equal(main[:, cols], 0, err_msg=name)
        merged = main.copy()
        merged[:, cols] = vals
        ref = baseline[name]
        plain_err = np.sum((gguf.quants.dequantize(ref.data, ref.tensor_type).reshape(x.shape) - x) ** 2)
        assert np.sum((merged - x) ** 2) < plain_err, name
        checked += 1
    assert checked >= 20
