#!/usr/bin/env bash
# Quality per byte on the tiny RWKV models (../shared/data/rwkv-tiny, byte-level): perplexity and KL
# divergence against the F32 model on the wiki evaluation split, for uniform types, the documents'
# two boundary presets, and mixq's measured plans (imatrix + measurement on the calibration split)
# at the presets' sizes. Prints a CSV per model and the markdown table rows; draw the KLD-vs-size plot with
#   bench/plot_rwkv_quality.py OUT.svg .cache/bench/rwkv/*/results.csv
#   bench/rwkv_quality.sh [EVAL_CHUNKS] [MODELS]      (defaults: 0 = the whole split; "7v0-834K 5v2-730K")
# Environment: THREADS (2), CTX (512), MEASURE_ARGS (options for mixq measure), MIXQ (the mixq binary,
# default build/mixq: a copy keeps a long run on one build while the tree is rebuilt).
set -euo pipefail
cd "$(dirname "$0")/.."
eval_chunks=${1:-0}
models=${2:-"7v0-834K 5v2-730K"}
threads=${THREADS:-2}
ctx=${CTX:-512}
root=$PWD
mixq=${MIXQ:-$root/build/mixq}
data=../shared/data
wiki=$data/wikitext-2-raw/wiki.test.raw
out=$root/.cache/bench/rwkv
mkdir -p "$out"
calib=$out/wiki.calib40.raw
evalt=$out/wiki.eval60.raw
# The project's split: bytes [0, 516485) calibrate, [516485, 1290590) evaluate (sha256 725f299f...).
head -c 516485 "$wiki" > "$calib"
tail -c +516486 "$wiki" | head -c 774105 > "$evalt"
sha256sum "$evalt" | grep -q '^725f299f' || { echo "unexpected evaluation split" >&2; exit 1; }
measure_args=${MEASURE_ARGS:---chunks 8 --probes 2}
echo "commit $(git rev-parse --short HEAD), $(date -u +%FT%TZ), load: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), threads=$threads, -c $ctx, eval chunks ${eval_chunks} (0: all)"

for m in $models; do
  d=$out/$m
  mkdir -p "$d"
  f32=$d/f32.gguf
  "$mixq" convert "$data/rwkv-tiny/tiny-rwkv-$m-FP32.bin" "$f32" >/dev/null
  csv=$d/results.csv
  echo "model,config,bytes,mean_kld,kld_error,ppl,same_top,predicted_kld" > "$csv"
  TIMEFORMAT="$m: F32 base run (perplexity + stored logits): %R s wall, %U s user, %S s sys"
  time "$mixq" kld "$f32" --save-base "$d/base.kldbase" -f "$evalt" -c "$ctx" --chunks "$eval_chunks" -t "$threads" >/dev/null
  row() {  # config gguf predicted
    local j
    j=$("$mixq" kld "$2" --base-logits "$d/base.kldbase" -f "$evalt" -t "$threads" --json 2>/dev/null)
    python3 - "$m" "$1" "$2" "$3" "$j" >> "$csv" <<'PY'
import json, os, sys
model, config, path, pred, j = sys.argv[1:6]
j = json.loads(j)
print(f"{model},{config},{os.path.getsize(path)},{j['kld']['mean']:.4g},{j['kld']['error']:.2g},"
      f"{j['ppl_model']['value']:.4f},{j['same_top']['fraction']:.5f},{pred}")
PY
    tail -1 "$csv"
  }
  row f32 "$f32" ""
  for t in f16 q8_0 q5_1 q4_k nf4 i8_row; do
    "$mixq" quantize "$f32" "$d/$t.gguf" "$t" >/dev/null
    row "$t" "$d/$t.gguf" ""
  done
  "$mixq" convert "$data/rwkv-tiny/tiny-rwkv-$m-FP16.bin" "$d/rwkvcpp-fp16.gguf" >/dev/null
  row "rwkv.cpp FP16 file" "$d/rwkvcpp-fp16.gguf" ""
  # The documents' two rules: boundary layers (first and last two, and the head) at q6_k with the
  # middle at q4_k; boundary layers at int8 with the middle at nf4.
  "$mixq" quantize "$f32" "$d/boundary-q4_k-q6_k.gguf" boundary:q4_k:q6_k >/dev/null
  row "boundary:q4_k:q6_k" "$d/boundary-q4_k-q6_k.gguf" ""
  "$mixq" quantize "$f32" "$d/boundary-nf4-i8_row.gguf" boundary:nf4:i8_row >/dev/null
  row "boundary:nf4:i8_row" "$d/boundary-nf4-i8_row.gguf" ""
  # mixq's measured plans at the presets' sizes (imatrix and measurement on the calibration part).
  [ -f "$d/calib.imatrix.gguf" ] || "$mixq" imatrix "$f32" -f "$calib" -o "$d/calib.imatrix.gguf" -c "$ctx" -t "$threads" >/dev/null 2>&1
  start=$(date +%s)
  # shellcheck disable=SC2086
  [ -f "$d/measurement.json" ] || "$mixq" measure "$f32" -f "$calib" --imatrix "$d/calib.imatrix.gguf" -c "$ctx" \
    $measure_args -t "$threads" -o "$d/measurement.json" >/dev/null
  echo "$m: measure took $(( $(date +%s) - start )) s"
  for p in boundary-q4_k-q6_k boundary-nf4-i8_row q8_0; do
    "$mixq" plan "$d/measurement.json" --target-size-of "$d/$p.gguf" -o "$d/plan-$p.json" >/dev/null
    "$mixq" quantize --plan "$d/plan-$p.json" --imatrix "$d/calib.imatrix.gguf" "$f32" "$d/plan-$p.gguf" >/dev/null
    pred=$(python3 -c "import json; print(f\"{json.load(open('$d/plan-$p.json'))['predicted_kld']:.6f}\")")
    row "mixq plan at $p size" "$d/plan-$p.gguf" "$pred"
  done
done
echo
echo "| model | config | bytes | mean KLD | PPL | same top token | predicted KLD |"
echo "|---|---|---|---|---|---|---|"
for m in $models; do
  tail -n +2 "$out/$m/results.csv" | while IFS=, read -r model config bytes kld err ppl top pred; do
    printf '| %s | %s | %s | %s ± %s | %s | %.2f%% | %s |\n' "$model" "$config" "$bytes" "$kld" "$err" "$ppl" \
      "$(python3 -c "print(100*$top)")" "${pred:-—}"
  done
done
