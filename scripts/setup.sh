#!/usr/bin/env bash
# Installs what is missing (Debian packages; with --python also a venv with the test oracles),
# then configures and builds mixq in ./build. Safe to run again: it skips what is there.
set -euo pipefail
cd "$(dirname "$0")/.."

want_python=0
[ "${1:-}" = "--python" ] && want_python=1

# Build: compiler, CMake, Ninja. Libraries: CLI11 (command line), nlohmann-json (JSON reports and
# policy files), RE2 (tensor-name regexes, linear time), fmt (formatting), GoogleTest (unit tests),
# Google Benchmark (kernel benchmarks). espeak-ng: speech synthesis for the Whisper test set
# (scripts/make_whisper_testset.py reads wikitext sentences aloud; tests and bench/whisper_quality.sh).
packages=(g++ cmake ninja-build pkg-config libcli11-dev nlohmann-json3-dev libre2-dev libfmt-dev
          libgtest-dev libbenchmark-dev espeak-ng)
[ "$want_python" = 1 ] && ! python3 -c 'import venv, ensurepip' 2>/dev/null && packages+=(python3-venv)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if [ "$want_python" = 1 ]; then
  # Python is only a test oracle: the gguf package (llama.cpp's own GGUF reader), numpy, and jiwer
  # (an independent word error rate for tests/python/test_whisper_eval.py).
  if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import gguf, numpy, pytest, jiwer' 2>/dev/null; then
    echo "setup: creating .venv with gguf, numpy, pytest, jiwer"
    python3 -m venv .venv
    .venv/bin/pip install -q --disable-pip-version-check -r tests/python/requirements.txt
  fi
fi

cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
ninja -C build
