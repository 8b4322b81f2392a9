#!/usr/bin/env bash
# Builds whisper.cpp (the oracle of tests/python/test_whisper.py) from source into a dev-time cache
# outside the checkout; nothing of it is committed. Prints `MIXQ_WHISPER_CPP_BIN=DIR` (the folder of
# whisper-cli and whisper-quantize) on success.
#
# Source, first found:
#   $MIXQ_WHISPER_CPP_SRC      a whisper.cpp source tree
#   $MIXQ_WHISPER_CPP_GIT      a whisper.cpp git directory (bare or not): the pinned commit is exported
#   PyPI's pywhispercpp sdist  (pip download --no-binary pywhispercpp), which bundles a whisper.cpp
#                              tree (pywhispercpp 1.5.1: whisper.cpp 1.8.5; the tests were run on the pinned commit)
# Build: CPU only, GGML_NATIVE=OFF with AVX2/FMA/F16C/AVX-512 named explicitly (GGML_NATIVE=ON also
# enables AMX, which dies with SIGILL on CPUs/VMs that advertise it without supporting it), -j2.
# Cache: $MIXQ_ORACLE_CACHE (default ~/.cache/mixq/oracles)/whisper.cpp-{src,build}.
set -euo pipefail
pinned=233fe1fc9b48a09e361d3594520838ca266537fe
cache=${MIXQ_ORACLE_CACHE:-$HOME/.cache/mixq/oracles}
src=$cache/whisper.cpp-src
build=$cache/whisper.cpp-build
jobs=${MIXQ_JOBS:-2}
mkdir -p "$cache"

if [ -x "$build/bin/whisper-cli" ] && [ -x "$build/bin/whisper-quantize" ]; then
  echo "MIXQ_WHISPER_CPP_BIN=$build/bin"
  exit 0
fi

if [ -n "${MIXQ_WHISPER_CPP_SRC:-}" ]; then
  src=$MIXQ_WHISPER_CPP_SRC
elif [ ! -f "$src/CMakeLists.txt" ]; then
  rm -rf "$src.part" && mkdir -p "$src.part"
  if [ -n "${MIXQ_WHISPER_CPP_GIT:-}" ]; then
    git --git-dir="$MIXQ_WHISPER_CPP_GIT" archive "$pinned" | tar -x -C "$src.part"
  else
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    # --no-binary for this package only: the sdist (its build dependencies may still be wheels).
    if ! python3 -m pip download -q --disable-pip-version-check --no-deps --no-binary pywhispercpp -d "$tmp" \
        pywhispercpp >&2; then
      echo "build_whisper_cpp: cannot get whisper.cpp: set MIXQ_WHISPER_CPP_SRC or MIXQ_WHISPER_CPP_GIT, or allow PyPI" >&2
      exit 1
    fi
    tar -xzf "$tmp"/pywhispercpp-*.tar.gz -C "$tmp"
    found=$(find "$tmp" -path '*/whisper.cpp/src/whisper.cpp' | head -1)
    [ -n "$found" ] || { echo "build_whisper_cpp: the pywhispercpp sdist holds no whisper.cpp tree" >&2; exit 1; }
    cp -a "$(dirname "$(dirname "$found")")/." "$src.part"
  fi
  mv "$src.part" "$src"
fi

cmake -S "$src" -B "$build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
  -DWHISPER_BUILD_TESTS=OFF -DWHISPER_BUILD_SERVER=OFF -DWHISPER_SDL2=OFF -DWHISPER_CURL=OFF \
  -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=ON \
  -DGGML_OPENMP=OFF >&2
cmake --build "$build" -j "$jobs" --target whisper-cli whisper-quantize >&2
echo "MIXQ_WHISPER_CPP_BIN=$build/bin"
