"""`bootc`, as the benchmark runs it: the same CLI, plus this process's own peak RSS.

The tree's peak that measure.py takes is its largest process, which can be skopeo; the
line this adds to stderr is the Python process alone, since its exec. With
BENCH_CPROFILE=FILE the run is also profiled (main thread only) into FILE.
"""

from __future__ import annotations

import cProfile
import os
import sys
from pathlib import Path

from measure import SELF_RSS_TAG

from pybootc.cli import main


def _high_water_kib() -> int:
    """This process's peak RSS since its exec: VmHWM belongs to the address space exec
    made. (getrusage's ru_maxrss does not: exec carries over the high-water mark of the
    process that spawned it, here the benchmark, which can have held a whole workload.)"""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("/proc/self/status has no VmHWM")


def run() -> int:
    profile_to = os.environ.get("BENCH_CPROFILE")
    if profile_to:
        profiler = cProfile.Profile()
        status = profiler.runcall(main, sys.argv[1:])
        profiler.dump_stats(profile_to)
    else:
        status = main(sys.argv[1:])
    print(f"{SELF_RSS_TAG} {_high_water_kib()}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(run())
