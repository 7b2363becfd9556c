"""Files of bootc's containers-storage made to share their data with the repo's objects.

The container backend reads every file of a layer's diff directory into an object of
the OSTree repo, so without this the OS is on the disk twice. On a filesystem with
reflinks (XFS, btrfs) the kernel's FIDEDUPERANGE makes the storage's file and the
object share their extents: it compares the two ranges itself and only shares them if
they are equal, atomically, so nothing is trusted and nothing can be lost. Both stay
ordinary files: a write to either copies the block it changes (copy on write), and the
other does not see it.

libostree (2023.8 and newer) clones a file into the repo when it commits a directory,
but not for content written as an object stream, which is how both stores write; and
cloning the other way, into the storage's file, would briefly change a file that is in
use. Deduplication after the fact has neither problem, and works with libostree 2022.7.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
from collections.abc import Iterable
from pathlib import Path

# _IOWR(0x94, 54, struct file_dedupe_range): linux/fs.h.
_FIDEDUPERANGE = 0xC0189436
# struct file_dedupe_range with one struct file_dedupe_range_info after it.
_RANGE = struct.Struct("=QQHHI")
_INFO = struct.Struct("=qQQiI")
_SAME = 0
# btrfs shares at most 16 MiB per call; XFS takes any length. Both answer with how much.
_STEP = 16 << 20
# What a filesystem without reflinks (ext4, tmpfs) answers, or a storage on another
# filesystem than the repo: the same for every file. EINVAL is one file's answer (a
# range past the object's end, a file btrfs keeps no checksums of).
_UNSUPPORTED = {errno.EOPNOTSUPP, errno.ENOTTY, errno.EXDEV}


def _dedupe(source: int, dest: int, offset: int, length: int) -> int:
    """Bytes of `dest` at `offset` now sharing `source`'s; 0 where they differ."""
    request = bytearray(_RANGE.pack(offset, length, 1, 0, 0) + _INFO.pack(dest, offset, 0, 0, 0))
    fcntl.ioctl(source, _FIDEDUPERANGE, request)
    _, _, done, status, _ = _INFO.unpack_from(request, _RANGE.size)
    if status < 0:
        raise OSError(-status, os.strerror(-status))
    return int(done) if status == _SAME else 0


def _share(source: int, dest: int, size: int) -> int:
    offset = 0
    while offset < size:
        done = _dedupe(source, dest, offset, min(_STEP, size - offset))
        if not done:
            break
        offset += done
    return offset


def object_path(repo_path: Path, checksum: str) -> Path:
    """Where a bare repo keeps the content object `checksum`."""
    return repo_path / "objects" / checksum[:2] / f"{checksum[2:]}.file"


def share_with_objects(repo_path: Path, files: Iterable[tuple[str, str]]) -> int:
    """Make each (path, object checksum) file share the object's data, as far as the
    filesystem can; the bytes now shared. On a filesystem without reflinks, 0 at once."""
    shared = 0
    for path, checksum in files:
        try:
            dest = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            size = os.fstat(dest).st_size
            if not size:
                continue
            source = os.open(object_path(repo_path, checksum), os.O_RDONLY | os.O_CLOEXEC)
            try:
                shared += _share(source, dest, size)
            finally:
                os.close(source)
        except OSError as err:
            if err.errno in _UNSUPPORTED:
                return shared
            # One file that cannot be shared (busy, gone, grown) costs only its own space.
        finally:
            os.close(dest)
    return shared
