"""`make demo`: the main job on an embedded default, with no registry and no network.

It builds two versions of a small bootable image into an OCI layout, shows that
both flattening sources give the same tree, then installs version 1 into a fresh
sysroot with the container backend, switches to version 2, checks for updates,
shows status, rolls back and shows status again, all through the real `bootc`.
The sysroot is a loop-mounted ext4 under demo/, so nothing touches the host's
own deployments or filesystems.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from rich.console import Console

from pybootc import tools
from pybootc.layers.listing import diff_listings, list_tree
from pybootc.ostree.sysroot import unlock_deployment_roots
from pybootc.sample.image import sample_image
from pybootc.sample.ocibuild import OciLayout

DEMO = Path("demo").absolute()
WORK = DEMO / "work"
SYSROOT = DEMO / "sysroot"
DISK = WORK / "disk.img"

console = Console(highlight=False)


def sh(*cmd: str) -> None:
    tools.run(cmd)


def bootc(*args: str) -> str:
    """Run the real `bootc` command line, showing the command and what it says."""
    console.print(f"[bold cyan]$ bootc {' '.join(args)}[/]")
    proc = tools.run([sys.executable, "-m", "pybootc", *args], check=False)
    out, err = proc.stdout.decode(), proc.stderr.decode()
    sys.stdout.write(out)
    sys.stderr.write(err)
    if proc.returncode != 0:
        raise SystemExit(proc.returncode)
    return out


def fresh_sysroot() -> None:
    """An empty ext4 filesystem mounted at demo/sysroot, as an installer would get."""
    if tools.run(["mountpoint", "-q", SYSROOT], check=False).returncode == 0:
        unlock_deployment_roots(SYSROOT)
        sh("umount", str(SYSROOT))
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    SYSROOT.mkdir(parents=True, exist_ok=True)
    sh("truncate", "-s", "2G", str(DISK))
    sh("mkfs.ext4", "-q", str(DISK))
    sh("mount", "-o", "loop", str(DISK), str(SYSROOT))


def main() -> int:
    fresh_sysroot()
    layout = OciLayout(WORK / "oci")
    layout.add_image("v1", sample_image("1.0"))
    layout.add_image("v2", sample_image("2.0", created="2026-02-01T00:00:00Z"))
    v1, v2 = layout.ref("v1"), layout.ref("v2")
    console.rule("Flattening: tar blobs and containers-storage give the same tree")
    trees = {}
    for source in ("blobs", "containers-storage"):
        out = WORK / f"flat-{source}"
        bootc("internals", "flatten", "--source", source, v1, "--output", str(out))
        trees[source] = list_tree(out)
    differences = diff_listings(trees["containers-storage"], trees["blobs"])
    if differences:
        console.print("[red]The two sources differ:[/]\n" + "\n".join(differences))
        return 1
    console.print(f"[green]Same {len(trees['blobs'])} entries from both sources.[/]")

    console.rule("Install, switch, check, status, rollback")
    root = ["--sysroot", str(SYSROOT)]
    bootc("install", "to-filesystem", "--backend", "container", "--source-imgref", v1, str(SYSROOT))
    bootc(*root, "switch", v2)
    bootc(*root, "upgrade", "--check")
    bootc(*root, "status", "--format", "humanreadable")
    bootc(*root, "internals", "podman", "images")
    bootc(*root, "rollback")
    bootc(*root, "status", "--format", "humanreadable")
    console.print(f"[green]Done.[/] The sysroot stays mounted at {SYSROOT} to look at.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
