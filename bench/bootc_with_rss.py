"""`bootc`, as the benchmark runs it: the same CLI, plus this process's own peak RSS.

wait4 reports the largest process of a tree, which can be skopeo; the line this
adds to stderr is the Python process alone. With BENCH_CPROFILE=FILE the run is
also profiled (main thread only) into FILE.
"""

from __future__ import annotations

import cProfile
import os
import resource
import sys

from measure import SELF_RSS_TAG

from pybootc.cli import main


def run() -> int:
    profile_to = os.environ.get("BENCH_CPROFILE")
    if profile_to:
        profiler = cProfile.Profile()
        status = profiler.runcall(main, sys.argv[1:])
        profiler.dump_stats(profile_to)
    else:
        status = main(sys.argv[1:])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"{SELF_RSS_TAG} {peak}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(run())
