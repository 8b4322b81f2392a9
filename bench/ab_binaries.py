#!/usr/bin/env python3
"""Two or more builds of mixq (or any commands) side by side on the same arguments, alternated.

  bench/ab_binaries.py BIN_A BIN_B [...] -- ARGS...
ARGS may hold OUT, replaced by a scratch output path that is removed before every run (so each
run writes a fresh file, as bench/quantize_speed.sh does). The order rotates every repetition;
wall time is measured around the process, CPU time (user + system) from its rusage. Prints the
median, minimum and first quartile of wall time and the median CPU time per binary: on a shared
machine only figures from one such run compare. REPS (default 10).
Example: bench/ab_binaries.py /tmp/old/mixq build/mixq -- quantize model-f32.gguf OUT Q8_0 -t 2
"""
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time


def main() -> int:
    args = sys.argv[1:]
    if "--" not in args or args.index("--") == 0:
        print(__doc__, file=sys.stderr)
        return 2
    sep = args.index("--")
    bins, rest = args[:sep], args[sep + 1:]
    reps = int(os.environ.get("REPS", "10"))
    out = os.path.join(tempfile.mkdtemp(prefix="mixq-ab-", dir=os.environ.get("AB_DIR", ".cache")), "out.gguf")
    wall = {b: [] for b in bins}
    cpu = {b: [] for b in bins}
    for r in range(reps):
        for b in bins[r % len(bins):] + bins[:r % len(bins)]:
            if os.path.exists(out):
                os.remove(out)
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            t0 = time.perf_counter()
            subprocess.run([b] + [a.replace("OUT", out) for a in rest], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, check=True)
            wall[b].append(time.perf_counter() - t0)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu[b].append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    if os.path.exists(out):
        os.remove(out)
    os.rmdir(os.path.dirname(out))
    for b in bins:
        w = sorted(wall[b])
        print(f"{b}: wall median {statistics.median(w) * 1e3:.1f} ms (min {w[0] * 1e3:.1f}, "
              f"q1 {w[len(w) // 4] * 1e3:.1f}), CPU median {statistics.median(cpu[b]) * 1e3:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
