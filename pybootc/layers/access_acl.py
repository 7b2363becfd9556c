"""Access ACLs (`system.posix_acl_access`) as the kernel keeps them.

An ACL and a file's permission bits are one thing to the kernel: setting the ACL sets
the bits (the group's from the ACL's mask, where it has one), and the ACL itself is
kept only if the bits cannot say all of it (posix_acl_update_mode); a chmod rewrites
a kept ACL's owner, mask (or group) and other entries (posix_acl_chmod). The tree a
layer makes must record what the kernel keeps, or an object would read back otherwise
than its checksum says, and the backends would differ. The kernel's view of an image
has the ACL's permissions whatever the header's mode: the ACL is set last.
"""

from __future__ import annotations

import struct
from collections.abc import MutableMapping

NAME = "system.posix_acl_access"
# The layout (linux/posix_acl_xattr.h): a little-endian version word, then entries of
# a tag, permissions (rwx) and an id, 8 bytes each.
_VERSION = 2
_HEADER, _ENTRY = struct.Struct("<I"), struct.Struct("<HHI")
_OWNER, _GROUP, _MASK, _OTHER = 0x01, 0x04, 0x10, 0x20
_NAMED = (0x02, 0x08)  # ACL_USER, ACL_GROUP


def _entries(value: bytes) -> list[tuple[int, int, int]] | None:
    """The entries of an ACL the kernel would read; None for any other value (setting
    it fails, as containers-storage's does, and that refuses the image)."""
    if len(value) < _HEADER.size or (len(value) - _HEADER.size) % _ENTRY.size:
        return None
    if _HEADER.unpack_from(value)[0] != _VERSION:
        return None
    entries = list(_ENTRY.iter_unpack(value[_HEADER.size :]))
    if not {_OWNER, _GROUP, _OTHER} <= {tag for tag, _, _ in entries}:
        return None
    return entries


def set_mode(mode: int, xattrs: MutableMapping[str, bytes]) -> int:
    """`mode` once the access ACL among `xattrs` is set on the file; the ACL is taken
    out of `xattrs` where the mode says all of it."""
    value = xattrs.get(NAME)
    entries = None if value is None else _entries(value)
    if entries is None:
        return mode
    perms = {tag: perm & 0o7 for tag, perm, _ in entries}
    if _MASK not in perms and not perms.keys() & set(_NAMED):
        del xattrs[NAME]
    rwx = perms[_OWNER] << 6 | perms.get(_MASK, perms[_GROUP]) << 3 | perms[_OTHER]
    return (mode & ~0o777) | rwx


def chmod(mode: int, xattrs: MutableMapping[str, bytes]) -> None:
    """A chmod to `mode` of a file whose xattrs are `xattrs`: a kept access ACL takes
    the new permissions."""
    value = xattrs.get(NAME)
    entries = None if value is None else _entries(value)
    if entries is None:
        return
    group_tag = _MASK if any(tag == _MASK for tag, _, _ in entries) else _GROUP
    shift = {_OWNER: 6, group_tag: 3, _OTHER: 0}
    xattrs[NAME] = _HEADER.pack(_VERSION) + b"".join(
        _ENTRY.pack(tag, (mode >> shift[tag]) & 0o7 if tag in shift else perm, qualifier)
        for tag, perm, qualifier in entries
    )
