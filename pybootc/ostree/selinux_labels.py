"""SELinux labels for an image while it is a tree in memory, as libostree's commit of a
checkout gives them (its commit modifier, with the image's own policy).

libostree asks the policy for the label of each path ("/", "/usr/bin/sh", with the
entry's mode and type) and, where the policy has one, keeps the entry's other xattrs in
their order, drops any security.selinux it had and adds the label after them. A file
whose xattrs that changes is a new object, its content hashed again. A commit of a
checkout must first check the whole image out, and hashes every such file through GLib;
here each is hashed (OpenSSL) from the object the repo keeps.

A labelled file is a function of its unlabelled object and its label; a labelled
directory, of its path, its unlabelled tree and the policy. The image commit keeps both
in its detached metadata (LABELLED_KEY, LABELLED_TREES_KEY), with all that the images
before it kept and the repo still has. An update takes over every directory whose
unlabelled tree an image labelled before at the same path under the same policy,
without reading anything below it, and every file an image labelled the same, without
reading it again. The unlabelled trees are named by their checksums: the caller writes
the unlabelled tree first (its objects are the layers' and the kept merge's, but for
the few directories post-processing changed).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import stat
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pybootc.layers.tree import Dir, Entry, FileMeta, Leaf, LeafKind, StoredDir
from pybootc.ostree.ext_format import IMAGE_REF_PREFIX
from pybootc.ostree.gi import Gio, GLib, OSTree
from pybootc.ostree.labels_ahead import LabelsAhead
from pybootc.ostree.objects import ObjectWriter, read_dirmeta
from pybootc.ostree.repo import (
    libostree_errors,
    list_refs,
    load_sepolicy,
    prune_marker,
    read_stream,
)
from pybootc.ostree.xattrs import with_label, xattrs_of

# Where the policy is once /etc has moved; SePolicy looks there below a root.
POLICY_DIR = ("usr", "etc", "selinux")
# The image commit's detached metadata: its labelled files, each the key of its
# unlabelled object and label (_pair_key) then its own checksum; and its labelled
# directories, each the key of its unlabelled tree (_tree_key) then its own contents and
# metadata checksums. Raw bytes, one entry after another.
LABELLED_KEY = "pybootc.labelled"
LABELLED_TREES_KEY = "pybootc.labelled-trees"
_KEY_BYTES = 16
# Part of every key: a change to how labels are given must change it. (2: xattrs
# sorted, the label among them; 1 appended it, as libostree 2022.7's commit does.)
_LABELS_FORMAT = "pybootc labels 2"

log = logging.getLogger(__name__)

ChildrenOf = Callable[[Dir], dict[str, Entry]]


def _pair_key(unlabelled: str, label: str) -> bytes:
    text = f"{_LABELS_FORMAT}\0{unlabelled}\0{label}"
    return hashlib.sha256(text.encode()).digest()[:_KEY_BYTES]


def _tree_key(policy: str, path: str, contents: str, meta: str) -> bytes:
    text = f"{_LABELS_FORMAT}\0{policy}\0{path}\0{contents}\0{meta}"
    return hashlib.sha256(text.encode()).digest()[:_KEY_BYTES]


def _raw(checksum: str) -> bytes:
    return bytes.fromhex(checksum)


@dataclass(frozen=True)
class LabelledTree:
    """A labelled directory an image commit keeps, for the imports after it."""

    contents: str
    meta: str


def _entries(variant: GLib.Variant | None, checksums: int) -> Iterator[tuple[bytes, list[str]]]:
    """The entries of a LABELLED_KEY or LABELLED_TREES_KEY value: keys, and checksums."""
    blob = memoryview(variant.get_data_as_bytes().get_data() if variant is not None else b"")
    size = _KEY_BYTES + 32 * checksums
    for offset in range(0, len(blob) - size + 1, size):
        key = bytes(blob[offset : offset + _KEY_BYTES])
        start = offset + _KEY_BYTES
        yield key, [blob[start + 32 * i : start + 32 * (i + 1)].hex() for i in range(checksums)]


def _blob(entries: dict[bytes, list[str]]) -> GLib.Variant:
    data = b"".join(key + b"".join(map(_raw, entries[key])) for key in sorted(entries))
    return GLib.Variant.new_from_bytes(GLib.VariantType.new("ay"), GLib.Bytes.new(data), True)


@dataclass(frozen=True)
class LoadedPolicy:
    """An image's policy, and what names it: its files' paths and objects."""

    sepolicy: OSTree.SePolicy
    identity: str


@contextmanager
def loaded_policy(
    repo: OSTree.Repo, policy_dir: Dir, children: ChildrenOf
) -> Iterator[LoadedPolicy | None]:
    """The policy in an image's /usr/etc/selinux, `policy_dir`, for the block; None if
    it names none (SELINUX=disabled, or not said: nothing is labelled, as with a
    checkout). SePolicy reads files: the policy's directory is written out (a few MB)
    to a scratch directory in the repo's tmp while it is loaded."""
    scratch_parent = os.path.join(repo.get_path().get_path(), "tmp")
    with tempfile.TemporaryDirectory(dir=scratch_parent, prefix="pybootc-sepolicy-") as scratch:
        written: list[str] = []
        _write_out(repo, policy_dir, Path(scratch).joinpath(*POLICY_DIR), children, written=written)
        sepolicy = load_sepolicy(Path(scratch))
        identity = hashlib.sha256("\0".join(written).encode()).hexdigest()
        yield None if sepolicy is None else LoadedPolicy(sepolicy, identity)


