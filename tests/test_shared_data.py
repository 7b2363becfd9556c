"""The container backend keeps the OS on the disk once where the filesystem has
reflinks: each file of bootc's containers-storage shares its blocks with the repo's
object of it, and a write to either one leaves the other as it was."""

from __future__ import annotations

import fcntl
import hashlib
import os
import random
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from pybootc.ostree.shared_data import object_path, share_with_objects
from pybootc.sample.image import sample_image
from pybootc.sample.ocibuild import OciLayout, file, layer
from tests.backend_support import install, ok
from tests.sysroot_support import scratch_loop_filesystem

# FS_IOC_FIEMAP, and the sizes of struct fiemap and struct fiemap_extent (linux/fiemap.h).
_FIEMAP = 0xC020660B
_HEAD = struct.Struct("=QQIIII")
_EXTENT = struct.Struct("=QQQQQI12x")
_MAX_EXTENTS = 64
BULK = {f"usr/share/bulk/{n}": random.Random(n).randbytes(256 << 10) for n in range(8)}


def physical_extents(path: Path) -> list[tuple[int, int]]:
    """Where the file's data is on the device: (physical offset, length) per extent."""
    buffer = bytearray(_HEAD.pack(0, 2**64 - 1, 0, 0, _MAX_EXTENTS, 0))
    buffer += bytes(_EXTENT.size * _MAX_EXTENTS)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)  # delayed allocation: no physical blocks until written back
        fcntl.ioctl(fd, _FIEMAP, buffer)
    finally:
        os.close(fd)
    count = _HEAD.unpack_from(buffer)[3]
    extents = (_EXTENT.unpack_from(buffer, _HEAD.size + i * _EXTENT.size) for i in range(count))
    return [(physical, length) for _, physical, length, *_ in extents]


def storage_copy(sysroot: Path, name: str) -> Path:
    """The file `name` as bootc's containers-storage holds it (in its layer's diff)."""
    (found,) = (sysroot / "ostree/bootc/storage/overlay").glob(f"*/diff/{name}")
    return found


def deployed_copy(sysroot: Path, name: str) -> Path:
    """The file as the deployment has it: a hardlink of the repo's object."""
    (found,) = (sysroot / "ostree/deploy/default/deploy").glob(f"*.0/{name}")
    return found


def fsck(sysroot: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ostree", "fsck", "--repo", str(sysroot / "ostree/repo")],
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.fixture(params=["xfs", "btrfs"])
def installed(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path]:
    """A sysroot on a filesystem with reflinks, the sample image with a bulk layer
    installed by the container backend."""
    layout = OciLayout(tmp_path / "oci")
    layout.add_image(
        "os", sample_image("1", extra=(layer(*(file(n, d) for n, d in BULK.items())),))
    )
    with scratch_loop_filesystem(tmp_path / "fs", request.param) as mount:
        sysroot = mount / "sysroot"
        sysroot.mkdir()
        ok(install(sysroot, layout.ref("os"), backend="container"))
        yield sysroot


def test_storage_files_share_blocks_with_repo_objects(installed: Path) -> None:
    for name, data in BULK.items():
        stored, deployed = storage_copy(installed, name), deployed_copy(installed, name)
        assert stored.read_bytes() == data == deployed.read_bytes()
        assert os.stat(stored).st_ino != os.stat(deployed).st_ino
        extents = physical_extents(stored)
        assert extents and extents == physical_extents(deployed), name


def test_a_write_to_the_storage_leaves_the_object_alone(installed: Path) -> None:
    name = next(iter(BULK))
    stored, deployed = storage_copy(installed, name), deployed_copy(installed, name)
    with stored.open("r+b") as f:
        f.write(b"changed")
    assert stored.read_bytes()[:7] == b"changed"
    assert deployed.read_bytes() == BULK[name]
    assert fsck(installed).returncode == 0, fsck(installed).stderr


def test_a_write_to_the_object_leaves_the_storage_alone(installed: Path) -> None:
    name = next(iter(BULK))
    stored, deployed = storage_copy(installed, name), deployed_copy(installed, name)
    with deployed.open("r+b") as f:
        f.write(b"changed")
    assert stored.read_bytes() == BULK[name]
    # The repo sees its object changed: the write went to the object, not the storage.
    assert fsck(installed).returncode != 0


@pytest.mark.parametrize("fstype", ["xfs", "btrfs"])
def test_a_file_that_cannot_be_shared_leaves_the_next_ones_shared(
    tmp_path: Path, fstype: str
) -> None:
    data = random.Random(1).randbytes(256 << 10)
    with scratch_loop_filesystem(tmp_path / "fs", fstype) as mount:
        files = []
        # The first is longer than its object: the kernel refuses that one file (EINVAL).
        for name, more in (("grown", b"more"), ("equal", b"")):
            checksum = hashlib.sha256(name.encode()).hexdigest()
            found = object_path(mount / "repo", checksum)
            found.parent.mkdir(parents=True, exist_ok=True)
            found.write_bytes(data)
            (mount / name).write_bytes(data + more)
            files.append((str(mount / name), checksum))
        assert share_with_objects(mount / "repo", files) == len(data)
        equal = object_path(mount / "repo", files[1][1])
        assert physical_extents(mount / "equal") == physical_extents(equal)
        assert physical_extents(mount / "grown") != physical_extents(equal)
