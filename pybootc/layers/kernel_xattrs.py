"""An image's xattrs as the kernel keeps them once containers-storage has set them.

The tree a layer makes must record what a real file keeps, or an object would read
back otherwise than its checksum says (`ostree fsck`), and the backends would differ:
- A name outside the namespaces the kernel knows is refused with EOPNOTSUPP, which
  containers-storage ignores: the xattr is not kept.
- A file capability of revision 3 for the namespace whose root is uid 0 is the
  initial namespace's own: the kernel keeps it in revision 2.
- POSIX ACLs (`system.posix_acl_access`, `system.posix_acl_default`) are parsed and
  written back by the kernel (fs/posix_acl.c): the ids of the owner, group, mask and
  other entries are dropped, an ACL of no entries removes the ACL, and an ACL of
  another version is not supported (not kept). Setting an access ACL sets the
  permission bits (the group's from the mask, where there is one), and the ACL itself
  is kept only if the bits cannot say all of it; a later chmod rewrites a kept ACL.
  The kernel's view has an ACL's permissions whatever the header's mode.
- What the kernel refuses (an invalid ACL; a default ACL on a non-directory) refuses
  the layer, as it makes containers-storage refuse it.
"""

from __future__ import annotations

import struct
from collections.abc import Collection, MutableMapping

from pybootc.errors import BootcError

CAPABILITY = "security.capability"
ACCESS_ACL = "system.posix_acl_access"
DEFAULT_ACL = "system.posix_acl_default"
_NAMESPACES = ("user.", "trusted.", "security.")

# security.capability's layouts (linux/capability.h): a revision in the first
# little-endian word, with the effective flag; then permitted and inheritable sets, and
# in revision 3 the uid that is root in the namespace the capability is for.
_CAPABILITY_V2, _CAPABILITY_V3 = 0x02000000, 0x03000000
_CAPABILITY_EFFECTIVE = 0x000001
_CAPABILITY_V2_SIZE, _CAPABILITY_V3_SIZE = 20, 24

# An ACL's layout (linux/posix_acl_xattr.h): a little-endian version word, then entries
# of a tag, permissions (rwx) and an id, 8 bytes each.
_ACL_VERSION = 2
_ACL_HEADER, _ACL_ENTRY = struct.Struct("<I"), struct.Struct("<HHI")
_OWNER, _USER, _GROUP_OWNER, _GROUP, _MASK, _OTHER = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
_NO_ID = 0xFFFFFFFF  # ACL_UNDEFINED_ID, and (uid_t)-1: no valid user or group

Entries = tuple[tuple[int, int, int], ...]


def supported(name: str) -> bool:
    """Whether the kernel knows the xattr's namespace (anything else: EOPNOTSUPP)."""
    return name.startswith(_NAMESPACES) or name in (ACCESS_ACL, DEFAULT_ACL)


def as_kept(name: str, value: bytes) -> bytes:
    """An xattr's value as a file written by root keeps it, but for ACLs (`set_acls`)."""
    if name != CAPABILITY or len(value) != _CAPABILITY_V3_SIZE:
        return value
    magic = int.from_bytes(value[:4], "little")
    rootid = int.from_bytes(value[_CAPABILITY_V2_SIZE:], "little")
    if magic & ~_CAPABILITY_EFFECTIVE != _CAPABILITY_V3 or rootid != 0:
        return value
    plain = _CAPABILITY_V2 | (magic & _CAPABILITY_EFFECTIVE)
    return plain.to_bytes(4, "little") + value[4:_CAPABILITY_V2_SIZE]


class _NotSupported(Exception):
    """EOPNOTSUPP: containers-storage goes on without the xattr."""


def _refused(name: str, why: str) -> BootcError:
    return BootcError(f"Setting {name}: {why}")


