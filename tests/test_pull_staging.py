"""The container backend's pulls, as skopeo is told them: they stage their blobs inside
the sysroot's import work directory, so that a killed pull leaves nothing in the host's
/var/tmp, and they copy the manifest the signature policy was asked about, by digest."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from pybootc.sample.image import sample_image
from pybootc.sample.ocibuild import OciLayout
from tests.backend_support import bootc, install, ok, publish
from tests.support import Registry


@pytest.fixture
def skopeo_calls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[], list[str]]:
    """An argv-recording skopeo in front of the real one; its pulls into a storage."""
    real = shutil.which("skopeo")
    assert real is not None
    wrappers = tmp_path / "bin"
    wrappers.mkdir()
    argv_log = tmp_path / "skopeo-argv"
    script = wrappers / "skopeo"
    script.write_text(f'#!/bin/sh\necho "$*" >> {argv_log}\nexec {real} "$@"\n')
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{wrappers}:{os.environ['PATH']}")

    def pulls() -> list[str]:
        calls = argv_log.read_text().splitlines()
        return [c for c in calls if " copy " in c and c.split()[-1].startswith("containers-")]

    return pulls


def test_pulls_stage_in_the_import_work_directory(
    target: Path, tmp_path: Path, skopeo_calls: Callable[[], list[str]]
) -> None:
    layout = OciLayout(tmp_path / "oci")
    layout.add_image("v1", sample_image("1.0"))
    ok(
        bootc(
            "install", "to-filesystem", "--backend", "container",
            "--source-imgref", layout.ref("v1"), str(target),
        )
    )  # fmt: skip
    pulls = skopeo_calls()
    assert len(pulls) == 1, pulls
    assert f"--tmpdir {target}/ostree/repo/tmp/pybootc-import-" in pulls[0]
    assert pulls[0].split("--tmpdir ", 1)[1].split()[0].endswith("/skopeo")
    # The work directory, and what skopeo staged in it, went with the import.
    assert not [p for p in (target / "ostree/repo/tmp").iterdir() if p.name.startswith("pybootc")]


@pytest.mark.registry
def test_a_pull_copies_the_manifest_the_policy_judged_by_its_digest(
    registry: Registry, target: Path, tmp_path: Path, skopeo_calls: Callable[[], list[str]]
) -> None:
    image = publish(registry, tmp_path, sample_image("1.0"))
    ok(install(target, image.docker, backend="container"))
    pulls = skopeo_calls()
    assert len(pulls) == 1, pulls
    repository = image.ref.rsplit(":", 1)[0]
    # Not the tag: one moved since the policy was asked could bring another image.
    assert pulls[0].split()[-2] == f"docker://{repository}@{image.manifest_digest}", pulls[0]
