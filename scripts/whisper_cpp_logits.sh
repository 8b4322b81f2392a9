#!/usr/bin/env bash
# Builds (once) and runs tests/oracle/whisper_cpp_logits.cpp against the whisper.cpp library that
# scripts/build_whisper_cpp.sh built in the dev cache: whisper.cpp's decoder logits for the tokens of
# a `mixq transcribe --dump-logits` file. Nothing of whisper.cpp enters the repository.
#   scripts/whisper_cpp_logits.sh MODEL.bin AUDIO.wav TOKENS.bin OUT.bin [--no-flash-attn] [-t N]
#   scripts/whisper_cpp_logits.sh --build    only build; prints the program's path
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cache=${MIXQ_ORACLE_CACHE:-$HOME/.cache/mixq/oracles}
src=${MIXQ_WHISPER_CPP_SRC:-$cache/whisper.cpp-src}
build=$cache/whisper.cpp-build
prog=$build/mixq-whisper-cpp-logits
harness=$here/tests/oracle/whisper_cpp_logits.cpp
for lib in src/libwhisper.a examples/libcommon.a ggml/src/libggml.a ggml/src/libggml-cpu.a ggml/src/libggml-base.a; do
  if [ ! -f "$build/$lib" ]; then
    echo "whisper_cpp_logits: $build/$lib is missing: run scripts/build_whisper_cpp.sh first" >&2
    exit 1
  fi
done
if [ ! -x "$prog" ] || [ "$harness" -nt "$prog" ]; then
  g++ -std=c++17 -O2 -I"$src/include" -I"$src/ggml/include" -I"$src/examples" "$harness" -o "$prog.part" \
    "$build/examples/libcommon.a" "$build/src/libwhisper.a" "$build/ggml/src/libggml.a" \
    "$build/ggml/src/libggml-cpu.a" "$build/ggml/src/libggml-base.a" -lpthread -ldl -lm
  mv "$prog.part" "$prog"
fi
if [ "${1:-}" = "--build" ]; then
  echo "$prog"
  exit 0
fi
exec "$prog" "$@"
