"""The comparisons: our flatten against a baseline tool, per workload and source.

blobs: `bootc internals flatten --source blobs` against `umoci raw unpack`, both
reading the OCI layout. containers-storage: both sides start from a storage that
already holds the image; ours flattens with `--storage`, which still runs its
own `skopeo copy` (the re-pull is timed on its own as well), the baseline is
`podman image mount` plus `cp -a` of the kernel's overlay view.
"""

from __future__ import annotations

import re
import shutil
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from measure import Sample, Series, count_entries, repeat, run_measured
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


def _remover(*paths: Path) -> Callable[[], None]:
    def remove() -> None:
        for path in paths:
            if path.exists():
                shutil.rmtree(path)

    return remove


def _measure_both(
    runs: int,
    *,
    ours_once: Callable[[], Sample],
    ours_out: Path,
    baseline_once: Callable[[], Sample],
    baseline_out: Path,
    baseline_after: Callable[[], None],
) -> tuple[Series, Series, dict[str, int]]:
    counts: dict[str, int] = {}
    clean_ours = _remover(ours_out)
    clean_baseline = _remover(baseline_out)

    def after_baseline() -> None:
        baseline_after()
        clean_baseline()

    ours = repeat(
        runs,
        ours_once,
        before=clean_ours,
        after=clean_ours,
        keep_last=lambda: counts.__setitem__("ours", count_entries(ours_out)),
    )
    baseline = repeat(
        runs,
        baseline_once,
        before=clean_baseline,
        after=after_baseline,
        keep_last=lambda: counts.__setitem__("baseline", count_entries(baseline_out)),
    )
    return ours, baseline, counts


def compare_blobs(workload: Workload, work: Path, runs: int) -> Comparison:
    ours_out, baseline_out = work / "out-ours", work / "out-baseline"
    ours_cmd = bootc_argv("--source", "blobs", workload.oci_ref, "--output", ours_out)
    baseline_cmd: list[str | Path] = [
        "umoci",
        "raw",
        "unpack",
        "--image",
        workload.umoci_ref,
        baseline_out,
    ]
    ours, baseline, counts = _measure_both(
        runs,
        ours_once=lambda: run_measured(ours_cmd),
        ours_out=ours_out,
        baseline_once=lambda: run_measured(baseline_cmd),
        baseline_out=baseline_out,
        baseline_after=lambda: None,
    )
    return Comparison(
        workload.name,
        "blobs",
        "umoci raw unpack",
        ours,
        baseline,
        parse_summary(ours.median_sample.stdout),
        counts["ours"],
        counts["baseline"],
    )


def _skopeo_copy(workload: Workload, storage: ContainersStorage) -> list[str | Path]:
    return ["skopeo", "copy", "--quiet", workload.oci_ref, storage.reference(STORAGE_NAME)]


def compare_storage(workload: Workload, work: Path, runs: int) -> Comparison:
    # The runroot `internals flatten --storage` picks too: podman insists on one per root.
    storage = ContainersStorage.at(work / "storage")
    ours_out, baseline_out = work / "out-ours", work / "out-baseline"

    def mount_and_copy() -> Sample:
        mounted = run_measured(storage.podman("image", "mount", STORAGE_NAME))
        where = mounted.stdout.strip()
        return mounted + run_measured(["cp", "-a", f"{where}/.", baseline_out])

    def unmount() -> None:
        tools.run(storage.podman("image", "unmount", "--all"))

    ours_cmd = bootc_argv(
        "--source",
        "containers-storage",
        "--storage",
        storage.root,
        workload.oci_ref,
        "--output",
        ours_out,
    )
    _discard_storage(storage)
    try:
        cold_pull = run_measured(_skopeo_copy(workload, storage))
        repull = repeat(
            runs,
            lambda: run_measured(_skopeo_copy(workload, storage)),
            before=lambda: None,
            after=lambda: None,
        )
        ours, baseline, counts = _measure_both(
            runs,
            ours_once=lambda: run_measured(ours_cmd),
            ours_out=ours_out,
            baseline_once=mount_and_copy,
            baseline_out=baseline_out,
            baseline_after=unmount,
        )
    finally:
        _discard_storage(storage)
    return Comparison(
        workload.name,
        "containers-storage",
        "podman image mount + cp -a",
        ours,
        baseline,
        parse_summary(ours.median_sample.stdout),
        counts["ours"],
        counts["baseline"],
        {"pull_cold_s": cold_pull.seconds, "repull_s": repull.median_s},
    )


def _discard_storage(storage: ContainersStorage) -> None:
    if storage.root.exists():
        storage.reset()
    shutil.rmtree(storage.root, ignore_errors=True)
    shutil.rmtree(storage.runroot, ignore_errors=True)


COMPARISONS: dict[str, Callable[[Workload, Path, int], Comparison]] = {
    "blobs": compare_blobs,
    "containers-storage": compare_storage,
}
