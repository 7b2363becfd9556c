"""`bootc image list` as upstream prints it: the images the deployments came from
(`host`, from the repo's image refs, for either backend) and bootc's own storage
(`unified`, listed with the host's images), as a borderless REPOSITORY/TYPE table or a JSON list of
{"image_type", "image"}."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from pybootc.sample.image import sample_image
from pybootc.sample.ocibuild import OciLayout
from tests.backend_support import bootc, install, ok

# Golden output. The layout lives in /tmp/pybootc-list-XXXXXXXX (mkdtemp's eight
# random characters shown as X), so the table's columns are the same in every run.
# Each cell has a space on each side and is padded to its column, as upstream's
# comfy-table prints it.
IMAGE = "oci:/tmp/pybootc-list-XXXXXXXX/fedora-bootc:41"
TABLE = {
    "ostree": (f" REPOSITORY                                      TYPE \n {IMAGE}  host \n"),
    "container": (
        " REPOSITORY                                      TYPE    \n"
        f" {IMAGE}  host    \n"
        " localhost/fedora-bootc:41                       unified \n"
    ),
}
HOST = f'  {{\n    "image_type": "host",\n    "image": "{IMAGE}"\n  }}'
UNIFIED = '  {\n    "image_type": "unified",\n    "image": "localhost/fedora-bootc:41"\n  }'
JSON = {
    "ostree": f"[\n{HOST}\n]",
    "container": f"[\n{HOST},\n{UNIFIED}\n]",
}


@pytest.fixture
def images_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="pybootc-list-", dir="/tmp"))
    yield path
    shutil.rmtree(path)


@pytest.mark.parametrize("backend", ["ostree", "container"])
def test_image_list_shows_host_images_and_bootc_storage(
    images_dir: Path, target: Path, backend: str
) -> None:
    layout = OciLayout(images_dir / "fedora-bootc")
    layout.add_image("41", sample_image("41"))
    ok(install(target, layout.ref("41"), backend=backend))

    def image_list(*args: str) -> str:
        shown = ok(bootc("image", "list", *args, sysroot=target))
        return shown.replace(images_dir.name, "pybootc-list-XXXXXXXX")

    assert image_list() == TABLE[backend]
    # serde_json's pretty form, with no newline after it, as upstream prints it.
    assert image_list("--format", "json") == JSON[backend]
    # As upstream, the host's images include those in bootc's own storage.
    assert image_list("--type", "host", "--format", "json") == JSON[backend]
    assert image_list("--type", "logical", "--format", "json") == "[]"


def test_podman_on_a_sysroot_with_no_storage_yet_makes_it(target: Path, images_dir: Path) -> None:
    layout = OciLayout(images_dir / "os")
    layout.add_image("1", sample_image("1"))
    ok(install(target, layout.ref("1"), backend="ostree"))
    # The ostree backend makes no storage of its own; gone, too, if something made it.
    storage = target / "ostree/bootc/storage"
    shutil.rmtree(storage, ignore_errors=True)
    assert ok(bootc("internals", "podman", "images", "--quiet", sysroot=target)) == ""
    assert storage.is_dir()
    assert ok(bootc("image", "list", "--format", "json", sysroot=target)).count("unified") == 0
