#!/usr/bin/env bash
# Side-by-side speed of `mixq transcribe` and whisper.cpp's `whisper-cli` on one WAV file, run
# alternately (same machine, same moment), greedy decoding on both sides.
# Usage: bench/whisper_speed.sh MODEL_DIR [AUDIO]
#   MODEL_DIR holds whisper.cpp-format files (f16.bin, q5_0.bin, ... as bench/whisper_quality.sh
#   writes them). Environment: FILES ("f16 q5_0"), THREADS ("1 2"), REPS (3),
#   MIXQ (build/mixq), WHISPER_CLI (the dev-time oracle build).
# Prints one line per run: file threads program wall_s user_s sys_s, then the medians.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
dir="${1:?usage: whisper_speed.sh MODEL_DIR [AUDIO]}"
audio="${2:-$here/../shared/data/whisper/jfk.wav}"
MIXQ="${MIXQ:-$here/build/mixq}"
WHISPER_CLI="${WHISPER_CLI:-$HOME/.cache/mixq/oracles/whisper.cpp-build/bin/whisper-cli}"
FILES="${FILES:-f16 q5_0}"; THREADS="${THREADS:-1 2}"; REPS="${REPS:-3}"
for f in $MIXQ $WHISPER_CLI "$audio"; do [ -e "$f" ] || { echo "whisper_speed: $f not found" >&2; exit 1; }; done
tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
timed() { /usr/bin/time -f "%e %U %S" -o "$tmp/t" "$@" >"$tmp/out" 2>"$tmp/err" || { cat "$tmp/err" >&2; exit 1; }; cat "$tmp/t"; }
echo "# file threads program wall_s user_s sys_s  (load: $(cut -d' ' -f1-3 /proc/loadavg))"
for f in $FILES; do for t in $THREADS; do for r in $(seq "$REPS"); do
  echo "$f $t mixq $(timed "$MIXQ" transcribe "$dir/$f.bin" -f "$audio" -t "$t")"
  echo "$f $t whisper-cli $(timed "$WHISPER_CLI" -m "$dir/$f.bin" -f "$audio" -t "$t" -nt -bs 1 -bo 1)"
done; done; done | tee "$tmp/all"
echo "# medians (wall_s user_s), load after: $(cut -d' ' -f1-3 /proc/loadavg)"
awk '{k=$1" "$2" "$3; w[k]=w[k]" "$4; u[k]=u[k]" "$5} END{for(k in w){print k, w[k], "|", u[k]}}' "$tmp/all" | grep -v '^#' |
  python3 -c '
import sys, statistics as s
for line in sys.stdin:
    head, rest = line.split(None, 3)[:3], line.split(None, 3)[3]
    w, u = rest.split("|")
    print(" ".join(head), "wall %.2f" % s.median(map(float, w.split())), "user %.2f" % s.median(map(float, u.split())))
' | sort
