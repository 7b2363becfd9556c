"""Reading one overlay diff directory: its entries, whiteouts and opaque markers.

Diff directories come from containers-storage (kernel overlay format: whiteouts
are 0:0 character devices, opaque directories carry an xattr) or from our own
tar extraction, which writes the same format. Literal `.wh.` files, as
fuse-overlayfs leaves them, are understood too.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass

from pybootc.layers.member_markers import LayerMarkers
from pybootc.layers.paths import (
    OPAQUE_MARKER,
    OPAQUE_XATTRS,
    WHITEOUT_PREFIX,
)
from pybootc.layers.tree import FileMeta


@dataclass(frozen=True)
class LayerEntry:
    """One name in one directory of one layer."""

    layer: int
    path: str  # absolute path of the entry inside that layer's diff directory
    st: os.stat_result
    whiteout: bool = False
    # A directory's metadata as the layer's header gives it, where the diff directory
    # lost it (member_markers.py); None: the diff directory's.
    meta: FileMeta | None = None

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.st.st_mode)


def _directory_is_opaque(path: str) -> bool:
    """Whether a directory our own extraction wrote (extract.py) is opaque: by the xattr
    it sets for an opaque marker."""
    names = os.listxattr(path, follow_symlinks=False)
    return any(
        os.getxattr(path, name, follow_symlinks=False) == b"y"
        for name in OPAQUE_XATTRS
        if name in names
    )


@dataclass(frozen=True)
class DirectoryListing:
    entries: dict[str, LayerEntry]
    opaque: bool


# A directory a layer has that its diff directory lacks (member_markers.py).
_NO_DIRECTORY = os.stat_result((stat.S_IFDIR | 0o755, *(0,) * 15))


def list_layer_directory(
    layer: int, directory: str, markers: LayerMarkers | None = None, relative: str = ""
) -> DirectoryListing:
    """The names one layer has in `directory`, whiteouts included. With the `markers`
    the layer's members give (a diff directory of containers-storage's), those decide
    what is a marker, and `relative` is the directory's path in the layer; without,
    the directory is our own extraction's, or fuse-overlayfs's, which leaves literal
    `.wh.` files."""
    if markers is not None:
        return _listing_by_members(layer, directory, markers, relative)
    entries: dict[str, LayerEntry] = {}
    literal_whiteouts: list[str] = []
    opaque = _directory_is_opaque(directory)
    with os.scandir(directory) as it:
        for item in it:
            name = item.name
            st = item.stat(follow_symlinks=False)
            # A literal marker is a file; a 0:0 device named `.wh.x` is a whiteout of
            # `.wh.x`, what a layer's `.wh..wh.x` makes.
            if name == OPAQUE_MARKER and stat.S_ISREG(st.st_mode):
                opaque = True
                continue
            if name.startswith(WHITEOUT_PREFIX) and stat.S_ISREG(st.st_mode):
                literal_whiteouts.append(name[len(WHITEOUT_PREFIX) :])
                continue
            whiteout = stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
            entries[name] = LayerEntry(layer, item.path, st, whiteout)
    for hidden in literal_whiteouts:
        entries.setdefault(hidden, LayerEntry(layer, "", os.stat_result((0,) * 16), True))
    return DirectoryListing(entries, opaque)


def _listing_by_members(
    layer: int, directory: str, markers: LayerMarkers, relative: str
) -> DirectoryListing:
    """`list_layer_directory` of a diff directory of containers-storage's: a layer's tar
    stream unpacked, never a copy-up, so an overlay xattr in it (an opaque, redirect or
    metacopy one) is the image's own, data the layer rules drop, never obey. A
    whiteout is a 0:0 device a marker made (any other, containers-storage 1.43 made of
    a directory named like a whiteout, and made that directory again only if something
    is below it); a name is never a marker (`.wh.x` is a whiteout of `.wh.x` there)."""
    entries: dict[str, LayerEntry] = {}
    named = markers.named_like_whiteouts_in(relative)
    if directory:  # "" for a directory the diff directory lacks
        with os.scandir(directory) as it:
            for item in it:
                name = item.name
                st = item.stat(follow_symlinks=False)
                whiteout = stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
                if whiteout and not markers.hides(f"{relative}/{name}" if relative else name):
                    continue
                meta = named.get(name) if stat.S_ISDIR(st.st_mode) else None
                entries[name] = LayerEntry(layer, item.path, st, whiteout, meta)
    for name, meta in named.items():
        entries.setdefault(name, LayerEntry(layer, "", _NO_DIRECTORY, meta=meta))
    return DirectoryListing(entries, markers.is_opaque(relative))
