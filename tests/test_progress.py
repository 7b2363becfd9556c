"""Progress: `--progress-fd` JSON lines that follow bootc's progress-v0 schema, bytes per
layer included, and bars on a terminal (a pty), for both backends."""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import jsonschema
import pytest
import yaml

from pybootc.sample.image import sample_image
from pybootc.sample.ocibuild import ImageSpec, file, layer
from tests.backend_support import (
    Published,
    bootc,
    install,
    ok,
    one_error_line,
    publish,
    state,
)
from tests.support import SHARED_REFERENCE, Registry

pytestmark = pytest.mark.registry
BOOTC = (sys.executable, "-m", "pybootc")
BACKENDS = ["ostree", "container"]


def bulky(version: str) -> ImageSpec:
    """The sample image with one more layer of 4 MiB that does not compress."""
    noise = random.Random(version).randbytes(4 << 20)
    return sample_image(version, extra=(layer(file("usr/share/noise", noise)),))


def installed_with_update(
    registry: Registry, target: Path, tmp_path: Path, backend: str, name: str
) -> tuple[Published, Published]:
    v1 = publish(registry, tmp_path, sample_image("1.0"), repo=f"pybootc/{name}-{backend}")
    ok(install(target, v1.docker, backend=backend))
    v2 = publish(registry, tmp_path, bulky("2.0"), repo=f"pybootc/{name}-{backend}-2")
    return v1, v2


@pytest.mark.parametrize("backend", BACKENDS)
def test_switch_reports_bytes_per_layer_then_each_step(
    registry: Registry, target: Path, tmp_path: Path, backend: str
) -> None:
    v1, v2 = installed_with_update(registry, target, tmp_path, backend, "pg")
    read, write = os.pipe()
    proc = subprocess.run(
        [*BOOTC, "--sysroot", str(target), "switch", "--progress-fd", str(write), v2.docker],
        pass_fds=(write,),
        capture_output=True,
        text=True,
        check=False,
    )
    os.close(write)
    with os.fdopen(read) as stream:
        events = [json.loads(line) for line in stream]
    assert proc.returncode == 0, proc.stderr
    schema = json.loads((SHARED_REFERENCE / "upstream-bootc/progress-v0.schema.json").read_text())
    for event in events:
        jsonschema.validate(event, schema)
    assert events[0] == {"type": "Start", "version": "0.1.0"}

    # The two layers v2 shares with v1 are there; its version layer and the bulk are not.
    old = {d["digest"] for d in v1.manifest()["layers"]}
    needed = [d for d in v2.manifest()["layers"] if d["digest"] not in old]
    present = [d for d in v2.manifest()["layers"] if d["digest"] in old]
    assert len(needed) == 2 and len(present) == 2
    fetching = [e for e in events if e["type"] == "ProgressBytes"]
    assert len(fetching) >= 2
    for event in fetching:
        assert [s["id"] for s in event["subtasks"]] == [d["digest"] for d in needed]
        assert event["bytesTotal"] == sum(d["size"] for d in needed)
        assert event["bytes"] == sum(s["bytes"] for s in event["subtasks"])
        assert event["stepsTotal"] == 2 and event["stepsCached"] == 2
        assert event["bytesCached"] == sum(d["size"] for d in present)
    assert fetching[0]["bytes"] == 0 and fetching[0]["steps"] == 0
    assert fetching[-1]["bytes"] == fetching[-1]["bytesTotal"] and fetching[-1]["steps"] == 2
    assert [e["bytes"] for e in fetching] == sorted(e["bytes"] for e in fetching)
    # Then the steps, in order; fetching came first, within "pulling".
    steps = [e for e in events if e["type"] == "ProgressSteps"]
    finished = [e["subtasks"][0]["subtask"] for e in steps if e["subtasks"][0]["completed"]]
    assert finished == ["pulling", "flattening", "committing", "deploying"]
    assert steps[-1]["steps"] == steps[-1]["stepsTotal"] == 4
    first_bytes = events.index(fetching[0])
    assert events[first_bytes - 1]["subtasks"][0] == {
        "subtask": "pulling",
        "description": "Pulling the image",
        "id": f"ostree-unverified-registry:{v2.ref}",
        "completed": False,
    }


@dataclass
class Terminal:
    """What a command did on a terminal: its exit status, everything the terminal got,
    stdout, and the screen as it was when a bar was first drawn (None if never),
    with whether the command was still running then."""

    rc: int
    screen: str
    out: str
    while_fetching: str | None
    running_then: bool


