"""Layers the kernel's view refuses, or that the blob path refuses as containers-storage
does: an install with either backend refuses them with the same one line, naming the
layer, and leaves the target as empty as it was."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest

from pybootc.sample.image import sample_image
from pybootc.sample.ocibuild import Entry, Kind, Layer, OciLayout, file, hardlink, layer
from tests.backend_support import (
    install,
    layout_layer_digests,
    ok,
    one_error_line,
    state,
    switch_oci,
)
from tests.support import ACL_GROUP, ACL_NO_ID, ACL_OTHER, ACL_OWNER, acl, tar_header

_END = bytes(2 * tarfile.BLOCKSIZE)
_OUT_OF_ORDER = acl((ACL_GROUP, 5, ACL_NO_ID), (ACL_OWNER, 7, ACL_NO_ID), (ACL_OTHER, 0, ACL_NO_ID))
CASES: dict[str, tuple[Layer, str]] = {
    "an ACL out of order": (
        layer(file("srv/f", xattrs={"system.posix_acl_access": _OUT_OF_ORDER})),
        "Setting system.posix_acl_access: Invalid argument",
    ),
    "a zero block, then a member": (
        Layer((), raw=tar_header("srv/f") + bytes(tarfile.BLOCKSIZE) + tar_header("srv/g") + _END),
        "Invalid tar stream: a zero block, and then not the end of the archive",
    ),
    "a PAX uid that is not a number": (
        Layer((), raw=tar_header("srv/f", pax={"uid": "x5"}) + _END),
        "Invalid tar stream: invalid PAX record uid='x5'",
    ),
    "a hardlink to a 0:0 device": (
        layer(Entry("srv/x", Kind.CHAR), hardlink("srv/y", "srv/x")),
        'Hardlink "srv/y" to "srv/x": the target is a whiteout',
    ),
}


@pytest.mark.parametrize("backend", ["ostree", "container"])
@pytest.mark.parametrize("name", list(CASES))
def test_a_layer_the_kernel_refuses_is_refused_by_both_backends(
    tmp_path: Path, target: Path, backend: str, name: str
) -> None:
    bad, words = CASES[name]
    layout = OciLayout(tmp_path / "oci")
    layout.add_image("bad", sample_image("1.0", extra=(bad,)))
    digest = layout_layer_digests(layout, "bad")[-1]
    line = one_error_line(install(target, layout.ref("bad"), backend=backend))
    assert line.startswith(f"error: Installing to {target}: "), line
    assert line.endswith(f"Layer {digest}: {words}"), line
    assert list(target.iterdir()) == []


@pytest.mark.parametrize("backend", ["ostree", "container"])
def test_a_layer_that_is_not_the_configs_diff_id_is_refused_by_both_backends(
    tmp_path: Path, target: Path, backend: str
) -> None:
    # containers/image 5.23 (skopeo 1.9) stores such a layer without comparing; the
    # container backend compares what the storage unpacked with the config.
    layout = OciLayout(tmp_path / "oci")
    spec = sample_image("1.0", extra=(layer(file("etc/motd", "hello")),))
    manifest = json.loads(layout.blob_path(layout.add_image("good", spec)).read_text())
    config = json.loads(layout.blob_path(manifest["config"]["digest"]).read_text())
    diff_ids = config["rootfs"]["diff_ids"]
    good, diff_ids[-1] = diff_ids[-1], "sha256:" + "0" * 64
    layout.add_manifest("bad", spec, manifest["layers"], diff_ids)
    digest = layout_layer_digests(layout, "bad")[-1]
    line = one_error_line(install(target, layout.ref("bad"), backend=backend))
    assert line.startswith(f"error: Installing to {target}: "), line
    assert line.endswith(
        f"Layer {digest}: Uncompressed digest mismatch for blob {digest}:"
        f" expected diff_id {diff_ids[-1]}, got {good}"
    ), line
    assert list(target.iterdir()) == []


@pytest.mark.parametrize("backend", ["ostree", "container"])
def test_a_layer_the_repo_has_is_refused_too_where_the_config_names_another_diff_id(
    tmp_path: Path, target: Path, backend: str
) -> None:
    # The same blobs as an image installed before, so every layer commit is the repo's
    # already: taken as it is, it would skip the comparison an install makes.
    layout = OciLayout(tmp_path / "oci")
    spec = sample_image("1.0", extra=(layer(file("etc/motd", "hello")),))
    manifest = json.loads(layout.blob_path(layout.add_image("good", spec)).read_text())
    config = json.loads(layout.blob_path(manifest["config"]["digest"]).read_text())
    diff_ids = config["rootfs"]["diff_ids"]
    good, diff_ids[0] = diff_ids[0], "sha256:" + "0" * 64
    layout.add_manifest("bad", sample_image("2.0"), manifest["layers"], diff_ids)
    digest = layout_layer_digests(layout, "bad")[0]
    ok(install(target, layout.ref("good"), backend=backend))
    before = state(target)
    line = one_error_line(switch_oci(target, layout, "bad"))
    assert line.endswith(
        f"Layer {digest}: Uncompressed digest mismatch for blob {digest}:"
        f" expected diff_id {diff_ids[0]}, got {good}"
    ), line
    assert state(target) == before
