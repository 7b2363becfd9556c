"""Where the time of an install and of an update goes: one profiled run of each, per
backend, cut into the pipeline's phases by cProfile's cumulative times.

The phases do not nest, so they add up; what the command did besides them is "rest",
and what the process did before `main` (the interpreter, the imports) is the wall time
less `main`'s. cProfile slows Python code down, so the profiled run takes longer than
the measured ones: the table says where the time goes, not what the figures are.
"""

from __future__ import annotations

import os
import pstats
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pipelines as p
from measure import Sample

# (what the report calls it, the file it is in, the function); none calls another.
PHASES: tuple[tuple[str, str, str], ...] = (
    ("manifest and config", "pybootc/stores/pipeline.py", "prepare"),
    ("layers into objects, layer commits", "pybootc/stores/layered.py", "layer_commit"),
    (
        "merge, post-process and image commit, in memory",
        "pybootc/stores/layered.py",
        "commit_in_memory",
    ),
    # The way of an image only a checkout post-processes exactly.
    ("merge of the layers, checkout", "pybootc/stores/layered.py", "flatten"),
    ("post-process, image commit", "pybootc/stores/commit.py", "finish_import"),
    ("deploy", "pybootc/ostree/sysroot.py", "deploy"),
    ("cleanup (GC, prune)", "pybootc/commands/deploy.py", "tidy_up"),
)
# The container store's skopeo pull runs in a thread of its own, which cProfile does not
# see: the main thread meanwhile reads the layers that have landed (layer_commit, above)
# and waits. The wait is the pull's phase.
PULL = "skopeo pull into containers-storage (waiting for it)"
PULL_WAIT = ("pybootc/stores/container.py", "_pull_importing")
MAIN = ("pybootc/cli.py", "main")
REST = "rest of the command"
STARTUP = "Python start-up and imports"


def _cumulative(stats: pstats.Stats, where: str, function: str) -> float:
    # pstats keeps, per (file, line, function), (calls, primitive calls, tottime, cumtime, callers).
    table: dict[tuple[str, int, str], tuple[int, int, float, float, object]]
    table = stats.stats  # type: ignore[attr-defined]
    return sum(
        entry[3]
        for (filename, _, name), entry in table.items()
        if name == function and filename.endswith(where)
    )


def _called_from(stats: pstats.Stats, where: str, function: str, caller: tuple[str, str]) -> float:
    """The cumulative time of `function` in its calls from `caller` (file, function)."""
    table: dict[tuple[str, int, str], tuple[int, int, float, float, dict[Any, Any]]]
    table = stats.stats  # type: ignore[attr-defined]
    return sum(
        float(timing[3])
        for (filename, _, name), entry in table.items()
        if name == function and filename.endswith(where)
        for (caller_file, _, caller_name), timing in entry[4].items()
        if caller_name == caller[1] and caller_file.endswith(caller[0])
    )


def phases(profile: Path, wall: float) -> dict[str, float]:
    """Seconds per phase of the profiled run that took `wall` seconds."""
    stats = pstats.Stats(str(profile))
    found = {label: _cumulative(stats, where, name) for label, where, name in PHASES[:1]}
    found[PULL] = _cumulative(stats, *PULL_WAIT) - _called_from(
        stats, "pybootc/stores/layered.py", "layer_commit", PULL_WAIT
    )
    found |= {label: _cumulative(stats, where, name) for label, where, name in PHASES[1:]}
    main = _cumulative(stats, *MAIN)
    found[REST] = max(0.0, main - sum(found.values()))
    found[STARTUP] = max(0.0, wall - main)
    return {label: round(seconds, 2) for label, seconds in found.items()}


def _profiled(env: p.Env, run: Callable[[Path], Sample]) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="bench-profile-") as scratch:
        profile = Path(scratch) / "run.prof"
        # Every bootc the run starts writes it; the last one, the command timed, stays.
        os.environ["BENCH_CPROFILE"] = str(profile)
        try:
            sample = p.in_fresh_filesystem(env, run)
        finally:
            del os.environ["BENCH_CPROFILE"]
        return {"wall_s": round(sample.seconds, 2), "phases": phases(profile, sample.seconds)}


def profile_runs(
    env: p.Env, size: str, repo: str, layers: set[str], say: Callable[[str], None]
) -> dict[str, object]:
    """The install and the one-layer update of the Debian workload of `size`, profiled
    once per backend."""
    runs: dict[str, object] = {}

    def install(backend: str) -> Callable[[Path], Sample]:
        return lambda mount: p.install(env, mount, env.image(repo, "v1"), backend)

    def update(backend: str) -> Callable[[Path], Sample]:
        return lambda mount: p.update(env, mount, repo, backend, layers)[0]

    for backend in p.BACKENDS:
        runs[f"{backend} install"] = _profiled(env, install(backend))
        runs[f"{backend} update"] = _profiled(env, update(backend))
        say(f"  profiled {backend}: install and update")
    return {"size": size, "runs": runs}
