"""`bootc state wipe-ostree`: every deployment removed, once confirmed; refused and
nothing changed otherwise."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pybootc.ostree.sysroot import Sysroot
from pybootc.sample.image import sample_image
from pybootc.sample.ocibuild import OciLayout
from tests.backend_support import bootc, install, ok, one_error_line, state, switch_oci

QUESTION = "? Nothing will boot from it until an image is installed again. [y/N] "


def wipe(target: Path, *args: str, answer: str | None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pybootc", "--sysroot", str(target), "state", "wipe-ostree", *args],
        input=answer,
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.fixture
def installed(tmp_path: Path, target: Path) -> Path:
    layout = OciLayout(tmp_path / "oci")
    layout.add_image("v1", sample_image("1.0"))
    layout.add_image("v2", sample_image("2.0"))
    ok(install(target, layout.ref("v1"), backend="ostree"))
    ok(switch_oci(target, layout, "v2"))
    return target


@pytest.mark.parametrize("answer", ["n\n", "\n", "", "maybe\n"])
def test_anything_but_yes_keeps_the_deployments(installed: Path, answer: str) -> None:
    before = state(installed)
    proc = wipe(installed, answer=answer)
    assert proc.returncode == 1
    assert proc.stderr == (
        f"Remove all 2 deployments of {installed}{QUESTION}"
        "error: Not confirmed: the deployments are kept\n"
    )
    assert state(installed) == before


def test_yes_removes_every_deployment(installed: Path) -> None:
    proc = wipe(installed, answer="y\n")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "Removed 2 deployments\n"
    assert Sysroot.open(installed).deployments() == []
    assert list((installed / "boot/loader/entries").glob("*.conf")) == []
    # With no deployment, switch --mutate-in-place has no origin to rewrite.
    before = state(installed)
    mutate = bootc("switch", "--mutate-in-place", "quay.io/example/os:1", sysroot=installed)
    assert one_error_line(mutate) == "error: Failed to find a deployment"
    assert state(installed) == before


def test_yes_on_the_command_line_asks_nothing(installed: Path) -> None:
    proc = wipe(installed, "--yes", answer=None)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "Removed 2 deployments\n", "")
    assert Sysroot.open(installed).deployments() == []
