"""SIGKILL at seeded points through install, switch, upgrade, rollback and image prune,
for both backends. After every kill:

- `bootc status` shows the deployments from before, or the new one on top;
- `ostree fsck` passes;
- the same command, run again, succeeds (an install that was killed only on its way
  out, complete, is refused again as any installed target is);
- and once it has, nothing half-made is left: no import work directory, and no layer
  that containers-storage marks incomplete.

Each command is run once uninterrupted. Install, switch and upgrade report their steps
on `--progress-fd`, so their 30 kills are aimed at the phases: five each in the start
(manifest, signature policy), fetching, flattening, committing, deploying and the
cleanup after it, spread over each phase as long as it took; the test checks that every
phase was hit. Rollback and image prune have no steps, and their kills are spread over
the whole run. skopeo and podman die with the command: the whole process group is killed.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import io
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pybootc import cli
from pybootc.commands.install import INSTALL_INCOMPLETE
from pybootc.ostree.sysroot import unlock_deployment_roots
from pybootc.sample.image import sample_image
from pybootc.sample.ocibuild import OciLayout, file, layer
from pybootc.stores.bootc_storage import bootc_storage
from tests.backend_support import bootc, install, ok, one_error_line
from tests.sysroot_support import unreachable_objects

KILLS = 30
# How often a kill point that came too late is tried again: each time twice as soon,
# and the last time at once as its phase begins.
RETRIES = 4
BACKENDS = ["ostree", "container"]
# The phases of a deployment, as its progress events mark them: "start" is everything
# before the first step (reading the manifest and config, the signature policy), and
# "cleanup" what follows the last (garbage collection, the end of an install).
PHASES = ("start", "pulling", "flattening", "committing", "deploying", "cleanup")


def argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "pybootc", *args]


def _phase_of(event: dict[str, object]) -> str | None:
    """The phase a progress event begins, if it begins one."""
    if event.get("type") != "ProgressSteps":
        return None
    subtasks = event["subtasks"]
    assert isinstance(subtasks, list) and len(subtasks) == 1, event
    subtask: dict[str, object] = subtasks[0]
    if subtask["completed"]:
        return "cleanup" if subtask["subtask"] == "deploying" else None
    return str(subtask["subtask"])


@dataclass(frozen=True)
class KillPoint:
    """SIGKILL `delay` s after `phase` began ("start": after the command started)."""

    phase: str
    delay: float


@dataclass(frozen=True)
class Watched:
    """What one run of a command showed: when each phase began (s after the start),
    when it ended, and the phase a kill landed in (None: it ran to its end)."""

    began: dict[str, float]
    ended: float
    killed_in: str | None


def run_watched(command: list[str], point: KillPoint | None = None) -> Watched:
    """Run `command` with its progress on a pipe, killing its process group at `point`."""
    read_fd, write_fd = os.pipe()
    started = time.monotonic()
    proc = subprocess.Popen(
        [*command, "--progress-fd", str(write_fd)],
        pass_fds=(write_fd,),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    os.close(write_fd)
    began = {"start": 0.0}
    deadline = started + point.delay if point and point.phase == "start" else None
    pending = b""
    killed = False
    with open(read_fd, "rb", buffering=0) as pipe:
        while True:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not select.select([pipe], [], [], wait)[0]:
                os.killpg(proc.pid, signal.SIGKILL)
                killed = True
                deadline = None  # read on: the events it wrote before it died
                continue
            chunk = pipe.read(1 << 16)
            if not chunk:
                break
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                phase = _phase_of(json.loads(line))
                if phase is None or phase in began:
                    continue
                began[phase] = time.monotonic() - started
                if point and point.phase == phase and not killed:
                    deadline = time.monotonic() + point.delay
    proc.wait()
    ended = time.monotonic() - started
    last = max(began, key=PHASES.index)
    return Watched(began, ended, last if killed else None)


def phase_points(command: list[str]) -> tuple[KillPoint, ...]:
    """Five kill points in each phase of one uninterrupted run, spread over its length."""
    run = run_watched(command)
    assert run.killed_in is None and list(run.began) == list(PHASES), run.began
    ends = [*(run.began[p] for p in PHASES[1:]), run.ended]
    per_phase = KILLS // len(PHASES)
    return tuple(
        KillPoint(phase, (end - run.began[phase]) * (k + 0.5) / per_phase)
        for phase, end in zip(PHASES, ends, strict=True)
        for k in range(per_phase)
    )


def time_points(command: list[str]) -> tuple[KillPoint, ...]:
    """KILLS points spread over one uninterrupted run (after the interpreter's start)."""
    started = time.monotonic()
    subprocess.run(command, capture_output=True, check=True)
    duration = time.monotonic() - started
    return tuple(
        KillPoint("start", duration * (0.15 + 0.85 * (i + 0.5) / KILLS)) for i in range(KILLS)
    )


def run_killed(command: list[str], point: KillPoint) -> bool:
    """Run `command` and SIGKILL its process group at a time point; whether it was
    killed (False: it had finished by then)."""
    proc = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        proc.wait(timeout=point.delay)
        return False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return True


def run(command: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, check=False)


def deployments(target: Path) -> list[str]:
    """The deployments, as `bootc status` shows them: staged (next boot), rollback, others.
    (Run in this process: a command of its own, hundreds of times, costs minutes.)"""
    shown = io.StringIO()
    with contextlib.redirect_stdout(shown):
        assert cli.main(["--sysroot", str(target), "status", "--json"]) == 0
    status = json.loads(shown.getvalue())["status"]
    entries = [status["staged"], status["rollback"], *status.get("otherDeployments", [])]
    return [entry["ostree"]["checksum"] for entry in entries if entry]


def fsck(target: Path, when: str = "") -> None:
    proc = subprocess.run(
        ["ostree", "fsck", f"--repo={target}/ostree/repo"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, when + proc.stdout + proc.stderr


def nothing_half_made(target: Path) -> None:
    """No import work directory, no object that no ref reaches (a prune the kill
    interrupted has been finished), and no layer containers-storage left incomplete."""
    assert unreachable_objects(target / "ostree/repo") == 0
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
    # Whether the command reports its steps on --progress-fd (kills aimed at phases).
    has_steps: bool = True


def check_after_kill(target: Path, before: list[str], trial: Trial, when: str) -> None:
    after = deployments(target)
    if trial.swaps:
        assert after in (before, [before[1], before[0], *before[2:]]), (before, after)
    else:
        new_on_top = len(after) >= 1 and after[1:2] == before[:1]
        assert after == before or new_on_top, (before, after)
    fsck(target, when)


def kills(trial: Trial) -> Iterator[tuple[int, KillPoint, str | None]]:
    """Run the command killed at each point until KILLS kills have landed where they
    were aimed: (attempt, point, the phase it landed in or None if it had finished).
    A point that came too late (the command, or the phase it aims at, had finished:
    a short phase can be shorter than in the run the points were taken from, as the
    cleanup is when nothing is left to prune) is tried again sooner, up to RETRIES
    times; every phase must have been hit."""
    trial.prepare(-1)
    command = trial.command(-1)
    points = phase_points(command) if trial.has_steps else time_points(command)
    pending = collections.deque((point, 0) for point in points)
    landed: list[str] = []
    missed: list[tuple[KillPoint, str | None]] = []
    attempt = 0
    while pending and len(landed) < KILLS:
        point, tries = pending.popleft()
        trial.prepare(attempt)
        if trial.has_steps:
            phase = run_watched(trial.command(attempt), point).killed_in
        else:
            phase = "start" if run_killed(trial.command(attempt), point) else None
        if phase == point.phase:
            landed.append(phase)
        elif tries < RETRIES:
            sooner = point.delay / 2 if tries < RETRIES - 1 else 0.0
            pending.append((KillPoint(point.phase, sooner), tries + 1))
        else:
            missed.append((point, phase))
        yield attempt, point, phase
        attempt += 1
    assert len(landed) == KILLS, (collections.Counter(landed), missed)
    if trial.has_steps:
        assert set(landed) == set(PHASES), collections.Counter(landed)


def kill_through(target: Path, trial: Trial) -> None:
    """Kill the command KILLS times, checking the sysroot after each and retrying it."""
    before: list[str] = []

    def prepare(i: int) -> None:
        trial.prepare(i)
        before[:] = deployments(target)

    for i, point, phase in kills(dataclasses.replace(trial, prepare=prepare)):
        if phase is not None:
            check_after_kill(target, before, trial, f"killed {point}: ")
        ok(run(trial.command(i)))
        nothing_half_made(target)
        fsck(target)


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
    rollback = Trial(
        lambda i: argv("--sysroot", str(target), "rollback"), swaps=True, has_steps=False
    )
    kill_through(target, rollback)


@pytest.mark.parametrize("backend", BACKENDS)
def test_image_prune_survives_kills(target: Path, layout: OciLayout, backend: str) -> None:
    install_tag(target, layout, backend)

    def leave_garbage(i: int) -> None:
        # --retain keeps the old image's ref: the next switch leaves it unused.
        ok(bootc("switch", "--retain", "--transport", "oci", f"{layout.path}:{'ab'[i % 2]}",
                 sysroot=target))  # fmt: skip

    prune = Trial(
        lambda i: argv("--sysroot", str(target), "image", "prune"), leave_garbage, has_steps=False
    )
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

    for _, _, phase in kills(Trial(lambda i: command, prepare=empty_target)):
        if phase is None:
            continue  # it had finished: nothing to retry
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