def _write_out(
    repo: OSTree.Repo,
    directory: Dir,
    dest: Path,
    children: ChildrenOf,
    *,
    written: list[str],
    relative: str = "",
) -> None:
    """The files of `directory` below `dest`: contents and symlinks, no owners. Each
    entry's path below the policy's directory (`relative`: this one's), and a file's
    object, go to `written`."""
    dest.mkdir(parents=True, exist_ok=True)
    for name, entry in sorted(children(directory).items()):
        path, below = dest / name, f"{relative}/{name}"
        if isinstance(entry, Dir):
            written.append(f"{below}/")
            _write_out(repo, entry, path, children, written=written, relative=below)
            continue
        written.append(f"{below} {entry.checksum}")
        with libostree_errors(f"Reading object {entry.checksum}"):
            _, stream, info, _ = repo.load_file(entry.checksum, None)
        if info.get_file_type() == Gio.FileType.SYMBOLIC_LINK:
            os.symlink(info.get_symlink_target(), path)
        else:
            path.write_bytes(read_stream(stream))


@dataclass
class KnownLabels:
    """What the images in the repo labelled (their commits' detached metadata), where
    the labelled objects are still in the repo. Each image commit keeps all of it, so
    what an image took over stays known after that image is gone."""

    repo: OSTree.Repo
    files: dict[bytes, str]  # by _pair_key: the labelled object
    trees: dict[bytes, LabelledTree]  # by _tree_key

    @classmethod
    def of(cls, repo: OSTree.Repo) -> KnownLabels:
        known = cls(repo, {}, {})
        # A directory is taken over whole, its objects unread: that holds only while
        # a tree in the repo has all of them. A prune that a kill interrupted can
        # leave an unreachable tree without some, until the next cleanup finishes it;
        # until then, every directory is labelled anew. (A file is one object: one in
        # the repo is whole.)
        trust_trees = not prune_marker(repo).exists()
        for commit in set(list_refs(repo, IMAGE_REF_PREFIX).values()):
            with libostree_errors(f"Reading the detached metadata of {commit}"):
                _, detached = repo.read_commit_detached_metadata(commit, None)
            if detached is None:
                continue
            for key, (labelled,) in _entries(detached.lookup_value(LABELLED_KEY, None), 1):
                known.files[key] = labelled
            trees = detached.lookup_value(LABELLED_TREES_KEY, None) if trust_trees else None
            for key, (contents, meta) in _entries(trees, 2):
                known.trees[key] = LabelledTree(contents, meta)
        return known

    def _has(self, kind: OSTree.ObjectType, checksum: str) -> bool:
        with libostree_errors(f"Looking for object {checksum}"):
            _, found = self.repo.has_object(kind, checksum, None)
        return bool(found)

    def file(self, key: bytes) -> str | None:
        """The labelled file of `key`, if it is known and still in the repo (a pruned
        image takes its own files with it, and the pairing can outlive them)."""
        found = self.files.get(key)
        return found if found is not None and self._has(OSTree.ObjectType.FILE, found) else None

    def tree(self, key: bytes) -> LabelledTree | None:
        """The labelled directory of `key`, if it is known and still in the repo. (A tree
        in the repo has all of its objects while no prune is owed: see `of`.)"""
        found = self.trees.get(key)
        if found is None:
            return None
        kept = self._has(OSTree.ObjectType.DIR_TREE, found.contents) and self._has(
            OSTree.ObjectType.DIR_META, found.meta
        )
        return found if kept else None

    def still_there(
        self, checked: Mapping[bytes, str]
    ) -> tuple[dict[bytes, str], dict[bytes, LabelledTree]]:
        """All that is known, less what the repo no longer has (files in `checked` were
        found already)."""
        files = {
            key: value
            for key, value in self.files.items()
            if key in checked or self.file(key) is not None
        }
        trees = {key: tree for key, tree in self.trees.items() if self.tree(key) is not None}
        return files, trees


