#!/usr/bin/env bash
# Quantization throughput against llama-quantize, side by side in one run: both quantize the same
# F32 GGUF to the same type with the same thread count, interleaved (llama.cpp, mixq, llama.cpp,
# mixq, ...), and the ratio llama-quantize seconds / mixq seconds is printed per type and thread
# count (median of the repetitions; > 1 means mixq is faster). Wall time of the whole command
# (reading, quantizing, writing; mixq also fsyncs its output, llama-quantize does not). Only ratios
# measured in one run mean anything on a shared machine; the load is printed at start and end.
#   bench/quantize_speed.sh [MODEL_F32.gguf]
# Default model: SmolLM2-135M F32 (the dequantization of the PyPI Q4_1 file, as in
# bench/quantize_model.sh and bench/vs_llamacpp.sh), cached in .cache/bench.
# LLAMA_QUANTIZE=path (default: the oracle build in ~/.cache/mixq/oracles/llama.cpp-build, see
# docs/BENCHMARKS.md); TYPES="Q4_K_M Q3_K_M Q6_K IQ4_XS Q8_0"; THREADS="1 2"; REPS=3.
# SmolLM2's rows are 576 long: only its 1536-wide ffn_down rows fill 256-value k-quant blocks, so
# both tools fall back to q5_0 / q4_0 / iq4_nl / q8_0 for most tensors (llama.cpp's fallback table).
set -euo pipefail
cd "$(dirname "$0")/.."
llama_quantize=${LLAMA_QUANTIZE:-$HOME/.cache/mixq/oracles/llama.cpp-build/bin/llama-quantize}
types=${TYPES:-Q4_K_M Q3_K_M Q6_K IQ4_XS Q8_0}
threads=${THREADS:-1 2}
reps=${REPS:-3}
mixq=build/mixq
[ -x "$mixq" ] || { echo "build first: ninja -C build" >&2; exit 1; }
[ -x "$llama_quantize" ] || { echo "no llama-quantize at $llama_quantize (set LLAMA_QUANTIZE)" >&2; exit 1; }
cache=.cache/bench
mkdir -p "$cache"
model=${1:-}
if [ -z "$model" ]; then
  model=$cache/smollm2-135m-f32.gguf
  if [ ! -f "$model" ]; then
    q41=$(scripts/fetch_models.sh 2>/dev/null | sed -n 's/^MIXQ_SMOLLM2_GGUF=//p')
    [ -n "$q41" ] || { echo "no SmolLM2 file (scripts/fetch_models.sh could not fetch it)" >&2; exit 1; }
    "$mixq" convert "$q41" "$model" --outtype f32 >/dev/null
  fi
fi
out_l=$cache/qs-llama.gguf
out_m=$cache/qs-mixq.gguf
trap 'rm -f "$out_l" "$out_m"' EXIT

echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores; load at start:$(uptime | sed 's/.*load average://')"
echo "model: $model ($(stat -c %s "$model") bytes); mixq $(git rev-parse --short HEAD 2>/dev/null || echo '?'); llama-quantize: $llama_quantize"
cat "$model" >/dev/null  # both runs read it from the page cache

seconds() {  # seconds COMMAND...: wall time of COMMAND, output discarded
  local t0 t1
  t0=$(date +%s.%N)
  "$@" >/dev/null 2>&1 || { echo "failed: $*" >&2; exit 1; }
  t1=$(date +%s.%N)
  python3 -c "print(f'{$t1 - $t0:.3f}')"
}

results=$(mktemp)
trap 'rm -f "$out_l" "$out_m" "$results"' EXIT
for rep in $(seq "$reps"); do
  for type in $types; do
    for t in $threads; do
      # Both write a file that does not exist yet. mixq writes a temporary file and renames it over
      # the target (atomic output), so an existing target keeps its page-cache pages until the end
      # and the new ones come from cold memory: on this VM that doubled mixq's system time.
      rm -f "$out_l" "$out_m"
      l=$(seconds "$llama_quantize" "$model" "$out_l" "$type" "$t")
      m=$(seconds "$mixq" quantize "$model" "$out_m" "$type" -t "$t")
      echo "$type $t $l $m" >>"$results"
      echo "rep $rep: $type t=$t llama-quantize $l s, mixq $m s" >&2
    done
  done
done
echo "load at end:$(uptime | sed 's/.*load average://')"
python3 - "$results" <<'EOF'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    ty, t, l, m = line.split()
    rows.setdefault((ty, int(t)), []).append((float(l), float(m)))
print("| type | threads | llama-quantize s (median) | mixq s (median) | ratio llama/mixq (median of per-rep ratios) | min..max ratio |")
print("|---|---|---|---|---|---|")
for (ty, t), v in rows.items():
    r = [l / m for l, m in v]
    print(f"| {ty} | {t} | {statistics.median(l for l, _ in v):.2f} | {statistics.median(m for _, m in v):.2f} | "
          f"{statistics.median(r):.2f} | {min(r):.2f}..{max(r):.2f} |")
EOF
