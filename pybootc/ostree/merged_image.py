"""An image merged from its layer commits, and merges kept for the next import.

An update mostly shares its lowest layers with an image imported before: the same base
under a new top layer, or the image before with a layer added on top. Merging those
layers again reads every directory that more than one of them holds (at 800 MB, 0.09 s
of a 1.3 s update), so each import keeps two merges as commits of their own: of all its
layers, and of all but the top one. The next import starts from the longest run of its
lowest layers that a kept merge stands for, and merges only the layers above it.

To a merge, a kept merge is a layer commit like any other (LayerLoader): nothing in it
is marked, since a merged tree has no whiteouts or opaque markers left, and it lists
where its layers hold placeholders of special files. Its ref is named by the layer
commits it merges, and goes when one of them does (`prune_merged_refs`). Its tree is
the layers' objects; what it adds to the repo is the directories that differ from the
image's own, a few where the top layer is small.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pybootc.layers.tree import Dir, Expander, apply_layer, merge_layers
from pybootc.ostree.ext_format import BLOB_REF_PREFIX
from pybootc.ostree.gi import GLib, OSTree
from pybootc.ostree.layer_commit import (
    MARKED_DIRS_KEY,
    ROOT_META,
    SPECIAL_FILES_KEY,
    SPECIAL_PATHS_KEY,
    TREE_FORMAT,
    TREE_FORMAT_KEY,
    LayerInfo,
    LayerLoader,
    tree_mtree,
)
from pybootc.ostree.objects import ObjectWriter
from pybootc.ostree.repo import libostree_errors, list_refs, read_commit_metadata, set_ref

log = logging.getLogger(__name__)

MERGED_REF_PREFIX = "pybootc/merged"
# A kept merge's metadata: the layer commits it merges, lowest first.
MERGED_LAYERS_KEY = "pybootc.merged-layers"


def _prefix_refs(layer_commits: Sequence[str]) -> list[str]:
    """The ref of a kept merge of the lowest k layers, for k = 1 .. len(layer_commits),
    by the rules of this pybootc (a merge by other rules is never found)."""
    hasher = hashlib.sha256(f"{TREE_FORMAT_KEY} {TREE_FORMAT}\n".encode())
    refs = []
    for commit in layer_commits:
        hasher.update(f"{commit}\n".encode())
        refs.append(f"{MERGED_REF_PREFIX}/{hasher.hexdigest()}")
    return refs


def _longest_kept(repo: OSTree.Repo, layer_commits: Sequence[str]) -> tuple[int, str | None]:
    """How many of the lowest layers the longest kept merge of them stands for, and its
    commit; (0, None) if none is kept."""
    kept = list_refs(repo, MERGED_REF_PREFIX)
    refs = _prefix_refs(layer_commits)
    for count in range(len(refs), 0, -1):
        if refs[count - 1] in kept:
            return count, kept[refs[count - 1]]
    return 0, None


def _special(infos: Sequence[LayerInfo]) -> frozenset[str] | None:
    """Where the layers hold placeholders of special files; None: anywhere, for all that
    an older layer commit says."""
    found: frozenset[str] | None = frozenset()
    for info in infos:
        if found is None or info.special_paths is None:
            return None
        found |= info.special_paths
    return found


@dataclass(frozen=True)
class MergedImage:
    """An image merged from its layer commits, in memory: the tree (its directories read
    from the repo by `expand` where needed), and where the layers hold placeholders of
    special files (None: anywhere, for all that older layer commits say).

    Also what a merge keeps for the next import: the layer commits, lowest first, how
    many of the lowest ones a kept merge stood for, and all but the top layer merged."""

    root: Dir
    special: frozenset[str] | None
    expand: Expander
    layers: tuple[str, ...]
    reused: int
    below_top: Dir
    below_top_special: frozenset[str] | None


def merge_image(repo: OSTree.Repo, writer: ObjectWriter, layer_commits: list[str]) -> MergedImage:
    """The image merged from its layer commits, lowest first, from the longest run of its
    lowest layers that a kept merge stands for."""
    loader = LayerLoader(repo, writer)
    reused, base = _longest_kept(repo, layer_commits)
    if base is not None:
        log.debug(
            "Merging %d layers over the kept merge of the lowest %d",
            len(layer_commits) - reused,
            reused,
        )
    stack = ([base] if base is not None else []) + layer_commits[reused:]
    layers = [loader.layer(commit) for commit in stack]
    below_top = merge_layers(
        [tree for tree, _ in layers[:-1]], writer.dirmeta(ROOT_META), loader.expand
    )
    root = apply_layer(below_top, layers[-1][0], loader.expand) if layers else below_top
    infos = [info for _, info in layers]
    return MergedImage(
        root,
        _special(infos),
        loader.expand,
        tuple(layer_commits),
        reused,
        below_top,
        _special(infos[:-1]),
    )


def keep_merges(
    repo: OSTree.Repo, writer: ObjectWriter, image: MergedImage
) -> list[tuple[str, str]]:
    """Write, in the transaction the caller holds and before post-processing changes the
    tree, the merges of `image` that no kept one is yet: of all its layers, and of all
    but the top one. Their refs and commits, for the caller to set once the transaction
    has landed."""
    total = len(image.layers)
    refs = _prefix_refs(image.layers)
    new = []
    for count, tree, special in (
        (total, image.root, image.special),
        (total - 1, image.below_top, image.below_top_special),
    ):
        # A single layer is its own merge. The merge the import started from is the
        # longest kept one (merge_image looked), so any longer one is new; one below
        # it was never made.
        if count < 2 or count <= image.reused:
            continue
        layers = image.layers[:count]
        metadata = {
            MERGED_LAYERS_KEY: GLib.Variant("as", list(layers)),
            MARKED_DIRS_KEY: GLib.Variant("as", []),
            TREE_FORMAT_KEY: GLib.Variant("u", TREE_FORMAT),
            SPECIAL_FILES_KEY: GLib.Variant("b", special is None or bool(special)),
        }
        if special is not None:
            metadata[SPECIAL_PATHS_KEY] = GLib.Variant("as", sorted(special))
        checksum = _commit_tree(repo, writer, tree, f"{count} layers merged", metadata)
        new.append((refs[count - 1], checksum))
    return new


def _commit_tree(
    repo: OSTree.Repo,
    writer: ObjectWriter,
    tree: Dir,
    subject: str,
    metadata: dict[str, GLib.Variant] | None,
    *,
    counted: Callable[[int], None] = lambda done: None,
) -> str:
    """A merged tree written as a commit (epoch 0) in the caller's transaction."""
    with libostree_errors(f"Writing {subject}"):
        _, root = repo.write_mtree(tree_mtree(repo, writer, tree, counted), None)
        variant = None if metadata is None else GLib.Variant("a{sv}", metadata)
        _, checksum = repo.write_commit_with_time(None, subject, None, variant, root, 0, None)
    return str(checksum)


