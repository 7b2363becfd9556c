"""The container backend's pulls, as skopeo is told them: they stage their blobs inside
the sysroot's import work directory, so that a killed pull leaves nothing in the host's
/var/tmp, and they copy the manifest the signature policy was asked about, by digest."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from pybootc.sample.image import sample_image
from pybootc.sample.ocibuild import OciLayout
from tests.backend_support import (
    bootc,
    install,
    ok,
    publish,
    recording_skopeo,
    skopeo_in_front,
)
from tests.support import Registry


@pytest.fixture
def skopeo_calls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[], list[str]]:
    """An argv-recording skopeo in front of the real one; its pulls into a storage."""
    calls = recording_skopeo(tmp_path / "bin", monkeypatch)

    def pulls() -> list[str]:
        return [c for c in calls() if " copy " in c and c.split()[-1].startswith("containers-")]

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


LOSE_TOP_LAYER_RECORD = """
import json, sys
root, name = sys.argv[1], sys.argv[2]
images = json.load(open(f"{root}/overlay-images/images.json"))
top = next(i["layer"] for i in images if any(n.startswith(name) for n in i.get("names", ())))
path = f"{root}/overlay-layers/layers.json"
json.dump([l for l in json.load(open(path)) if l["id"] != top], open(path, "w"))
"""


def test_an_image_that_lost_a_layer_record_is_pulled_again(
    target: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a command killed in containers-storage's own writes can leave: an image
    whose layer record is gone. The import does not go on short of that layer: the
    image is removed and pulled again, whole."""
    layout = OciLayout(tmp_path / "oci")
    layout.add_image("v1", sample_image("1.0"))
    (tmp_path / "lose.py").write_text(LOSE_TOP_LAYER_RECORD)
    storage = target / "ostree/bootc/storage"
    done = tmp_path / "lost-once"
    # The first pull into the storage loses its image's top layer record afterwards.
    skopeo_in_front(
        tmp_path / "bin",
        monkeypatch,
        '{real} "$@" || exit $?\n'
        'case "$*" in *" containers-storage:localhost/oci:v1")\n'
        f"  [ -e {done} ] || {{ touch {done}; {sys.executable} {tmp_path / 'lose.py'} "
        f"{storage} localhost/oci:v1; }};;\nesac\n",
    )
    ok(
        bootc(
            "install", "to-filesystem", "--backend", "container",
            "--source-imgref", layout.ref("v1"), str(target),
        )
    )  # fmt: skip
    assert done.exists()
    images = json.loads((storage / "overlay-images/images.json").read_text())
    records = {
        layer["id"] for layer in json.loads((storage / "overlay-layers/layers.json").read_text())
    }
    (image,) = images
    assert image["layer"] in records
