"""Layer trees in the repo: each layer a commit of its own, as ostree-ext keeps them, read
back where a merge needs them; a merged tree written from the layers' objects, and
checked out.

A layer commit keeps a whiteout as an empty `.wh.NAME` file and an opaque directory
with overlayfs's xattr on it, as overlay diff directories have them; its metadata names
the blob it came from, where it holds placeholders of device nodes, FIFOs or sockets,
and which directories have a marker in them or below. Read back, a layer commit is a
tree whose directories are only loaded where a merge needs to look inside them.
"""

from __future__ import annotations

import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pybootc.errors import BootcError
from pybootc.layers.paths import OPAQUE_MARKER, WHITEOUT_PREFIX, is_overlay_xattr
from pybootc.layers.tree import (
    OPAQUE_XATTR,
    WHITEOUT,
    Dir,
    Entry,
    FileMeta,
    Leaf,
    LeafKind,
    StoredDir,
    whiteout_name,
)
from pybootc.ostree.ext_format import BLOB_DIGEST_KEY
from pybootc.ostree.gi import GLib, OSTree
from pybootc.ostree.objects import ObjectWriter, check_utf8, read_dirmeta
from pybootc.ostree.repo import libostree_errors, read_commit_metadata

SPECIAL_FILES_KEY = "pybootc.special-files"
SPECIAL_PATHS_KEY = "pybootc.special-paths"
# How often (in entries) a merge says how far it has got.
_REPORT_EVERY = 512
MARKED_DIRS_KEY = "pybootc.marked-dirs"
# The rules that made a layer commit's tree, and a kept merge's: raised whenever the
# layer rules or the way a tree is written change. A commit that records another format
# (an older pybootc's, or ostree-ext's under the same refs) is read again, never
# merged as it is: the repo outlives the pybootc that wrote it.
TREE_FORMAT = 1
TREE_FORMAT_KEY = "pybootc.tree-format"
# The digest of the layer's tar stream, where it was checked as the layer was read.
DIFF_ID_KEY = "pybootc.diff-id"
# A whiteout as a layer commit keeps it: an empty file, 0600 root.
_WHITEOUT_META = FileMeta(0, 0, stat.S_IFREG | 0o600)
# The root of a merged image, before post-processing makes it the deployment's.
ROOT_META = FileMeta(0, 0, stat.S_IFDIR | 0o755)


def _ay_checksum(value: GLib.Variant) -> str:
    """A checksum kept as a variant's `ay`, as hex."""
    return str(OSTree.checksum_from_bytes(value.get_data_as_bytes().get_data()))


def _mtree(
    repo: OSTree.Repo,
    directory: Dir,
    writer: ObjectWriter,
    *,
    as_layer: bool,
    counted: Callable[[int], None] = lambda done: None,
) -> tuple[OSTree.MutableTree, list[str]]:
    """The tree as libostree's mutable tree; the paths of the special files' placeholders
    in what was read of it."""
    mtree = OSTree.MutableTree.new()
    filler = _Filler(repo, writer, as_layer=as_layer, counted=counted)
    filler.fill(mtree, directory, "")
    return mtree, filler.special


