#!/usr/bin/env bash
# CPU time per generated token of SmolLM2-135M files (names as bench/smollm2_files.sh's file_of),
# one thread: the process's user + sys time with -n 65 minus the same with -n 1, over 64 tokens.
# CPU time, unlike tokens/s, barely moves with the load of a shared machine. Each file REPS times
# (2), the files alternated.
#   bench/token_cpu.sh NAME...        e.g. bench/token_cpu.sh f32 q8_0 lb3_im plan-3.0
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/smollm2_files.sh
p="The history of the city began in the early"
echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores; commit" \
  "$(git rev-parse --short HEAD); load: $(uptime | sed 's/.*load average: //')"
cpu() { awk '{print $1 + $2}' "$1"; }
for rep in $(seq "${REPS:-2}"); do
  for t in "$@"; do
    f=$(file_of "$t")
    /usr/bin/time -f '%U %S' -o "$cache/cpu1" build/mixq generate "$f" -p "$p" -n 1 --temp 0 -t 1 >/dev/null 2>&1
    /usr/bin/time -f '%U %S' -o "$cache/cpu65" build/mixq generate "$f" -p "$p" -n 65 --temp 0 -t 1 >/dev/null 2>&1
    echo "$t: $(python3 -c "print(f'{($(cpu "$cache/cpu65") - $(cpu "$cache/cpu1")) / 64 * 1000:.1f}')") ms CPU per token" \
      "(n=1 $(cpu "$cache/cpu1") s, n=65 $(cpu "$cache/cpu65") s)"
  done
done
