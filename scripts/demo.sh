#!/usr/bin/env bash
# Quick start, command 1: install what is missing, build, and run mixq on the bundled model.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
model=assets/stories260K/stories260K-f32.gguf
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
echo; echo "== mixq inspect $model"
build/mixq inspect "$model" --no-tensors
echo; echo "== mixq convert $model --outtype f16"
build/mixq convert "$model" "$out/stories260K-f16.gguf" --outtype f16
build/mixq inspect "$out/stories260K-f16.gguf" --no-metadata
