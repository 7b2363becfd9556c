"""The flattening bugs other tools shipped (layer-semantics.md), one test each.

Every case is compared with the kernel's overlay view for both sources and
also states the symptom the upstream bug had, so that it cannot come back.
"""

from __future__ import annotations

import pytest

from pybootc.sample.ocibuild import directory, file, hardlink, layer, opaque, whiteout
from tests.support import Oracle, Tree

pytestmark = pytest.mark.oracle

CAPABILITY = bytes.fromhex("0100000200200000000000000000000000000000")


def agreed_tree(oracle: Oracle, *layers: object) -> dict[str, object]:
    outcome = oracle.compare(list(layers))  # type: ignore[arg-type]
    outcome.assert_agree()
    assert not isinstance(outcome.blobs, str)
    tree: Tree = outcome.blobs
    return {e.path: e for e in tree}


def test_ggcr_1897_opaque_marker_is_not_a_plain_whiteout(oracle: Oracle) -> None:
    # Taken as a whiteout of ".wh..opq", the marker hid nothing, or hid the directory itself.
    tree = agreed_tree(
        oracle,
        layer(directory("etc"), file("etc/old"), file("etc/keep-me-not")),
        layer(opaque("etc"), file("etc/new")),
    )
    assert "etc" in tree and "etc/new" in tree
    assert "etc/old" not in tree and "etc/keep-me-not" not in tree
    assert not any(".wh." in path for path in tree)


def test_ggcr_977_hardlink_survives_a_later_whiteout_of_its_target(oracle: Oracle) -> None:
    tree = agreed_tree(
        oracle,
        layer(directory("bin"), file("bin/busybox", "BB" * 100), hardlink("bin/sh", "bin/busybox")),
        layer(whiteout("bin/busybox")),
    )
    assert "bin/busybox" not in tree
    assert tree["bin/sh"].size == 200  # type: ignore[attr-defined]


def test_ggcr_2002_hardlink_survives_a_later_overwrite_of_its_target(oracle: Oracle) -> None:
    tree = agreed_tree(
        oracle,
        layer(file("a", "old"), hardlink("b", "a"), hardlink("c", "a")),
        layer(file("a", "replaced")),
    )
    assert tree["a"].size == 8 and tree["a"].link_group is None  # type: ignore[attr-defined]
    assert tree["b"].size == 3 and tree["b"].link_group == "b"  # type: ignore[attr-defined]
    assert tree["c"].link_group == "b"  # type: ignore[attr-defined]


def test_ggcr_1623_markers_do_not_leak_from_a_single_layer(oracle: Oracle) -> None:
    tree = agreed_tree(
        oracle,
        layer(directory("d"), opaque("d"), file("d/x"), whiteout("gone"), whiteout("d/also-gone")),
    )
    assert not any(".wh." in path for path in tree)
    assert "d/x" in tree


def test_stereoscope_696_opaque_prefix_does_not_wipe_etc(oracle: Oracle) -> None:
    # A name that merely starts with the opaque marker wiped all of /etc.
    tree = agreed_tree(
        oracle,
        layer(directory("etc"), file("etc/passwd", "root"), file("etc/hosts")),
        layer(file("etc/.wh..wh..opq.bak")),
    )
    assert {"etc/passwd", "etc/hosts"} <= set(tree)


def test_ostree_rs_ext_654_and_overlaybd_301_capabilities_are_kept(oracle: Oracle) -> None:
    tree = agreed_tree(
        oracle,
        layer(directory("usr"), directory("usr/bin")),
        layer(file("usr/bin/ping", "p", mode=0o755, xattrs={"security.capability": CAPABILITY})),
    )
    assert tree["usr/bin/ping"].xattrs == (("security.capability", CAPABILITY),)  # type: ignore[attr-defined]


def test_kaniko_282_extraction_order_keeps_hardlinks(oracle: Oracle) -> None:
    # Extracting the newest layer first broke the links of files it did not touch.
    tree = agreed_tree(
        oracle,
        layer(
            directory("lib"),
            file("lib/libc.so", "C" * 64),
            hardlink("lib/libc.so.6", "lib/libc.so"),
        ),
        layer(file("lib/other", "o"), hardlink("lib/other.1", "lib/other")),
        layer(file("lib/unrelated", "u")),
    )
    assert tree["lib/libc.so.6"].link_group == "lib/libc.so"  # type: ignore[attr-defined]
    assert tree["lib/other.1"].link_group == "lib/other"  # type: ignore[attr-defined]


def test_ostree_ext_hardlink_fixture_matches_the_kernel(oracle: Oracle) -> None:
    # ostree-ext's own test layer: build-id symlinks and a hardlinked .pyc pair.
    import gzip
    import hashlib

    from pybootc.commands.flatten import Source
    from pybootc.sample.ocibuild import ImageSpec
    from tests.support import SHARED_REFERENCE

    blob = (SHARED_REFERENCE / "upstream-bootc" / "hlinks.tar.gz").read_bytes()
    diff_id = "sha256:" + hashlib.sha256(gzip.decompress(blob)).hexdigest()
    layout = oracle.layout
    descriptor = {
        "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
        "digest": layout.put_blob(blob),
        "size": len(blob),
    }
    layout.add_manifest("hlinks", ImageSpec(()), [descriptor], [diff_id])
    kernel = oracle.kernel_view("hlinks")
    assert not isinstance(kernel, str), kernel
    assert sum(1 for e in kernel if e.link_group) == 2  # one hardlinked pair
    for source in (Source.BLOBS, Source.CONTAINERS_STORAGE):
        tree = oracle.flatten("hlinks", source)
        assert not isinstance(tree, str), tree
        assert tree == kernel, source
