#!/usr/bin/env bash
# Quick start, command 1: install what is missing, build, and quantize the bundled model with a
# mixed-precision policy, printing the per-tensor report.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
model=assets/stories260K/stories260K-f32.gguf
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
echo; echo "== mixq inspect $model"
build/mixq inspect "$model" --no-tensors --max-array 4
echo; echo "== mixq quantize: Q4_K_M mix, attention of the first and last layer at q8_0, ffn_up at q5_0"
build/mixq quantize "$model" "$out/stories260K-mixed.gguf" Q4_K_M \
  --layers first:1/attn=q8_0 --layers last:1/attn=q8_0 --tensor-type 'ffn_up=q5_0'
echo; echo "== mixq inspect the result"
build/mixq inspect "$out/stories260K-mixed.gguf" --no-metadata --no-tensors
