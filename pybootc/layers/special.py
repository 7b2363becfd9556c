"""Device nodes, FIFOs and sockets, which an OSTree commit cannot hold.

A layer commit keeps each as a placeholder: an empty regular file with the owner and
mode of the special file, and SPECIAL_XATTR saying what it was ("c 1 3", "b 8 0", "p",
"s"). A checkout makes it that file again (stores/layered.py), and an export writes it
as one (stores/export.py).
"""

from __future__ import annotations

import stat

from pybootc.errors import BootcError
from pybootc.layers.paths import is_overlay_xattr
from pybootc.layers.tree import FileMeta, ObjectSink

SPECIAL_XATTR = "user.pybootc.special"
_LETTERS = {stat.S_IFCHR: "c", stat.S_IFBLK: "b", stat.S_IFIFO: "p", stat.S_IFSOCK: "s"}
_KINDS = {letter: fmt for fmt, letter in _LETTERS.items()}


def is_image_xattr(name: str) -> bool:
    """Whether an xattr an image gives a file is that file's own data. Overlay's
    markers and the placeholder's xattr are not: pybootc would obey them, so an image
    that carries them has them dropped, never followed."""
    return not is_overlay_xattr(name) and name != SPECIAL_XATTR


# A special file's type (S_IFCHR, S_IFBLK, S_IFIFO or S_IFSOCK), major and minor.
SpecialKind = tuple[int, int, int]


def placeholder(objects: ObjectSink, owner: FileMeta, kind: SpecialKind) -> str:
    """The placeholder object of a special file of `kind`, with the owner and the
    permission bits of `owner`; its checksum."""
    fmt, major, minor = kind
    value = _LETTERS[fmt]
    if fmt in (stat.S_IFCHR, stat.S_IFBLK):
        value += f" {major} {minor}"
    mode = stat.S_IFREG | stat.S_IMODE(owner.mode)
    meta = FileMeta.of(owner.uid, owner.gid, mode, {SPECIAL_XATTR: value.encode()})
    return objects.regular_from_bytes(meta, b"")


def special_file_kind(value: bytes) -> SpecialKind:
    """What a placeholder's SPECIAL_XATTR says: its file type (S_IFCHR, ...), and the
    device's major and minor numbers (0 where it has none)."""
    try:
        kind, *numbers = value.decode().split()
        fmt = _KINDS[kind]
        major, minor = (int(numbers[0]), int(numbers[1])) if numbers else (0, 0)
    except (ValueError, KeyError, IndexError, UnicodeDecodeError):
        raise BootcError(f"Invalid special-file placeholder {value!r}") from None
    return fmt, major, minor
