"""`--progress-fd`: JSON lines that follow bootc's progress-v0 schema."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from pybootc.sample.image import sample_image
from tests.backend_support import install, ok, one_error_line, publish, state
from tests.support import SHARED_REFERENCE, Registry

pytestmark = pytest.mark.registry
BOOTC = (sys.executable, "-m", "pybootc")


def test_switch_reports_each_step(registry: Registry, target: Path, tmp_path: Path) -> None:
    ok(install(target, publish(registry, tmp_path, sample_image("1.0"), repo="pybootc/pg").docker))
    image = publish(registry, tmp_path, sample_image("2.0"), repo="pybootc/pg2")
    read, write = os.pipe()
    proc = subprocess.run(
        [*BOOTC, "--sysroot", str(target), "switch", "--progress-fd", str(write), image.docker],
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
    finished = [e["subtasks"][0]["subtask"] for e in events[1:] if e["subtasks"][0]["completed"]]
    assert finished == ["pulling", "flattening", "committing", "deploying"]
    assert events[-1]["steps"] == events[-1]["stepsTotal"] == 4


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
