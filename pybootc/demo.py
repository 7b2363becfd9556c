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
from pybootc.ocibuild import OciLayout
from pybootc.sample_image import sample_image

WORK = Path("demo/work")
SAMPLE = sample_image("1.0")


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
