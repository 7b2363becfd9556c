"""`make bench`: pybootc's install, switch, update, check and status against the tool
pipelines it is made of, on the Debian workload at three sizes; the same image with an
SELinux policy; the disk each backend uses on ext4, XFS and btrfs; the two 4 GiB layers.

Every figure is a median of --runs runs (after one warm-up), taken in rounds that visit
each measurement in turn, so that drift in the machine's load falls on all alike.
Results go to bench/results/: the JSON of every run, report.md and report.png.
"""

from __future__ import annotations

import argparse
import compileall
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

# The registry fixture and the apt sources are the tests' own support code.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pipelines as p
import report
from disk import disk_use
from labelled import labelled_cost
from measure import Measurement, Sample, Series, rounds
from partial import partial_pulls
from profiles import profile_runs
from rich.console import Console
from scratchfs import FsKind, discard
from signatures import signature_cost
from workloads import SIZES, Workload, debian, labelled, large

import pybootc
from pybootc import tools
from pybootc.errors import BootcError
from tests.support import running_registry

BENCH_DIR = Path(__file__).resolve().parent
CACHE = BENCH_DIR / "cache"
WORK = BENCH_DIR / "work"
RESULTS = BENCH_DIR / "results"
# Scratch filesystems in RAM; the large layers' on the disk.
RAM = Path("/dev/shm/pybootc-bench")
DISK = Path("/var/tmp/pybootc-bench-disk")
# What --again can measure anew on its own.
AGAIN = ("debian", "large", "profiles", "labelled", "disk", "partial", "signatures")


def _revision() -> str:
    """The commit the measured code is, `+changes` if pybootc or the benchmark differ
    from it."""
    root = BENCH_DIR.parent
    try:
        head = tools.run(["git", "-C", root, "rev-parse", "--short", "HEAD"]).stdout
        changed = tools.run(["git", "-C", root, "status", "--porcelain", "pybootc", "bench"]).stdout
    except BootcError:
        return "unknown"
    return head.decode().strip() + ("+changes" if changed.strip() else "")


def measured(results: dict[str, Any], part: str) -> None:
    """Record when `part` of the results was measured, and by which code: parts measured
    again on their own (`--again`) sit beside parts of an earlier run."""
    results.setdefault("provenance", {})[part] = {
        "at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "revision": _revision(),
    }


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3, help="measured runs of each (default 3)")
    parser.add_argument(
        "--size", action="append", choices=sorted(SIZES), help="only this size (repeatable)"
    )
    parser.add_argument("--no-large", action="store_true", help="skip the 4 GiB layers")
    parser.add_argument("--no-disk", action="store_true", help="skip disk use on XFS and btrfs")
    parser.add_argument("--no-partial", action="store_true", help="skip the partial pulls")
    parser.add_argument(
        "--no-signatures", action="store_true", help="skip the cost of verifying signatures"
    )
    parser.add_argument(
        "--no-labelled", action="store_true", help="skip the image with an SELinux policy"
    )
    parser.add_argument(
        "--again",
        action="append",
        choices=AGAIN,
        help="only measure this part again (repeatable), into the last results.json and its"
        " report; the other figures stay as they were",
    )
    return parser.parse_args(argv)


def image_layers(workload: Workload) -> set[str]:
    """The layer digests of v1 and v2: the blobs the registry's log is searched for."""
    return {str(layer["digest"]) for tag in ("v1", "v2") for layer in workload.layers(tag)}