@dataclass(frozen=True)
class LabelledImage:
    """An image's tree with its labels; its labeller makes what the image's commit keeps
    of them once that tree is written (the labelled directories' checksums are then
    known)."""

    root: Dir
    labeller: Labeller

    def detached_metadata(self, mtree: OSTree.MutableTree) -> GLib.Variant:
        """What the commit of `mtree` (the tree of `root`, written) keeps of its labels."""
        return self.labeller.detached_metadata(mtree)


def label_image(
    repo: OSTree.Repo,
    writer: ObjectWriter,
    root: Dir,
    unlabelled: OSTree.MutableTree,
    children: ChildrenOf,
) -> LabelledImage | None:
    """The post-processed image `root` with the labels of its own policy; None if it has
    no policy that names a type. `unlabelled` is `root`'s tree, written, whose
    checksums name each directory as it is before labels. (The caller made sure that
    /usr/etc/selinux/config is a regular file where it is there, as a checkout's
    is_file() would find it.)"""
    policy_dir: Entry | None = root
    for name in POLICY_DIR:
        policy_dir = children(policy_dir).get(name) if isinstance(policy_dir, Dir) else None
    if not isinstance(policy_dir, Dir) or "config" not in children(policy_dir):
        return None
    with loaded_policy(repo, policy_dir, children) as policy:
        if policy is None:
            return None
        labeller = Labeller(repo, writer, policy, children)
        labelled = labeller.label(root, unlabelled)
        log.debug(
            "Labelled %d files, %d of them anew; took %d directories over labelled; "
            "%d labels looked up ahead",
            len(labeller.made),
            labeller.written,
            labeller.taken_over,
            labeller.looked_up_ahead,
        )
        return LabelledImage(labelled, labeller)


