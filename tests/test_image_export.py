"""`image copy-to-storage` of an image the ostree backend fetched: written back out from
its layer commits into the host's containers-storage. Through the kernel's overlay it is
the original image's tree, and installed again it gives the deployed commit's tree."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from pybootc.layers.listing import ListedEntry, list_tree
from pybootc.ostree.repo import root_tree_checksum
from pybootc.ostree.sysroot import Sysroot
from pybootc.sample.image import sample_image
from pybootc.sample.ocibuild import Entry, Kind, OciLayout, directory, file, hardlink, layer, opaque
from pybootc.stores.containers_storage import ContainersStorage
from tests.backend_support import bootc, install, ok, one_error_line, state

# What the export must bring back besides the sample's own whiteout, opaque directory
# and file capability: a hardlink, a FIFO and a device node, an opaque directory of its
# own layer, and an xattr on a directory.
EXTRA = layer(
    file("srv/data", "shared\n"),
    hardlink("srv/data-link", "srv/data"),
    Entry("srv/fifo", Kind.FIFO, mode=0o644),
    Entry("srv/null", Kind.CHAR, mode=0o666, devmajor=1, devminor=3),
    directory("srv/tagged", xattrs={"user.tag": b"\x00binary\xff"}),
    opaque("etc/apt"),
    file("etc/apt/only-this", "x\n"),
)


def tree_of_image(storage: ContainersStorage, name: str) -> list[ListedEntry]:
    """The image's tree through the kernel's overlay. Identical files may share an
    inode in an export (one object, hardlinked), so hardlink groups are left out."""
    mounted = storage.mount(name)
    try:
        return [dataclasses.replace(e, link_group=None) for e in list_tree(mounted)]
    finally:
        storage.unmount(name)


def test_an_ostree_backend_image_is_exported_from_its_layer_commits(
    tmp_path: Path, target: Path, other_target: Path, host_storage: ContainersStorage
) -> None:
    layout = OciLayout(tmp_path / "oci")
    layout.add_image("os", sample_image("1.0", extra=(EXTRA,)))
    ok(install(target, layout.ref("os"), backend="ostree"))

    out = ok(bootc("image", "copy-to-storage", sysroot=target)).splitlines()
    destination = "containers-storage:localhost/bootc"
    assert out[0] == f"Copying local image oci:{layout.path}:os to {destination} ..."
    assert out[1].startswith(f"Pushed: {destination} sha256:") and len(out) == 2
    subprocess.run(
        [
            "skopeo",
            "--tmpdir",
            str(tmp_path),
            "copy",
            "--quiet",
            layout.ref("os"),
            "containers-storage:localhost/original",
        ],
        check=True,
    )
    assert tree_of_image(host_storage, "localhost/bootc") == tree_of_image(
        host_storage, "localhost/original"
    )

    # Installed again, from the host's storage, the export deploys the same tree.
    ok(install(other_target, "containers-storage:localhost/bootc", backend="ostree"))
    trees = [
        root_tree_checksum(s.repo, s.deployments()[0].checksum)
        for s in (Sysroot.open(target), Sysroot.open(other_target))
    ]
    assert trees[0] == trees[1]


def installed_sample(tmp_path: Path, target: Path, backend: str) -> OciLayout:
    """The sample OS in a layout, installed from it with `backend`."""
    layout = OciLayout(tmp_path / "oci")
    layout.add_image("os", sample_image("1.0"))
    ok(install(target, layout.ref("os"), backend=backend))
    return layout


def test_a_container_backend_image_is_copied_under_its_own_name(
    tmp_path: Path, target: Path, host_storage: ContainersStorage
) -> None:
    layout = installed_sample(tmp_path, target, "container")
    out = ok(bootc("image", "copy-to-storage", sysroot=target)).splitlines()
    destination = "containers-storage:localhost/bootc"
    assert out[0] == f"Copying local image oci:{layout.path}:os to {destination} ..."
    assert out[1].startswith(f"Pushed: {destination} sha256:") and len(out) == 2


def test_copy_to_storage_names_an_image_by_what_image_list_shows(
    tmp_path: Path, target: Path, host_storage: ContainersStorage
) -> None:
    layout = installed_sample(tmp_path, target, "ostree")
    ok(bootc("image", "copy-to-storage", "--source", layout.ref("os"), "--target",
             "localhost/mine:1", sysroot=target))  # fmt: skip
    assert "localhost/mine" in ok(
        subprocess.run(["podman", "images"], capture_output=True, text=True, check=False)
    )
    before = state(target)
    proc = bootc("image", "copy-to-storage", "--source", "oci:/nonexistent:x", sysroot=target)
    assert one_error_line(proc) == "error: No such image: oci:/nonexistent:x"
    assert state(target) == before


def test_copies_stage_in_a_work_directory_that_goes_with_them(
    tmp_path: Path, target: Path, host_storage: ContainersStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """skopeo 1.9 leaves the layers it stages for containers-storage in /var/tmp: each
    copy stages in a directory of its own under the repo's tmp, removed afterwards."""
    installed_sample(tmp_path, target, "ostree")
    real = shutil.which("skopeo")
    assert real is not None
    wrappers = tmp_path / "bin"
    wrappers.mkdir()
    argv_log = tmp_path / "skopeo-argv"
    (wrappers / "skopeo").write_text(f'#!/bin/sh\necho "$*" >> {argv_log}\nexec {real} "$@"\n')
    (wrappers / "skopeo").chmod(0o755)
    monkeypatch.setenv("PATH", f"{wrappers}:{os.environ['PATH']}")
    ok(bootc("image", "copy-to-storage", sysroot=target))
    ok(bootc("image", "pull-from-default-storage", "localhost/bootc", sysroot=target))
    copies = [line for line in argv_log.read_text().splitlines() if " copy " in line]
    assert len(copies) == 2
    for line in copies:
        assert line.startswith(f"--tmpdir {target}/ostree/repo/tmp/pybootc-copy-"), line
    assert not [p for p in (target / "ostree/repo/tmp").iterdir() if p.name.startswith("pybootc")]
