#!/usr/bin/env bash
# Quantization throughput against llama-quantize, side by side in one run: both quantize the same
# F32 GGUF to the same type with the same thread count, interleaved (llama.cpp, mixq, then mixq,
# llama.cpp in the next repetition, ...), and the ratio llama-quantize seconds / mixq seconds is
# printed per type and thread count (> 1: mixq is faster), for wall time (the whole command:
# reading, quantizing, writing; mixq also fsyncs its output, llama-quantize does not) and for CPU
# time (user + system, steadier on a loaded machine). Only ratios measured in one run mean anything
# on a shared machine; the load is printed at start and end.
#   bench/quantize_speed.sh [MODEL_F32.gguf]
# Default model: SmolLM2-135M F32 (the dequantization of the PyPI Q4_1 file, as in
# bench/quantize_model.sh and bench/vs_llamacpp.sh), cached in .cache/bench.
# LLAMA_QUANTIZE=path (default: the oracle build in ~/.cache/mixq/oracles/llama.cpp-build, see
# docs/BENCHMARKS.md); MIXQ=path (default build/mixq; e.g. an older build to compare);
# TYPES="Q4_K_M Q3_K_M Q6_K IQ4_XS Q8_0"; THREADS="1 2"; REPS=3.
# SmolLM2's rows are 576 long: only its 1536-wide ffn_down rows fill 256-value k-quant blocks, so
# both tools fall back to q5_0 / q4_0 / iq4_nl / q8_0 for most tensors (llama.cpp's fallback table).
set -euo pipefail
cd "$(dirname "$0")/.."
llama_quantize=${LLAMA_QUANTIZE:-$HOME/.cache/mixq/oracles/llama.cpp-build/bin/llama-quantize}
types=${TYPES:-Q4_K_M Q3_K_M Q6_K IQ4_XS Q8_0}
threads=${THREADS:-1 2}
reps=${REPS:-3}
mixq=${MIXQ:-build/mixq}
[ -x "$mixq" ] || { echo "no $mixq: build first (ninja -C build)" >&2; exit 1; }
[ -x "$llama_quantize" ] || { echo "no llama-quantize at $llama_quantize (set LLAMA_QUANTIZE)" >&2; exit 1; }
cache=.cache/bench && mkdir -p "$cache"
if [ -n "${1:-}" ]; then model=$1; else source bench/smollm2_files.sh; model=$f32; fi
out_l=$cache/qs-llama.gguf
out_m=$cache/qs-mixq.gguf
results=$(mktemp)
trap 'rm -f "$out_l" "$out_m" "$results"' EXIT

echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores; load at start:$(uptime | sed 's/.*load average://')"
echo "model: $model ($(stat -L -c %s "$model") bytes); mixq $mixq at $(git rev-parse --short HEAD 2>/dev/null || echo '?') (searches: ${MIXQ_KERNELS:-best}); llama-quantize: $llama_quantize"
cat "$model" >/dev/null  # both runs read it from the page cache

# measure OUT COMMAND...: "wall cpu" seconds of COMMAND (cpu = user + system), output discarded.
# OUT is removed right before, so each command writes its fresh file into pages freed just then: on
# this VM, page-cache pages that have sat free for a few seconds cost several times more system
# time to fill, and the tool that ran second used to be handed them.
measure() {
  local out=$1 timing
  shift
  rm -f "$out"
  timing=$(mktemp)
  /usr/bin/time -f "%e %U %S" -o "$timing" "$@" >/dev/null 2>&1 || { echo "failed: $*" >&2; rm -f "$timing"; exit 1; }
  python3 -c "import sys; e, u, s = map(float, open(sys.argv[1]).read().split()[-3:]); print(f'{e:.3f} {u + s:.3f}')" "$timing"
  rm -f "$timing"
}

for rep in $(seq "$reps"); do
  for type in $types; do
    for t in $threads; do
      if [ $((rep % 2)) -eq 1 ]; then
        l=$(measure "$out_l" "$llama_quantize" "$model" "$out_l" "$type" "$t")
        m=$(measure "$out_m" "$mixq" quantize "$model" "$out_m" "$type" -t "$t")
      else
        m=$(measure "$out_m" "$mixq" quantize "$model" "$out_m" "$type" -t "$t")
        l=$(measure "$out_l" "$llama_quantize" "$model" "$out_l" "$type" "$t")
      fi
      echo "$type $t $l $m" >>"$results"
      echo "rep $rep: $type t=$t llama-quantize ${l% *} s (cpu ${l#* } s), mixq ${m% *} s (cpu ${m#* } s)" >&2
    done
  done
done
echo "load at end:$(uptime | sed 's/.*load average://')"
python3 - "$results" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    ty, t, lw, lc, mw, mc = line.split()
    rows.setdefault((ty, int(t)), []).append(tuple(map(float, (lw, lc, mw, mc))))
med = statistics.median
print("| type | threads | llama-quantize s | mixq s | wall ratio llama/mixq: median (min..max) | CPU s llama / mixq | CPU ratio |")
print("|---|---|---|---|---|---|---|")
for (ty, t), v in rows.items():
    rw = [lw / mw for lw, _, mw, _ in v]
    rc = [lc / mc for _, lc, _, mc in v]
    print(f"| {ty} | {t} | {med(x[0] for x in v):.2f} | {med(x[2] for x in v):.2f} | "
          f"{med(rw):.2f} ({min(rw):.2f}..{max(rw):.2f}) | {med(x[1] for x in v):.2f} / {med(x[3] for x in v):.2f} | "
          f"{med(rc):.2f} |")
PY
