#!/usr/bin/env bash
# Builds the libFuzzer target for the GGUF reader (clang, ASan + UBSan) and runs it.
#   scripts/fuzz.sh [SECONDS=60]
# Seeds: fuzz/corpus/ (small GGUFs written by tests/tools); new inputs go to a scratch copy.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
CC=clang CXX=clang++ cmake -S . -B build-fuzz -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMIXQ_BUILD_FUZZ=ON \
  -DMIXQ_BUILD_TESTS=OFF -DMIXQ_BUILD_BENCH=OFF -DMIXQ_NATIVE=OFF >/dev/null
ninja -C build-fuzz fuzz_gguf_reader >/dev/null
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp fuzz/corpus/* "$work/" 2>/dev/null || true
build-fuzz/fuzz/fuzz_gguf_reader "$work" -max_total_time="$seconds" -max_len=65536 -rss_limit_mb=2048 \
  -timeout=10 -print_final_stats=1 2>&1 | grep -E "^(#[0-9]+.*DONE|stat::|INFO: seed|==[0-9]+==ERROR|SUMMARY)" || true