class _Filler:
    """Fills mutable trees from a tree, telling `counted` how many entries it has
    written every _REPORT_EVERY."""

    def __init__(
        self,
        repo: OSTree.Repo,
        writer: ObjectWriter,
        *,
        as_layer: bool,
        counted: Callable[[int], None],
    ) -> None:
        self._repo = repo
        self._writer = writer
        self._as_layer = as_layer
        self._counted = counted
        self._done = 0
        self._whiteout = ""
        self.special: list[str] = []

    def _whiteout_object(self) -> str:
        """The one object every whiteout of a layer commit is: written once, if needed."""
        if not self._whiteout:
            self._whiteout = self._writer.regular_from_bytes(_WHITEOUT_META, b"")
        return self._whiteout

    def _count(self, entries: int) -> None:
        before, self._done = self._done, self._done + entries
        if before // _REPORT_EVERY != self._done // _REPORT_EVERY:
            self._counted(self._done)

    def fill(self, mtree: OSTree.MutableTree, directory: Dir, path: str) -> None:
        if directory.children is None:
            # Never read: the subtree as it is kept, loaded by libostree where needed.
            assert directory.stored is not None
            mtree.fill_empty_from_dirtree(
                self._repo, directory.stored.contents, directory.stored.meta
            )
            return
        as_layer = self._as_layer
        meta = directory.layer_meta if as_layer and directory.layer_meta else directory.meta
        mtree.set_metadata_checksum(meta)
        self._count(len(directory.children))
        for name, entry in directory.children.items():
            if as_layer:
                # The image's tree takes its names from the layer commits, checked here.
                check_utf8(name, "The name {} in {}", path or "/")
            if isinstance(entry, Dir):
                _, child = mtree.ensure_dir(name)
                self.fill(child, entry, f"{path}/{name}" if path else name)
            elif entry.kind is LeafKind.WHITEOUT:
                if not as_layer:
                    raise BootcError(f"A whiteout of {name} is left in a merged tree")
                mtree.replace_file(whiteout_name(name), self._whiteout_object())
            else:
                if entry.kind is LeafKind.SPECIAL:
                    self.special.append(f"{path}/{name}" if path else name)
                mtree.replace_file(name, entry.checksum)


@dataclass(frozen=True)
class LayerInfo:
    """What a layer commit records of its layer."""

    digest: str
    marked: frozenset[str]
    # Where the layer holds placeholders of special files; None for a layer commit made
    # before they were listed, if it holds any.
    special_paths: frozenset[str] | None = frozenset()
    # The digest its tar stream was checked against as it was read; None if unchecked.
    diff_id: str | None = None


def write_layer_commit(repo: OSTree.Repo, writer: ObjectWriter, tree: Dir, info: LayerInfo) -> str:
    """The layer as a commit (in the transaction the caller holds); its checksum."""
    with libostree_errors("Writing the layer commit"):
        mtree, special = _mtree(repo, tree, writer, as_layer=True)
        _, root = repo.write_mtree(mtree, None)
        metadata = {
            BLOB_DIGEST_KEY: GLib.Variant("s", info.digest),
            SPECIAL_FILES_KEY: GLib.Variant("b", bool(special)),
            SPECIAL_PATHS_KEY: GLib.Variant("as", sorted(special)),
            MARKED_DIRS_KEY: GLib.Variant("as", sorted(info.marked)),
            TREE_FORMAT_KEY: GLib.Variant("u", TREE_FORMAT),
        }
        if info.diff_id is not None:
            metadata[DIFF_ID_KEY] = GLib.Variant("s", info.diff_id)
        _, checksum = repo.write_commit_with_time(
            None, f"layer {info.digest}", None, GLib.Variant("a{sv}", metadata), root, 0, None
        )
    return str(checksum)


