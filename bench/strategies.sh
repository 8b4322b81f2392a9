#!/usr/bin/env bash
# The runtime strategies of issue 15 that are options of one model (no second file): emulated
# activation precision (--activations f16|bf16|q8) and attention numerics (--attention f16|tiled
# against f32), on stories260K (a real F32 model) and SmolLM2-135M ("f32": the dequantization of
# PyPI's Q4_1 file). For each: the quality cost as the KL divergence against the model's own
# reference run (mixq kld against a stored base: activations against F32 activations, attention
# against f32 attention), and the speed as generation and prompt tokens/s against the reference
# setting, alternated REPS times in this run (medians). Speculative decoding and the prefill
# model, which need a second file, are bench/speculative.sh and bench/prefill_model.sh.
#   bench/strategies.sh [THREADS]
# CHUNKS_STORIES (40) / CHUNKS_SMOLLM2 (8): evaluation chunks of 512 tokens of wiki.test.raw;
# N (64) generated tokens; REPS (3).
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${1:-2}
n=${N:-64}
reps=${REPS:-3}
source bench/smollm2_files.sh
text=../shared/data/wikitext-2-raw/wiki.test.raw
stories=../shared/data/stories260K/stories260K-f32.llamacpp.gguf
echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores; threads=$threads; n=$n;" \
  "reps=$reps; commit $(git rev-parse --short HEAD); load: $(uptime | sed 's/.*load average: //')"
prompt=
# rates MODEL ARGS...: "P G", prompt and generation tokens/s of one greedy run.
rates() {
  build/mixq generate "$@" -p "$prompt" -n "$gen" --temp 0 -t "$threads" 2>&1 >/dev/null |
    sed -nE 's/^prompt: [0-9]+ tokens, ([0-9.]+) tokens\/s.*generation: [0-9]+ tokens, ([0-9.]+) tokens\/s.*/\1 \2/p'
}
median() { sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
# compare MODEL OPTION REF VALUE...: KLD of each VALUE against REF, then the speed ratios.
compare() {
  local model=$1 opt=$2 ref=$3 chunks=$4
  shift 4
  local base=$cache/strategies-$(basename "$model" .gguf)-$opt-$ref.base
  [ -f "$base" ] || build/mixq kld "$model" --save-base "$base" -f "$text" --chunks "$chunks" -t "$threads" \
    "--$opt" "$ref" >/dev/null 2>&1
  for v in "$@"; do
    local k
    k=$(build/mixq kld "$model" --base-logits "$base" -f "$text" --chunks "$chunks" -t "$threads" "--$opt" "$v" 2>&1 |
      sed -nE 's/^Mean +KLD: +([0-9.e+-]+) ± +([0-9.e+-]+).*/\1 ± \2/p; s/^Same top p: +([0-9.]+) ± +([0-9.]+) %.*/same top \1 ± \2 %/p' | paste -sd';')
    local rp=() rg=() vp=() vg=() i
    for ((i = 0; i < reps; i++)); do
      read -r a b < <(rates "$model" "--$opt" "$ref"); rp+=("$a"); rg+=("$b")
      read -r a b < <(rates "$model" "--$opt" "$v"); vp+=("$a"); vg+=("$b")
    done
    local mrp mrg mvp mvg
    mrp=$(printf '%s\n' "${rp[@]}" | median); mrg=$(printf '%s\n' "${rg[@]}" | median)
    mvp=$(printf '%s\n' "${vp[@]}" | median); mvg=$(printf '%s\n' "${vg[@]}" | median)
    echo "  --$opt $v vs $ref: KLD $k; prompt $mvp vs $mrp tok/s ($(python3 -c "print(f'{$mvp/$mrp:.2f}x')")), generation $mvg vs $mrg tok/s ($(python3 -c "print(f'{$mvg/$mrg:.2f}x')"))"
  done
}
for m in stories smollm2; do
  # Prompts: the first paragraph of wiki.test.raw (128 tokens) on SmolLM2; stories260K's context
  # is 128 tokens, so its prompt is the first 60 bytes (about 40 tokens) and it generates 64.
  if [ "$m" = stories ]; then
    model=$stories chunks=${CHUNKS_STORIES:-40} prompt=$(head -c 60 "$text") gen=$((n < 64 ? n : 64))
  else
    model=$f32 chunks=${CHUNKS_SMOLLM2:-8} prompt=$(head -c 600 "$text") gen=$n
  fi
  echo "$m ($model, $chunks chunks):"
  compare "$model" activations f32 "$chunks" f16 bf16 q8
  compare "$model" attention f32 "$chunks" f16 tiled
done
