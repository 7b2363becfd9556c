"""`make demo`: the main job on an embedded default, with no registry and no network.

It builds a small bootable-looking sample image into an OCI layout, flattens it
with both sources through the real `bootc` command, and shows that the two trees
are the same. Later issues grow this into install, switch, upgrade and rollback.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from pybootc.layers.listing import diff_listings, list_tree
from pybootc.ocibuild import (
    Compression,
    ImageSpec,
    OciLayout,
    directory,
    file,
    hardlink,
    layer,
    opaque,
    symlink,
    whiteout,
)

WORK = Path("demo/work")
KVER = "6.1.0-demo"
# A version 2 file capability granting cap_net_raw, as ping carries.
CAP_NET_RAW = bytes.fromhex("0100000200200000000000000000000000000000")

SAMPLE = ImageSpec(
    (
        layer(
            directory("usr"),
            directory("usr/bin"),
            directory("usr/lib"),
            symlink("bin", "usr/bin"),
            symlink("lib", "usr/lib"),
            file("usr/bin/sh", b"#!demo shell\n", mode=0o755),
            hardlink("usr/bin/dash", "usr/bin/sh", mode=0o755),
            directory("usr/lib/modules"),
            directory(f"usr/lib/modules/{KVER}"),
            file(f"usr/lib/modules/{KVER}/vmlinuz", b"\x7fKERNEL" * 512),
            directory("etc"),
            file("etc/os-release", 'ID=pybootc-demo\nPRETTY_NAME="pybootc demo"\n'),
            directory("etc/apt"),
            file("etc/apt/sources.list", "deb old\n"),
            directory("var"),
            directory("var/lib"),
        ),
        layer(
            file("usr/bin/ping", b"ping", mode=0o4755, xattrs={"security.capability": CAP_NET_RAW}),
            whiteout("usr/bin/dash"),
            opaque("etc/apt"),
            file("etc/apt/sources.list", "deb new\n"),
            compression=Compression.ZSTD,
        ),
        layer(file("etc/motd", "Welcome to the pybootc demo\n"), file("var/lib/state", "")),
    ),
    labels={"org.opencontainers.image.version": "1"},
)


def bootc(*args: str) -> str:
    cmd = [sys.executable, "-m", "pybootc", *args]
    print("$ bootc " + " ".join(args))
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    sys.stdout.write(proc.stdout)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise SystemExit(proc.returncode)
    return proc.stdout


def main() -> int:
    console = Console()
    shutil.rmtree(WORK, ignore_errors=True)
    layout = OciLayout(WORK / "oci")
    layout.add_image("v1", SAMPLE)
    image = layout.ref("v1")
    console.print(f"[bold]Built[/] {image} ({len(SAMPLE.layers)} layers)")
    outputs = {}
    for source in ("blobs", "containers-storage"):
        out = WORK / f"flat-{source}"
        bootc("internals", "flatten", "--source", source, image, "--output", str(out))
        outputs[source] = list_tree(out)
    table = Table(title="Flattened sample image")
    table.add_column("path")
    table.add_column("type")
    table.add_column("mode")
    table.add_column("links")
    for entry in outputs["blobs"]:
        table.add_row(entry.path, entry.kind, f"{entry.mode:04o}", entry.link_group or "")
    console.print(table)
    differences = diff_listings(outputs["containers-storage"], outputs["blobs"])
    if differences:
        console.print("[red]The two sources differ:[/]\n" + "\n".join(differences))
        return 1
    console.print(f"[green]Both sources give the same {len(outputs['blobs'])} entries.[/]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
