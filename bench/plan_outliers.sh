#!/usr/bin/env bash
# Does offering outlier columns to the plan pay on SmolLM2-135M? One measurement with outlier
# candidates (mixq measure --outliers K), then at each budget the plan with them and the plan
# without them (mixq plan --no-outliers), each quantized and scored by mean KLD against the F32
# reference on the first 20 chunks of the evaluation part (as bench/outliers.sh).
#   bench/plan_outliers.sh [K] [BUDGETS]
# K defaults to 8; BUDGETS (bytes) default to llama.cpp's Q4_K_M / Q3_K_M / Q2_K files of SmolLM2
# with an imatrix (docs/BENCHMARKS.md). Needs bench/outliers.sh's imatrix and base run.
# MODES="with" (or "without") scores one kind of plan only. MEASURE_OPTS adds measure options (e.g. "--probe-group 1 --error-rows 0": the measurement before
# issue 16); CHUNKS the probes' calibration chunks (default 2); TAG names the measurement and the CSV apart (measurement-oK$TAG.json, plans$TAG.csv).
# Appends to .cache/bench/outliers/plans$TAG.csv; the measurement's time per stage is in its log.
set -euo pipefail
cd "$(dirname "$0")/.."
k=${1:-8}
budgets=${2:-105454432 93510496 88202080}
threads=${THREADS:-2}
out=.cache/bench/outliers
f32=.cache/bench/smollm2-135m-f32.gguf
im=$out/smollm2.imatrix.gguf
for f in "$f32" "$im" "$out/base.kldbase" "$out/calib.raw" "$out/eval.raw"; do
  [ -f "$f" ] || { echo "missing $f: run bench/outliers.sh first" >&2; exit 1; }
done
tag=${TAG:-}
read -r -a measure_opts <<< "${MEASURE_OPTS:-}"
m=$out/measurement-o$k$tag.json
if [ ! -f "$m" ]; then
  # The reference is a dequantized Q4_1 file: q4_1/q5_1 would reproduce it exactly (BENCHMARKS.md).
  /usr/bin/time -f "%e s wall, %U s user, %S s system" -o "$out/measure-time$tag.txt" build/mixq measure "$f32" -f "$out/calib.raw" \
    --imatrix "$im" --chunks "${CHUNKS:-2}" --probes 1 --outliers "$k" -t "$threads" -o "$m" "${measure_opts[@]}" \
    --types f32,f16,bf16,q4_0,q5_0,q8_0,q2_k,q3_k,q4_k,q5_k,q6_k,iq4_nl,iq4_xs,nf4,i8_row,i8_mm,lb3,lb2 \
    2> "$out/measure$tag.log" | tee -a "$out/measure$tag.log"
  echo "measure: $(cat "$out/measure-time$tag.txt"), load $(cut -d' ' -f1-3 /proc/loadavg)"
fi
csv=$out/plans$tag.csv
[ -f "$csv" ] || echo "budget,outliers,bytes,outlier_tensors,predicted_kld,mean_kld,kld_error,same_top" > "$csv"
for b in $budgets; do
  for mode in ${MODES:-with without}; do
    opt=()
    [ "$mode" = without ] && opt=(--no-outliers)
    p=$out/plan-$b-$mode
    build/mixq plan "$m" --target-size "$b" "${opt[@]}" -o "$p.json" -q >/dev/null
    build/mixq quantize --plan "$p.json" --imatrix "$im" "$f32" "$p.gguf" -t "$threads" >/dev/null
    j=$(build/mixq kld "$p.gguf" --base-logits "$out/base.kldbase" -f "$out/eval.raw" -t "$threads" --json 2>/dev/null)
    python3 - "$b" "$mode" "$p.gguf" "$p.json" "$j" >> "$csv" <<'EOF'
import json, os, sys
b, mode, path, plan, j = sys.argv[1:6]
j = json.loads(j)
p = json.load(open(plan))
n = sum(1 for t in p["tensors"] if t.get("outliers", 0) > 0)
print(f"{b},{mode},{os.path.getsize(path)},{n},{p['predicted_kld']:.6f},{j['kld']['mean']:.6f},"
      f"{j['kld']['error']:.6f},{j['same_top']['fraction']:.5f}")
EOF
    tail -1 "$csv"
    rm -f "$p.gguf"
  done
done
