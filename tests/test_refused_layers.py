"""Layers the kernel's view refuses, or that the blob path refuses as containers-storage
does: an install with either backend refuses them with the same one line, naming the
layer, and leaves the target as empty as it was."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest
import zstandard

from pybootc.oci.model import MEDIA_TYPE_OCI_LAYER_ZSTD
from pybootc.sample.image import sample_image
from pybootc.sample.ocibuild import (
    Entry,
    Kind,
    Layer,
    OciLayout,
    file,
    hardlink,
    layer,
    sha256_digest,
    write_tar,
)
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


def _padded(data: bytes) -> bytes:
    return data + bytes(-len(data) % tarfile.BLOCKSIZE)


def _long_name(length: int) -> bytes:
    """A GNU long-name header of `length` bytes, for the member after it."""
    name = b"a" * length
    return tar_header("././@LongLink", tarfile.GNUTYPE_LONGNAME, size=len(name)) + _padded(name)


def _sparse(
    name: str, *, size: int, runs: list[tuple[int, int]], stored: int | None = None
) -> bytes:
    """A sparse member (GNU 0.1, in PAX records) of `size` bytes with these data runs,
    and the bytes they hold (or `stored` bytes)."""
    sparse_map = ",".join(f"{offset},{length}" for offset, length in runs)
    records = {"GNU.sparse.size": str(size), "GNU.sparse.numblocks": str(len(runs))}
    data = b"x" * (sum(length for _, length in runs) if stored is None else stored)
    header = tar_header(name, size=len(data), pax={**records, "GNU.sparse.map": sparse_map})
    return header + _padded(data)


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
    # Go's reader bounds a special header to 1 MiB; tarfile would read any into memory.
    "a PAX header over 1 MiB": (
        Layer((), raw=tar_header("srv/f", pax={"comment": "x" * (2 << 20)}) + _END),
        "Invalid tar stream: header field too long",
    ),
    "a GNU long name over 1 MiB": (
        Layer((), raw=_long_name(2 << 20) + tar_header("srv/f") + _END),
        "Invalid tar stream: header field too long",
    ),
    # Go's reader checks the runs of a sparse file; tarfile wrote each where it said,
    # past the file's end or over another.
    "a sparse run past the file's end": (
        Layer((), raw=_sparse("srv/f", size=10, runs=[(100, 5)]) + _END),
        "Invalid tar stream: invalid sparse map of srv/f",
    ),
    "sparse runs that overlap": (
        Layer((), raw=_sparse("srv/f", size=100, runs=[(0, 10), (5, 10)]) + _END),
        "Invalid tar stream: invalid sparse map of srv/f",
    ),
    # containers-storage unpacks it (a path of 2,400 bytes); pybootc's trees are walked
    # by recursion, which Python bounds.
    "directories nested 1,200 deep": (
        layer(file("d/" * 1200 + "f", "deep")),
        "Directories nested too deep to read",
    ),
    "a sparse run longer than the data stored": (
        Layer((), raw=_sparse("srv/f", size=1 << 20, runs=[(0, 1 << 20)], stored=10) + _END),
        "Invalid tar stream: invalid sparse map of srv/f",
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


def _a_wrong_diff_id(tmp_path: Path, index: int, version: str) -> tuple[OciLayout, str]:
    """A layout with "good", and "bad" (of `version`): good's blobs under a config whose
    diff_id of layer `index` is wrong; and the words that refuse bad."""
    layout = OciLayout(tmp_path / "oci")
    spec = sample_image("1.0", extra=(layer(file("etc/motd", "hello")),))
    manifest = json.loads(layout.blob_path(layout.add_image("good", spec)).read_text())
    config = json.loads(layout.blob_path(manifest["config"]["digest"]).read_text())
    diff_ids = config["rootfs"]["diff_ids"]
    good, diff_ids[index] = diff_ids[index], "sha256:" + "0" * 64
    layout.add_manifest("bad", sample_image(version), manifest["layers"], diff_ids)
    digest = layout_layer_digests(layout, "bad")[index]
    words = (
        f"Layer {digest}: Uncompressed digest mismatch for blob {digest}:"
        f" expected diff_id {diff_ids[index]}, got {good}"
    )
    return layout, words


@pytest.mark.parametrize("backend", ["ostree", "container"])
def test_a_layer_that_is_not_the_configs_diff_id_is_refused_by_both_backends(
    tmp_path: Path, target: Path, backend: str
) -> None:
    # containers/image 5.23 (skopeo 1.9) stores such a layer without comparing; the
    # container backend compares what the storage unpacked with the config.
    layout, words = _a_wrong_diff_id(tmp_path, -1, "1.0")
    line = one_error_line(install(target, layout.ref("bad"), backend=backend))
    assert line.startswith(f"error: Installing to {target}: "), line
    assert line.endswith(words), line
    assert list(target.iterdir()) == []


@pytest.mark.parametrize("backend", ["ostree", "container"])
def test_a_layer_the_repo_has_is_refused_too_where_the_config_names_another_diff_id(
    tmp_path: Path, target: Path, backend: str
) -> None:
    # The same blobs as an image installed before, so every layer commit is the repo's
    # already: taken as it is, it would skip the comparison an install makes.
    layout, words = _a_wrong_diff_id(tmp_path, 0, "2.0")
    ok(install(target, layout.ref("good"), backend=backend))
    before = state(target)
    line = one_error_line(switch_oci(target, layout, "bad"))
    assert line.endswith(words), line
    assert state(target) == before


def test_a_zstd_layer_cut_short_is_not_taken_for_an_encrypted_one(
    tmp_path: Path, target: Path
) -> None:
    # skopeo says "unexpected EOF" of it, which a wrong decryption key makes it say too;
    # this image asks for no key.
    layout = OciLayout(tmp_path / "oci")
    spec = sample_image("1.0")
    manifest = json.loads(layout.blob_path(layout.add_image("good", spec)).read_text())
    config = json.loads(layout.blob_path(manifest["config"]["digest"]).read_text())
    raw = write_tar(layer(file("srv/z", "z" * 100_000)))
    cut = zstandard.ZstdCompressor(write_checksum=True).compress(raw)[:-4]
    blob = {
        "mediaType": MEDIA_TYPE_OCI_LAYER_ZSTD,
        "digest": layout.put_blob(cut),
        "size": len(cut),
    }
    diff_ids = [*config["rootfs"]["diff_ids"], sha256_digest(raw)]
    layout.add_manifest("cut", spec, [*manifest["layers"], blob], diff_ids)
    line = one_error_line(install(target, layout.ref("cut"), backend="container"))
    assert line.startswith(f"error: Installing to {target}: "), line
    assert "unexpected EOF" in line, line
    assert "encrypted" not in line, line
    assert list(target.iterdir()) == []
