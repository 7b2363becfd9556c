"""The benchmark's report: bench/results/report.md, and report.png, a chart a person reads
at a glance (ratios to the baselines per size; disk used per backend and filesystem).

The targets are issue 12's; every one is a ratio between figures of one run, or a bound
on a measured size. Where one is missed the report says so, in plain words.
"""

from __future__ import annotations

import math
import os
import platform
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from measure import Series

from pybootc import tools
from pybootc.errors import BootcError

MB = 1 << 20
# GLib SHA-256 passes libostree makes over the kernel and initramfs in an update from
# one deployment to two: the boot checksum, then each deployment's boot entry.
KERNEL_PASSES = 3


def series_json(series: Series) -> dict[str, object]:
    return {
        "median_s": round(series.median_s, 3),
        "runs_s": series.runs_s,
        "cpu_s": round(series.median_cpu_s, 3),
        "self_rss_mb": None if series.peak_self_mb is None else round(series.peak_self_mb, 1),
        "tree_rss_mb": round(series.peak_tree_mb, 1),
    }


def _tool_version(*argv: str) -> str:
    try:
        out = tools.run(list(argv)).stdout.decode(errors="replace")
    except BootcError as err:
        return f"unavailable ({err})"
    return out.strip().splitlines()[0] if out.strip() else ""


def environment() -> dict[str, object]:
    return {
        "debian": Path("/etc/debian_version").read_text().strip(),
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "skopeo": _tool_version("skopeo", "--version"),
        "podman": _tool_version("podman", "--version"),
        "ostree": _tool_version("ostree", "--version").split("'")[1:2],
        "umoci": _tool_version("umoci", "--version"),
    }


def _t(times: Mapping[str, Any], name: str) -> float:
    return float(times[name]["median_s"])


def _mark(ok: bool) -> str:
    return "✅" if ok else "❌ missed"


