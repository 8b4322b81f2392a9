#!/usr/bin/env bash
# Builds (once) and runs tests/oracle/llama_cpp_logits.cpp against the llama.cpp oracle build in the
# dev cache (llama-cpp-python 0.3.36's vendored llama.cpp, commit 0c1e570, built as docs/BENCHMARKS.md
# says into ~/.cache/mixq/oracles/llama.cpp-build): llama.cpp's logits at every position of a
# token sequence. Nothing of llama.cpp enters the repository.
#   scripts/llama_cpp_logits.sh MODEL.gguf TOKENS.i32 OUT.f32 [-t N]
#   scripts/llama_cpp_logits.sh --build    only build; prints the program's path
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cache=${MIXQ_ORACLE_CACHE:-$HOME/.cache/mixq/oracles}
src=${MIXQ_LLAMA_CPP_SRC:-$cache/src/llama_cpp_python-0.3.36/vendor/llama.cpp}
build=$cache/llama.cpp-build
prog=$build/bin/mixq-llama-cpp-logits
harness=$here/tests/oracle/llama_cpp_logits.cpp
for f in "$build/bin/libllama.so" "$src/include/llama.h" "$src/ggml/include/ggml.h"; do
  if [ ! -f "$f" ]; then
    echo "llama_cpp_logits: $f is missing: build the llama.cpp oracle first (docs/BENCHMARKS.md)" >&2
    exit 1
  fi
done
if [ ! -x "$prog" ] || [ "$harness" -nt "$prog" ]; then
  g++ -std=c++17 -O2 -I"$src/include" -I"$src/ggml/include" "$harness" -o "$prog.part" \
    -L"$build/bin" -lllama -lggml -lggml-base -Wl,-rpath,"$build/bin" -lpthread
  mv "$prog.part" "$prog"
fi
if [ "${1:-}" = "--build" ]; then
  echo "$prog"
  exit 0
fi
exec "$prog" "$@"