def _valid(entries: Entries) -> bool:
    """posix_acl_valid: the entries in their order (owner, users, owning group, groups,
    mask, other), permissions within rwx, and a mask wherever there is a named entry."""
    state, needs_mask = _OWNER, False
    for tag, perm, _ in entries:
        if perm & ~0o7:
            return False
        if tag == _OWNER and state == _OWNER:
            state = _USER
        elif tag == _USER and state == _USER:
            needs_mask = True
        elif tag == _GROUP_OWNER and state == _USER:
            state = _GROUP
        elif tag == _GROUP and state == _GROUP:
            needs_mask = True
        elif tag == _MASK and state == _GROUP:
            state = _OTHER
        elif tag == _OTHER and (state == _OTHER or (state == _GROUP and not needs_mask)):
            state = 0
        else:
            return False
    return state == 0


def _read_acl(name: str, value: bytes) -> Entries:
    """posix_acl_from_xattr, then posix_acl_valid: the entries as the kernel keeps
    them (no entries, or no value at all: no ACL)."""
    if not value:
        return ()
    if len(value) < _ACL_HEADER.size:
        raise _refused(name, "Invalid argument")
    if _ACL_HEADER.unpack_from(value)[0] != _ACL_VERSION:
        raise _NotSupported
    if (len(value) - _ACL_HEADER.size) % _ACL_ENTRY.size:
        raise _refused(name, "Invalid argument")
    entries = []
    for tag, perm, given in _ACL_ENTRY.iter_unpack(value[_ACL_HEADER.size :]):
        named = tag in (_USER, _GROUP)
        if (named and given == _NO_ID) or (
            not named and tag not in (_OWNER, _GROUP_OWNER, _MASK, _OTHER)
        ):
            raise _refused(name, "Invalid argument")
        # Only a named entry has an id; the kernel writes no other back.
        entries.append((tag, perm, given if named else _NO_ID))
    if entries and not _valid(tuple(entries)):
        raise _refused(name, "Invalid argument")
    return tuple(entries)


def _written(entries: Entries) -> bytes:
    return _ACL_HEADER.pack(_ACL_VERSION) + b"".join(_ACL_ENTRY.pack(*e) for e in entries)


def set_acls(
    xattrs: MutableMapping[str, bytes],
    mode: int,
    own: Collection[str],
    *,
    directory: bool,
    symlink: bool,
) -> int:
    """`mode` once the ACLs among a member's own xattrs (the names in `own`) are set on
    the file whose xattrs are now `xattrs` (those included), which are left as the
    kernel keeps them."""
    for name in (ACCESS_ACL, DEFAULT_ACL):
        if name not in own:
            continue
        value = xattrs.pop(name)
        if symlink:
            continue  # not supported on a symlink
        try:
            entries = _read_acl(name, value)
        except _NotSupported:
            continue
        if not entries:
            continue  # removes the ACL, and leaves the mode alone
        if name == DEFAULT_ACL:
            if not directory:
                raise _refused(name, "Permission denied")
            xattrs[name] = _written(entries)
            continue
        perms = {tag: perm for tag, perm, _ in entries}
        mode = (mode & ~0o777) | (
            perms[_OWNER] << 6 | perms.get(_MASK, perms[_GROUP_OWNER]) << 3 | perms[_OTHER]
        )
        if _MASK in perms:
            xattrs[name] = _written(entries)
    return mode


def chmod(mode: int, xattrs: MutableMapping[str, bytes]) -> None:
    """A chmod to `mode` of a file whose xattrs (as kept) are `xattrs`: a kept access
    ACL's owner, mask (or owning group) and other entries take the new permissions."""
    value = xattrs.get(ACCESS_ACL)
    if value is None:
        return
    entries = _read_acl(ACCESS_ACL, value)
    group = _MASK if any(tag == _MASK for tag, _, _ in entries) else _GROUP_OWNER
    shift = {_OWNER: 6, group: 3, _OTHER: 0}
    xattrs[ACCESS_ACL] = _written(
        tuple(
            (tag, (mode >> shift[tag]) & 0o7 if tag in shift else perm, qualifier)
            for tag, perm, qualifier in entries
        )
    )