def merged_tree(
    repo: OSTree.Repo,
    writer: ObjectWriter,
    layer_commits: list[str],
    counted: Callable[[int], None] = lambda done: None,
) -> tuple[str, frozenset[str] | None]:
    """The image merged from its layer commits (lowest first), written as a commit (no
    ref holds it: it is only checked out); the commit, and where the layers hold
    placeholders of special files (MergedImage.special)."""
    image = merge_image(repo, writer, layer_commits)
    checksum = _commit_tree(repo, writer, image.root, "merged layers", None, counted=counted)
    return checksum, image.special


def prune_merged_refs(repo: OSTree.Repo) -> list[str]:
    """Drop the refs of kept merges whose layer commits are not all held by a layer
    ref any more, or that other rules made; return them."""
    layer_commits = set(list_refs(repo, BLOB_REF_PREFIX).values())
    dropped = []
    for ref, commit in list_refs(repo, MERGED_REF_PREFIX).items():
        metadata = read_commit_metadata(repo, commit)
        layers = metadata.get(MERGED_LAYERS_KEY)
        current = metadata.get(TREE_FORMAT_KEY) == TREE_FORMAT
        if not current or not isinstance(layers, list) or not set(layers) <= layer_commits:
            set_ref(repo, ref, None)
            dropped.append(ref)
    return dropped
