"""The sysroot lock from the command line: a second mutating command waits and says so,
commands that mutate run one after the other, and `status` is never blocked by them and
never reads a half-written state."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from pybootc.ostree.origin import commit_image
from pybootc.ostree.sysroot import Sysroot
from pybootc.sample.image import sample_image
from pybootc.sample.ocibuild import OciLayout
from tests.backend_support import bootc, ok
from tests.sysroot_support import lock_held_elsewhere


def test_rollback_waits_for_the_lock_and_status_does_not(target: Path, tmp_path: Path) -> None:
    layout = OciLayout(tmp_path / "oci")
    layout.add_image("v1", sample_image("1.0"))
    layout.add_image("v2", sample_image("2.0"))
    ok(bootc("install", "to-filesystem", "--source-imgref", layout.ref("v1"), str(target)))
    ok(bootc("switch", "--transport", "oci", f"{layout.path}:v2", sysroot=target))

    with lock_held_elsewhere(target):
        rollback = subprocess.Popen(
            [sys.executable, "-m", "pybootc", "--sysroot", str(target), "rollback"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert rollback.stderr is not None
        # Read before the holder lets go: the wait is announced while it lasts.
        assert rollback.stderr.readline() == "Waiting for sysroot lock...\n"
        status = ok(bootc("status", "--format", "json", sysroot=target))
        assert '"version":"2.0"' in status
    out, err = rollback.communicate(timeout=60)
    assert rollback.returncode == 0, err
    assert out == "Next boot: rollback deployment\n"


def test_parallel_switches_serialize_and_status_reads_only_whole_states(
    target: Path, tmp_path: Path
) -> None:
    layout = OciLayout(tmp_path / "oci")
    for version in ("1.0", "2.0", "3.0"):
        layout.add_image(f"v{version[0]}", sample_image(version))
    ok(bootc("install", "to-filesystem", "--source-imgref", layout.ref("v1"), str(target)))
    switches = [
        subprocess.Popen(
            [sys.executable, "-m", "pybootc", "--sysroot", str(target), "switch",
             "--transport", "oci", f"{layout.path}:{tag}"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for tag in ("v2", "v3")
    ]  # fmt: skip
    # Read the host again and again while both run: every reading is a whole state,
    # (what boots next, its rollback) before, between or after the two switches.
    whole = {("1.0", None), ("2.0", "1.0"), ("3.0", "1.0"), ("3.0", "2.0"), ("2.0", "3.0")}
    readings = 0
    while any(switch.poll() is None for switch in switches):
        status = json.loads(ok(bootc("status", "--format", "json", sysroot=target)))["status"]
        assert (version_of(status["staged"]), version_of(status["rollback"])) in whole, status
        readings += 1
    for switch in switches:
        out, err = switch.communicate(timeout=60)
        assert switch.returncode == 0, err
        assert out.startswith("Queued for next boot: ")
    assert readings > 0
    # One after the other: the second deployed on top of the first, which is its
    # rollback now. (Both at once would each have put its own on top of v1.)
    versions = deployed_versions(target)
    assert sorted(v or "" for v in versions) == ["2.0", "3.0"], versions
    assert (
        subprocess.run(
            ["ostree", "fsck", "--quiet", f"--repo={target}/ostree/repo"], check=False
        ).returncode
        == 0
    )


def version_of(entry: dict[str, Any] | None) -> str | None:
    """The image version of a status entry (None: no deployment there)."""
    return None if entry is None else str(entry["image"]["version"])


def deployed_versions(target: Path) -> list[str | None]:
    """Each deployment's image version, in boot order."""
    sysroot = Sysroot.open(target)
    images = [commit_image(sysroot.repo, d.checksum) for d in sysroot.deployments()]
    return [image.version if image else None for image in images]
