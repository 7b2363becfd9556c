"""Where the container backend's pulls stage their blobs: inside the sysroot's import
work directory, so that a killed pull leaves nothing in the host's /var/tmp."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from pybootc.sample.image import sample_image
from pybootc.sample.ocibuild import OciLayout
from tests.backend_support import bootc, ok


def test_pulls_stage_in_the_import_work_directory(
    target: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    layout = OciLayout(tmp_path / "oci")
    layout.add_image("v1", sample_image("1.0"))
    # An argv-recording skopeo in front of the real one.
    real = shutil.which("skopeo")
    assert real is not None
    wrappers = tmp_path / "bin"
    wrappers.mkdir()
    argv_log = tmp_path / "skopeo-argv"
    script = wrappers / "skopeo"
    script.write_text(f'#!/bin/sh\necho "$*" >> {argv_log}\nexec {real} "$@"\n')
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{wrappers}:{os.environ['PATH']}")
    ok(
        bootc(
            "install", "to-filesystem", "--backend", "container",
            "--source-imgref", layout.ref("v1"), str(target),
        )
    )  # fmt: skip
    calls = argv_log.read_text().splitlines()
    pulls = [
        line for line in calls if " copy " in line and line.split()[-1].startswith("containers-")
    ]
    assert len(pulls) == 1, pulls
    assert f"--tmpdir {target}/ostree/repo/tmp/pybootc-import-" in pulls[0]
    assert pulls[0].split("--tmpdir ", 1)[1].split()[0].endswith("/skopeo")
    # The work directory, and what skopeo staged in it, went with the import.
    assert not [p for p in (target / "ostree/repo/tmp").iterdir() if p.name.startswith("pybootc")]
