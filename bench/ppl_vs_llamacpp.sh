#!/usr/bin/env bash
# Whole-file perplexity, mixq against llama.cpp, side by side in one run: llama-perplexity and
# `mixq perplexity` on the same GGUF and text with the same context and threads, each REPS times
# in turn (llama.cpp, mixq, llama.cpp, ...). Prints both PPLs, each run's wall time and CPU time
# (user + system), the best of each, and the ratios llama.cpp / mixq (above 1: mixq is faster).
# On a loaded machine the wall times mostly measure the load: compare the CPU ratio then.
#   bench/ppl_vs_llamacpp.sh [MODEL.gguf [TEXT]]
# Defaults: ../shared/data/stories260K/stories260K-f32.llamacpp.gguf and
# ../shared/data/wikitext-2-raw/wiki.test.raw. CHUNKS=0 (all; N: the first N chunks, both tools);
# THREADS=2; CTX=512; ATTENTION=tiled (mixq's attention mode: tiled is the F32 tiled path whose
# figure matches this llama.cpp build's; f16 is mixq's default, the older reference figures);
# REPS=1; LLAMA_PERPLEXITY=path (default: the oracle build in ~/.cache/mixq/oracles/llama.cpp-build,
# see docs/BENCHMARKS.md); BUILD=build (mixq's build folder).
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:-../shared/data/stories260K/stories260K-f32.llamacpp.gguf}
text=${2:-../shared/data/wikitext-2-raw/wiki.test.raw}
chunks=${CHUNKS:-0}
threads=${THREADS:-2}
ctx=${CTX:-512}
attention=${ATTENTION:-tiled}
reps=${REPS:-1}
build=${BUILD:-build}
llama=${LLAMA_PERPLEXITY:-$HOME/.cache/mixq/oracles/llama.cpp-build/bin/llama-perplexity}
mixq=$build/mixq
[ -x "$mixq" ] || { echo "build first: ninja -C $build mixq" >&2; exit 1; }
[ -x "$llama" ] || { echo "no llama-perplexity at $llama (set LLAMA_PERPLEXITY)" >&2; exit 1; }
[ -f "$model" ] && [ -f "$text" ] || { echo "missing $model or $text" >&2; exit 1; }

echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores; load:$(uptime | sed 's/.*load average://')"
echo "mixq $(git rev-parse --short HEAD 2>/dev/null || echo '?'), kernels: ${MIXQ_KERNELS:-best}, attention: $attention; llama-perplexity: $llama"
echo "model $(basename "$model"), text $(basename "$text"), -c $ctx -t $threads, chunks: $([ "$chunks" = 0 ] && echo all || echo "$chunks")"

chunk_args=()
[ "$chunks" != 0 ] && chunk_args=(--chunks "$chunks")
log=$(mktemp)
times=$(mktemp)
trap 'rm -f "$log" "$times"' EXIT

# run NAME CMD...: runs CMD, prints "NAME ppl wall cpu" (the PPL from "Final estimate: PPL = X").
run() {
  local name=$1
  shift
  /usr/bin/time -o "$times" -f "%e %U %S" "$@" >"$log" 2>&1 || { echo "$name failed:" >&2; tail -5 "$log" >&2; exit 1; }
  local ppl
  ppl=$(sed -n 's/.*Final estimate: PPL = \([0-9.]*\).*/\1/p' "$log" | tail -1)
  read -r wall user sys < <(tail -1 "$times")
  python3 -c "print('$name %s %.2f %.2f' % ('$ppl', $wall, $user + $sys))"
}

results=()
for ((r = 1; r <= reps; ++r)); do
  results+=("$(run llama.cpp "$llama" -m "$model" -f "$text" -c "$ctx" -t "$threads" "${chunk_args[@]}")")
  results+=("$(run mixq "$mixq" perplexity "$model" -f "$text" -c "$ctx" -t "$threads" --attention "$attention" "${chunk_args[@]}")")
done
printf '%s\n' "${results[@]}" | python3 -c '
import sys
rows = [l.split() for l in sys.stdin if l.strip()]
best = {}
for name, ppl, wall, cpu in rows:
    print("%-10s PPL %-10s wall %7.2f s   cpu %7.2f s" % (name, ppl, float(wall), float(cpu)))
    b = best.setdefault(name, [ppl, float(wall), float(cpu)])
    b[1] = min(b[1], float(wall)); b[2] = min(b[2], float(cpu))
l, m = best["llama.cpp"], best["mixq"]
print("best of each: llama.cpp wall %.2f s cpu %.2f s; mixq wall %.2f s cpu %.2f s" % (l[1], l[2], m[1], m[2]))
print("ratio llama.cpp / mixq: wall %.2fx, cpu %.2fx; PPL difference %+.4f" % (l[1] / m[1], l[2] / m[2], float(m[0]) - float(l[0])))
'
echo "load after:$(uptime | sed 's/.*load average://')"
