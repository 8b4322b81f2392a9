#!/usr/bin/env bash
# mixq against llama.cpp on the same GGUF files, side by side in one run: llama.cpp's llama-bench
# and mixq's bench/decode.cpp (which measures as llama-bench does: pp = a batch of P random tokens,
# tg = N tokens one at a time), 1 and 2 threads, and the ratio mixq / llama.cpp of each rate. Then
# the memory bandwidth (bench/membw.cpp) and the generation rate it allows for each file (a decoded
# token reads about the whole file: every matrix, the tied embedding/output included).
#   bench/vs_llamacpp.sh [MODEL.gguf ...]
# Default models: SmolLM2-135M as Q4_K_M, Q8_0 and Q4_1 (the PyPI Q4_1 file from
# scripts/fetch_models.sh; the others quantized from its F32 dequantization with mixq quantize,
# cached in .cache/bench), and mixq's measured plan of llama.cpp-loadable types at the Q4_K_M
# file's size (bench/smollm2_files.sh, plan_sized_as). LLAMA_BENCH=path/to/llama-bench (default: the oracle build in
# ~/.cache/mixq/oracles/llama.cpp-build, see docs/BENCHMARKS.md); THREADS="1 2"; GEN=128 (tg sizes,
# e.g. GEN="64 128");
# PROMPT=512; REPS=3; BUILD=build (mixq's build folder); ATTENTION=f16 (mixq's attention mode: f16,
# its default, or tiled, the F32 tiled path llama.cpp runs for prompt batches). Without llama-bench, only mixq's rates are printed.
set -euo pipefail
cd "$(dirname "$0")/.."
llama_bench=${LLAMA_BENCH:-$HOME/.cache/mixq/oracles/llama.cpp-build/bin/llama-bench}
threads=${THREADS:-1 2}
gen=${GEN:-128}
prompt=${PROMPT:-512}
reps=${REPS:-3}
attention=${ATTENTION:-f16}
build=${BUILD:-build}
decode=$build/bench/mixq_bench_decode
membw=$build/bench/mixq_bench_membw
[ -x "$decode" ] && [ -x "$membw" ] || { echo "build first: ninja -C $build mixq_bench_decode mixq_bench_membw" >&2; exit 1; }

models=("$@")
if [ ${#models[@]} -eq 0 ]; then
  cache=.cache/bench
  mkdir -p "$cache"
  q41=$(scripts/fetch_models.sh 2>/dev/null | sed -n 's/^MIXQ_SMOLLM2_GGUF=//p')
  [ -n "$q41" ] || { echo "no SmolLM2 file (scripts/fetch_models.sh could not fetch it)" >&2; exit 1; }
  f32=$cache/smollm2-135m-f32.gguf
  [ -f "$f32" ] || "$build"/mixq convert "$q41" "$f32" --outtype f32 >/dev/null
  [ -f "$cache/smollm2-135m-Q4_K_M.gguf" ] || "$build"/mixq quantize "$f32" "$cache/smollm2-135m-Q4_K_M.gguf" Q4_K_M >/dev/null
  [ -f "$cache/smollm2-135m-q8_0.gguf" ] || "$build"/mixq quantize "$f32" "$cache/smollm2-135m-q8_0.gguf" q8_0 >/dev/null
  # mixq's measured plan of llama.cpp-loadable types at the size of the Q4_K_M file.
  # shellcheck source=bench/smollm2_files.sh
  plan=$(. bench/smollm2_files.sh; plan_sized_as "$cache/smollm2-135m-Q4_K_M.gguf" plan-Q4_K_M-size)
  models=("$cache/smollm2-135m-Q4_K_M.gguf" "$cache/smollm2-135m-q8_0.gguf" "$q41" "$plan")
fi

echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores; load:$(uptime | sed 's/.*load average://')"
echo "mixq $(git rev-parse --short HEAD 2>/dev/null || echo '?'), kernels: ${MIXQ_KERNELS:-best}, attention: $attention; llama-bench: $llama_bench"
have_llama=0
[ -x "$llama_bench" ] && have_llama=1

# llama-bench's mean rate for one test: llama_rate MODEL THREADS P N
llama_rate() {
  "$llama_bench" -m "$1" -t "$2" -p "$3" -n "$4" -r "$reps" -o json 2>/dev/null |
    python3 -c 'import json,sys; r=json.load(sys.stdin); print("%.1f %.1f" % (r[0]["avg_ts"], r[0]["stddev_ts"]))'
}

bw_out=$("$membw" 256 $threads)
for m in "${models[@]}"; do
  bytes=$(stat -L -c %s "$m")
  echo "== $(basename "$m") ($bytes bytes)"
  for t in $threads; do
    tests=("pp $prompt 0")
    for g in $gen; do tests+=("tg 0 $g"); done
    for test in "${tests[@]}"; do
      read -r kind p n <<< "$test"
      size=$([ "$kind" = pp ] && echo "$p" || echo "$n")
      mine=$("$decode" "$m" -t "$t" -p "$p" -n "$n" -r "$reps" -a "$attention" | sed -E 's/.*: ([0-9.]+) \+- ([0-9.]+) tok\/s/\1 \2/')
      read -r mr msd <<< "$mine"
      if [ "$have_llama" = 1 ]; then
        read -r lr lsd <<< "$(llama_rate "$m" "$t" "$p" "$n")"
        ratio=$(python3 -c "print('%.2f' % ($mr / $lr))")
        printf '%s%-4s t=%s  mixq %8.1f +- %5.1f   llama.cpp %8.1f +- %5.1f   ratio %s\n' "$kind" "$size" "$t" "$mr" "$msd" "$lr" "$lsd" "$ratio"
      else
        printf '%s%-4s t=%s  mixq %8.1f +- %5.1f\n' "$kind" "$size" "$t" "$mr" "$msd"
      fi
    done
  done
  echo "$bw_out" | while read -r line; do
    t=$(echo "$line" | sed -E 's/membw t=([0-9]+):.*/\1/')
    gbs=$(echo "$line" | sed -E 's/.*read ([0-9.]+) GB\/s.*/\1/')
    python3 -c "print('bandwidth bound t=$t: read $gbs GB/s / $bytes bytes per token = %.0f tok/s' % ($gbs * 1e9 / $bytes))"
  done
done
echo "$bw_out"
echo "load after:$(uptime | sed 's/.*load average://')"