class Labeller:
    """Labels a tree in memory with `policy`, writing what that changes with `writer`."""

    def __init__(
        self,
        repo: OSTree.Repo,
        writer: ObjectWriter,
        policy: LoadedPolicy,
        children: ChildrenOf,
    ) -> None:
        self._repo = repo
        self._writer = writer
        self._policy = policy
        self._children = children
        self._known = KnownLabels.of(repo)
        self.made: dict[bytes, str] = {}  # what this tree's files became
        self.written = 0  # of them, how many were not known labelled
        self.taken_over = 0  # directories known labelled
        # The directories labelled now, whose checksums the written tree will have.
        self._labelled_now: list[tuple[str, bytes]] = []
        self._dirmetas: dict[tuple[str, str], str] = {}
        # Each directory's _tree_key, and those taken over, by path (found by _plan).
        self._keys: dict[str, bytes] = {}
        self._taken: dict[str, LabelledTree] = {}
        # The walk's lookahead, set up once the walk is planned.
        self._ahead = LabelsAhead(policy.sepolicy, ())

    def _label(self, path: str, mode: int) -> str | None:
        return self._ahead.label(path, mode)

    def label(self, root: Dir, unlabelled: OSTree.MutableTree) -> Dir:
        """The image's tree `root` (whose tree `unlabelled` is), labelled: taken over
        whole wherever an image labelled the same tree at the same path under the same
        policy. What is left is planned first, so that the labels it needs are looked
        up from both ends at once."""
        planned: list[tuple[str, int]] = []
        self._plan(root, unlabelled, "/", planned)
        with LabelsAhead(self._policy.sepolicy, planned) as self._ahead:
            return self._labelled(root, "/")

    @property
    def looked_up_ahead(self) -> int:
        """Labels the lookahead's thread gave."""
        return self._ahead.taken

    def _plan(
        self,
        directory: Dir,
        unlabelled: OSTree.MutableTree,
        path: str,
        planned: list[tuple[str, int]],
    ) -> None:
        """Which directories at and below `path` are taken over, and the path and type
        of every label the rest needs, in the order `_labelled` asks for them."""
        key = self._keys[path] = _tree_key(
            self._policy.identity,
            path,
            unlabelled.get_contents_checksum(),
            unlabelled.get_metadata_checksum(),
        )
        tree = self._known.tree(key)
        if tree is not None:
            self._taken[path] = tree
            return
        prefix = path if path.endswith("/") else f"{path}/"
        for name, entry in sorted(self._children(directory).items()):
            if isinstance(entry, Dir):
                _, _, below = unlabelled.lookup(name)
                self._plan(entry, below, prefix + name, planned)
            else:
                # A leaf read back from a stored tree says "regular" whatever it is; a
                # symlink among those is looked up again once its type is known.
                kind = stat.S_IFLNK if entry.kind is LeafKind.SYMLINK else stat.S_IFREG
                planned.append((prefix + name, kind))
        planned.append((path, stat.S_IFDIR))

    def _labelled(self, directory: Dir, path: str) -> Dir:
        """`directory` (at `path`) and all below it, labelled as `_plan` planned."""
        tree = self._taken.get(path)
        if tree is not None:
            self.taken_over += 1
            kept = StoredDir(path.lstrip("/"), tree.contents, tree.meta, frozenset())
            return Dir(tree.meta, None, stored=kept)
        children: dict[str, Entry] = {}
        prefix = path if path.endswith("/") else f"{path}/"
        for name, entry in sorted(self._children(directory).items()):
            child = prefix + name
            if isinstance(entry, Dir):
                children[name] = self._labelled(entry, child)
            else:
                children[name] = self._leaf(entry, child)
        self._labelled_now.append((path, self._keys[path]))
        return Dir(self._dirmeta(directory.meta, path), children)

    def _dirmeta(self, meta: str, path: str) -> str:
        stored = read_dirmeta(self._repo, meta)
        label = self._label(path, stored.mode)
        if label is None:
            return meta
        key = (meta, label)
        found = self._dirmetas.get(key)
        if found is None:
            labelled = dataclasses.replace(stored, xattrs=with_label(stored.xattrs, label))
            found = self._dirmetas[key] = self._writer.dirmeta(labelled)
        return found

    def _leaf(self, leaf: Leaf, path: str) -> Leaf:
        with libostree_errors(f"Reading object {leaf.checksum}"):
            _, stream, info, xattrs = self._repo.load_file(leaf.checksum, None)
        mode = info.get_attribute_uint32("unix::mode")
        label = self._label(path, mode)
        if label is None:
            if stream is not None:
                stream.close(None)
            return leaf
        key = _pair_key(leaf.checksum, label)
        found = self.made.get(key) or self._known.file(key)
        if found is None:
            meta = FileMeta(
                info.get_attribute_uint32("unix::uid"),
                info.get_attribute_uint32("unix::gid"),
                mode,
                with_label(xattrs_of(xattrs), label),
            )
            self.written += 1
            # The file's own type: a leaf read from a stored tree does not know it.
            if info.get_file_type() == Gio.FileType.SYMBOLIC_LINK:
                found = self._writer.symlink(meta, info.get_symlink_target())
            else:
                found = self._writer.rewritten(stream, meta, info.get_size())
                stream = None
        if stream is not None:
            stream.close(None)
        self.made[key] = found
        return Leaf(leaf.kind, found)

    def detached_metadata(self, mtree: OSTree.MutableTree) -> GLib.Variant:
        """What the commit of `mtree` (the labelled tree, written) keeps of its labels:
        all that is known labelled and still in the repo, and what was labelled now
        (its directories with the checksums libostree gave them)."""
        known_files, known_trees = self._known.still_there(self.made)
        files = {key: [value] for key, value in (known_files | self.made).items()}
        trees = {key: [tree.contents, tree.meta] for key, tree in known_trees.items()}
        for path, key in self._labelled_now:
            found = mtree
            for name in path.strip("/").split("/") if path != "/" else ():
                _, _, found = found.lookup(name)
            trees[key] = [found.get_contents_checksum(), found.get_metadata_checksum()]
        return GLib.Variant("a{sv}", {LABELLED_KEY: _blob(files), LABELLED_TREES_KEY: _blob(trees)})
