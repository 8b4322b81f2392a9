#!/usr/bin/env bash
# mixq's generation with and without the interleaved decode layouts (MIXQ_REPACK=0 / 1, the same
# binary), alternated run by run so both see the same machine load: bench/decode.cpp's tg rate and
# its process CPU time per token (min of REPS runs), for each file, 1 and 2 threads, ROUNDS rounds.
#   bench/repack_ab.sh MODEL.gguf ...      (ROUNDS=2 REPS=3 GEN=128 THREADS="1 2" BUILD=build)
set -euo pipefail
cd "$(dirname "$0")/.."
decode=${BUILD:-build}/bench/mixq_bench_decode
[ -x "$decode" ] || { echo "build first: ninja -C ${BUILD:-build} mixq_bench_decode" >&2; exit 1; }
[ $# -gt 0 ] || { echo "usage: bench/repack_ab.sh MODEL.gguf ..." >&2; exit 2; }
echo "mixq $(git rev-parse --short HEAD 2>/dev/null || echo '?'); load:$(uptime | sed 's/.*load average://')"
for round in $(seq 1 "${ROUNDS:-2}"); do
  for f in "$@"; do
    for t in ${THREADS:-1 2}; do
      for rp in 0 1; do
        out=$(MIXQ_REPACK=$rp "$decode" "$f" -t "$t" -p 0 -n "${GEN:-128}" -r "${REPS:-3}" 2>&1 | tr '\n' ' ')
        echo "round=$round $(basename "$f") t=$t repack=$rp load=$(cut -d' ' -f1 /proc/loadavg) $out"
      done
    done
  done
done
