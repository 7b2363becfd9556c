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


def list_layer_directory(
    layer: int, directory: str, markers: LayerMarkers | None = None, relative: str = ""
) -> DirectoryListing:
    """The names one layer has in `directory`, whiteouts included. With the `markers`
    the layer's members give, those decide what is a marker (member_markers.py);
    `relative` is then the directory's path in the layer."""
    entries: dict[str, LayerEntry] = {}
    literal_whiteouts: list[str] = []
    # With the members known, the diff directory is containers-storage's: a layer's tar
    # stream unpacked, never a copy-up, so an overlay xattr in it (an opaque, redirect
    # or metacopy one) is the image's own, data the layer rules drop, never obey.
    opaque = markers.is_opaque(relative) if markers is not None else _directory_is_opaque(directory)
    with os.scandir(directory) as it:
        for item in it:
            name = item.name
            st = item.stat(follow_symlinks=False)
            is_dir = stat.S_ISDIR(st.st_mode)
            if name == OPAQUE_MARKER and not is_dir:
                opaque = True
                continue
            if name.startswith(WHITEOUT_PREFIX) and not is_dir:
                literal_whiteouts.append(name[len(WHITEOUT_PREFIX) :])
                continue
            whiteout = stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
            meta = None
            if markers is not None and (whiteout or (is_dir and name.startswith(WHITEOUT_PREFIX))):
                child = f"{relative}/{name}" if relative else name
                if whiteout and not markers.hides(child):
                    # Made of a directory named like a whiteout: no whiteout at all.
                    continue
                meta = markers.named_like_whiteouts.get(child)
            entries[name] = LayerEntry(layer, item.path, st, whiteout, meta)
    for hidden in literal_whiteouts:
        entries.setdefault(hidden, LayerEntry(layer, "", os.stat_result((0,) * 16), True))
    return DirectoryListing(entries, opaque)
