"""A layer's whiteouts and opaque directories as its own tar members give them.

containers-storage turns a layer's markers into overlay's as it unpacks the layer: a
whiteout becomes a 0:0 character device, an opaque marker an xattr on its directory.
A diff directory cannot tell those from what else made them, and containers-storage
1.43 (Debian 12's) makes them of what the layer rules call data:
- a PAX `trusted.overlay.opaque` on a directory makes that directory opaque;
- a *directory* named `.wh.x/` whites x out, and is made again (0755, root) as the
  implied parent of the members below it. (Where the layer has an x already, it
  refuses the layer: the whiteout's mknod finds the name taken.)

The storage keeps each layer's members as the layer gave them (tar-split data, or the
table of contents of a layer pulled partially), so the container backend takes the
markers from there and only the files from the diff directory. The names are checked
as the blob path checks them on the way.
"""

from __future__ import annotations

import enum
import tarfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from pybootc.errors import BootcError
from pybootc.layers.paths import WHITEOUT_PREFIX, Marker, Parts, classify, join, split_member_name
from pybootc.layers.tar_tree import directory_meta
from pybootc.layers.tree import FileMeta


class MemberKind(enum.Enum):
    DIRECTORY = enum.auto()
    SYMLINK = enum.auto()
    # A 0:0 character device: a whiteout by another name, as in the blob path.
    WHITEOUT_DEVICE = enum.auto()
    HARDLINK = enum.auto()
    OTHER = enum.auto()


@dataclass(frozen=True)
class Member:
    """One tar member of a layer: its name, its kind, and how to read its header (read
    only for the rare member whose metadata or target the markers need)."""

    name: str
    kind: MemberKind
    header: Callable[[], tarfile.TarInfo] = field(compare=False)


@dataclass(frozen=True)
class LayerMarkers:
    """Paths in the layer (`a/b`, the root as ""): the directories its opaque markers
    clear, the names its whiteouts hide, and its directories named like whiteouts, by
    the directory they are in, with the metadata their headers give."""

    opaque: frozenset[str] = frozenset()
    hidden: frozenset[str] = frozenset()
    named_like_whiteouts: Mapping[str, Mapping[str, FileMeta]] = field(default_factory=dict)

    def is_opaque(self, relative: str) -> bool:
        return relative in self.opaque

    def hides(self, relative: str) -> bool:
        return relative in self.hidden

    def named_like_whiteouts_in(self, relative: str) -> Mapping[str, FileMeta]:
        return self.named_like_whiteouts.get(relative, {})


def _check_below_symlinks(parts: Parts, kind: MemberKind, symlinks: set[Parts]) -> None:
    """Refuse a member below a symlink the same layer made, as the blob path does
    (containers-storage follows that symlink, inside the layer; the blob path says
    the symlink is not a directory), so that both backends refuse such a layer alike."""
    if symlinks:
        for depth in range(1, len(parts)):
            if parts[:depth] in symlinks:
                raise BootcError(f'"{join(parts[:depth])}" is not a directory')
    if kind is MemberKind.SYMLINK:
        symlinks.add(parts)
    else:
        symlinks.discard(parts)


def read_markers(members: Iterable[Member]) -> LayerMarkers:
    """The markers of a layer of these members, once every name has passed the rules
    the blob path applies to names (`..`, markers below a symlink, a hardlink to a
    whiteout)."""
    symlinks: set[Parts] = set()
    opaque: set[str] = set()
    hidden: set[str] = set()
    devices: set[str] = set()
    named: dict[str, dict[str, FileMeta]] = {}
    for member in members:
        parts = split_member_name(member.name)
        _check_below_symlinks(parts, member.kind, symlinks)
        if not parts:
            continue
        if member.kind is MemberKind.DIRECTORY:
            if parts[-1].startswith(WHITEOUT_PREFIX):
                meta = directory_meta(member.header())
                named.setdefault(join(parts[:-1]), {})[parts[-1]] = meta
            continue
        if member.kind is MemberKind.WHITEOUT_DEVICE:
            hidden.add(join(parts))
            devices.add(join(parts))
            continue
        marker, name = classify(parts[-1])
        if marker is Marker.OPAQUE:
            opaque.add(join(parts[:-1]))
        elif marker is Marker.WHITEOUT:
            hidden.add(join((*parts[:-1], name)))
        elif member.kind is MemberKind.HARDLINK and devices:
            _check_hardlink(parts, member.header().linkname, devices)
    return LayerMarkers(frozenset(opaque), frozenset(hidden), named)


def _check_hardlink(parts: Parts, target: str, devices: set[str]) -> None:
    """Refuse a hardlink to a 0:0 device of the layer, as the blob path does: it is a
    whiteout there. (containers-storage links the device, a second whiteout.)"""
    if join(split_member_name(target)) in devices:
        raise BootcError(f'Hardlink "{join(parts)}" to "{target}": the target is a whiteout')
