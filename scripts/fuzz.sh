#!/usr/bin/env bash
# Builds a libFuzzer target (clang, ASan + UBSan) and runs it.
#   scripts/fuzz.sh [SECONDS=60] [TARGET=fuzz_gguf_reader | fuzz_file_readers | fuzz_model | fuzz_whisper_readers]
# fuzz_whisper_readers (whisper.cpp model files, CTranslate2 model.bin) is seeded by fuzz/make_whisper_seeds.py.
# Seeds for fuzz_gguf_reader: fuzz/corpus/ (small GGUFs written by fuzz/make_corpus.py). fuzz_model
# (load as the model the file names, with its tokenizer, two tokens through the forward pass) gets the same
# seeds, among them tiny llama models, plus the bundled stories260K model. fuzz_file_readers
# (importance matrices and stored KLD bases; the first byte picks the reader) is seeded with
# llama.cpp's imatrix from ../shared/data and a small stored base written by mixq when available.
# New inputs go to a scratch copy.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
target=${2:-fuzz_gguf_reader}
CC=clang CXX=clang++ cmake -S . -B build-fuzz -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMIXQ_BUILD_FUZZ=ON \
  -DMIXQ_BUILD_TESTS=OFF -DMIXQ_BUILD_BENCH=OFF -DMIXQ_NATIVE=OFF >/dev/null
ninja -C build-fuzz "$target" >/dev/null
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
max_len=65536
if [ "$target" = fuzz_gguf_reader ]; then
  cp fuzz/corpus/* "$work/" 2>/dev/null || true
elif [ "$target" = fuzz_whisper_readers ]; then
  python3 fuzz/make_whisper_seeds.py "$work"
elif [ "$target" = fuzz_model ]; then
  cp fuzz/corpus/* assets/stories260K/stories260K-f32.gguf "$work/"
  max_len=$(stat -c %s assets/stories260K/stories260K-f32.gguf)
else
  shared=${MIXQ_SHARED_DATA:-../shared/data}
  if [ -f "$shared/reference-figures/stories260K-calib40.imatrix.gguf" ]; then
    { printf '\0'; cat "$shared/reference-figures/stories260K-calib40.imatrix.gguf"; } >"$work/imatrix.seed"
  fi
  if [ -x build/mixq ] && [ -f "$shared/stories260K/stories260K-f32.llamacpp.gguf" ]; then
    head -c 20000 "$shared/wikitext-2-raw/wiki.test.raw" >"$work/text.txt"
    build/mixq kld "$shared/stories260K/stories260K-f32.llamacpp.gguf" --save-base "$work/base.kld" \
      -f "$work/text.txt" -c 32 --chunks 1 >/dev/null 2>&1 || true
    [ -f "$work/base.kld" ] && { printf '\1'; cat "$work/base.kld"; } >"$work/kld.seed"
    rm -f "$work/text.txt" "$work/base.kld"
  fi
fi
build-fuzz/fuzz/"$target" "$work" -max_total_time="$seconds" -max_len="$max_len" -rss_limit_mb=2048 \
  -timeout=10 -print_final_stats=1 2>&1 | grep -E "^(#[0-9]+.*DONE|stat::|INFO: seed|==[0-9]+==ERROR|SUMMARY)" || true