class LayerLoader:
    """Reads layer commits back as trees, each directory when a merge needs it."""

    def __init__(self, repo: OSTree.Repo, writer: ObjectWriter) -> None:
        self._repo = repo
        self._writer = writer
        # A kept directory's metadata: is it opaque, and its metadata as the image shows it.
        self._dirmetas: dict[str, tuple[bool, str]] = {}

    def layer(self, commit: str) -> tuple[Dir, LayerInfo]:
        metadata = read_commit_metadata(self._repo, commit)
        marked = metadata.get(MARKED_DIRS_KEY)
        special = metadata.get(SPECIAL_PATHS_KEY)
        info = LayerInfo(
            str(metadata.get(BLOB_DIGEST_KEY, "")),
            # A layer commit made before this key was kept: look inside everything.
            frozenset(str(m) for m in marked) if isinstance(marked, list) else frozenset({"*"}),
            frozenset(str(p) for p in special)
            if isinstance(special, list)
            else (None if metadata.get(SPECIAL_FILES_KEY) else frozenset()),
        )
        with libostree_errors(f"Reading layer commit {commit}"):
            _, variant, _ = self._repo.load_commit(commit)
        contents = _ay_checksum(variant.get_child_value(6))
        meta = _ay_checksum(variant.get_child_value(7))
        stored = StoredDir("", contents, meta, info.marked)
        opaque, shown = self._dirmeta(meta)
        return Dir(shown, None, opaque=opaque, stored=stored), info

    def _dirmeta(self, checksum: str) -> tuple[bool, str]:
        """Whether a kept directory is opaque, and its metadata without overlayfs's xattrs."""
        found = self._dirmetas.get(checksum)
        if found is not None:
            return found
        stored = read_dirmeta(self._repo, checksum)
        names = dict(stored.xattrs)
        opaque = names.get(OPAQUE_XATTR) == b"y"
        overlay = [name for name in names if is_overlay_xattr(name)]
        shown = checksum
        if overlay:
            kept = {n: v for n, v in names.items() if not is_overlay_xattr(n)}
            meta = FileMeta.of(stored.uid, stored.gid, stored.mode, kept)
            shown = self._writer.dirmeta(meta)
        found = self._dirmetas[checksum] = (opaque, shown)
        return found

    def expand(self, directory: Dir) -> None:
        """Read a kept directory's children (they stay unread themselves)."""
        stored = directory.stored
        assert stored is not None
        with libostree_errors(f"Reading directory tree {stored.contents}"):
            _, variant = self._repo.load_variant(OSTree.ObjectType.DIR_TREE, stored.contents)
        # Not Variant.unpack(): it makes a checksum's `ay` a list of ints, one call per byte.
        files, dirs = variant.get_child_value(0), variant.get_child_value(1)
        children: dict[str, Entry] = {}
        opaque_marker = False
        whiteouts = []
        for index in range(files.n_children()):
            entry = files.get_child_value(index)
            name = entry.get_child_value(0).get_string()
            if name == OPAQUE_MARKER:
                opaque_marker = True
            elif name.startswith(WHITEOUT_PREFIX):
                whiteouts.append(name[len(WHITEOUT_PREFIX) :])
            else:
                children[name] = Leaf(LeafKind.REGULAR, _ay_checksum(entry.get_child_value(1)))
        for index in range(dirs.n_children()):
            entry = dirs.get_child_value(index)
            name = entry.get_child_value(0).get_string()
            child = stored.child(
                name, _ay_checksum(entry.get_child_value(1)), _ay_checksum(entry.get_child_value(2))
            )
            opaque, shown = self._dirmeta(child.meta)
            children[name] = Dir(shown, None, opaque=opaque, stored=child)
        for hidden in whiteouts:
            # A name the layer writes wins over a whiteout of it, as in diffdir.py.
            children.setdefault(hidden, WHITEOUT)
        directory.children = children
        directory.opaque = directory.opaque or opaque_marker


def tree_mtree(
    repo: OSTree.Repo,
    writer: ObjectWriter,
    root: Dir,
    counted: Callable[[int], None] = lambda done: None,
) -> OSTree.MutableTree:
    """A merged image's tree as libostree's mutable tree, to write."""
    mtree, _ = _mtree(repo, root, writer, as_layer=False, counted=counted)
    return mtree


def checkout_linked(repo: OSTree.Repo, commit: str, dest: Path) -> OSTree.RepoDevInoCache:
    """Check `commit` out at `dest` as hardlinks of its objects, remembering each file's
    object: a commit of the tree with that cache hashes no unchanged file again."""
    cache = OSTree.RepoDevInoCache.new()
    options = OSTree.RepoCheckoutAtOptions()
    options.set_devino(cache)
    with libostree_errors(f"Checking out {commit}"):
        repo.checkout_at(options, -100, str(dest), commit, None)  # -100: AT_FDCWD
    return cache
