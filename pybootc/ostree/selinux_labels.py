"""SELinux labels for an image while it is a tree in memory, as libostree's commit of a
checkout gives them (its commit modifier, with the image's own policy).

libostree asks the policy for the label of each path ("/", "/usr/bin/sh", with the
entry's mode and type) and, where the policy has one, keeps the entry's other xattrs in
their order, drops any security.selinux it had and adds the label after them. A file
whose xattrs that changes is a new object, its content hashed again. A commit of a
checkout must first check the whole image out, and hashes every such file through GLib;
here each is hashed (OpenSSL) from the object the repo keeps.

A labelled file is a function of its unlabelled object and its label. The image commit
keeps that pairing, for every file it labelled, in its detached metadata
(LABELLED_KEY); an update labels a file the image before had, with the same label,
without reading it again.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pybootc.layers.tree import Dir, Entry, FileMeta, Leaf
from pybootc.ostree.ext_format import IMAGE_REF_PREFIX
from pybootc.ostree.gi import Gio, GLib, OSTree
from pybootc.ostree.layer_commit import from_be32
from pybootc.ostree.objects import ObjectWriter
from pybootc.ostree.repo import libostree_errors, list_refs, load_sepolicy, read_stream

LABEL_XATTR = "security.selinux"
# Where the policy is once /etc has moved; SePolicy looks there below a root.
POLICY_DIR = ("usr", "etc", "selinux")
# The image commit's detached metadata: its labelled files, each as the key of its
# unlabelled object and label (_KEY_BYTES of _pair_key) then its own checksum (raw).
LABELLED_KEY = "pybootc.labelled"
_KEY_BYTES = 16
_ENTRY_BYTES = _KEY_BYTES + 32

log = logging.getLogger(__name__)

Xattrs = tuple[tuple[str, bytes], ...]
ChildrenOf = Callable[[Dir], dict[str, Entry]]


def _xattrs_of(pairs: Iterable[tuple[bytes, bytes]]) -> Xattrs:
    """An unpacked a(ayay) as (name, value) pairs, in its order; names without NUL."""
    return tuple(
        (bytes(name).rstrip(b"\0").decode(errors="surrogateescape"), bytes(value))
        for name, value in pairs
    )


def labelled_xattrs(xattrs: Xattrs, label: str) -> Xattrs:
    """`xattrs` as libostree's commit makes them for `label`."""
    kept = tuple((name, value) for name, value in xattrs if name != LABEL_XATTR)
    # g_variant_new_bytestring keeps the label's terminating NUL in the value.
    return (*kept, (LABEL_XATTR, label.encode() + b"\0"))


def _pair_key(unlabelled: str, label: str) -> bytes:
    return hashlib.sha256(f"{unlabelled}\0{label}".encode()).digest()[:_KEY_BYTES]


@contextmanager
def loaded_policy(
    repo: OSTree.Repo, root: Dir, children: ChildrenOf
) -> Iterator[OSTree.SePolicy | None]:
    """The policy in /usr/etc/selinux of the image `root`, for the block; None if it
    names none (SELINUX=disabled or no type: nothing is labelled, as with a checkout).
    SePolicy reads files: the policy's directory is written out (a few MB) to a
    scratch directory in the repo's tmp while it is loaded."""
    scratch_parent = os.path.join(repo.get_path().get_path(), "tmp")
    with tempfile.TemporaryDirectory(dir=scratch_parent, prefix="pybootc-sepolicy-") as scratch:
        entry: Entry = root
        for name in POLICY_DIR:
            assert isinstance(entry, Dir), "the caller found the policy's config"
            entry = children(entry)[name]
        assert isinstance(entry, Dir)
        _write_out(repo, entry, Path(scratch).joinpath(*POLICY_DIR), children)
        yield load_sepolicy(Path(scratch))


def _write_out(repo: OSTree.Repo, directory: Dir, dest: Path, children: ChildrenOf) -> None:
    """The files of `directory` below `dest`: contents and symlinks, no owners."""
    dest.mkdir(parents=True, exist_ok=True)
    for name, entry in children(directory).items():
        path = dest / name
        if isinstance(entry, Dir):
            _write_out(repo, entry, path, children)
            continue
        with libostree_errors(f"Reading object {entry.checksum}"):
            _, stream, info, _ = repo.load_file(entry.checksum, None)
        if info.get_file_type() == Gio.FileType.SYMBOLIC_LINK:
            os.symlink(info.get_symlink_target(), path)
        else:
            path.write_bytes(read_stream(stream))


