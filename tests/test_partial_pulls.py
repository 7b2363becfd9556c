"""Partial pulls of zstd:chunked images into bootc's storage: off by default (the
containers-storage of both Debian releases makes trees from them that differ from the
layers' tar streams; bench/partial.py measures that), so an update fetches each
changed layer whole; with the experimental switch on, by range requests for what the
storage lacks. Either way, for this image of plain files, the deployed commit is the
ostree backend's, byte for byte."""

from __future__ import annotations

import json
import os
import random
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from pybootc.ostree.sysroot import Sysroot
from pybootc.sample.image import sample_image
from pybootc.sample.ocibuild import OciLayout, file, layer
from pybootc.stores.bootc_storage import bootc_storage
from pybootc.stores.containers_storage import PARTIAL_PULLS_ENV
from tests.backend_support import bootc, install, ok
from tests.support import Registry, push_zstd_chunked

pytestmark = pytest.mark.registry

FILES = 64
FILE_BYTES = 256 << 10
CHANGED = "usr/share/big/7"


def big_layer(changed: bool) -> list[tuple[str, bytes]]:
    files = [(f"usr/share/big/{n}", random.Random(n).randbytes(FILE_BYTES)) for n in range(FILES)]
    if changed:
        files[7] = (CHANGED, random.Random("changed").randbytes(FILE_BYTES))
    return files


@pytest.fixture(scope="module")
def images(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> str:
    """REPO with tags v1 and v2 (one file of the large layer changed), zstd:chunked."""
    work = tmp_path_factory.mktemp("chunked")
    layout = OciLayout(work / "oci")
    for tag, changed in (("v1", False), ("v2", True)):
        bulk = layer(*(file(name, data) for name, data in big_layer(changed)))
        layout.add_image(tag, sample_image("1", extra=(bulk,)))
    repo = f"{registry.address}/pybootc/chunked"
    for tag in ("v1", "v2"):
        push_zstd_chunked(layout.ref(tag), f"docker://{repo}:{tag}", work)
    return repo


def served(registry: Registry, since: int) -> list[tuple[int, int]]:
    """(status, bytes) of each layer or config blob the registry served after `since`
    bytes of its log: 206 for a range request."""
    text = registry.log_path.read_text(errors="replace")[since:]
    found = re.findall(r'"GET /v2/[^ ]*/blobs/sha256:[0-9a-f]+ HTTP/[0-9.]+" (20[06]) (\d+)', text)
    return [(int(status), int(size)) for status, size in found]


@pytest.fixture
def partial_pulls(request: pytest.FixtureRequest) -> Iterator[bool]:
    enabled = bool(request.param)
    if enabled:
        os.environ[PARTIAL_PULLS_ENV] = "1"
    try:
        yield enabled
    finally:
        os.environ.pop(PARTIAL_PULLS_ENV, None)


def pulled_partially(target: Path) -> set[bool]:
    """For each layer in bootc's storage: was it pulled partially? (Only those keep the
    table of contents, and no tar-split data.)"""
    root = bootc_storage(target).root / "overlay-layers"
    layers = json.loads((root / "layers.json").read_bytes())
    return {
        "zstd-chunked-manifest" in layer.get("big-data-names", ())
        and not (root / f"{layer['id']}.tar-split.gz").exists()
        for layer in layers
    }


def update(registry: Registry, target: Path, repo: str, backend: str) -> list[tuple[int, int]]:
    """Install v1 with `backend`, switch to v2; the blobs the switch fetched."""
    ok(install(target, f"docker://{repo}:v1", backend=backend))
    since = len(registry.log_path.read_text(errors="replace"))
    ok(bootc("switch", f"docker://{repo}:v2", sysroot=target))
    return served(registry, since)


@pytest.mark.parametrize("partial_pulls", [False, True], indirect=True, ids=["default", "on"])
def test_an_update_fetches_the_changed_layer_whole_or_by_ranges(
    registry: Registry,
    images: str,
    target: Path,
    other_target: Path,
    partial_pulls: bool,
) -> None:
    fetched = update(registry, target, images, "container")
    if partial_pulls:
        # The table of contents, then what the storage lacks, by ranges. How much that
        # is varies from run to run with containers-storage 1.43 (some runs it fetches
        # every file again): bench/partial.py measures it.
        assert any(status == 206 for status, _ in fetched), fetched
        assert True in pulled_partially(target)
    else:
        # skopeo reads the table of contents, is told partial pulls are off, and
        # fetches the whole layer.
        assert any(status == 200 and size > FILES * FILE_BYTES for status, size in fetched)
        assert pulled_partially(target) == {False}
    ostree_fetched = update(registry, other_target, images, "ostree")
    assert sum(size for _, size in ostree_fetched) > FILES * FILE_BYTES
    commits = {Sysroot.open(t).deployments()[0].checksum for t in (target, other_target)}
    assert len(commits) == 1
