"""The overlay merge: the tree the kernel shows for a stack of diff directories.

It walks the layers top-down, as overlayfs looks names up: the topmost layer
that has a name decides it, a whiteout hides it, and a directory merges with
the directories below it until one of them is opaque or a lower layer has a
non-directory there. Each visible entry is handed to a sink exactly once, so a
sink can write a directory or an OSTree commit without writing anything twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from pybootc.layers.diffdir import DirectoryListing, LayerEntry, list_layer_directory
from pybootc.layers.member_markers import LayerMarkers


class TreeSink(Protocol):
    def directory(self, path: str, entry: LayerEntry) -> None:
        """Create directory `path`; its children follow."""

    def finish_directory(self, path: str, entry: LayerEntry) -> None:
        """All children of `path` are in place (path "" is the root)."""

    def leaf(self, path: str, entry: LayerEntry) -> None:
        """Add a non-directory at `path`."""

    def move_subtree(self, path: str, entry: LayerEntry) -> bool:
        """Take the directory `entry`, which only one layer has, whole; False to decline."""


Markers = Sequence[LayerMarkers | None]


def _listings(
    stack: Sequence[tuple[int, str]], rel: str, markers: Markers
) -> list[DirectoryListing]:
    listings = []
    for layer, path in stack:
        listing = list_layer_directory(layer, path, markers[layer], rel)
        listings.append(listing)
        # overlayfs ignores an opaque marker on a layer's root directory.
        if listing.opaque and rel:
            break
    return listings


def _child_stack(
    name: str, top: LayerEntry, listings: list[DirectoryListing]
) -> list[tuple[int, str]]:
    stack = [(top.layer, top.path)]
    below = False
    for listing in listings:
        entry = listing.entries.get(name)
        if entry is None:
            continue
        if entry is top:
            below = True
            continue
        if not below:
            continue
        if entry.whiteout or not entry.is_dir:
            break
        stack.append((entry.layer, entry.path))
    return stack


def _walk(rel: str, stack: Sequence[tuple[int, str]], sink: TreeSink, markers: Markers) -> None:
    listings = _listings(stack, rel, markers)
    chosen: dict[str, LayerEntry] = {}
    for listing in listings:
        for name, entry in listing.entries.items():
            chosen.setdefault(name, entry)
    for name in sorted(chosen):
        entry = chosen[name]
        if entry.whiteout:
            continue
        path = f"{rel}/{name}" if rel else name
        if not entry.is_dir:
            sink.leaf(path, entry)
            continue
        stack = _child_stack(name, entry, listings)
        if len(stack) == 1 and sink.move_subtree(path, entry):
            continue
        sink.directory(path, entry)
        _walk(path, stack, sink, markers)
        sink.finish_directory(path, entry)


def merge_layers(
    diff_dirs: Sequence[Path], sink: TreeSink, root: LayerEntry, markers: Markers = ()
) -> None:
    """Merge `diff_dirs` (lowest layer first) into `sink`; `root` gives the root's
    metadata. `markers`, where given, are each layer's as its members give them
    (member_markers.py): a diff directory of containers-storage's."""
    stack = [(index, str(path)) for index, path in reversed(list(enumerate(diff_dirs)))]
    _walk("", stack, sink, markers or [None] * len(diff_dirs))
    sink.finish_directory("", root)
