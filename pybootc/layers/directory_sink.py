"""Writes the merged tree into a directory: the output of `internals flatten`.

Leaves are copied out of the layers (containers-storage's diff directories are
not ours to change) or moved, when the layers are our own scratch extraction.
Names that share an inode in a layer share one in the output.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass

from pybootc.layers.diffdir import LayerEntry
from pybootc.layers.paths import is_overlay_xattr

_COPY_CHUNK = 1 << 30
# How often (in entries) the sink says how far it has got.
_REPORT_EVERY = 512
_NO_COPY_FILE_RANGE = (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP)


@dataclass
class SinkStats:
    entries: int = 0
    bytes: int = 0


def copy_xattrs(source: str, set_xattr: Callable[[str, bytes], None]) -> None:
    for name in os.listxattr(source, follow_symlinks=False):
        if not is_overlay_xattr(name):
            set_xattr(name, os.getxattr(source, name, follow_symlinks=False))


def _copy_content(src: int, dst: int, size: int) -> None:
    """Copy in the kernel: copy_file_range (reflinks where the filesystem can),
    or sendfile between filesystems that copy_file_range will not span."""
    use_sendfile = False
    remaining = size
    while remaining > 0:
        count = min(remaining, _COPY_CHUNK)
        if use_sendfile:
            copied = os.sendfile(dst, src, None, count)
        else:
            try:
                copied = os.copy_file_range(src, dst, count)
            except OSError as err:
                if err.errno not in _NO_COPY_FILE_RANGE:
                    raise
                use_sendfile = True
                continue
        if copied == 0:
            raise OSError(errno.EIO, "the file shrank while being copied")
        remaining -= copied


class DirectorySink:
    """A TreeSink that fills an existing empty directory."""

    def __init__(
        self,
        root_fd: int,
        *,
        move: bool,
        movable: Callable[[LayerEntry], bool] | None = None,
        counted: Callable[[int], None] | None = None,
    ) -> None:
        self.root_fd = root_fd
        # Told the number of entries written so far, now and then (progress).
        self.counted = counted
        self.move = move
        # Which directories may be moved whole: those of our own scratch layers
        # with no whiteout or opaque marker below them.
        self.movable = movable
        self.stats = SinkStats()
        self._first_name: dict[tuple[int, int], str] = {}
        self._warnings: list[str] = []

    def _entry(self) -> None:
        self.stats.entries += 1
        if self.counted is not None and self.stats.entries % _REPORT_EVERY == 0:
            self.counted(self.stats.entries)

    def directory(self, path: str, entry: LayerEntry) -> None:
        os.mkdir(path, 0o700, dir_fd=self.root_fd)
        self._entry()

    def finish_directory(self, path: str, entry: LayerEntry) -> None:
        st = entry.st
        fd = os.open(path or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=self.root_fd)
        try:
            if entry.meta is not None:
                # The header's metadata, which the diff directory lost.
                os.fchown(fd, entry.meta.uid, entry.meta.gid)
                for name, value in entry.meta.xattrs:
                    os.setxattr(fd, name, value)
                os.fchmod(fd, stat.S_IMODE(entry.meta.mode))
            else:
                os.fchown(fd, st.st_uid, st.st_gid)
                if entry.path:
                    copy_xattrs(entry.path, lambda k, v: os.setxattr(fd, k, v))
                os.fchmod(fd, stat.S_IMODE(st.st_mode))
            os.utime(fd, ns=(st.st_mtime_ns, st.st_mtime_ns))
        finally:
            os.close(fd)

    def move_subtree(self, path: str, entry: LayerEntry) -> bool:
        if not self.move or self.movable is None or not self.movable(entry):
            return False
        os.rename(entry.path, path, dst_dir_fd=self.root_fd)
        self._count_moved(path)
        return True

    def _count_moved(self, path: str) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=self.root_fd)
        try:
            self._entry()
            with os.scandir(fd) as it:
                entries = list(it)
            for item in entries:
                if item.is_dir(follow_symlinks=False):
                    self._count_moved(f"{path}/{item.name}")
                    continue
                self._entry()
                if item.is_file(follow_symlinks=False):
                    self.stats.bytes += item.stat(follow_symlinks=False).st_size
        finally:
            os.close(fd)

    def leaf(self, path: str, entry: LayerEntry) -> None:
        self._entry()
        st = entry.st
        if stat.S_ISREG(st.st_mode):
            self.stats.bytes += st.st_size
        if self.move:
            # Our own scratch layer: the inode, its metadata and its other names
            # in this layer come along with one rename.
            os.rename(entry.path, path, dst_dir_fd=self.root_fd)
            return
        key = (st.st_dev, st.st_ino)
        first = self._first_name.get(key)
        if first is not None:
            os.link(
                first, path, src_dir_fd=self.root_fd, dst_dir_fd=self.root_fd, follow_symlinks=False
            )
            return
        if st.st_nlink > 1:
            self._first_name[key] = path
        if stat.S_ISREG(st.st_mode):
            self._copy_file(path, entry)
        elif stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(entry.path), path, dir_fd=self.root_fd)
            self._set_metadata(path, entry, follow=False)
        else:
            os.mknod(path, st.st_mode, st.st_rdev, dir_fd=self.root_fd)
            self._set_metadata(path, entry, follow=False)

    def _copy_file(self, path: str, entry: LayerEntry) -> None:
        st = entry.st
        src = os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            dst = os.open(
                path,
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o600,
                dir_fd=self.root_fd,
            )
            try:
                _copy_content(src, dst, st.st_size)
                os.fchown(dst, st.st_uid, st.st_gid)
                copy_xattrs(entry.path, lambda k, v: os.setxattr(dst, k, v))
                os.fchmod(dst, stat.S_IMODE(st.st_mode))
                os.utime(dst, ns=(st.st_mtime_ns, st.st_mtime_ns))
            finally:
                os.close(dst)
        finally:
            os.close(src)

    def _set_metadata(self, path: str, entry: LayerEntry, *, follow: bool) -> None:
        st = entry.st
        root = self.root_fd
        os.chown(path, st.st_uid, st.st_gid, dir_fd=root, follow_symlinks=False)
        proc = f"/proc/self/fd/{root}/{path}"
        copy_xattrs(entry.path, lambda k, v: os.setxattr(proc, k, v, follow_symlinks=False))
        if not stat.S_ISLNK(st.st_mode):
            os.chmod(path, stat.S_IMODE(st.st_mode), dir_fd=root)
        os.utime(path, ns=(st.st_mtime_ns, st.st_mtime_ns), dir_fd=root, follow_symlinks=follow)
