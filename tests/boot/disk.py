"""Raw disk images on the host: making ext4 images and mounting them through loop devices.

A disk is either a bare ext4 file system or a partition table with one ext4 partition;
both mount the same way here, so the harness never cares which one a test made.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tests.boot.host_command import BootTestError, run

_TIMEOUT = 120


def make_ext4(
    image: Path, size_mb: int, label: str, *, source: Path | None = None, uuid: str | None = None
) -> Path:
    """A sparse `size_mb` file holding a fresh ext4 file system, filled from `source` if given.

    `mkfs.ext4 -d` copies a directory in without mounting anything.
    """
    image.unlink(missing_ok=True)
    with image.open("wb") as handle:
        handle.truncate(size_mb * 1024 * 1024)
    argv: list[str | os.PathLike[str]] = ["mkfs.ext4", "-q", "-F", "-L", label]
    if uuid is not None:
        argv += ["-U", uuid]
    if source is not None:
        argv += ["-d", source]
    run([*argv, image], timeout=_TIMEOUT * 5, capture=True)
    return image


def filesystem_uuid(device: Path) -> str:
    proc = run(["blkid", "-p", "-o", "value", "-s", "UUID", device], timeout=30, capture=True)
    uuid = proc.stdout.strip()
    if not uuid:
        raise BootTestError(f"no file system UUID on {device}")
    return uuid


@contextlib.contextmanager
def mounted(image: Path, *, read_only: bool = True) -> Iterator[Path]:
    """Mount the image's ext4 file system on a fresh directory under /var/tmp, for the block.

    The loop device itself stays writable even for a read-only mount: ext4 refuses a
    read-only device whose journal needs replay, which is the state a killed guest leaves.
    """
    with (
        attached(image) as device,
        tempfile.TemporaryDirectory(dir="/var/tmp", prefix="pybootc-mnt-") as temp,
    ):
        target = Path(temp)
        options = "ro" if read_only else "rw"
        run(["mount", "-t", "ext4", "-o", options, device, target], timeout=_TIMEOUT)
        try:
            yield target
        finally:
            run(["umount", target], timeout=_TIMEOUT)


@contextlib.contextmanager
def attached(image: Path) -> Iterator[Path]:
    """The image's ext4 device: a loop device over the whole image, or over its first
    partition when it has a partition table (by offset: kernels without GPT support,
    such as this machine's, make no partition devices for `losetup --partscan`)."""
    argv: list[str | Path] = ["losetup", "--find", "--show"]
    if _probe_type(image) != "ext4":
        table = json.loads(run(["sfdisk", "--json", image], timeout=30, capture=True).stdout)
        sector = int(table["partitiontable"].get("sectorsize", 512))
        first = table["partitiontable"]["partitions"][0]
        start, size = int(first["start"]) * sector, int(first["size"]) * sector
        argv += ["--offset", str(start), "--sizelimit", str(size)]
    loop = Path(run([*argv, image], timeout=_TIMEOUT, capture=True).stdout.strip())
    try:
        if _probe_type(loop) != "ext4":
            raise BootTestError(f"no ext4 file system on {image}")
        yield loop
    finally:
        run(["losetup", "--detach", loop], timeout=_TIMEOUT)


def _probe_type(device: Path) -> str:
    # blkid exits 2 when it finds nothing, which is an answer here, not a failure.
    proc = subprocess.run(
        ["blkid", "-p", "-o", "value", "-s", "TYPE", os.fspath(device)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return proc.stdout.strip()
