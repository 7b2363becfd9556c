"""SIGKILL at seeded points through install, switch, upgrade, rollback and image prune,
for both backends. After every kill:

- the deployments are those from before, or the new one on top;
- `ostree fsck` passes;
- the same command, run again, succeeds (an install that was killed only on its way
  out, complete, is refused again as any installed target is);
- and once it has, nothing half-made is left: no import work directory, and no layer
  that containers-storage marks incomplete.

Each command is timed once uninterrupted; the kills then land at 30 points spread over
that time (skopeo and podman die with it: the whole process group is killed).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from pybootc.commands.install import INSTALL_INCOMPLETE
from pybootc.ostree.sysroot import Sysroot, unlock_deployment_roots
from pybootc.sample.image import sample_image
from pybootc.sample.ocibuild import OciLayout, file, layer
from pybootc.stores.bootc_storage import bootc_storage
from tests.backend_support import bootc, install, ok, one_error_line

KILLS = 30
BACKENDS = ["ostree", "container"]


def argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "pybootc", *args]


def run_killed(command: list[str], delay: float) -> bool:
    """Run `command`, SIGKILL its process group after `delay` s; whether it was killed
    (False: it had finished by then)."""
    proc = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        proc.wait(timeout=delay)
        return False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return True


def run(command: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, check=False)


def timed(command: list[str]) -> float:
    started = time.monotonic()
    subprocess.run(command, capture_output=True, check=True)
    return time.monotonic() - started


def deployments(target: Path) -> list[str]:
    return [d.checksum for d in Sysroot.open(target).deployments()]


def fsck(target: Path, when: str = "") -> None:
    proc = subprocess.run(
        ["ostree", "fsck", f"--repo={target}/ostree/repo"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, when + proc.stdout + proc.stderr


def nothing_half_made(target: Path) -> None:
    """No import work directory, and no layer containers-storage left incomplete."""
    tmp = target / "ostree/repo/tmp"
    assert not [p.name for p in tmp.iterdir() if p.name.startswith("pybootc-")]
    layers_json = bootc_storage(target).root / "overlay-layers/layers.json"
    if layers_json.exists():
        layers = json.loads(layers_json.read_text())
        assert not [la["id"] for la in layers if la.get("flags", {}).get("incomplete")]


@dataclass
class Trial:
    """One command to kill, and what may change: `before` deployments -> after."""

    command: Callable[[int], list[str]]
    prepare: Callable[[int], None] = lambda i: None
    swaps: bool = False  # rollback: the first two may trade places


def check_after_kill(target: Path, before: list[str], trial: Trial, when: str) -> None:
    after = deployments(target)
    if trial.swaps:
        assert after in (before, [before[1], before[0], *before[2:]]), (before, after)
    else:
        new_on_top = len(after) >= 1 and after[1:2] == before[:1]
        assert after == before or new_on_top, (before, after)
    fsck(target, when)


def delays(duration: float) -> list[float]:
    """KILLS points spread over the run (after the interpreter's start), then as many
    again at the same points, for kills that came too late to land."""
    points = [duration * (0.15 + 0.85 * (i + 0.5) / KILLS) for i in range(KILLS)]
    return points + points


def kill_through(target: Path, trial: Trial) -> None:
    """Time the command once, then kill it until KILLS kills have landed, checking
    the sysroot after each and retrying the command."""
    trial.prepare(-1)
    duration = timed(trial.command(-1))
    landed = 0
    for i, delay in enumerate(delays(duration)):
        if landed == KILLS:
            break
        trial.prepare(i)
        before = deployments(target)
        landed += run_killed(trial.command(i), delay)
        check_after_kill(target, before, trial, f"killed after {delay:.2f} s of {duration:.2f}: ")
        ok(run(trial.command(i)))
        nothing_half_made(target)
        fsck(target)
    assert landed == KILLS


@pytest.fixture
def layout(tmp_path: Path) -> OciLayout:
    found = OciLayout(tmp_path / "oci")
    found.add_image("v1", sample_image("1.0"))
    # Bigger than the sample alone, so that fetching and committing take a while.
    for tag in ("a", "b"):
        bulk = layer(*(file(f"usr/share/bulk/{tag}{n}", f"{tag}{n}\n" * 2000) for n in range(300)))
        found.add_image(tag, sample_image(f"{tag}", extra=(bulk,)))
    return found


def install_tag(target: Path, layout: OciLayout, backend: str, tag: str = "v1") -> None:
    ok(install(target, layout.ref(tag), backend=backend))


@pytest.mark.parametrize("backend", BACKENDS)
def test_switch_survives_kills(target: Path, layout: OciLayout, backend: str) -> None:
    install_tag(target, layout, backend)
    switch = Trial(
        lambda i: argv("--sysroot", str(target), "switch", "--transport", "oci",
                       f"{layout.path}:{'ab'[i % 2]}")
    )  # fmt: skip
    kill_through(target, switch)


@pytest.mark.parametrize("backend", BACKENDS)
def test_upgrade_survives_kills(target: Path, layout: OciLayout, backend: str) -> None:
    def new_build(i: int) -> None:
        bulk = layer(*(file(f"usr/share/bulk/{n}", f"{i} {n}\n" * 2000) for n in range(300)))
        layout.add_image("stream", sample_image(f"2.{i + 1}", extra=(bulk,)))

    new_build(-2)
    install_tag(target, layout, backend, "stream")
    upgrade = Trial(lambda i: argv("--sysroot", str(target), "upgrade"), prepare=new_build)
    kill_through(target, upgrade)


@pytest.mark.parametrize("backend", BACKENDS)
def test_rollback_survives_kills(target: Path, layout: OciLayout, backend: str) -> None:
    install_tag(target, layout, backend)
    ok(bootc("switch", "--transport", "oci", f"{layout.path}:a", sysroot=target))
    rollback = Trial(lambda i: argv("--sysroot", str(target), "rollback"), swaps=True)
    kill_through(target, rollback)


@pytest.mark.parametrize("backend", BACKENDS)
def test_image_prune_survives_kills(target: Path, layout: OciLayout, backend: str) -> None:
    install_tag(target, layout, backend)

    def leave_garbage(i: int) -> None:
        # --retain keeps the old image's ref: the next switch leaves it unused.
        ok(bootc("switch", "--retain", "--transport", "oci", f"{layout.path}:{'ab'[i % 2]}",
                 sysroot=target))  # fmt: skip

    prune = Trial(lambda i: argv("--sysroot", str(target), "image", "prune"), leave_garbage)
    kill_through(target, prune)


@pytest.mark.parametrize("backend", BACKENDS)
def test_install_survives_kills(target: Path, layout: OciLayout, backend: str) -> None:
    command = argv(
        "install", "to-filesystem", "--backend", backend,
        "--source-imgref", layout.ref("a"), str(target),
    )  # fmt: skip

    def empty_target(_: int) -> None:
        unlock_deployment_roots(target)
        for child in target.iterdir():
            shutil.rmtree(child) if child.is_dir() else child.unlink()
        storage = bootc_storage(target)
        if storage.runroot.exists():
            subprocess.run(["rm", "-rf", str(storage.runroot)], check=True)

    duration = timed(command)
    landed = 0
    for i, delay in enumerate(delays(duration)):
        if landed == KILLS:
            break
        empty_target(i)
        if not run_killed(command, delay):
            continue  # it had finished: nothing to retry
        landed += 1
        if (target / "ostree").exists() and not (target / INSTALL_INCOMPLETE).exists():
            # Killed on its way out, after the install was complete: a retry is
            # refused as for any installed target, and the install stands.
            assert "is not empty" in one_error_line(run(command))
        else:
            ok(run(command))
        assert len(deployments(target)) == 1
        assert not (target / INSTALL_INCOMPLETE).exists()
        nothing_half_made(target)
        fsck(target)
    assert landed == KILLS