def debian_size(
    env: p.Env, workload: Workload, repo: str, runs: int, say: Callable[[str], None]
) -> dict[str, object]:
    """Every timed figure for one size of the Debian workload."""
    fetched: dict[str, list[int]] = {}

    def kept(name: str, measure: Callable[[Path], tuple[Sample, int]]) -> Measurement:
        def run() -> Sample:
            holder: list[int] = []

            def inner(mount: Path) -> Sample:
                sample, count = measure(mount)
                holder.append(count)
                return sample

            sample = p.in_fresh_filesystem(env, inner)
            fetched.setdefault(name, []).append(holder[0])
            return sample

        return run

    layers = image_layers(workload)

    def of_backend(b: str) -> dict[str, Measurement]:
        return {
            f"{b} install": lambda: p.in_fresh_filesystem(
                env, lambda m: p.install(env, m, env.image(repo, "v1"), b)
            ),
            f"{b} switch": lambda: p.in_fresh_filesystem(env, lambda m: p.switch(env, m, repo, b)),
            f"{b} update": kept(f"{b} update", lambda m: p.update(env, m, repo, b, layers)),
            f"{b} check": kept(f"{b} check", lambda m: p.check(env, m, repo, b, layers)),
            f"{b} status": lambda: p.in_fresh_filesystem(env, lambda m: p.status(env, m, repo, b)),
        }

    measurements: dict[str, Measurement] = {
        "floor": lambda: p.floor(workload),
        "floor, GNU tools": lambda: p.floor_gnu(workload),
    }
    for backend in p.BACKENDS:
        measurements |= of_backend(backend)
    hashes: list[Sample] = []

    def deploy_alone(mount: Path) -> Sample:
        deploy, kernel_hash = p.deploy_alone(env, mount, repo)
        hashes.append(kernel_hash)
        return deploy

    measurements["deploy alone"] = lambda: p.in_fresh_filesystem(env, deploy_alone)
    measurements["(a) install"] = lambda: p.in_fresh_filesystem(
        env, lambda m: p.baseline_a(env, m, env.image(repo, "v1"))
    )
    measurements["(a) update"] = lambda: p.in_fresh_filesystem(
        env,
        lambda m: p.baseline_a(env, m, env.image(repo, "v2"), update_from=env.image(repo, "v1")),
    )
    measurements["(b) install"] = lambda: p.in_fresh_filesystem(
        env, lambda m: p.baseline_b(env, m, workload, "v1")
    )
    measurements["(b) update"] = lambda: p.in_fresh_filesystem(
        env, lambda m: p.baseline_b(env, m, workload, "v2", update_from="v1")
    )
    series = rounds(runs, measurements, say)
    # Taken with each deploy alone; the first is the warm-up's.
    series["kernel hash"] = Series(tuple(hashes[1:]))
    update_layer = workload.layers("v2")[-1]
    return {
        "workload": workload.name,
        "unpacked_bytes": workload.unpacked_bytes,
        "compressed_bytes": sum(int(str(layer["size"])) for layer in workload.layers("v1")),
        "update_layer_bytes": int(str(update_layer["size"])),
        "times": {name: report.series_json(s) for name, s in series.items()},
        # Blob bytes an update fetched, and blobs a check fetched, per measured run.
        "fetched": {name: values[1:] for name, values in fetched.items()},
    }


def _large_install(env: p.Env, workload: Workload, backend: str) -> Measurement:
    return lambda: p.in_fresh_filesystem(
        env, lambda mount: p.install(env, mount, workload.ref("v1"), backend)
    )


def large_layers(runs: int, say: Callable[[str], None]) -> dict[str, object]:
    """The 4 GiB layers, each installed by each backend onto an ext4 image on the disk,
    straight from the layout (no registry: it would hold two more copies)."""
    found: dict[str, object] = {}
    env = p.Env(None, DISK, FsKind.EXT4, 24 << 30)
    for kind in ("many", "one"):
        workload = large(kind, CACHE, say)
        measurements = {b: _large_install(env, workload, b) for b in p.BACKENDS}
        count = max(1, runs - 2)
        series = rounds(count, measurements, say)
        found[workload.name] = {
            "description": workload.description,
            "runs": count,
            "times": {name: report.series_json(s) for name, s in series.items()},
        }
    return found


def labelled_image(env: p.Env, runs: int, say: Callable[[str], None]) -> dict[str, object]:
    """The Debian workload at M with and without an SELinux policy, each pushed."""
    pushed = []
    for workload in (debian("M", CACHE, WORK, say), labelled(CACHE, WORK, say)):
        repo = f"bench/{workload.name.lower()}"
        p.push(env, workload, repo)
        pushed.append((workload, repo))
    say(f"[bold]An image with an SELinux policy[/], {pushed[1][0].description}")
    return labelled_cost(env, pushed[0], pushed[1], runs, say)


def profiled(env: p.Env, size: str, say: Callable[[str], None]) -> dict[str, object]:
    """Where an install's and an update's time goes at `size` (pushed already)."""
    workload = debian(size, CACHE, WORK, say)
    say(f"[bold]Profiles[/], {workload.name}")
    return profile_runs(env, size, f"bench/{workload.name.lower()}", image_layers(workload), say)


def disk_figures(
    env: p.Env, sizes: Sequence[str], say: Callable[[str], None], *, push: bool
) -> dict[str, object]:
    """The disk used, for the Debian workload at M (or the smallest size measured);
    `push`: it is not in the registry yet."""
    workload = debian("M" if "M" in sizes else sizes[0], CACHE, WORK, say)
    repo = f"bench/{workload.name.lower()}"
    say(f"[bold]Disk use[/], {workload.name}")
    if push:
        p.push(env, workload, repo)
    return {
        "workload": workload.name,
        "unpacked_bytes": workload.unpacked_bytes,
        **disk_use(env, workload, repo, say),
    }


