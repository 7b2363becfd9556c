"""One overlay diff directory (containers-storage's) read into a layer tree, its files
written as objects: each hashed once, on both cores.

The diff directory is what containers-storage unpacked, so the layer rules were applied
there; it is read as diffdir.py reads it (whiteouts as 0:0 character devices or `.wh.`
files, opaque directories by xattr or marker file), and overlayfs's own xattrs are left
out of what the objects record. Names that share an inode are hashed once.
"""

from __future__ import annotations

import os
import stat
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from pybootc.layers.diffdir import list_layer_directory
from pybootc.layers.paths import is_overlay_xattr
from pybootc.layers.tar_tree import SPECIAL_XATTR, LayerRead, TreeStats
from pybootc.layers.tree import (
    WHITEOUT,
    Entry,
    FileMeta,
    Leaf,
    LeafKind,
    ObjectSink,
    finished_dir,
)

# Both cores: hashing (hashlib) and libostree's writes run without the GIL.
_WORKERS = 2
_SPECIAL_LETTERS = {stat.S_IFCHR: "c", stat.S_IFBLK: "b", stat.S_IFIFO: "p", stat.S_IFSOCK: "s"}


def _meta(path: str, st: os.stat_result) -> FileMeta:
    xattrs = {
        name: os.getxattr(path, name, follow_symlinks=False)
        for name in os.listxattr(path, follow_symlinks=False)
        if not is_overlay_xattr(name)
    }
    return FileMeta.of(st.st_uid, st.st_gid, st.st_mode, xattrs)


def _regular(objects: ObjectSink, path: str, meta: FileMeta, size: int) -> str:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        return objects.regular_from_fd(meta, fd, size)
    finally:
        os.close(fd)


class _DiffDirReader:
    def __init__(self, objects: ObjectSink, pool: ThreadPoolExecutor) -> None:
        self._objects = objects
        self._pool = pool
        self._inodes: dict[tuple[int, int], Future[str]] = {}
        self._pending: list[tuple[dict[str, Entry], str, Future[str]]] = []
        self.marked: set[str] = set()
        self.stats = TreeStats()

    def directory(self, path: str, relative: str) -> tuple[FileMeta, dict[str, Entry], bool]:
        listing = list_layer_directory(0, path)
        children: dict[str, Entry] = {}
        marked = listing.opaque
        for name, entry in listing.entries.items():
            self.stats.entries += 1
            if entry.whiteout:
                children[name] = WHITEOUT
                marked = True
                continue
            child = f"{relative}/{name}" if relative else name
            st = entry.st
            if stat.S_ISDIR(st.st_mode):
                meta, grandchildren, opaque = self.directory(entry.path, child)
                children[name] = finished_dir(self._objects, meta, grandchildren, opaque=opaque)
                marked = marked or child in self.marked
            elif stat.S_ISREG(st.st_mode):
                self.stats.bytes += st.st_size
                key = (st.st_dev, st.st_ino)
                future = self._inodes.get(key)
                if future is None:
                    meta = _meta(entry.path, st)
                    future = self._pool.submit(
                        _regular, self._objects, entry.path, meta, st.st_size
                    )
                    self._inodes[key] = future
                self._pending.append((children, name, future))
            elif stat.S_ISLNK(st.st_mode):
                target = os.readlink(entry.path)
                children[name] = Leaf(
                    LeafKind.SYMLINK, self._objects.symlink(_meta(entry.path, st), target)
                )
            else:
                children[name] = self._placeholder(st)
        if marked:
            self.marked.add(relative)
        return _meta(path, os.lstat(path)), children, listing.opaque

    def _placeholder(self, st: os.stat_result) -> Leaf:
        """A device node, FIFO or socket, as the ostree store keeps one."""
        self.stats.special_files = True
        letter = _SPECIAL_LETTERS[stat.S_IFMT(st.st_mode)]
        if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
            letter += f" {os.major(st.st_rdev)} {os.minor(st.st_rdev)}"
        meta = FileMeta.of(
            st.st_uid,
            st.st_gid,
            stat.S_IFREG | stat.S_IMODE(st.st_mode),
            {SPECIAL_XATTR: letter.encode()},
        )
        return Leaf(LeafKind.SPECIAL, self._objects.regular_from_bytes(meta, b""))

    def settle(self) -> None:
        """Wait for the files being written and put their objects in place."""
        for children, name, future in self._pending:
            children[name] = Leaf(LeafKind.REGULAR, future.result())
        self._pending.clear()


def read_diff_dir(diff_dir: Path, objects: ObjectSink) -> LayerRead:
    """Read a containers-storage diff directory into a layer tree, writing its content
    to `objects`."""
    with ThreadPoolExecutor(_WORKERS, thread_name_prefix="layer-files") as pool:
        reader = _DiffDirReader(objects, pool)
        meta, children, opaque = reader.directory(str(diff_dir), "")
        reader.settle()
    return LayerRead(
        finished_dir(objects, meta, children, opaque=opaque), reader.marked, reader.stats
    )
