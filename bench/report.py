"""Results: the rich table on the terminal, and JSON plus markdown in bench/results/.

Targets are checked here: our wall time at most the baseline's, and our own
process's peak RSS under 200 MB.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table
from scenarios import Comparison

from pybootc import tools
from pybootc.errors import BootcError

MAX_RATIO = 1.0
MAX_RSS_MB = 200.0


@dataclass(frozen=True)
class Verdict:
    wall_ok: bool
    rss_ok: bool

    @staticmethod
    def of(row: Comparison) -> Verdict:
        rss = row.ours.peak_self_mb
        return Verdict(row.ratio <= MAX_RATIO, rss is not None and rss < MAX_RSS_MB)


_COLUMNS = (
    "workload",
    "source",
    "ours s",
    "flatten s",
    "baseline s",
    "ratio",
    "files/s",
    "MB/s",
    "CPU s",
    "RSS MB",
    "tree RSS MB",
    "wall ≤ 1.0",
    "RSS < 200",
)


def _cells(row: Comparison) -> list[str]:
    verdict = Verdict.of(row)
    self_mb = row.ours.peak_self_mb
    return [
        row.workload,
        row.source,
        f"{row.ours.median_s:.2f}",
        f"{row.flatten_s:.2f}",
        f"{row.baseline.median_s:.2f}",
        f"{row.ratio:.2f}",
        f"{row.files_per_s:,.0f}",
        f"{row.mb_per_s:.1f}",
        f"{row.ours.median_cpu_s:.1f} / {row.baseline.median_cpu_s:.1f}",
        "?" if self_mb is None else f"{self_mb:.0f}",
        f"{row.ours.peak_tree_mb:.0f} / {row.baseline.peak_tree_mb:.0f}",
        "pass" if verdict.wall_ok else "FAIL",
        "pass" if verdict.rss_ok else "FAIL",
    ]


_NOTES = (
    "ours s: median wall of `bootc internals flatten` (interpreter start-up included; for "
    "containers-storage also its own skopeo copy into the pre-pulled storage). "
    "flatten s: the time bootc reports for flattening alone. baseline s: median wall of "
    "`umoci raw unpack` (blobs) or `podman image mount` + `cp -a` (containers-storage). "
    "files/s and MB/s: entries and regular-file bytes of the flattened tree over ours s. "
    "CPU s: user+sys time of each side's process tree, ours / baseline. "
    "RSS MB: peak of our Python process alone. tree RSS MB: largest process in each "
    "side's tree (ours includes skopeo), ours / baseline."
)


def print_table(rows: Sequence[Comparison], console: Console) -> None:
    table = Table(title="internals flatten vs baselines (median of runs)")
    for column in _COLUMNS:
        table.add_column(column, justify="left" if column in ("workload", "source") else "right")
    for row in rows:
        cells = _cells(row)
        styled = [*cells[:-2], *(_style(c) for c in cells[-2:])]
        table.add_row(*styled)
    console.print(table)
    console.print(_NOTES, style="dim")
    for row in rows:
        if row.extra_s:
            extras = ", ".join(f"{k} {v:.2f}s" for k, v in row.extra_s.items())
            console.print(f"{row.workload} / {row.source}: {extras}")
        if row.ours_tree_entries != row.baseline_tree_entries:
            console.print(
                f"[yellow]{row.workload} / {row.source}: our tree has "
                f"{row.ours_tree_entries} entries, the baseline's {row.baseline_tree_entries}"
            )


def _style(verdict: str) -> str:
    return f"[green]{verdict}[/]" if verdict == "pass" else f"[bold red]{verdict}[/]"


def markdown(rows: Sequence[Comparison], environment: dict[str, object]) -> str:
    lines = [
        f"# Flatten benchmark, {environment['date']}",
        "",
        f"Commit {environment['commit']}, {environment['cpus']} CPUs, "
        f"kernel {environment['kernel']}, {environment['runs']} runs after one warm-up, "
        f"{environment['scratch_filesystem']}; load average before "
        f"{environment['loadavg_before']}, after {environment['loadavg_after']}.",
        "",
        "| " + " | ".join(_COLUMNS) + " |",
        "|" + "|".join("---" for _ in _COLUMNS) + "|",
    ]
    lines += ["| " + " | ".join(_cells(row)) + " |" for row in rows]
    lines += ["", _NOTES, ""]
    for row in rows:
        extras = ", ".join(f"{k} {v:.2f}s" for k, v in row.extra_s.items())
        counts = f"entries: ours {row.ours_tree_entries}, baseline {row.baseline_tree_entries}"
        lines.append(
            f"- {row.workload} / {row.source}: {counts}" + (f"; {extras}" if extras else "")
        )
    return "\n".join(lines) + "\n"


def _row_json(row: Comparison) -> dict[str, object]:
    verdict = Verdict.of(row)
    return {
        "workload": row.workload,
        "source": row.source,
        "baseline": row.baseline_name,
        "ours_s": row.ours.median_s,
        "ours_runs_s": row.ours.runs_s,
        "flatten_s": row.flatten_s,
        "baseline_s": row.baseline.median_s,
        "baseline_runs_s": row.baseline.runs_s,
        "ratio": row.ratio,
        "entries": row.summary.entries,
        "bytes": row.summary.bytes,
        "layers": row.summary.layers,
        "files_per_s": row.files_per_s,
        "mb_per_s": row.mb_per_s,
        "ours_cpu_s": row.ours.median_cpu_s,
        "baseline_cpu_s": row.baseline.median_cpu_s,
        "ours_self_rss_mb": row.ours.peak_self_mb,
        "ours_tree_rss_mb": row.ours.peak_tree_mb,
        "baseline_tree_rss_mb": row.baseline.peak_tree_mb,
        "ours_tree_entries": row.ours_tree_entries,
        "baseline_tree_entries": row.baseline_tree_entries,
        **row.extra_s,
        "wall_target_met": verdict.wall_ok,
        "rss_target_met": verdict.rss_ok,
    }


def _tool_version(*argv: str) -> str:
    try:
        return tools.run(argv).stdout.decode().strip().splitlines()[0]
    except (BootcError, IndexError):
        return "unknown"


def environment(
    runs: int, repo: Path, scratch: Path, load_before: tuple[float, float, float]
) -> dict[str, object]:
    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "commit": _tool_version("git", "-C", str(repo), "rev-parse", "--short", "HEAD"),
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "umoci": _tool_version("umoci", "--version"),
        "skopeo": _tool_version("skopeo", "--version"),
        "podman": _tool_version("podman", "--version"),
        "runs": runs,
        "scratch_filesystem": f"outputs on a loop-mounted ext4 whose image is in {scratch}",
        # Other jobs may share the machine: the load around the run says how much.
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "targets": {"max_ratio": MAX_RATIO, "max_rss_mb": MAX_RSS_MB},
    }


def save(
    rows: Sequence[Comparison],
    workloads: dict[str, dict[str, object]],
    env: dict[str, object],
    results: Path,
) -> list[Path]:
    """Write latest.{json,md} and a timestamped copy of each; return the paths."""
    results.mkdir(parents=True, exist_ok=True)
    document = {"environment": env, "workloads": workloads, "results": [_row_json(r) for r in rows]}
    text = {"json": json.dumps(document, indent=2) + "\n", "md": markdown(rows, env)}
    stamp = time.strftime("%Y%m%dT%H%M%S")
    written = []
    for ext, content in text.items():
        for name in ("latest", stamp):
            path = results / f"{name}.{ext}"
            path.write_text(content)
            written.append(path)
    return written
