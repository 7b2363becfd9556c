"""The comparisons: our flatten against a baseline tool, per workload and source.

blobs: `bootc internals flatten --source blobs` against `umoci raw unpack`, both
reading the OCI layout. containers-storage: both sides start from a storage that
already holds the image; ours flattens with `--storage`, which still runs its
own `skopeo copy` (the re-pull is timed on its own as well), the baseline is
`podman image mount` plus `cp -a` of the kernel's overlay view. Every run writes
to a fresh scratch filesystem (see scratchfs), which for containers-storage
already holds the pulled storage, since our output must be on the storage's
filesystem.
"""

from __future__ import annotations

import re
import shutil
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from measure import Sample, Series, Trial, count_entries, measure_pair, repeat, run_measured
from scratchfs import ScratchFilesystem
from workloads import Workload

from pybootc import tools
from pybootc.containers_storage import ContainersStorage
from pybootc.errors import BootcError

BENCH_DIR = Path(__file__).resolve().parent
# The name `internals flatten` pulls an image as; pre-pulling under the same
# name lets its own pull find everything already there.
STORAGE_NAME = "localhost/pybootc-flatten:latest"
_SUMMARY = re.compile(r"Flattened (\d+) layers: (\d+) entries, (\d+) bytes in ([\d.]+)s")


@dataclass(frozen=True)
class Summary:
    layers: int
    entries: int
    bytes: int
    seconds: float


def parse_summary(stdout: str) -> Summary:
    found = _SUMMARY.search(stdout)
    if found is None:
        raise BootcError(f"No summary line in bootc's output: {stdout!r}")
    layers, entries, size, seconds = found.groups()
    return Summary(int(layers), int(entries), int(size), float(seconds))


@dataclass(frozen=True)
class Comparison:
    workload: str
    source: str
    baseline_name: str
    ours: Series
    baseline: Series
    summary: Summary
    # Entries below the root of each side's last output, as a cross-check.
    ours_tree_entries: int
    baseline_tree_entries: int
    extra_s: dict[str, float] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        return self.ours.median_s / self.baseline.median_s

    @property
    def flatten_s(self) -> float:
        """Median of the time bootc reports itself: no interpreter start-up, no pull."""
        return statistics.median(parse_summary(s.stdout).seconds for s in self.ours.samples)

    @property
    def files_per_s(self) -> float:
        return self.summary.entries / self.ours.median_s

    @property
    def mb_per_s(self) -> float:
        return self.summary.bytes / 1e6 / self.ours.median_s


def bootc_argv(*args: str | Path) -> list[str | Path]:
    return [sys.executable, BENCH_DIR / "bootc_with_rss.py", "internals", "flatten", *args]


def _trial(
    fs: ScratchFilesystem,
    run: Callable[[Path], Sample],
    counts: dict[str, int],
    key: str,
    *,
    before: Callable[[], None] = lambda: None,
    after: Callable[[], None] = lambda: None,
) -> Trial:
    """A side that writes `out` on a fresh copy of the scratch filesystem each run."""
    out = fs.mountpoint / "out"

    def prepare() -> None:
        fs.fresh()
        before()

    def finish() -> None:
        after()
        fs.unmount()

    return Trial(
        run=lambda: run(out),
        before=prepare,
        after=finish,
        inspect=lambda: counts.__setitem__(key, count_entries(out)),
    )


def compare_blobs(workload: Workload, scratch: Path, runs: int) -> Comparison:
    fs = ScratchFilesystem(scratch)
    counts: dict[str, int] = {}
    ours = _trial(
        fs,
        lambda out: run_measured(
            bootc_argv("--source", "blobs", workload.oci_ref, "--output", out)
        ),
        counts,
        "ours",
    )
    baseline = _trial(
        fs,
        lambda out: run_measured(["umoci", "raw", "unpack", "--image", workload.umoci_ref, out]),
        counts,
        "baseline",
    )
    try:
        fs.make_template()
        ours_series, baseline_series = measure_pair(runs, ours, baseline)
    finally:
        fs.discard()
    return Comparison(
        workload.name,
        "blobs",
        "umoci raw unpack",
        ours_series,
        baseline_series,
        parse_summary(ours_series.median_sample.stdout),
        counts["ours"],
        counts["baseline"],
    )


def compare_storage(workload: Workload, scratch: Path, runs: int) -> Comparison:
    fs = ScratchFilesystem(scratch)
    # Same root path in every copy, so the same runroot as `internals flatten` picks.
    storage = ContainersStorage.at(fs.mountpoint / "storage")
    pull = ["skopeo", "copy", "--quiet", workload.oci_ref, storage.reference(STORAGE_NAME)]
    pulls: dict[str, float] = {}

    def forget_runroot() -> None:
        # Its state describes the previous copy of the filesystem, not this one.
        shutil.rmtree(storage.runroot, ignore_errors=True)

    def fill(_: Path) -> None:
        pulls["pull_cold_s"] = run_measured(pull).seconds
        pulls["repull_s"] = repeat(runs, lambda: run_measured(pull)).median_s
        forget_runroot()

    def unmount_image() -> None:
        tools.run(storage.podman("image", "unmount", "--all"))

    def mount_and_copy(out: Path) -> Sample:
        mounted = run_measured(storage.podman("image", "mount", STORAGE_NAME))
        where = mounted.stdout.strip()
        return mounted + run_measured(["cp", "-a", f"{where}/.", out])

    counts: dict[str, int] = {}
    ours = _trial(
        fs,
        lambda out: run_measured(
            bootc_argv(
                "--source",
                "containers-storage",
                "--storage",
                storage.root,
                workload.oci_ref,
                "--output",
                out,
            )
        ),
        counts,
        "ours",
        before=forget_runroot,
    )
    baseline = _trial(
        fs,
        mount_and_copy,
        counts,
        "baseline",
        before=forget_runroot,
        after=unmount_image,
    )
    try:
        fs.make_template(fill)
        ours_series, baseline_series = measure_pair(runs, ours, baseline)
    finally:
        fs.discard()
        forget_runroot()
    return Comparison(
        workload.name,
        "containers-storage",
        "podman image mount + cp -a",
        ours_series,
        baseline_series,
        parse_summary(ours_series.median_sample.stdout),
        counts["ours"],
        counts["baseline"],
        pulls,
    )


COMPARISONS: dict[str, Callable[[Workload, Path, int], Comparison]] = {
    "blobs": compare_blobs,
    "containers-storage": compare_storage,
}
