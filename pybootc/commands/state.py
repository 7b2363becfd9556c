"""`bootc state wipe-ostree`: remove every deployment of a sysroot, once confirmed."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TextIO

from pybootc.commands.report import Report
from pybootc.errors import BootcError
from pybootc.ostree.sysroot import Sysroot


def confirmed(question: str, answers: TextIO, prompt: TextIO) -> bool:
    """Ask on `prompt`; only `y` or `yes` read from `answers` is a yes."""
    prompt.write(f"{question} [y/N] ")
    prompt.flush()
    return answers.readline().strip().lower() in ("y", "yes")


def wipe_ostree(sysroot_path: Path, *, yes: bool) -> Report:
    """Remove all deployments: upstream's `state wipe-ostree`. Nothing boots from the
    sysroot afterwards, so it asks first (on stderr, the answer read from stdin),
    unless `yes`."""
    sysroot = Sysroot.open(sysroot_path)
    count = len(sysroot.deployments())
    question = (
        f"Remove all {count} deployments of {sysroot_path}? Nothing will boot from it"
        " until an image is installed again."
    )
    if not yes and not confirmed(question, sys.stdin, sys.stderr):
        raise BootcError("Not confirmed: the deployments are kept")
    removed = sysroot.remove_all_deployments()
    return Report((f"Removed {removed} deployments",))
