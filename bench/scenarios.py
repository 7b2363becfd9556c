"""The comparisons: our flatten against a baseline tool, per workload and source.

blobs: `bootc internals flatten --source blobs` against `umoci raw unpack`, both
reading the OCI layout. containers-storage: both sides start from a storage that
already holds the image; ours flattens with `--storage`, which still runs its
own `skopeo copy` (the re-pull is timed on its own as well), the baseline is
`podman image mount` plus `cp -a` of the kernel's overlay view. Each comparison
writes to its own scratch filesystem (see scratchfs); outputs are removed
between runs, untimed.
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
from scratchfs import scratch_filesystem
from workloads import Workload

from pybootc.errors import BootcError
from pybootc.stores.containers_storage import ContainersStorage

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
    run: Callable[[], Sample],
    out: Path,
    counts: dict[str, int],
    key: str,
    *,
    after: Callable[[], None] = lambda: None,
) -> Trial:
    """A side that writes the tree `out`, removed before and after each run."""

    def remove() -> None:
        if out.exists():
            shutil.rmtree(out)

    def finish() -> None:
        after()
        remove()

    return Trial(
        run=run,
        before=remove,
        after=finish,
        inspect=lambda: counts.__setitem__(key, count_entries(out)),
    )


def compare_blobs(workload: Workload, scratch: Path, runs: int) -> Comparison:
    counts: dict[str, int] = {}
    with scratch_filesystem(scratch) as mnt:
        out = mnt / "out"
        ours_cmd = bootc_argv("--source", "blobs", workload.oci_ref, "--output", out)
        baseline_cmd: list[str | Path] = [
            "umoci",
            "raw",
            "unpack",
            "--image",
            workload.umoci_ref,
            out,
        ]
        ours, baseline = measure_pair(
            runs,
            _trial(lambda: run_measured(ours_cmd), out, counts, "ours"),
            _trial(lambda: run_measured(baseline_cmd), out, counts, "baseline"),
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


def compare_storage(workload: Workload, scratch: Path, runs: int) -> Comparison:
    counts: dict[str, int] = {}
    with scratch_filesystem(scratch) as mnt:
        # Our output must be on the storage's filesystem: both go on the scratch one.
        storage = ContainersStorage.at(mnt / "storage")
        out = mnt / "out"
        pull = ["skopeo", "copy", "--quiet", workload.oci_ref, storage.reference(STORAGE_NAME)]
        try:
            pulls = {
                "pull_cold_s": run_measured(pull).seconds,
                "repull_s": repeat(runs, lambda: run_measured(pull)).median_s,
            }
            ours_cmd = bootc_argv(
                "--source",
                "containers-storage",
                "--storage",
                storage.root,
                workload.oci_ref,
                "--output",
                out,
            )

            def mount_and_copy() -> Sample:
                mounted = run_measured(
                    ["podman", "image", "mount", STORAGE_NAME], storage.podman_env()
                )
                where = mounted.stdout.strip()
                return mounted + run_measured(["cp", "-a", f"{where}/.", out])

            def unmount_image() -> None:
                storage.podman("image", "unmount", "--all")

            ours, baseline = measure_pair(
                runs,
                _trial(lambda: run_measured(ours_cmd), out, counts, "ours"),
                _trial(mount_and_copy, out, counts, "baseline", after=unmount_image),
            )
        finally:
            if storage.root.exists():
                storage.reset()
            shutil.rmtree(storage.runroot, ignore_errors=True)
    return Comparison(
        workload.name,
        "containers-storage",
        "podman image mount + cp -a",
        ours,
        baseline,
        parse_summary(ours.median_sample.stdout),
        counts["ours"],
        counts["baseline"],
        pulls,
    )


COMPARISONS: dict[str, Callable[[Workload, Path, int], Comparison]] = {
    "blobs": compare_blobs,
    "containers-storage": compare_storage,
}
