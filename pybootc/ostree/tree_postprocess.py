"""ostree-ext's post-processing (layers/postprocess.py), done on the merged image while it
is a tree in memory (layers/tree.py), not on a checkout of it.

Checking a whole image out, walking it for the commit and removing it again costs time
that grows with the image, on every install and every update, for rules that touch a
few paths. Here only the directories on those paths are read from the repo, and every
other subtree goes into the image's commit as the layers stored it.

The rules, their order and their messages are postprocess.py's. An image whose shape
only the checkout handles exactly raises NeedsCheckout, and is post-processed there:
- a symlink on a path the rules read (lookups in a checkout follow it), the SELinux
  policy's config among them (its labels are given in memory: selinux_labels.py);
- layer commits that do not list their special files (made by older pybootc).
tests/test_tree_postprocess.py checks that both ways make the same tree.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import logging
import stat
from collections.abc import Iterator
from dataclasses import dataclass

from pybootc.errors import BootcError
from pybootc.layers import postprocess as rules
from pybootc.layers import tmpfiles
from pybootc.layers.dirfd import NotADirectory
from pybootc.layers.paths import Parts
from pybootc.layers.special import SPECIAL_XATTR
from pybootc.layers.tree import Dir, Entry, FileMeta, Leaf, LeafKind
from pybootc.ostree.ext_format import IMAGE_REF_PREFIX
from pybootc.ostree.gi import Gio, GLib, OSTree
from pybootc.ostree.merged_image import MergedImage
from pybootc.ostree.objects import ObjectWriter, read_dirmeta
from pybootc.ostree.repo import (
    CommitInfo,
    libostree_errors,
    list_refs,
    read_commit_metadata,
    read_directory,
    read_stream,
)
from pybootc.ostree.xattrs import xattrs_of

# What post-processing makes, on a checkout too (whatever the umask).
_NEW_DIR = FileMeta(0, 0, stat.S_IFDIR | 0o755)
_NEW_SYMLINK = FileMeta(0, 0, stat.S_IFLNK | 0o777)
_NEW_FILE = FileMeta(0, 0, stat.S_IFREG | 0o644)
_POLICY = ("usr", "etc", "selinux", "config")  # after /etc has moved
# The image commit's metadata: what its /var seed lines were made from (var_source).
VAR_SOURCE_KEY = "pybootc.var-source"
# Part of every var_source: a change to the lines' format (tmpfiles.line,
# var_tmpfiles_text) must change it, or a later pybootc reuses lines of the old format.
_VAR_LINES_FORMAT = "pybootc var seed 2"

log = logging.getLogger(__name__)


def var_source(contents: str, meta: str, declared: frozenset[str]) -> str:
    """What the lines that seed /var are made from: its tree (as kept in the repo) and
    the paths the image's tmpfiles.d declares; recorded in the image's commit."""
    text = "\n".join([_VAR_LINES_FORMAT, contents, meta, *sorted(declared)])
    return hashlib.sha256(text.encode()).hexdigest()


def record_var_source(
    mtree: OSTree.MutableTree, declared: frozenset[str] | None, commit: CommitInfo
) -> CommitInfo:
    """`commit`, recording what its /var seed lines were made from (the image's tree,
    `mtree`, written already); as it was where /var is not seeded by them."""
    if declared is None:
        return commit
    var = mtree
    for name in rules.VAR_MOVE[1]:
        _, _, var = var.lookup(name)
    metadata = dict(commit.metadata)
    source = var_source(var.get_contents_checksum(), var.get_metadata_checksum(), declared)
    metadata[VAR_SOURCE_KEY] = GLib.Variant("s", source)
    return dataclasses.replace(commit, metadata=metadata)


class NeedsCheckout(Exception):
    """The image is to be post-processed on a checkout (see the module's docstring)."""


@dataclass(frozen=True)
class _Owner:
    """A file's type, mode and owner, as tmpfiles.line reads them."""

    st_mode: int
    st_uid: int
    st_gid: int


@dataclass(frozen=True)
class _FileObject:
    owner: _Owner
    size: int
    target: str | None  # a symlink's
    xattrs: frozenset[str]

    @property
    def regular(self) -> bool:
        return stat.S_ISREG(self.owner.st_mode)


def _path(parts: Parts) -> str:
    return "/" + "/".join(parts)


class _Image:
    """The merged image's tree, read from the repo where the rules look."""

    def __init__(self, repo: OSTree.Repo, writer: ObjectWriter, image: MergedImage) -> None:
        self.repo = repo
        self.writer = writer
        self.root = image.root
        self._expand = image.expand
        self._files: dict[str, _FileObject] = {}

    def children(self, directory: Dir) -> dict[str, Entry]:
        return directory.entries(self._expand)

    def lookup(self, parts: Parts) -> Entry | None:
        """The entry at `parts`, None if there is none; NeedsCheckout if a component
        before the last is not a directory (a checkout's lookup would follow a symlink)."""
        entry: Entry = self.root
        for depth, name in enumerate(parts):
            if not isinstance(entry, Dir):
                raise NeedsCheckout(f"{_path(parts[:depth])} is not a directory")
            found = self.children(entry).get(name)
            if found is None:
                return None
            entry = found
        return entry

    def find(self, parts: Parts) -> Entry | None:
        """The entry at `parts` reached through directories only, else None (as the
        checkout's rules reach it with O_NOFOLLOW)."""
        entry: Entry = self.root
        for name in parts:
            found = self.children(entry).get(name) if isinstance(entry, Dir) else None
            if found is None:
                return None
            entry = found
        return entry

    def ensure_dir(self, parts: Parts) -> Dir:
        """The directory at `parts`, made (0755 root) where missing, as DirectoryHandles
        makes it."""
        directory = self.root
        for depth, name in enumerate(parts):
            children = self.children(directory)
            entry = children.get(name)
            if entry is None:
                entry = children[name] = Dir(self.writer.dirmeta(_NEW_DIR), {})
            elif isinstance(entry, Leaf):
                symlink = self.file(entry).target is not None
                raise NotADirectory(parts[: depth + 1], symlink=symlink)
            directory = entry
        return directory

    def file(self, leaf: Leaf) -> _FileObject:
        found = self._files.get(leaf.checksum)
        if found is None:
            with libostree_errors(f"Reading object {leaf.checksum}"):
                _, stream, info, xattrs = self.repo.load_file(leaf.checksum, None)
            if stream is not None:
                stream.close(None)
            symlink = info.get_file_type() == Gio.FileType.SYMBOLIC_LINK
            names = frozenset(name for name, _ in xattrs_of(xattrs))
            owner = _Owner(
                info.get_attribute_uint32("unix::mode"),
                info.get_attribute_uint32("unix::uid"),
                info.get_attribute_uint32("unix::gid"),
            )
            target = info.get_symlink_target() if symlink else None
            found = self._files[leaf.checksum] = _FileObject(owner, info.get_size(), target, names)
        return found

    def known_var_text(self, source: str) -> bytes | None:
        """The /var seed lines an image commit in the repo made from `source`
        (var_source), if one did."""
        for commit in list_refs(self.repo, IMAGE_REF_PREFIX).values():
            if read_commit_metadata(self.repo, commit).get(VAR_SOURCE_KEY) == source:
                directory, name = rules.VAR_TMPFILES.rsplit("/", 1)
                found = (read_directory(self.repo, commit, directory) or {}).get(name)
                if found is not None:
                    log.debug("Seeding /var as image commit %s does", commit)
                    return found
        return None

    def read(self, leaf: Leaf) -> bytes:
        with libostree_errors(f"Reading object {leaf.checksum}"):
            _, stream, _, _ = self.repo.load_file(leaf.checksum, None)
            return read_stream(stream)

    def dir_owner(self, directory: Dir) -> _Owner:
        meta = read_dirmeta(self.repo, directory.meta)
        return _Owner(meta.mode, meta.uid, meta.gid)


class _Rules:
    """postprocess.py's rules, in its order, on an image in memory."""

    def __init__(self, image: _Image, special: frozenset[str]) -> None:
        self.image = image
        # The placeholders a checkout would make special files again (layered.py's
        # restore_special_files): where the layers put them, on a path of directories,
        # still placeholders.
        self.special: set[Parts] = set()
        for path in special:
            parts = tuple(path.split("/"))
            entry = image.find(parts)
            if isinstance(entry, Leaf) and SPECIAL_XATTR in image.file(entry).xattrs:
                self.special.add(parts)

    def kernel(self) -> str:
        image = self.image
        modules = image.lookup(rules.MODULES)
        versions = []
        if isinstance(modules, Dir):
            for name, entry in image.children(modules).items():
                vmlinuz = image.children(entry).get("vmlinuz") if isinstance(entry, Dir) else None
                if (
                    isinstance(vmlinuz, Leaf)
                    and image.file(vmlinuz).regular
                    and (*rules.MODULES, name, "vmlinuz") not in self.special
                ):
                    versions.append(name)
        return rules.the_kernel(versions)

    def check_os_release(self) -> None:
        for candidate in rules.OS_RELEASES:
            parts = tuple(candidate.split("/"))
            entry = self.image.lookup(parts)
            if (
                isinstance(entry, Leaf)
                and self.image.file(entry).regular
                and parts not in self.special
                and rules.names_an_os(self.image.read(entry).decode(errors="replace"))
            ):
                return
        raise BootcError(rules.NO_OS_RELEASE)

    def empty_api_directories(self) -> None:
        children = self.image.children(self.image.root)
        for name in rules.API_DIRECTORIES:
            entry = children.get(name)
            if isinstance(entry, Dir):
                children[name] = Dir(entry.meta, {})

    def add_sysroot(self) -> None:
        image = self.image
        children = image.children(image.root)
        found = children.get(rules.SYSROOT_DIR)
        if found is None:
            children[rules.SYSROOT_DIR] = Dir(image.writer.dirmeta(_NEW_DIR), {})
        elif not isinstance(found, Dir):
            raise BootcError(rules.SYSROOT_NOT_A_DIRECTORY)
        name, target = rules.OSTREE_LINK
        link = children.get(name)
        if link is None:
            children[name] = Leaf(LeafKind.SYMLINK, image.writer.symlink(_NEW_SYMLINK, target))
        elif isinstance(link, Dir):
            rules.check_ostree_link(None)
        else:
            rules.check_ostree_link(image.file(link).target)

    def remove_special_files(self) -> Iterator[str]:
        """Remove the special files' placeholders; their paths."""
        for parts in sorted(self.special):
            parent = self.image.find(parts[:-1])
            if isinstance(parent, Dir) and parts[-1] in self.image.children(parent):
                # Not under an API directory emptied already.
                del self.image.children(parent)[parts[-1]]
                yield _path(parts)

    def move(self, source: str, dest: tuple[str, ...]) -> bool:
        children = self.image.children(self.image.root)
        entry = children.get(source)
        if entry is None:
            return False
        if not isinstance(entry, Dir):
            raise rules.not_a_directory(source)
        parent = self.image.children(self.image.ensure_dir(dest[:-1]))
        if dest[-1] in parent:
            raise rules.both_there(source, dest)
        parent[dest[-1]] = children.pop(source)
        return True

    def remove_empty_injected(self) -> None:
        etc = self.image.find(("usr", "etc"))
        if not isinstance(etc, Dir):
            return
        children = self.image.children(etc)
        for name in rules.INJECTED_FILES:
            entry = children.get(name)
            if isinstance(entry, Leaf):
                found = self.image.file(entry)
                if found.regular and found.size == 0:
                    del children[name]

    # --- /var seeded by tmpfiles.d, where ostree is too old to seed it -----------------

    def _declared_paths(self) -> frozenset[str]:
        """tmpfiles.declared_paths of the image, as declared_tmpfiles_paths asks."""
        image = self.image
        skipped = rules.VAR_TMPFILES.rsplit("/", 1)[1]
        paths: set[str] = set()
        for directory in tmpfiles.TMPFILES_DIRS:
            confs = image.lookup(tuple(directory.split("/")))
            if not isinstance(confs, Dir):
                continue  # a symlink is not followed there either
            for name, entry in sorted(image.children(confs).items()):
                if not fnmatch.fnmatchcase(name, "*.conf") or name == skipped:
                    continue
                if isinstance(entry, Leaf) and image.file(entry).target is not None:
                    # A checkout's is_file() follows it, wherever it points.
                    raise NeedsCheckout(f"/{directory}/{name} is a symlink")
                if isinstance(entry, Dir) or not image.file(entry).regular:
                    continue
                paths |= tmpfiles.declared_in(image.read(entry).decode(errors="replace"))
        return frozenset(paths)

    def _var_lines(self, directory: Dir, declared: frozenset[str], sub: str) -> Iterator[str]:
        image = self.image
        for name, entry in sorted(image.children(directory).items()):
            path = f"{sub}/{name}" if sub else name
            copy_from = f"{rules.FACTORY_VAR}/{path}"
            if isinstance(entry, Dir):
                if f"/var/{path}" not in declared:
                    owner = image.dir_owner(entry)
                    yield tmpfiles.line(f"/var/{path}", owner, link=None, copy_from=copy_from)
                yield from self._var_lines(entry, declared, path)
            elif f"/var/{path}" not in declared:
                found = image.file(entry)
                yield tmpfiles.line(
                    f"/var/{path}", found.owner, link=found.target, copy_from=copy_from
                )

    def write_var_tmpfiles(self) -> frozenset[str]:
        """Write the lines that seed /var; the paths the image's tmpfiles.d declares."""
        image = self.image
        var = image.find(rules.VAR_MOVE[1])
        assert isinstance(var, Dir)
        declared = self._declared_paths()
        *parents, name = rules.VAR_TMPFILES.split("/")
        children = image.children(image.ensure_dir(tuple(parents)))
        if isinstance(children.get(name), Dir):
            raise NeedsCheckout(f"/{rules.VAR_TMPFILES} is a directory")
        # A /var that nothing has read is its stored tree: an image imported before
        # with the same one, under the same declarations, has its lines already (every
        # file of /var is read for them: at 800 MB, 0.04 s of an update).
        text = None
        if var.children is None and var.stored is not None:
            text = image.known_var_text(var_source(var.stored.contents, var.stored.meta, declared))
        if text is None:
            text = rules.var_tmpfiles_text(self._var_lines(var, declared, "")).encode()
        checksum = image.writer.regular_from_bytes(_NEW_FILE, text)
        children[name] = Leaf(LeafKind.REGULAR, checksum)
        return declared


def postprocess_in_memory(
    repo: OSTree.Repo,
    writer: ObjectWriter,
    merged: MergedImage,
    *,
    keep_var: bool,
    label: bool,
) -> rules.PostprocessResult:
    """Post-process the merged image in place, as postprocess_tree does a checkout of it,
    writing the few objects that takes with `writer`; NeedsCheckout if only a checkout
    does it exactly (`label`: an SELinux policy in the image would be applied)."""
    if merged.special is None:
        raise NeedsCheckout("layer commits that do not list their special files")
    image = _Image(repo, writer, merged)
    do = _Rules(image, merged.special)
    kernel = do.kernel()
    do.check_os_release()
    do.empty_api_directories()
    do.add_sysroot()
    warnings = [rules.special_file_warning(path) for path in do.remove_special_files()]
    do.move(*rules.ETC_MOVE)
    moved_var = not keep_var and do.move(*rules.VAR_MOVE)
    if moved_var:
        image.children(image.root)["var"] = Dir(writer.dirmeta(_NEW_DIR), {})
    do.remove_empty_injected()
    policy = image.lookup(_POLICY) if label else None
    if policy is not None and not (isinstance(policy, Leaf) and image.file(policy).regular):
        # A checkout's is_file() would follow a symlink to it, wherever it points.
        raise NeedsCheckout(f"{_path(_POLICY)} is not a regular file")
    # The merged root is 0755 root already (layer_commit.ROOT_META), as a deployment's is.
    declared = do.write_var_tmpfiles() if moved_var else None
    return rules.PostprocessResult(kernel, tuple(warnings), declared)
