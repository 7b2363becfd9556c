"""What both stores make of an image: each layer a commit in the repo, and the image
merged from them.

A layer is read once, wherever it comes from (a blob's tar stream for the ostree store,
a diff directory for the container store), its files written as objects as they are
read and its tree kept as a commit under `ostree/container/blob/<digest>`; an update
reads only the layers the repo lacks. The image is then merged from its layer commits
in memory, post-processed there and committed (`commit_in_memory`). An image only a
checkout post-processes exactly is checked out as hardlinks of the layers' objects
instead (`flatten`), which post-processing works on and the final commit names again
through the checkout's devino cache.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pybootc.errors import BootcError, error_context
from pybootc.layers.postprocess import PostprocessResult
from pybootc.layers.special import SPECIAL_XATTR, special_file_kind
from pybootc.layers.tree import LayerRead
from pybootc.oci.metadata import ImageMetadata
from pybootc.ostree.ext_format import blob_ref
from pybootc.ostree.gi import OSTree
from pybootc.ostree.layer_commit import (
    DIFF_ID_KEY,
    TREE_FORMAT,
    TREE_FORMAT_KEY,
    LayerInfo,
    checkout_linked,
    tree_mtree,
    write_layer_commit,
)
from pybootc.ostree.merged_image import keep_merges, merge_image, merged_tree
from pybootc.ostree.objects import ObjectWriter
from pybootc.ostree.repo import (
    CommitInfo,
    commit_mtree,
    libostree_errors,
    read_commit_metadata,
    resolve_ref,
    set_ref,
    transaction,
)
from pybootc.ostree.selinux_labels import label_image
from pybootc.ostree.shared_data import share_with_objects
from pybootc.ostree.tree_postprocess import postprocess_in_memory, record_var_source


def restore_special_files(root: Path, candidates: Iterable[str] | None) -> None:
    """Give placeholder files in a merged tree back their device, FIFO or socket nature:
    those among `candidates` (paths below `root`) that still are placeholders, or any
    (None)."""
    if candidates is None:
        candidates = (
            os.path.relpath(os.path.join(dirpath, name), root)
            for dirpath, _, names in os.walk(root)
            for name in names
        )
    real_root = os.path.realpath(root)
    for candidate in candidates:
        path = root / candidate
        expected = os.path.normpath(os.path.join(real_root, os.path.dirname(candidate)))
        if os.path.realpath(path.parent) != expected:
            continue  # a higher layer made a directory on the way a symlink
        try:
            value = os.getxattr(path, SPECIAL_XATTR, follow_symlinks=False)
        except OSError:
            continue  # replaced or removed by a higher layer, or no placeholder
        st = path.lstat()
        fmt, major, minor = special_file_kind(value)
        # Unlink, never change in place: the file is a hardlink into the repo.
        path.unlink()
        os.mknod(path, fmt | 0o600, os.makedev(major, minor))
        os.chown(path, st.st_uid, st.st_gid, follow_symlinks=False)
        os.chmod(path, stat.S_IMODE(st.st_mode))


@contextmanager
def nesting_checked() -> Iterator[None]:
    """Trees are walked by recursion: one nested deeper than Python's recursion limit
    allows (about 900 directories, a path of 1,800 bytes that containers-storage
    unpacks) is refused in words, not with a traceback."""
    try:
        yield
    except RecursionError:
        raise BootcError("Directories nested too deep to read") from None


def current_layer_commit(repo: OSTree.Repo, digest: str, diff_id: str | None = None) -> str | None:
    """The repo's commit of the layer `digest`, if it was made by this pybootc's rules
    (TREE_FORMAT) and, given `diff_id`, from a tar stream checked against that digest;
    None if there is none to take as it is."""
    existing = resolve_ref(repo, blob_ref(digest))
    if existing is None:
        return None
    recorded = read_commit_metadata(repo, existing)
    if recorded.get(TREE_FORMAT_KEY) != TREE_FORMAT:
        return None
    if diff_id is not None and recorded.get(DIFF_ID_KEY) != diff_id:
        return None
    return existing


def layer_commit(
    repo: OSTree.Repo,
    digest: str,
    read: Callable[[ObjectWriter], LayerRead],
    diff_id: str | None,
) -> str:
    """The commit of the layer `digest`: the repo's (current_layer_commit), or one made
    now by `read`, which writes the layer's content through the writer it is given and
    checks its tar stream against `diff_id` (None: it cannot be checked). The ref moves
    to a commit made now."""
    existing = current_layer_commit(repo, digest, diff_id)
    if existing is not None:
        return existing
    writer = ObjectWriter(repo)
    with (
        error_context(f"Layer {digest}"),
        transaction(repo, "Committing the layer") as commits,
        nesting_checked(),
    ):
        layer = read(writer)
        info = LayerInfo(digest, frozenset(layer.marked), diff_id=diff_id)
        commits.append(write_layer_commit(repo, writer, layer.tree, info))
    set_ref(repo, blob_ref(digest), commits[0])
    # The objects are in place now (a transaction writes them to its staging directory).
    share_with_objects(Path(repo.get_path().get_path()), layer.sources)
    return commits[0]


@dataclass(frozen=True)
class LayeredImage:
    """An image whose every layer is a commit in the repo, lowest first."""

    repo: OSTree.Repo
    layers: tuple[str, ...]
    metadata: ImageMetadata

    def commit_in_memory(
        self,
        commit: CommitInfo,
        *,
        keep_var: bool,
        label: bool,
        counted: Callable[[int], None] = lambda done: None,
    ) -> tuple[str, PostprocessResult]:
        """Merge, post-process and commit the image with no checkout of it (see
        ostree/tree_postprocess.py): only what the rules touch is read; the commit, and
        what post-processing found. NeedsCheckout, and nothing written, if the image is
        to take the checkout's way (`flatten`)."""
        writer = ObjectWriter(self.repo)
        with transaction(self.repo, "Committing the image") as commits, nesting_checked():
            merged = merge_image(self.repo, writer, list(self.layers))
            kept = keep_merges(self.repo, writer, merged)
            result = postprocess_in_memory(
                self.repo, writer, merged, keep_var=keep_var, label=label
            )
            mtree = tree_mtree(self.repo, writer, merged.root, counted)
            # Written before the commit, which records what its /var seed lines were
            # made from: /var's tree as written, unlabelled, as the next import reads it
            # (commit_mtree does not write it again). Labels name their directories by
            # it too.
            with libostree_errors("Writing the image's tree"):
                self.repo.write_mtree(mtree, None)
            commit = record_var_source(mtree, result.var_declared, commit)
            labelled = (
                label_image(
                    self.repo, writer, merged.root, mtree, lambda d: d.entries(merged.expand)
                )
                if label
                else None
            )
            if labelled is not None:
                mtree = tree_mtree(self.repo, writer, labelled.root)
            commits.append(commit_mtree(self.repo, mtree, commit))
            if labelled is not None:
                with libostree_errors("Writing the image commit's detached metadata"):
                    self.repo.write_commit_detached_metadata(
                        commits[0], labelled.detached_metadata(mtree), None
                    )
            commits.extend(checksum for _, checksum in kept)
        for ref, checksum in kept:
            set_ref(self.repo, ref, checksum)
        return commits[0], result

    def flatten(
        self, root: Path, counted: Callable[[int], None] = lambda done: None
    ) -> OSTree.RepoDevInoCache:
        """Check the merged image out at `root` (created), as hardlinks of the layers'
        objects; the checkout's devino cache, for the commit of what becomes of it.
        `counted` hears how many entries the merge has written, now and then."""
        writer = ObjectWriter(self.repo)
        with transaction(self.repo, "Merging the layers") as commits, nesting_checked():
            merged, special = merged_tree(self.repo, writer, list(self.layers), counted)
            commits.append(merged)
        cache = checkout_linked(self.repo, merged, root)
        if special != frozenset():
            restore_special_files(root, special)
        return cache
