"""Names inside a layer: normalising member paths and recognising overlay markers.

A member name becomes a tuple of components below the image root. `..` is
refused outright, as ostree-ext does, so no later step has to reason about it.
"""

from __future__ import annotations

import enum

from pybootc.errors import BootcError

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"

# Xattrs that belong to overlayfs itself: never taken from an image, never written out.
OVERLAY_XATTR_PREFIXES = ("trusted.overlay.",)
# Only the rootful marker: storage this project owns is rootful, and there an
# image's `user.overlay.opaque` is plain data that the kernel shows as such.
OPAQUE_XATTRS = ("trusted.overlay.opaque",)

Parts = tuple[str, ...]


def split_member_name(name: str) -> Parts:
    """`./a//b/` -> ("a", "b"); "" or "." -> () (the root). Refuses `..`."""
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if ".." in parts:
        raise BootcError(f'Invalid path "{name}": ".." is not allowed in a layer')
    return parts


def join(parts: Parts) -> str:
    return "/".join(parts)


class Marker(enum.Enum):
    NONE = enum.auto()
    WHITEOUT = enum.auto()
    OPAQUE = enum.auto()


def classify(base: str) -> tuple[Marker, str]:
    """What a final path component means, and the name a whiteout hides."""
    if base == OPAQUE_MARKER:
        return Marker.OPAQUE, ""
    if base.startswith(WHITEOUT_PREFIX):
        hidden = base[len(WHITEOUT_PREFIX) :]
        if hidden in ("", ".", ".."):
            raise BootcError(f'Invalid whiteout name "{base}"')
        return Marker.WHITEOUT, hidden
    return Marker.NONE, base


def is_overlay_xattr(name: str) -> bool:
    return name.startswith(OVERLAY_XATTR_PREFIXES)
