"""The image stores behind one interface: the registry maps every backend to a store that
implements it (mypy checks the same, statically, in test_lint.py), and `upgrade --check`
reports what each store would really fetch."""

from __future__ import annotations

import base64
import gzip
import json
from pathlib import Path

import pytest

from pybootc.errors import BootcError
from pybootc.oci.imgref import ImageReference, Transport
from pybootc.ostree.gi import GLib
from pybootc.sample.image import sample_image
from pybootc.stores import Backend
from pybootc.stores.bootc_storage import stored_name
from pybootc.stores.containers_storage import ContainersStorage
from pybootc.stores.protocol import ImageStore
from pybootc.stores.registry import STORES, store_for
from tests.backend_support import bootc, install, ok, publish
from tests.support import Registry, tar_header

BACKENDS = ["ostree", "container"]


def test_every_backend_has_a_store_that_implements_the_protocol(tmp_path: Path) -> None:
    assert set(STORES) == set(Backend)
    for backend in Backend:
        store = store_for(backend, tmp_path, None)
        assert isinstance(store, ImageStore)
        assert type(store).backend is backend


@pytest.mark.parametrize(
    ("transport", "name", "stored"),
    [
        ("registry", "quay.io/example/os:41", "quay.io/example/os:41"),
        ("containers-storage", "[overlay@/s+/r]localhost/os:1", "localhost/os:1"),
        ("oci", "/srv/images/fedora-bootc:41", "localhost/fedora-bootc:41"),
        ("oci", "/srv/images/fedora-bootc", "localhost/fedora-bootc:latest"),
        ("oci-archive", "/srv/My OS.tar:v2", "localhost/my-os:v2"),
        ("dir", "/srv/os", "localhost/os:latest"),
    ],
)
def test_images_are_stored_under_readable_names(transport: str, name: str, stored: str) -> None:
    """As podman names what it pulls from a layout: after the directory, with its tag."""
    assert stored_name(ImageReference(Transport(transport), name)) == stored


def layer_sizes(published_manifest: dict[str, object]) -> list[tuple[str, int]]:
    layers = published_manifest["layers"]
    assert isinstance(layers, list)
    return [(str(d["digest"]), int(d["size"])) for d in layers]


@pytest.mark.registry
@pytest.mark.parametrize("backend", BACKENDS)
def test_upgrade_check_says_which_layers_are_present_and_what_is_to_fetch(
    registry: Registry, target: Path, tmp_path: Path, backend: str
) -> None:
    repo = f"pybootc/check-figures-{backend}"
    v1 = publish(registry, tmp_path, sample_image("1.0"), repo=repo)
    old = layer_sizes(v1.manifest())
    ok(install(target, v1.docker, backend=backend))
    v2 = publish(registry, tmp_path, sample_image("2.0"), repo=repo)
    new = layer_sizes(v2.manifest())
    # Only the top layer differs: it carries the version.
    assert old[:-1] == new[:-1] and old[-1] != new[-1]
    top = new[-1][1]
    size = GLib.format_size

    out = ok(bootc("upgrade", "--check", sysroot=target))
    assert out.splitlines()[3:] == [
        f"Total new layers: 3     Size: {size(sum(s for _, s in new))}",
        f"Removed layers:   1     Size: {size(old[-1][1])}",
        f"Added layers:     1     Size: {size(top)}",
        f"layers already present: 2; layers needed: 1 ({size(top)})",
    ]
    summary = json.loads(ok(bootc("upgrade", "--check", "--format", "json", sysroot=target)))
    assert summary["layers"] == 3 and summary["size"] == sum(s for _, s in new)
    assert (summary["removedLayers"], summary["removedSize"]) == (1, old[-1][1])
    assert (summary["addedLayers"], summary["addedSize"]) == (1, top)
    assert (summary["layersPresent"], summary["layersNeeded"]) == (2, 1)
    assert summary["bytesNeeded"] == top


def _flipped(data: bytes, offset: int) -> bytes:
    return data[:offset] + bytes([data[offset] ^ 0xFF]) + data[offset + 1 :]


MALFORMED_TAR_SPLIT = {
    "not gzip": b"plain",
    "not JSON": gzip.compress(b"{\n"),
    "a line that is no object": gzip.compress(b"[1]\n"),
    "a size that is no number": gzip.compress(
        json.dumps({"type": 2, "payload": base64.b64encode(tar_header("a")).decode()}).encode()
        + b'\n{"type": 1, "name": "a", "size": [1]}\n'
    ),
    "a payload that is no string": gzip.compress(b'{"type": 2, "payload": 5}\n'),
    # One byte of the deflate data flipped: zlib's own error, neither OSError nor EOF.
    "damaged compressed data": _flipped(gzip.compress(b'{"type": 2}\n' * 200), 10),
}


@pytest.mark.parametrize("name", list(MALFORMED_TAR_SPLIT))
def test_tar_split_data_containers_storage_did_not_write_is_one_error(
    tmp_path: Path, name: str
) -> None:
    storage = ContainersStorage(tmp_path / "storage", tmp_path / "runroot")
    layers = tmp_path / "storage" / "overlay-layers"
    layers.mkdir(parents=True)
    (layers / "abc.tar-split.gz").write_bytes(MALFORMED_TAR_SPLIT[name])
    with pytest.raises(BootcError, match=r"^Reading the tar-split data of layer abc: "):
        storage.layer_markers("abc")


def test_a_layer_is_complete_once_its_members_are_listed(tmp_path: Path) -> None:
    # A partial pull of containers-storage 1.43 saves the layer's record, flagged
    # complete, before it writes the table of contents its members are read from.
    storage = ContainersStorage(tmp_path / "storage", tmp_path / "runroot")
    layers = tmp_path / "storage" / "overlay-layers"
    layers.mkdir(parents=True)
    digest = "sha256:" + "b" * 64
    record = {"id": "abc", "compressed-diff-digest": digest, "diff-digest": "sha256:" + "c" * 64}
    (layers / "layers.json").write_text(json.dumps([record]))
    assert storage.complete_layers(frozenset({digest})) == {}
    (layers / "abc.tar-split.gz").write_bytes(gzip.compress(b""))
    assert storage.complete_layers(frozenset({digest})) == {digest: record}


def test_a_layer_flagged_incomplete_is_not_present(tmp_path: Path) -> None:
    # Left by a killed pull: the next pull removes it and fetches the layer again.
    storage = ContainersStorage(tmp_path / "storage", tmp_path / "runroot")
    layers = tmp_path / "storage" / "overlay-layers"
    layers.mkdir(parents=True)
    whole, cut = "sha256:" + "b" * 64, "sha256:" + "d" * 64
    records = [
        {"id": "abc", "compressed-diff-digest": whole, "diff-digest": "sha256:" + "c" * 64},
        {"id": "def", "compressed-diff-digest": cut, "flags": {"incomplete": True}},
    ]
    (layers / "layers.json").write_text(json.dumps(records))
    assert storage.stored_layer_digests() == {whole}
