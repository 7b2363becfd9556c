"""Timing a command: wall clock and peak RSS, taken from the kernel via wait4.

pybootc.tools.run cannot hand back rusage, so commands are spawned here; a
failure still becomes a BootcError with the tool's own reason.

The peak RSS of a command's tree is taken by GNU time, which forks the command from
its own small address space. Spawned straight from here, a command would carry the
benchmark's peak instead: exec folds the high-water mark of the address space it
replaces into the process's ru_maxrss, and a vfork'd child's is this process's (which
has held whole workloads while building them).
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pybootc import tools
from pybootc.errors import BootcError

# Printed by bootc_with_rss.py: the Python process's own peak, without its children.
SELF_RSS_TAG = "bench-self-maxrss-kib"


@dataclass(frozen=True)
class Sample:
    seconds: float
    # User plus system time of the command and every descendant it reaped.
    cpu_seconds: float
    # Largest single process in the command's tree (GNU time's %M).
    tree_rss_kib: int
    self_rss_kib: int | None
    stdout: str

    def __add__(self, other: Sample) -> Sample:
        """Two commands run one after the other, as one measurement."""
        selves = [s for s in (self.self_rss_kib, other.self_rss_kib) if s is not None]
        return Sample(
            self.seconds + other.seconds,
            self.cpu_seconds + other.cpu_seconds,
            max(self.tree_rss_kib, other.tree_rss_kib),
            max(selves) if selves else None,
            self.stdout + other.stdout,
        )


# What GNU time writes: the largest resident set of the command and its descendants.
_TIME = ("/usr/bin/time", "--quiet", "--format=%M")


def run_measured(cmd: Sequence[str | Path], env: Mapping[str, str] | None = None) -> Sample:
    argv = [os.fspath(arg) for arg in cmd]
    with (
        tempfile.TemporaryFile() as out,
        tempfile.TemporaryFile() as err,
        tempfile.NamedTemporaryFile() as peak,
    ):
        actions = [
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_DUP2, out.fileno(), 1),
            (os.POSIX_SPAWN_DUP2, err.fileno(), 2),
        ]
        start = time.perf_counter()
        environ = {**os.environ, **(env or {})}
        timed = [*_TIME, f"--output={peak.name}", *argv]
        pid = os.posix_spawn(timed[0], timed, environ, file_actions=actions)
        # The CPU times are time's, which include those of the tree it reaped.
        _, status, usage = os.wait4(pid, 0)
        seconds = time.perf_counter() - start
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode(errors="replace")
        stderr = err.read().decode(errors="replace")
        told_peak = Path(peak.name).read_text()
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        # Not the RSS line bootc_with_rss.py adds last: the command's own error.
        told = "\n".join(line for line in stderr.splitlines() if SELF_RSS_TAG not in line)
        reason = tools.failure_reason(told) or f"exited with status {code}"
        raise BootcError(f"{Path(argv[0]).name}: {reason}", context=(" ".join(argv),))
    self_rss = None
    for line in stderr.splitlines():
        if line.startswith(SELF_RSS_TAG):
            self_rss = int(line.split()[1])
    cpu = usage.ru_utime + usage.ru_stime
    return Sample(seconds, cpu, int(told_peak), self_rss, stdout)


@dataclass(frozen=True)
class Series:
    """Repeated runs of one measurement."""

    samples: tuple[Sample, ...]

    @property
    def median_s(self) -> float:
        return statistics.median(s.seconds for s in self.samples)

    @property
    def median_cpu_s(self) -> float:
        return statistics.median(s.cpu_seconds for s in self.samples)

    @property
    def runs_s(self) -> list[float]:
        return [round(s.seconds, 3) for s in self.samples]

    @property
    def peak_tree_mb(self) -> float:
        return max(s.tree_rss_kib for s in self.samples) / 1024

    @property
    def peak_self_mb(self) -> float | None:
        selves = [s.self_rss_kib for s in self.samples if s.self_rss_kib is not None]
        return max(selves) / 1024 if selves else None

    @property
    def median_sample(self) -> Sample:
        ordered = sorted(self.samples, key=lambda s: s.seconds)
        return ordered[len(ordered) // 2]


@dataclass(frozen=True)
class Trial:
    """One side of a comparison: a timed run, and untimed steps around each run."""

    run: Callable[[], Sample]
    before: Callable[[], None]
    after: Callable[[], None]
    # Sees the last run's result, before `after` clears it away.
    inspect: Callable[[], None]

    def once(self, *, last: bool) -> Sample:
        self.before()
        try:
            sample = self.run()
            if last:
                self.inspect()
            return sample
        finally:
            self.after()


def measure_pair(runs: int, ours: Trial, baseline: Trial) -> tuple[Series, Series]:
    """A warm-up of each, then `runs` rounds of ours and the baseline taking turns.

    The page cache cannot be dropped here, so the warm-up makes every measured run
    equally warm instead; taking turns makes drift in the machine's load (other
    jobs share it) fall on both sides alike.
    """
    samples: tuple[list[Sample], list[Sample]] = ([], [])
    for index in range(runs + 1):
        for trial, kept in zip((ours, baseline), samples, strict=True):
            sample = trial.once(last=index == runs)
            if index:
                kept.append(sample)
    return Series(tuple(samples[0])), Series(tuple(samples[1]))


Measurement = Callable[[], Sample]


def rounds(
    runs: int, measurements: dict[str, Measurement], say: Callable[[str], None]
) -> dict[str, Series]:
    """A warm-up of each, then `runs` rounds that take each in turn."""
    samples: dict[str, list[Sample]] = {name: [] for name in measurements}
    for index in range(runs + 1):
        for name, measure in measurements.items():
            sample = measure()
            if index:
                samples[name].append(sample)
            say(f"  {'warm-up' if not index else f'run {index}'} {name}: {sample.seconds:.2f} s")
    return {name: Series(tuple(found)) for name, found in samples.items()}


def repeat(runs: int, once: Callable[[], Sample]) -> Series:
    """One warm-up, then `runs` measured runs of `once`."""
    once()
    return Series(tuple(once() for _ in range(runs)))


def count_entries(root: Path) -> int:
    """Entries below `root`, not counting `root` itself."""
    total = 0
    for _, dirs, files in os.walk(root):
        total += len(dirs) + len(files)
    return total
