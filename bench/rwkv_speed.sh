#!/usr/bin/env bash
# Speed of the tiny RWKV-7 model (../shared/data/rwkv-tiny/tiny-rwkv-7v0-834K-FP32.bin) in mixq and in
# llama.cpp, on the same files: the FP32 file converted to llama.cpp's rwkv7 layout
# (`mixq convert --layout llama.cpp`) and that file quantized to q8_0 with `--compat llama.cpp`.
# Per file and thread count, prompt processing (one batch of PROMPT random tokens) and generation
# (GEN tokens one at a time), each measured by mixq (build/bench/mixq_bench_decode) and llama.cpp
# (llama-bench) alternately, REPS repetitions after a warm-up, mean +- sd of the wall-clock rate.
# On a shared machine the wall rate depends on the load, so each invocation's CPU time (user + sys,
# the whole process: load, warm-up and repetitions) is printed too, with the tokens it processed
# per CPU second; the load average is printed before each pair.
# Then mixq's whole-split perplexity (the evaluation split of bench/rwkv_quality.sh, -c 512) on the
# F32 file: wall and CPU time, 1 thread.
#   bench/rwkv_speed.sh
# Environment: THREADS ("1 2"), PROMPT (512), GEN (128), REPS (10), BUILD (build), LLAMA_BENCH (default:
# the oracle build in ~/.cache/mixq/oracles/llama.cpp-build), PPL (1: run the perplexity; 0: skip).
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${THREADS:-1 2}
prompt=${PROMPT:-512}
gen=${GEN:-128}
reps=${REPS:-10}
build=${BUILD:-build}
llama_bench=${LLAMA_BENCH:-$HOME/.cache/mixq/oracles/llama.cpp-build/bin/llama-bench}
run_ppl=${PPL:-1}
mixq=$build/mixq
decode=$build/bench/mixq_bench_decode
[ -x "$decode" ] && [ -x "$mixq" ] || { echo "build first: ninja -C $build mixq mixq_bench_decode" >&2; exit 1; }
[ -x /usr/bin/time ] || { echo "needs /usr/bin/time (GNU time) for the CPU times" >&2; exit 1; }
have_llama=0
[ -x "$llama_bench" ] && have_llama=1
data=../shared/data
out=.cache/bench/rwkv-speed
mkdir -p "$out"
f32=$out/7v0-llamacpp-f32.gguf
q8=$out/7v0-llamacpp-q8_0.gguf
"$mixq" convert "$data/rwkv-tiny/tiny-rwkv-7v0-834K-FP32.bin" "$f32" --layout llama.cpp >/dev/null
"$mixq" quantize "$f32" "$q8" q8_0 --compat llama.cpp >/dev/null 2>&1

echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores"
echo "mixq $(git rev-parse --short HEAD), kernels: ${MIXQ_KERNELS:-best}; llama-bench: $llama_bench"
echo "rates: mean +- sd over $reps repetitions (wall clock); cpu: the invocation's user+sys seconds, and the tokens it processed (warm-up included) per CPU second"
timef=$out/time.txt
# cpu_of: user + sys seconds of the last timed invocation
cpu_of() { awk '{printf "%.2f", $1 + $2}' "$timef"; }

for m in "$f32" "$q8"; do
  echo "== $(basename "$m") ($(stat -c %s "$m") bytes)"
  for t in $threads; do
    for test in "pp $prompt 0" "tg 0 $gen"; do
      read -r kind p n <<< "$test"
      size=$([ "$kind" = pp ] && echo "$p" || echo "$n")
      # tokens one invocation processes: a warm-up run and the repetitions (tg: + 1 first token each)
      toks=$([ "$kind" = pp ] && echo $(( (reps + 1) * p )) || echo $(( (reps + 1) * (n + 1) )))
      load=$(cut -d' ' -f1 /proc/loadavg)
      /usr/bin/time -f "%U %S" -o "$timef" "$decode" "$m" -t "$t" -p "$p" -n "$n" -r "$reps" > "$out/mixq.txt"
      mine=$(sed -E 's/.*: ([0-9.]+) \+- ([0-9.]+) tok\/s/\1 \2/' "$out/mixq.txt")
      mcpu=$(cpu_of)
      line=$(printf '%s%-4s t=%s load %5s  mixq %8.1f +- %6.1f (cpu %5.2f s, %6.0f tok/cpu-s)' "$kind" "$size" "$t" "$load" \
        $mine "$mcpu" "$(python3 -c "print($toks / max($mcpu, 1e-3))")")
      if [ "$have_llama" = 1 ]; then
        # llama-bench runs one warm-up of the test, then the repetitions
        /usr/bin/time -f "%U %S" -o "$timef" "$llama_bench" -m "$m" -t "$t" -p "$p" -n "$n" -r "$reps" -o json \
          > "$out/llama.json" 2>/dev/null
        read -r lr lsd <<< "$(python3 -c 'import json,sys; r=json.load(open(sys.argv[1]))[0]; print("%.1f %.1f" % (r["avg_ts"], r["stddev_ts"]))' "$out/llama.json")"
        lcpu=$(cpu_of)
        ltoks=$([ "$kind" = pp ] && echo $(( (reps + 1) * p )) || echo $(( (reps + 1) * n )))
        line+=$(printf '   llama.cpp %8.1f +- %6.1f (cpu %5.2f s, %6.0f tok/cpu-s)   ratio %s' "$lr" "$lsd" "$lcpu" \
          "$(python3 -c "print($ltoks / max($lcpu, 1e-3))")" "$(python3 -c "print('%.2f' % ($(echo $mine | cut -d' ' -f1) / $lr))")")
      fi
      echo "$line"
    done
  done
done

if [ "$run_ppl" = 1 ]; then
  wiki=$data/wikitext-2-raw/wiki.test.raw
  evalt=$out/wiki.eval60.raw
  tail -c +516486 "$wiki" | head -c 774105 > "$evalt"
  sha256sum "$evalt" | grep -q '^725f299f' || { echo "unexpected evaluation split" >&2; exit 1; }
  for m in "$f32"; do
    load=$(cut -d' ' -f1 /proc/loadavg)
    /usr/bin/time -f "%e %U %S" -o "$timef" "$mixq" perplexity "$m" -f "$evalt" -c 512 -t 1 > "$out/ppl.txt" 2>/dev/null
    read -r wall user sys < "$timef"
    echo "whole-split perplexity, $(basename "$m"), t=1, load $load: $(grep -m1 -oE 'PPL = [0-9.]+|Final estimate.*' "$out/ppl.txt" | head -1);" \
      "${wall} s wall, ${user} s user, ${sys} s sys ($(grep -m1 -oE '[0-9]+ chunks of [0-9]+ tokens, [0-9]+ tokens scored' "$out/ppl.txt"))"
  done
fi
