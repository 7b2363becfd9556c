"""`make bench`: flatten the benchmark images with both sources and compare with baselines.

Builds (or reuses) the workloads in bench/cache/, measures on a scratch ext4
(see scratchfs) and writes the results to bench/results/. `--profile` adds one
cProfile'd run of each of ours (in bench/work/, pull included, the .pstats kept
there) and prints where the main thread spent its time.
"""

from __future__ import annotations

import argparse
import os
import pstats
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from report import environment, print_table, save
from rich.console import Console
from scenarios import BENCH_DIR, COMPARISONS, Comparison, bootc_argv
from scratchfs import discard
from workloads import WORKLOADS, Workload

from pybootc import tools
from pybootc.errors import BootcError
from pybootc.stores.containers_storage import ContainersStorage

CACHE = BENCH_DIR / "cache"
WORK = BENCH_DIR / "work"
RESULTS = BENCH_DIR / "results"
# Scratch filesystem images: in RAM when there is room, so that the VM's shared
# disk, which other jobs use too, does not decide the result.
_SHM = Path("/dev/shm")
_SHM_NEEDED = 6 << 30


def scratch_directory() -> Path:
    if _SHM.is_dir():
        st = os.statvfs(_SHM)
        if st.f_bavail * st.f_frsize >= _SHM_NEEDED:
            return _SHM / "pybootc-bench"
    return WORK / "scratch"


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--runs", type=_positive, default=3, help="measured runs per command (default 3)"
    )
    parser.add_argument(
        "--workload", action="append", choices=sorted(WORKLOADS), help="only this workload"
    )
    parser.add_argument(
        "--source", action="append", choices=sorted(COMPARISONS), help="only this source"
    )
    parser.add_argument(
        "--profile", action="store_true", help="also profile one run of each of ours"
    )
    return parser.parse_args(argv)


def _profile(workload: Workload, source: str, console: Console) -> None:
    """One extra run of ours under cProfile; the top of the main thread's time."""
    out = WORK / "out-profile"
    stats_file = WORK / f"profile-{workload.name}-{source}.pstats"
    storage = WORK / "profile-storage"
    extra: list[str | Path] = ["--storage", storage] if source == "containers-storage" else []
    shutil.rmtree(out, ignore_errors=True)
    cmd = bootc_argv("--source", source, *extra, workload.oci_ref, "--output", out)
    try:
        tools.run(cmd, env={"BENCH_CPROFILE": str(stats_file)})
    finally:
        shutil.rmtree(out, ignore_errors=True)
        if storage.exists():
            ContainersStorage.at(storage).reset()
            shutil.rmtree(storage, ignore_errors=True)
    console.rule(f"cProfile: {workload.name} / {source} (main thread, by own time)")
    stats = pstats.Stats(str(stats_file), stream=sys.stdout)
    stats.sort_stats("tottime").print_stats(15)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    # A file or pipe gets 80 columns by default: too narrow for the table.
    console = Console(width=max(Console().width, 160))
    started = time.monotonic()
    WORK.mkdir(parents=True, exist_ok=True)
    scratch = scratch_directory()
    load_before = os.getloadavg()
    rows: list[Comparison] = []
    described: dict[str, dict[str, object]] = {}
    try:
        for name in args.workload or list(WORKLOADS):
            with console.status(f"Preparing workload {name}"):
                workload = WORKLOADS[name](CACHE, WORK, console.log)
            sizes = workload.layer_sizes()
            described[name] = {
                "description": workload.description,
                "layout": str(workload.layout),
                "layer_sizes": sizes,
            }
            console.log(f"{name}: {len(sizes)} layers, {sum(sizes) / 1e6:.0f} MB compressed")
            for source in args.source or list(COMPARISONS):
                with console.status(f"Measuring {name} / {source}"):
                    rows.append(COMPARISONS[source](workload, scratch, args.runs))
                console.log(f"{name} / {source}: done")
                if args.profile:
                    _profile(workload, source, console)
    except BootcError as err:
        console.print(f"[bold red]error:[/] {err}")
        return 1
    finally:
        discard(scratch)
    env = environment(args.runs, BENCH_DIR.parent, scratch, load_before)
    print_table(rows, console)
    for path in save(rows, described, env, RESULTS):
        console.log(f"wrote {path}")
    console.log(f"bench took {time.monotonic() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
