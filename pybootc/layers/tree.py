"""A layer, or a merged image, as a tree of names held in memory: directories with their
metadata, and leaves that name the object their content was written to.

Layers are merged here, not on disk: each layer is applied over the tree of those below
it, as the kernel's overlayfs shows a stack of diff directories (the layer rules in
`../shared/reference/layer-semantics.md`; the oracle tests check the result against the
kernel). A directory can stand for a subtree already stored in an object store (`stored`):
it is only read (`expand`) where a higher layer changes something below it, so merging an
update costs what the new layer touches, not the whole image.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from pybootc.layers.paths import WHITEOUT_PREFIX


@dataclass(frozen=True)
class FileMeta:
    """What an object records of a file besides its content: owner, mode (with the
    file type bits) and xattrs, sorted by name as OSTree sorts them."""

    uid: int
    gid: int
    mode: int
    xattrs: tuple[tuple[str, bytes], ...] = ()

    @classmethod
    def of(cls, uid: int, gid: int, mode: int, xattrs: Mapping[str, bytes]) -> FileMeta:
        return cls(uid, gid, mode, tuple(sorted(xattrs.items())))


@dataclass(frozen=True)
class LayerRead:
    """A layer read into a tree: the tree, and the directories with a marker in them
    or below; read from files (a diff directory), each file's path and the object it
    became, once per inode."""

    tree: Dir
    marked: set[str]
    sources: tuple[tuple[str, str], ...] = ()


class ObjectSink(Protocol):
    """Where a layer's content goes as it is read: an object store that names each
    object by its checksum (the OSTree repo; ostree/objects.py)."""

    def regular_from_bytes(self, meta: FileMeta, data: bytes) -> str:
        """A regular file holding `data`; its checksum."""

    def regular_from_fd(self, meta: FileMeta, fd: int, size: int) -> str:
        """A regular file holding the first `size` bytes of the open file `fd`. Called
        from two threads at once (file_writers.py)."""

    def symlink(self, meta: FileMeta, target: str) -> str:
        """A symlink to `target`."""

    def dirmeta(self, meta: FileMeta) -> str:
        """A directory's metadata (owner, mode, xattrs)."""

    def rewrite(self, checksum: str, meta: FileMeta) -> str:
        """The regular file `checksum` with other metadata, its content the same."""


class LeafKind(enum.Enum):
    REGULAR = enum.auto()
    SYMLINK = enum.auto()
    # A device node, FIFO or socket: kept as a placeholder object (SPECIAL_XATTR in
    # tar_tree.py; stores/layered.py makes it itself again in a checkout).
    SPECIAL = enum.auto()
    # Hides the same name in the layers below; never part of a merged tree.
    WHITEOUT = enum.auto()


@dataclass(eq=False)
class Leaf:
    """A non-directory. `checksum` names its content object ("" for a whiteout)."""

    kind: LeafKind
    checksum: str = ""


WHITEOUT = Leaf(LeafKind.WHITEOUT)


@dataclass(frozen=True)
class StoredDir:
    """A directory subtree kept in an object store: where it is in its layer, its
    contents and metadata objects as kept there, and whether a whiteout or opaque marker
    lies anywhere in it (then a merge must look inside even where nothing is below)."""

    path: str
    contents: str
    meta: str
    # The directories of its layer with a marker in them or below ("*": all of them).
    layer_marked: frozenset[str]

    @property
    def marked(self) -> bool:
        return "*" in self.layer_marked or self.path in self.layer_marked

    def child(self, name: str, contents: str, meta: str) -> StoredDir:
        path = f"{self.path}/{name}" if self.path else name
        return StoredDir(path, contents, meta, self.layer_marked)


@dataclass(eq=False)
class Dir:
    """A directory: its metadata object, its children, whether it is opaque (in a layer:
    hides what the layers below have here). A layer keeps an opaque directory's metadata
    with overlayfs's marker xattr (`layer_meta`); `meta` is what the image shows.
    `stored` is the subtree as it is kept; while `children` is None the directory has
    not been read (`expand`)."""

    meta: str
    children: dict[str, Dir | Leaf] | None = field(default_factory=dict)
    opaque: bool = False
    stored: StoredDir | None = None
    layer_meta: str = ""

    def entries(self, expand: Callable[[Dir], None]) -> dict[str, Dir | Leaf]:
        if self.children is None:
            expand(self)
            assert self.children is not None
        return self.children


Entry = Dir | Leaf
# The xattr that makes a layer's directory opaque, as a layer keeps it.
OPAQUE_XATTR = "trusted.overlay.opaque"


def finished_dir(
    objects: ObjectSink, meta: FileMeta, children: dict[str, Entry], *, opaque: bool
) -> Dir:
    """A layer's directory once read: its metadata written as the image shows it and,
    if it is opaque, as the layer keeps it (with the marker xattr)."""
    shown = objects.dirmeta(meta)
    if not opaque:
        return Dir(shown, children)
    marked = FileMeta.of(meta.uid, meta.gid, meta.mode, dict(meta.xattrs) | {OPAQUE_XATTR: b"y"})
    return Dir(shown, children, opaque=True, layer_meta=objects.dirmeta(marked))


# Reads a stored directory's children into it.
Expander = Callable[[Dir], None]


def _without_markers(directory: Dir, expand: Expander) -> Dir:
    """A layer's directory with nothing below it to hide or clear: whiteouts dropped,
    opaqueness forgotten, throughout. A stored subtree without markers is kept whole."""
    if directory.stored is not None and not directory.stored.marked:
        return Dir(directory.meta, None, stored=directory.stored)
    children: dict[str, Entry] = {}
    for name, entry in directory.entries(expand).items():
        if isinstance(entry, Dir):
            children[name] = _without_markers(entry, expand)
        elif entry.kind is not LeafKind.WHITEOUT:
            children[name] = entry
    return Dir(directory.meta, children)


def apply_layer(lower: Dir, upper: Dir, expand: Expander, *, at_root: bool = True) -> Dir:
    """The directory `upper` of a layer over the merged directory `lower` below it.

    The upper directory's metadata wins; an opaque one (overlayfs ignores the marker
    on a layer's root) starts empty; a whiteout removes the name below; a directory
    over a directory merges; anything else replaces what was there.
    """
    # Read first: a kept directory learns whether it is opaque as it is read.
    upper_entries = upper.entries(expand)
    opaque = upper.opaque and not at_root
    children: dict[str, Entry] = {} if opaque else dict(lower.entries(expand))
    for name, entry in upper_entries.items():
        if isinstance(entry, Leaf):
            if entry.kind is LeafKind.WHITEOUT:
                children.pop(name, None)
            else:
                children[name] = entry
            continue
        below = children.get(name)
        if isinstance(below, Dir):
            children[name] = apply_layer(below, entry, expand, at_root=False)
        else:
            children[name] = _without_markers(entry, expand)
    return Dir(upper.meta if not at_root else lower.meta, children)


def merge_layers(layers: list[Dir], root_meta: str, expand: Expander) -> Dir:
    """The image's tree: `layers` (lowest first) applied one over the other to an empty
    root with `root_meta`."""
    merged = Dir(root_meta)
    for layer in layers:
        merged = apply_layer(merged, layer, expand)
    return merged


def whiteout_name(name: str) -> str:
    """How a whiteout of `name` is kept in a stored layer: a file of this name."""
    return f"{WHITEOUT_PREFIX}{name}"