def on_a_terminal(argv: list[str]) -> Terminal:
    """Run `argv` with stderr on a pty (stdout a pipe), reading the terminal as the
    command writes to it."""
    master, slave = os.openpty()
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "120", "LINES": "40"}
    proc = subprocess.Popen(argv, stdin=slave, stdout=subprocess.PIPE, stderr=slave, env=env)
    os.close(slave)
    screen = bytearray()
    while_fetching: str | None = None
    running_then = False
    while True:
        try:
            data = os.read(master, 1 << 16)
        except OSError:  # EIO: the pty's other side is closed
            break
        if not data:
            break
        screen += data
        # A bar frame: rich's bar glyphs next to the total's name.
        if while_fetching is None and b"Fetching" in screen and "━".encode() in screen:
            while_fetching = screen.decode(errors="replace")
            running_then = proc.poll() is None
    os.close(master)
    assert proc.stdout is not None
    out = proc.stdout.read().decode()
    return Terminal(proc.wait(), screen.decode(errors="replace"), out, while_fetching, running_then)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_switch_on_a_terminal_draws_bars_and_says_what_it_fetches(
    registry: Registry, target: Path, tmp_path: Path, backend: str
) -> None:
    _, v2 = installed_with_update(registry, target, tmp_path, backend, "pty")
    needed = v2.manifest()["layers"][2:]
    size = sum(d["size"] for d in needed)
    from pybootc.ostree.gi import GLib

    shown = on_a_terminal([*BOOTC, "--sysroot", str(target), "switch", v2.docker])
    assert shown.rc == 0, shown.screen
    # Read while it fetched: upstream's line, then the bars, the command still at work.
    assert shown.while_fetching is not None and shown.running_then
    layers_line = f"layers already present: 2; layers needed: 2 ({GLib.format_size(size)})"
    assert layers_line in shown.while_fetching
    # rich's bars: one per layer and the total, with its bar glyphs and byte counts.
    for descriptor in needed:
        assert f"Layer {descriptor['digest'].removeprefix('sha256:')[:12]}" in shown.screen
    assert "MB" in shown.screen and "Fetched layers: " in shown.screen
    # The steps after it, each with a spinner.
    for step in ("Flattening and post-processing the layers", "Committing to OSTree", "Deploying"):
        assert f"{step}..." in shown.screen
    # What the verb says stays on stdout, and nothing of the progress goes there.
    assert shown.out.startswith("Queued for next boot: ")
    assert "layers already present" not in shown.out
    # A third image pushes the first deployment out: upstream's line says what went.
    # v1's own layer goes, and with the container backend v1's image in bootc's
    # storage too; the refs that switches drop are not counted, as upstream's are not.
    v3 = publish(registry, tmp_path, bulky("3.0"), repo=f"pybootc/pty-{backend}-3")
    third = on_a_terminal([*BOOTC, "--sysroot", str(target), "switch", v3.docker])
    assert third.rc == 0, third.screen
    pruned = re.search(r"Pruned images: (\d+) \(layers: (\d+), objsize: ([^)]+)\)", third.screen)
    assert pruned is not None, third.screen
    assert int(pruned[1]) == (1 if backend == "container" else 0)
    # v1's own layer: the other two are v2's and v3's too.
    assert int(pruned[2]) == 1 and pruned[3] != "0 bytes"
    assert "Pruned images" not in third.out


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_progress_off_a_terminal_or_with_quiet(
    registry: Registry, target: Path, tmp_path: Path, backend: str
) -> None:
    _, v2 = installed_with_update(registry, target, tmp_path, backend, "quiet")
    shown = on_a_terminal([*BOOTC, "--sysroot", str(target), "switch", "--quiet", v2.docker])
    assert shown.rc == 0 and shown.screen == "" and shown.out.startswith("Queued for next boot: ")
    v3 = publish(registry, tmp_path, bulky("3.0"), repo=f"pybootc/quiet-{backend}-3")
    proc = subprocess.run(
        [*BOOTC, "--sysroot", str(target), "switch", v3.docker],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr


def test_edit_draws_progress_on_a_terminal_unless_quiet(
    registry: Registry, target: Path, tmp_path: Path
) -> None:
    """edit pulls as switch does, so it draws the same bars; --quiet, as upstream's
    edit has, draws none."""
    _, v2 = installed_with_update(registry, target, tmp_path, "ostree", "edit")
    v3 = publish(registry, tmp_path, bulky("3.0"), repo="pybootc/edit-ostree-3")
    for image, quiet in ((v2, ["--quiet"]), (v3, [])):
        document = yaml.safe_load(ok(bootc("status", "--format", "yaml", sysroot=target)))
        document["spec"]["image"]["image"] = image.ref
        spec = tmp_path / "host.yaml"
        spec.write_text(yaml.safe_dump(document))
        argv = [*BOOTC, "--sysroot", str(target), "edit", *quiet, "-f", str(spec)]
        shown = on_a_terminal(argv)
        assert shown.rc == 0 and shown.out.startswith(f"Queued for next boot: {image.ref}")
        assert ("Fetched layers: " in shown.screen) == (not quiet), shown.screen


def test_a_bad_progress_fd_changes_nothing(
    registry: Registry, target: Path, tmp_path: Path
) -> None:
    ok(install(target, publish(registry, tmp_path, sample_image("1.0"), repo="pybootc/pgb").docker))
    image = publish(registry, tmp_path, sample_image("2.0"), repo="pybootc/pgb2")
    before = state(target)
    proc = subprocess.run(
        [*BOOTC, "--sysroot", str(target), "switch", "--progress-fd", "97", image.docker],
        capture_output=True,
        text=True,
        check=False,
    )
    assert "--progress-fd 97: Bad file descriptor" in one_error_line(proc)
    assert state(target) == before
