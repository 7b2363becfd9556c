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

from pybootc.errors import BootcError
from pybootc.layers.paths import (
    OPAQUE_MARKER,
    OPAQUE_XATTRS,
    UNSUPPORTED_OVERLAY_XATTRS,
    WHITEOUT_PREFIX,
)


@dataclass(frozen=True)
class LayerEntry:
    """One name in one directory of one layer."""

    layer: int
    path: str  # absolute path of the entry inside that layer's diff directory
    st: os.stat_result
    whiteout: bool = False

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.st.st_mode)


def _directory_is_opaque(path: str) -> bool:
    """The directory's overlay xattrs: is it opaque? Refuse what we cannot read."""
    names = os.listxattr(path, follow_symlinks=False)
    for name in UNSUPPORTED_OVERLAY_XATTRS:
        if name in names:
            raise BootcError(
                f"{path}: has {name}; storage with redirect_dir or metacopy is not supported"
            )
    return any(
        os.getxattr(path, name, follow_symlinks=False) == b"y"
        for name in OPAQUE_XATTRS
        if name in names
    )


@dataclass(frozen=True)
class DirectoryListing:
    entries: dict[str, LayerEntry]
    opaque: bool


def list_layer_directory(layer: int, directory: str) -> DirectoryListing:
    """The names one layer has in `directory`, whiteouts included."""
    entries: dict[str, LayerEntry] = {}
    literal_whiteouts: list[str] = []
    opaque = _directory_is_opaque(directory)
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
            entries[name] = LayerEntry(layer, item.path, st, whiteout)
    for hidden in literal_whiteouts:
        entries.setdefault(hidden, LayerEntry(layer, "", os.stat_result((0,) * 16), True))
    return DirectoryListing(entries, opaque)
