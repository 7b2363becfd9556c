"""Extended attributes as OSTree keeps them in an object: a(ayay), each name a
NUL-terminated bytestring, sorted by name.

Sorted, because that is how libostree reads an object's xattrs back: `ostree fsck`
hashes them so. Since 2024.10 libostree also sorts them whenever it makes an object
(ostree#3343). Before that, its commit with an SELinux policy appended the label after
the entry's other xattrs, and fsck called every object with a name that sorts after
"security.selinux" (any `user.` or `trusted.` xattr) corrupt. pybootc makes them sorted
on either: in memory, and through the commit of a checkout.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from pybootc.ostree.gi import Gio, GLib, OSTree
from pybootc.ostree.labels_ahead import lookup

LABEL_XATTR = "security.selinux"
# Names without their NUL, and values.
Xattrs = tuple[tuple[str, bytes], ...]


def bytes_of(value: GLib.Variant) -> bytes:
    """An `ay` as bytes. Not Variant.unpack(): that makes it a list of ints, one call
    into GLib per byte, and on Debian 13's GLib each of those calls over a variant
    libostree built warns (`g_bytes_ref: assertion 'bytes != NULL' failed`)."""
    if not value.get_size():
        return b""
    return bytes(value.get_data_as_bytes().get_data())


def xattrs_of(variant: GLib.Variant | None) -> Xattrs:
    """An object's a(ayay) (None: none): names without their NUL, in its order."""
    if variant is None:
        return ()
    pairs = (variant.get_child_value(index) for index in range(variant.n_children()))
    return tuple(
        (
            bytes_of(pair.get_child_value(0)).rstrip(b"\0").decode(errors="surrogateescape"),
            bytes_of(pair.get_child_value(1)),
        )
        for pair in pairs
    )


def encode(xattrs: Xattrs) -> GLib.Variant:
    """`xattrs` as an object keeps them: sorted, names NUL-terminated."""
    return GLib.Variant(
        "a(ayay)",
        [(name.encode(errors="surrogateescape") + b"\0", value) for name, value in sorted(xattrs)],
    )


def with_label(xattrs: Xattrs, label: str) -> Xattrs:
    """`xattrs` with `label` instead of any they had, sorted."""
    kept = [(name, value) for name, value in xattrs if name != LABEL_XATTR]
    # g_variant_new_bytestring keeps the label's terminating NUL in the value.
    return tuple(sorted([*kept, (LABEL_XATTR, label.encode() + b"\0")]))


def labelling_callback(
    root: Path, sepolicy: OSTree.SePolicy
) -> Callable[[OSTree.Repo, str, Gio.FileInfo], GLib.Variant]:
    """A commit modifier's xattr callback for the tree at `root`: each path's own xattrs
    with the label `sepolicy` gives it, sorted (what libostree's commit gives since
    2024.10; its SePolicy on the modifier, in 2022.7, would append the label)."""

    def xattrs(_repo: OSTree.Repo, relpath: str, info: Gio.FileInfo, *_: object) -> GLib.Variant:
        path = root / relpath.lstrip("/")
        own = tuple(
            (name, os.getxattr(path, name, follow_symlinks=False))
            for name in os.listxattr(path, follow_symlinks=False)
        )
        label = lookup(sepolicy, relpath, info.get_attribute_uint32("unix::mode"))
        return encode(own if label is None else with_label(own, label))

    return xattrs