def _fresh_rows(sizes: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    rows, misses = [], []
    for size, found in sizes.items():
        t = found["times"]
        ostree, container = _t(t, "ostree install"), _t(t, "container install")
        a, b = _t(t, "(a) install"), _t(t, "(b) install")
        floor = _floor(t)
        measured_floor = not math.isnan(floor)
        gnu = _t(t, "floor, GNU tools" if measured_floor else "floor")
        vs_b, vs_floor, vs_a = ostree / b, ostree / floor, container / a
        rows.append(
            f"| {size} ({found['unpacked_bytes'] // MB} MB) | {ostree:.2f} | {b:.2f} | "
            f"{vs_b:.2f} {_mark(vs_b <= 0.6)} | "
            + (
                f"{floor:.2f} | {vs_floor:.2f} {_mark(vs_floor <= 1.6)} | "
                if measured_floor
                else "not measured | ❌ not measured | "
            )
            + f"{gnu:.2f} ({ostree / gnu:.2f}×) | "
            f"{container:.2f} | {a:.2f} | {vs_a:.2f} {_mark(vs_a <= 0.85)} |"
        )
        if not measured_floor:
            misses.append(f"{size}: the floor of ISA-L and OpenSSL was not measured in this run.")
        for what, value, bound in (
            ("the ostree backend against (b)", vs_b, 0.6),
            *([("the ostree backend against the floor", vs_floor, 1.6)] if measured_floor else []),
            ("the container backend against (a)", vs_a, 0.85),
        ):
            if value > bound:
                misses.append(f"{size}: {what} is {value:.2f}, over the target of {bound}.")
    return rows, misses


def _floor(times: Mapping[str, Any]) -> float:
    """The floor of ISA-L and OpenSSL; NaN where the results have none (no bar on the
    chart): those from before it was measured took GNU tools' as "floor"."""
    return _t(times, "floor") if "floor, GNU tools" in times else math.nan


def _fetched(found: Mapping[str, Any], name: str) -> int | None:
    """The most a run of `name` fetched; None if the run recorded nothing (a miss)."""
    values = found["fetched"].get(name)
    return max(values) if values else None


def _update_rows(sizes: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    rows, misses = [], []
    for size, found in sizes.items():
        t = found["times"]
        for backend, baseline in (("ostree", "(b)"), ("container", "(a)")):
            fresh, update = _t(t, f"{backend} install"), _t(t, f"{backend} update")
            switch = _t(t, f"{backend} switch")
            fetched = _fetched(found, f"{backend} update")
            fetched_ratio = (
                float("inf") if fetched is None else fetched / found["update_layer_bytes"]
            )
            fetched_cell = (
                "not recorded ❌"
                if fetched is None
                else f"{fetched / MB:.1f} MB, {fetched_ratio:.2f}× {_mark(fetched_ratio <= 1.05)}"
            )
            share = update / fresh
            alone = _t(t, "deploy alone") if "deploy alone" in t else None
            # libostree's passes over the kernel and initramfs in an update (see
            # pipelines.deploy_alone); results from before this figure have none.
            hashing = KERNEL_PASSES * _t(t, "kernel hash") if "kernel hash" in t else None
            deploy = "not measured" if alone is None else f"{alone:.2f} ({alone / fresh:.0%})"
            if hashing is not None:
                deploy += f"; hashing {hashing:.2f} ({hashing / fresh:.0%})"
            rows.append(
                f"| {size} | {backend} | {fresh:.2f} | {switch:.2f} | {update:.2f} | "
                f"{share:.0%} {_mark(share <= 0.15)} | {deploy} | "
                f"{_t(t, f'{baseline} update'):.2f} | "
                f"{fetched_cell} |"
            )
            if share > 0.15:
                floor = (
                    ""
                    if alone is None
                    else (f" libostree's deploy alone takes {alone / fresh:.0%} of it.")
                )
                if hashing is not None:
                    floor += (
                        f" Its {KERNEL_PASSES} passes of GLib's SHA-256 over the kernel and"
                        f" initramfs take {hashing / fresh:.0%}."
                    )
                misses.append(
                    f"{size}, {backend}: an update takes {share:.0%} of a fresh install"
                    f" (target 15%).{floor}"
                )
            if fetched is None:
                misses.append(f"{size}, {backend}: an update recorded no fetched bytes.")
            elif fetched_ratio > 1.05:
                misses.append(
                    f"{size}, {backend}: an update fetched {fetched_ratio:.2f}× the changed layer (target 1.05)."
                )
    return rows, misses


def _check_rows(sizes: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    rows, misses = [], []
    for size, found in sizes.items():
        t = found["times"]
        for backend in ("ostree", "container"):
            check, status = _t(t, f"{backend} check"), _t(t, f"{backend} status")
            counted = _fetched(found, f"{backend} check")
            # A check that recorded nothing is not a check that fetched nothing.
            blobs = -1 if counted is None else counted
            rss = max((t[name]["self_rss_mb"] or 0) for name in t if name.startswith(backend))
            rows.append(
                f"| {size} | {backend} | {check:.2f} {_mark(check <= 1.0)} | "
                f"{'not recorded' if blobs < 0 else blobs} {_mark(blobs == 0)} | "
                f"{status:.2f} {_mark(status <= 0.3)} | {rss:.0f} {_mark(rss <= 200)} |"
            )
            if check > 1.0 or blobs:
                told = "recorded no fetch count" if blobs < 0 else f"fetched {blobs} blobs"
                misses.append(f"{size}, {backend}: upgrade --check took {check:.2f} s and {told}.")
            if status > 0.3:
                misses.append(f"{size}, {backend}: status took {status:.2f} s (target 0.3 s).")
            if rss > 200:
                misses.append(f"{size}, {backend}: peak RSS {rss:.0f} MB (target 200 MB).")
    return rows, misses


def _disk_rows(disk: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    rows, misses = [], []
    unpacked = disk["unpacked_bytes"]
    for fs, per_fs in _filesystems(disk).items():
        baselines = {"unpacked": "the image unpacked", "storage_alone": "containers-storage alone"}
        for key, what in baselines.items():
            rows.append(f"| {fs} | {what} | {per_fs[key] / MB:.0f} | "
                        f"{per_fs[key] / unpacked:.2f} | | |")  # fmt: skip
        for backend in ("ostree", "container"):
            used = per_fs[backend]
            ratio = used["install"] / unpacked
            reflinks = fs in ("xfs", "btrfs") and backend == "container"
            verdict = f" {_mark(ratio <= 1.1)}" if reflinks else ""
            rows.append(
                f"| {fs} | {backend} backend | {used['install'] / MB:.0f} | {ratio:.2f}{verdict} | "
                f"{used['update'] / MB:.0f} | {'yes' if used['fsck_ok'] else 'NO'} |"
            )
            if reflinks and ratio > 1.1:
                misses.append(
                    f"{fs}, container backend: {ratio:.2f}× the unpacked image on disk "
                    f"(target 1.1). {_disk_why(per_fs, unpacked)}"
                )
    return rows, misses


def _filesystems(disk: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    return {fs: per_fs for fs, per_fs in disk.items() if isinstance(per_fs, dict)}


def _shadowed(per_fs: Mapping[str, Any], unpacked: int) -> int:
    """Bytes of the repo's file objects beyond the image's own files: the lower layers'
    versions of files a higher layer deletes or rewrites."""
    return int(per_fs["container_parts"]["file_bytes"]) - unpacked


def _disk_why(per_fs: Mapping[str, Any], unpacked: int) -> str:
    """In words, what a filesystem's baselines and parts say of the container backend's
    figure."""
    shadowed = _shadowed(per_fs, unpacked)
    return (
        f"On this filesystem the image unpacked alone takes {per_fs['unpacked'] / unpacked:.2f}×, "
        f"and in containers-storage alone {per_fs['storage_alone'] / unpacked:.2f}×: the lower "
        f"layers' versions of files a higher layer deletes or rewrites take {shadowed / MB:.0f} MB "
        f"({shadowed / unpacked:.2f}×), which every store of the layers keeps."
    )


def _disk_parts(disk: Mapping[str, Any]) -> list[str]:
    """Where the container backend's disk goes, per filesystem."""
    per_fs = _filesystems(disk)
    lines = [
        "",
        "### Where the container backend's disk goes, after the install",
        "",
        "Each part as much as removing it freed, in turn: bootc's storage, then the "
        "deployment (with its /etc and boot entries); what is left is the repo. Its objects "
        "are counted by the blocks they take.",
        "",
        "| filesystem | total MB | bootc's storage, its own MB | deployment, its own MB "
        "| repo MB | repo: file objects, data MB / blocks MB | repo: other objects, count / MB |",
        "|---|---|---|---|---|---|---|",
    ]
    for fs, p in ((fs, f["container_parts"]) for fs, f in per_fs.items()):
        lines.append(
            f"| {fs} | {p['install'] / MB:.1f} | {p['storage_own'] / MB:.1f} | "
            f"{p['deployment_own'] / MB:.1f} | {p['repo'] / MB:.1f} | "
            f"{p['file_bytes'] / MB:.1f} / {p['file_blocks'] / MB:.1f} | "
            f"{p['other_count']:,} / {p['other_blocks'] / MB:.1f} |"
        )
    some = next(iter(per_fs.values()))
    shadowed = _shadowed(some, disk["unpacked_bytes"])
    lines += [
        "",
        f"The file objects hold {some['container_parts']['file_bytes'] / MB:.0f} MB of data, "
        "the image's files "
        f"{disk['unpacked_bytes'] / MB:.0f} MB: the {shadowed / MB:.0f} MB between them are the "
        "lower layers' versions of the files a higher layer deletes or rewrites (less what "
        "the repo saves by storing equal files once). Every store "
        "that keeps an image's layers keeps them (containers-storage alone does), and the "
        "layer commits that let an update fetch and write only its new layers are such a "
        "store. The other objects are the layer commits' and the image's directory trees, "
        "one block each however small.",
    ]
    return lines


def _profile_lines(profiled: Mapping[str, Any]) -> list[str]:
    """The phases of each profiled run, and in words the two that took longest."""
    runs = profiled["runs"]
    names = list(runs)
    labels = list(next(iter(runs.values()))["phases"])
    lines = [
        f"One run of each on debian-{profiled['size']}, under cProfile (which slows Python "
        "code, so these walls are above the medians). Phases in seconds; they add up to "
        "the wall.",
        "",
        "| phase | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for label in labels:
        cells = [runs[name]["phases"][label] for name in names]
        if any(cells):
            lines.append(f"| {label} | " + " | ".join(f"{cell:.2f}" for cell in cells) + " |")
    lines.append("| **wall** | " + " | ".join(f"{runs[n]['wall_s']:.2f}" for n in names) + " |")
    lines.append("")
    for name in names:
        ranked = sorted(runs[name]["phases"].items(), key=lambda item: -item[1])[:2]
        wall = runs[name]["wall_s"]
        told = " and ".join(f"{label} ({s:.2f} s, {s / wall:.0%})" for label, s in ranked)
        lines.append(f"- {name}: most of the time goes to {told}.")
    return lines


def markdown(results: Mapping[str, Any]) -> str:
    env = results["environment"]
    lines = [
        "# pybootc benchmark",
        "",
        f"Debian {env['debian']}, kernel {env['kernel']}, {env['cpus']} CPUs, Python {env['python']}, "
        f"{env['skopeo']}, {env['podman']}, umoci {env['umoci']}. Medians of the runs. "
        "The figures of a ratio always come from one run of one part (a size of the Debian "
        "workload, the disk, ...); parts measured at other times, or by other code, say so "
        "under *Provenance* at the end. Scratch filesystems: ext4 images in RAM.",
        "",
        "## Fresh install",
        "",
        "(a) `skopeo copy` into containers-storage, `podman image mount`, `ostree commit`, deploy. "
        "(b) `umoci raw unpack`, `ostree commit`, deploy. Floor: the digest of each layer "
        "blob, its gunzip and the digest of its tar stream, with ISA-L and OpenSSL's SHA-256 "
        "in one process, as fast as this machine does it; beside it (in brackets, the "
        "ostree backend against it) the floor as issue 12 measured it, `gzip -dc | "
        "sha256sum`, which GNU tools make about three times as slow. Times in seconds; "
        "targets ≤ 0.6× (b), ≤ 1.6× the floor, ≤ 0.85× (a).",
        "",
        "| size | ostree | (b) | ostree/(b) | floor | ostree/floor | floor, GNU tools |"
        " container | (a) | container/(a) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    misses: list[str] = []
    rows, missed = _fresh_rows(results["sizes"])
    lines += rows
    misses += missed
    lines += [
        "",
        "## Switch and one-layer update",
        "",
        "Switch: to the same files in other layers (another build of the OS). Update: v2 adds one "
        "layer of 10 MB that does not compress; fetched: blob bytes the registry served for it. "
        "Targets: an update ≤ 15% of a fresh install, and ≤ 1.05× the changed layer fetched. "
        "Deploy alone: `ostree admin deploy --no-prune` of the deployed commit again (the "
        "deployment's checkout, the /etc merge, the boot entries), which every update through "
        "libostree does whatever changed; in brackets, its share of the fresh install. Of it, "
        "hashing: libostree reads the kernel and initramfs through GLib's SHA-256 once for "
        "the boot checksum as it checks the deployment out, and once per deployment as it "
        f"writes new boot entries: {KERNEL_PASSES} passes in an update from one deployment "
        f"to two (one pass timed alone, times {KERNEL_PASSES}).",
        "",
        "| size | backend | fresh s | switch s | update s | update/fresh | deploy alone s |"
        " baseline update s | fetched |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    rows, missed = _update_rows(results["sizes"])
    lines += rows
    misses += missed
    lines += [
        "",
        "## upgrade --check, status, memory",
        "",
        "| size | backend | check s (≤ 1 s) | blobs fetched (0) | status s (≤ 0.3 s) | peak RSS MB (≤ 200) |",
        "|---|---|---|---|---|---|",
    ]
    rows, missed = _check_rows(results["sizes"])
    lines += rows
    misses += missed
    if results.get("rss_method") != "VmHWM":
        lines += [
            "",
            "Peak RSS here is getrusage's ru_maxrss, as this run took it: an upper bound, "
            "since exec carries over the high-water mark of the benchmark process that "
            "spawned bootc. Runs since take VmHWM, bootc's own.",
        ]
    if "disk" in results:
        lines += [
            "",
            f"## Disk used ({results['disk']['workload']}, {results['disk']['unpacked_bytes'] // MB} MB unpacked)",
            "",
            "Used blocks of the filesystem after an install and after one update (data that "
            "reflinks share counts once), beside two baselines: the image unpacked by `umoci "
            "raw unpack` (one copy of its files, and the filesystem's own cost of holding "
            "them), and the image in containers-storage alone (`skopeo copy`, as podman keeps "
            "it). Target on XFS and btrfs, container backend: ≤ 1.1× the unpacked image (its "
            "regular files' bytes) after the install.",
            "",
            "| filesystem | what | after install MB | × unpacked | after update MB | fsck |",
            "|---|---|---|---|---|---|",
        ]
        rows, missed = _disk_rows(results["disk"])
        lines += rows + _disk_parts(results["disk"])
        misses += missed
    if "large" in results:
        lines += [
            "",
            "## Large layers (an ext4 image on the disk)",
            "",
            "| workload | backend | runs | install s | peak RSS MB, bootc (≤ 200) |"
            " peak RSS MB, largest process |",
            "|---|---|---|---|---|---|",
        ]
        for name, found in results["large"].items():
            for backend, t in found["times"].items():
                # Results from before the count was kept took one run each.
                count = found.get("runs", len(t["runs_s"]))
                rss = t["self_rss_mb"] or 0
                lines.append(
                    f"| {name}: {found['description']} | {backend} | {count} | {t['median_s']:.1f} | "
                    f"{rss:.0f} {_mark(rss <= 200)} | {t['tree_rss_mb']:.0f} |"
                )
                if rss > 200:
                    misses.append(f"{name}, {backend}: peak RSS {rss:.0f} MB (target 200 MB).")
    if "signatures" in results:
        lines += ["", "## Signature verification", "", *results["signatures"]["lines"]]
    if "labelled" in results:
        lines += ["", "## An image with an SELinux policy", "", *results["labelled"]["lines"]]
    if "partial" in results:
        lines += ["", "## Partial pulls (zstd:chunked)", "", *results["partial"]["lines"]]
    if "fsck" in results:
        fsck = results["fsck"]
        if fsck["failed"]:
            misses.append(f"`ostree fsck` failed after {len(fsck['failed'])} runs.")
        lines += [
            "",
            f"`ostree fsck` after every measured run that left a repo: {fsck['checked']} "
            f"checked, {len(fsck['failed'])} failed.",
        ]
    if "profiles" in results:
        lines += ["", "## Where the time goes", "", *_profile_lines(results["profiles"])]
    lines += ["", "## Targets missed", ""]
    lines += [f"- {miss}" for miss in misses] or ["None."]
    if misses and "profiles" in results:
        lines += [
            "",
            "Why: for the times, see the phases in *Where the time goes*; for the disk, "
            "*Where the container backend's disk goes*, above.",
        ]
    lines += _provenance_lines(results)
    return "\n".join(lines) + "\n"


def _provenance_lines(results: Mapping[str, Any]) -> list[str]:
    """When each part was measured, and by which commit of pybootc."""
    lines = ["", "## Provenance", ""]
    parts = results.get("provenance", {})
    if parts:
        lines += ["| part | measured | pybootc |", "|---|---|---|"]
        lines += [f"| {part} | {p['at']} | {p['revision']} |" for part, p in parts.items()]
    if "seconds" in results:
        lines += [
            "",
            f"The full run these parts were first measured in took {results['seconds'] // 60} min.",
        ]
    return lines


def chart(results: Mapping[str, Any], out: Path) -> None:
    """Two panels: each size's ratios against the baselines and the floor, with the
    targets drawn in; the disk each backend uses per filesystem, against the image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = results["sizes"]
    names = list(sizes)
    series = {
        "ostree / (b)  (≤ 0.6)": [
            _t(sizes[s]["times"], "ostree install") / _t(sizes[s]["times"], "(b) install")
            for s in names
        ],
        "ostree / floor  (≤ 1.6)": [
            _t(sizes[s]["times"], "ostree install") / _floor(sizes[s]["times"]) for s in names
        ],
        "container / (a)  (≤ 0.85)": [
            _t(sizes[s]["times"], "container install") / _t(sizes[s]["times"], "(a) install")
            for s in names
        ],
        "update / fresh, ostree  (≤ 0.15)": [
            _t(sizes[s]["times"], "ostree update") / _t(sizes[s]["times"], "ostree install")
            for s in names
        ],
        "update / fresh, container  (≤ 0.15)": [
            _t(sizes[s]["times"], "container update") / _t(sizes[s]["times"], "container install")
            for s in names
        ],
    }
    targets = [0.6, 1.6, 0.85, 0.15, 0.15]
    fig, axes = plt.subplots(1, 2 if "disk" in results else 1, figsize=(14, 5), squeeze=False)
    ax = axes[0][0]
    width = 0.8 / len(series)
    for index, ((label, values), target) in enumerate(zip(series.items(), targets, strict=True)):
        xs = [n + index * width for n in range(len(names))]
        ax.bar(xs, values, width, label=label)
        for x in xs:
            # Black and in front: a target below its bar must show through it.
            ax.hlines(
                target, x - width / 2, x + width / 2, colors="black", linestyles="dashed", zorder=3
            )
    ax.set_xticks([n + 0.4 - width / 2 for n in range(len(names))])
    ax.set_xticklabels([f"{s} ({sizes[s]['unpacked_bytes'] // MB} MB)" for s in names])
    ax.set_ylabel("ratio (dashed: target)")
    ax.set_title("Time, against the baselines of the same run")
    ax.legend(fontsize="small")
    if "disk" in results:
        disk = results["disk"]
        per_fs = _filesystems(disk)
        fss = list(per_fs)
        ax = axes[0][1]
        bars: dict[str, Callable[[Mapping[str, Any]], int]] = {
            "the image unpacked": lambda f: f["unpacked"],
            "containers-storage alone": lambda f: f["storage_alone"],
            "ostree backend, after install": lambda f: f["ostree"]["install"],
            "container backend, after install": lambda f: f["container"]["install"],
        }
        width = 0.8 / len(bars)
        for index, (label, used) in enumerate(bars.items()):
            xs = [n + index * width for n in range(len(fss))]
            heights = [used(per_fs[fs]) / disk["unpacked_bytes"] for fs in fss]
            ax.bar(xs, heights, width, label=label)
        ax.axhline(
            1.1,
            linestyle="dashed",
            color="grey",
            label="1.1× unpacked (target, container on XFS/btrfs)",
        )
        ax.set_xticks([n + 0.4 - width / 2 for n in range(len(fss))])
        ax.set_xticklabels(fss)
        ax.set_ylabel("disk used / unpacked image")
        ax.set_title(f"Disk used, {disk['workload']}")
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