def write_results(results: dict[str, object], console: Console) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    (RESULTS / f"{stamp}.json").write_text(json.dumps(results, indent=2))
    (RESULTS / "results.json").write_text(json.dumps(results, indent=2))
    text = report.markdown(results)
    (RESULTS / "report.md").write_text(text)
    report.chart(results, RESULTS / "report.png")
    console.print(text)


def _profiled_again(env: p.Env, size: str, say: Callable[[str], None]) -> dict[str, object]:
    workload = debian(size, CACHE, WORK, say)
    p.push(env, workload, f"bench/{workload.name.lower()}")
    return profiled(env, size, say)


def measure_again(parts: Sequence[str], sizes: Sequence[str], runs: int, console: Console) -> int:
    """Measure `parts` (of AGAIN) again into the last results, which record which parts
    were measured when, and by which code."""
    results = json.loads((RESULTS / "results.json").read_text())
    size = sizes[-1]
    if "debian" in parts:
        discard(RAM)
        with running_registry() as registry:
            env = p.Env(registry, RAM)
            for each in sizes:
                workload = debian(each, CACHE, WORK, console.print)
                repo = f"bench/{workload.name.lower()}"
                console.print(f"[bold]{workload.name}[/]: {workload.description}")
                p.push(env, workload, repo)
                results["sizes"][each] = debian_size(env, workload, repo, runs, console.print)
                measured(results, f"debian {each}")
    if "large" in parts:
        discard(DISK)
        console.print("[bold]Large layers[/]")
        results["large"] = large_layers(runs, console.print)
        measured(results, "large")
    # The parts that take the registry and the RAM scratch and nothing else.
    on_their_own: dict[str, Callable[[p.Env], object]] = {
        "labelled": lambda env: labelled_image(env, runs, console.print),
        "profiles": lambda env: _profiled_again(env, size, console.print),
        "disk": lambda env: disk_figures(env, sizes, console.print, push=True),
        "partial": lambda env: partial_pulls(env, runs, console.print),
        "signatures": lambda env: signature_cost(env, runs, console.print),
    }
    for part, measure in on_their_own.items():
        if part in parts:
            discard(RAM)
            with running_registry() as registry:
                results[part] = measure(p.Env(registry, RAM))
            measured(results, part)
    results["fsck"] = {
        "checked": results["fsck"]["checked"] + p.FSCK.checked,
        "failed": results["fsck"]["failed"] + p.FSCK.failed,
    }
    write_results(results, console)
    return 0


def _compile_bytecode() -> None:
    """Compile pybootc's modules to bytecode before anything is timed, as pip does when
    it installs a package. This checkout is installed editable, and where the
    environment sets PYTHONDONTWRITEBYTECODE (this machine's does), nothing else writes
    the cache: every measured bootc run would first compile some 55 modules (50 ms)."""
    compileall.compile_dir(Path(pybootc.__file__).parent, quiet=1)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    _compile_bytecode()
    console = Console()
    say = console.print
    # Smallest first: the largest is profiled.
    sizes = sorted(args.size or SIZES, key=SIZES.__getitem__)
    if args.again:
        return measure_again(args.again, sizes, args.runs, console)
    started = time.time()
    results: dict[str, Any] = {
        "environment": report.environment(),
        "sizes": {},
        "rss_method": "VmHWM",
    }
    for directory in (RAM, DISK):
        discard(directory)
    with running_registry() as registry:
        env = p.Env(registry, RAM)
        for size in sizes:
            workload = debian(size, CACHE, WORK, say)
            repo = f"bench/{workload.name.lower()}"
            say(f"[bold]{workload.name}[/]: {workload.description}, pushed to the registry")
            p.push(env, workload, repo)
            results["sizes"][size] = debian_size(env, workload, repo, args.runs, say)
            measured(results, f"debian {size}")
        results["profiles"] = profiled(env, sizes[-1], say)
        measured(results, "profiles")
        if not args.no_partial:
            say("[bold]Partial pulls[/] (zstd:chunked)")
            results["partial"] = partial_pulls(env, args.runs, say)
            measured(results, "partial")
        if not args.no_signatures:
            say("[bold]Signature verification[/]")
            results["signatures"] = signature_cost(env, args.runs, say)
            measured(results, "signatures")
        if not args.no_labelled:
            results["labelled"] = labelled_image(env, args.runs, say)
            measured(results, "labelled")
        if not args.no_disk:
            # Every size measured is in the registry already.
            results["disk"] = disk_figures(env, sizes, say, push=False)
            measured(results, "disk")
    if not args.no_large:
        say("[bold]Large layers[/]")
        results["large"] = large_layers(args.runs, say)
        measured(results, "large")
    results["fsck"] = {"checked": p.FSCK.checked, "failed": p.FSCK.failed}
    results["seconds"] = round(time.time() - started)
    write_results(results, console)
    return 0


if __name__ == "__main__":
    sys.exit(main())