def known_labelled(repo: OSTree.Repo) -> dict[bytes, str]:
    """The labelled files of the images in the repo (LABELLED_KEY), by pair key."""
    found: dict[bytes, str] = {}
    for commit in set(list_refs(repo, IMAGE_REF_PREFIX).values()):
        with libostree_errors(f"Reading the detached metadata of {commit}"):
            _, detached = repo.read_commit_detached_metadata(commit, None)
        value = None if detached is None else detached.lookup_value(LABELLED_KEY, None)
        if value is None:
            continue
        blob = memoryview(value.get_data_as_bytes().get_data())
        for offset in range(0, len(blob) - _ENTRY_BYTES + 1, _ENTRY_BYTES):
            key = bytes(blob[offset : offset + _KEY_BYTES])
            found[key] = bytes(blob[offset + _KEY_BYTES : offset + _ENTRY_BYTES]).hex()
    return found


@dataclass(frozen=True)
class LabelledImage:
    """An image's tree with its labels, and what its commit keeps of them (the commit's
    detached metadata)."""

    root: Dir
    detached_metadata: GLib.Variant


def label_image(
    repo: OSTree.Repo, writer: ObjectWriter, root: Dir, children: ChildrenOf
) -> LabelledImage | None:
    """The post-processed image `root` with the labels of its own policy; None if it has
    no policy that names a type. (The caller made sure that /usr/etc/selinux/config is
    a regular file where it is there, as a checkout's is_file() would find it.)"""
    entry: Entry | None = root
    for name in (*POLICY_DIR, "config"):
        entry = children(entry).get(name) if isinstance(entry, Dir) else None
    if entry is None:
        return None
    with loaded_policy(repo, root, children) as policy:
        if policy is None:
            return None
        labeller = Labeller(repo, writer, policy, children)
        labelled = labeller.label(root)
        log.debug("Labelled %d files, %d of them anew", len(labeller.made), labeller.written)
        return LabelledImage(labelled, labeller.detached_metadata())


class Labeller:
    """Labels a tree in memory with `policy`, writing what that changes with `writer`."""

    def __init__(
        self,
        repo: OSTree.Repo,
        writer: ObjectWriter,
        policy: OSTree.SePolicy,
        children: ChildrenOf,
    ) -> None:
        self._repo = repo
        self._writer = writer
        self._policy = policy
        self._children = children
        self._known = known_labelled(repo)
        self.made: dict[bytes, str] = {}  # what this tree's files became
        self.written = 0  # of them, how many were not known labelled
        self._dirmetas: dict[tuple[str, str], str] = {}

    def _label(self, path: str, mode: int) -> str | None:
        _, label = self._policy.get_label(path, mode, None)
        return None if label is None else str(label)

    def label(self, directory: Dir, path: str = "/") -> Dir:
        """`directory` (at `path`) and all below it, labelled."""
        children: dict[str, Entry] = {}
        prefix = path if path.endswith("/") else f"{path}/"
        for name, entry in self._children(directory).items():
            child = prefix + name
            if isinstance(entry, Dir):
                children[name] = self.label(entry, child)
            else:
                children[name] = self._leaf(entry, child)
        return Dir(self._dirmeta(directory.meta, path), children)

    def _dirmeta(self, meta: str, path: str) -> str:
        with libostree_errors(f"Reading directory metadata {meta}"):
            _, variant = self._repo.load_variant(OSTree.ObjectType.DIR_META, meta)
        uid, gid, mode, xattrs = variant.unpack()
        label = self._label(path, from_be32(mode))
        if label is None:
            return meta
        key = (meta, label)
        found = self._dirmetas.get(key)
        if found is None:
            owner = FileMeta(from_be32(uid), from_be32(gid), from_be32(mode))
            labelled = FileMeta(
                owner.uid, owner.gid, owner.mode, labelled_xattrs(_xattrs_of(xattrs), label)
            )
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
        found = self._known.get(key) or self.made.get(key)
        if found is None:
            meta = FileMeta(
                info.get_attribute_uint32("unix::uid"),
                info.get_attribute_uint32("unix::gid"),
                mode,
                labelled_xattrs(_xattrs_of(xattrs.unpack() if xattrs is not None else ()), label),
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

    def detached_metadata(self) -> GLib.Variant:
        """What the image commit keeps of its labelled files (known_labelled)."""
        blob = b"".join(key + bytes.fromhex(value) for key, value in sorted(self.made.items()))
        return GLib.Variant(
            "a{sv}",
            {
                LABELLED_KEY: GLib.Variant.new_from_bytes(
                    GLib.VariantType.new("ay"), GLib.Bytes.new(blob), True
                )
            },
        )
