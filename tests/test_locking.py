"""The sysroot lock from the command line: a second mutating command waits and says so,
and `status` is never blocked by it."""

from __future__ import annotations

import multiprocessing
import multiprocessing.synchronize
import subprocess
import sys
from pathlib import Path

from pybootc.ostree.sysroot import Sysroot
from pybootc.sample.image import sample_image
from pybootc.sample.ocibuild import OciLayout
from tests.backend_support import bootc, ok


def _hold_lock(
    path: str, locked: multiprocessing.synchronize.Event, done: multiprocessing.synchronize.Event
) -> None:
    with Sysroot.open(Path(path)).lock():
        locked.set()
        done.wait(60)


def test_rollback_waits_for_the_lock_and_status_does_not(target: Path, tmp_path: Path) -> None:
    layout = OciLayout(tmp_path / "oci")
    layout.add_image("v1", sample_image("1.0"))
    layout.add_image("v2", sample_image("2.0"))
    ok(bootc("install", "to-filesystem", "--source-imgref", layout.ref("v1"), str(target)))
    ok(bootc("switch", "--transport", "oci", f"{layout.path}:v2", sysroot=target))

    context = multiprocessing.get_context("spawn")
    locked, done = context.Event(), context.Event()
    holder = context.Process(target=_hold_lock, args=(str(target), locked, done))
    holder.start()
    try:
        assert locked.wait(30)
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
        assert '"version": "2.0"' in status
    finally:
        done.set()
        holder.join(30)
    out, err = rollback.communicate(timeout=60)
    assert rollback.returncode == 0, err
    assert out == "Next boot: rollback deployment\n"
