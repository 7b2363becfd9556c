"""One overlay diff directory (containers-storage's) read into a layer tree, its files
written as objects: each hashed once, and copied by the kernel.

The diff directory is what containers-storage unpacked, so the layer rules were applied
there; it is read as diffdir.py reads it, with the markers the layer's own members
give (member_markers.py) in place of those the diff directory shows, and overlayfs's
own xattrs are left out of what the objects record. Names that share an inode are
hashed once.

The files are hashed and written on two threads (file_writers.py): reading and hashing
release the GIL, and so does libostree while it writes, which allows several writers
in one transaction.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from pybootc.layers.diffdir import list_layer_directory
from pybootc.layers.file_writers import FileWriters
from pybootc.layers.member_markers import LayerMarkers
from pybootc.layers.special import is_image_xattr, placeholder
from pybootc.layers.tree import (
    WHITEOUT,
    Entry,
    FileMeta,
    LayerRead,
    Leaf,
    LeafKind,
    ObjectSink,
    finished_dir,
)


def _meta(path: str, st: os.stat_result) -> FileMeta:
    # OSTree keeps no xattr of no value (libostree leaves them out of what it reads);
    # containers-storage 1.57 sets one where the image has it.
    xattrs = {
        name: value
        for name in os.listxattr(path, follow_symlinks=False)
        if is_image_xattr(name) and (value := os.getxattr(path, name, follow_symlinks=False))
    }
    return FileMeta.of(st.st_uid, st.st_gid, st.st_mode, xattrs)


class _DiffDirReader:
    def __init__(self, objects: ObjectSink, files: FileWriters, markers: LayerMarkers) -> None:
        self._objects = objects
        self._files = files
        self._markers = markers
        self._inodes: dict[tuple[int, int], Leaf] = {}
        self.marked: set[str] = set()

    def directory(
        self, path: str, relative: str, header: FileMeta | None = None
    ) -> tuple[FileMeta, dict[str, Entry], bool]:
        """The directory's metadata (`header`'s where the layer's header gives it, as
        member_markers.py reads it; else the diff directory's), children and opacity."""
        listing = list_layer_directory(0, path, self._markers, relative)
        children: dict[str, Entry] = {}
        marked = listing.opaque
        for name, entry in listing.entries.items():
            if entry.whiteout:
                children[name] = WHITEOUT
                marked = True
                continue
            child = f"{relative}/{name}" if relative else name
            st = entry.st
            if stat.S_ISDIR(st.st_mode):
                meta, grandchildren, opaque = self.directory(entry.path, child, entry.meta)
                children[name] = finished_dir(self._objects, meta, grandchildren, opaque=opaque)
                marked = marked or child in self.marked
            elif stat.S_ISREG(st.st_mode):
                children[name] = self._regular(entry.path, st)
            elif stat.S_ISLNK(st.st_mode):
                target = os.readlink(entry.path)
                children[name] = Leaf(
                    LeafKind.SYMLINK, self._objects.symlink(_meta(entry.path, st), target)
                )
            else:
                children[name] = self._placeholder(st)
        if marked:
            self.marked.add(relative)
        own = header if header is not None else _meta(path, os.lstat(path))
        return own, children, listing.opaque

    def _regular(self, path: str, st: os.stat_result) -> Leaf:
        """The file's leaf, its checksum filled in once the writers are done; a file
        hardlinked within the layer is written once, and its names share the leaf."""
        key = (st.st_dev, st.st_ino)
        leaf = self._inodes.get(key)
        if leaf is None:
            leaf = self._inodes[key] = self._files.add(path, _meta(path, st), st.st_size)
        return leaf

    def _placeholder(self, st: os.stat_result) -> Leaf:
        """A device node, FIFO or socket, as the ostree store keeps one."""
        kind = (stat.S_IFMT(st.st_mode), os.major(st.st_rdev), os.minor(st.st_rdev))
        owner = FileMeta(st.st_uid, st.st_gid, st.st_mode)
        return Leaf(LeafKind.SPECIAL, placeholder(self._objects, owner, kind))


def read_diff_dir(diff_dir: Path, markers: LayerMarkers, objects: ObjectSink) -> LayerRead:
    """Read a containers-storage diff directory into a layer tree, writing its content
    to `objects`; `markers`, as the layer's members give them, decide its whiteouts
    and opaque directories."""
    with FileWriters(objects) as files:
        reader = _DiffDirReader(objects, files, markers)
        meta, children, opaque = reader.directory(str(diff_dir), "")
        tree = finished_dir(objects, meta, children, opaque=opaque)
        sources = files.finish()
    return LayerRead(tree, reader.marked, sources)
