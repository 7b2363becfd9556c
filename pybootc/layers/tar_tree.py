"""One layer's tar stream read into a layer tree, its content written as objects as it
streams by: nothing is unpacked to a directory and read back.

The rules are those of extract.py, which unpacks a layer as containers-storage does,
kept here in memory: implied parents are 0755 root, a name below a file or symlink of
the layer is refused (a whiteout or opaque marker below a plain file is ignored), a
duplicate entry or a whiteout of a name the layer writes is refused, a hardlink must
name a non-directory of its own layer and its header's owner, mode and xattrs apply to
the inode it shares (a change of owner drops file capabilities first, as chown does).
"""

from __future__ import annotations

import os
import stat
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, cast

from pybootc.errors import BootcError
from pybootc.layers import kernel_xattrs
from pybootc.layers.extract import (
    hardlink_target,
    member_xattrs,
    next_member,
    open_layer_tar,
    unique_member_parts,
)
from pybootc.layers.paths import Marker, Parts, classify, join
from pybootc.layers.special import SpecialKind, is_image_xattr, placeholder
from pybootc.layers.tree import (
    WHITEOUT,
    Dir,
    FileMeta,
    LayerRead,
    Leaf,
    LeafKind,
    ObjectSink,
    finished_dir,
)

# Regular files up to this size are kept in memory while they are hashed; larger ones
# go through a temporary file, so memory does not grow with the largest file.
_IN_MEMORY = 16 << 20
_CHUNK = 1 << 20
_IMPLIED = FileMeta(0, 0, stat.S_IFDIR | 0o755)
_NEW_DIRECTORY = FileMeta(0, 0, stat.S_IFDIR | 0o700)
_SYMLINK_MODE = stat.S_IFLNK | 0o777


@dataclass(eq=False)
class _Inode:
    """A non-directory while its layer is read: names that are hardlinks share one."""

    kind: LeafKind
    meta: FileMeta
    # A regular file's content object, as written with `written_as`.
    checksum: str = ""
    written_as: FileMeta | None = None
    target: str = ""  # a symlink's
    # A placeholder's: the special file's type (S_IFCHR, ...), major and minor.
    special: SpecialKind = (0, 0, 0)


@dataclass(eq=False)
class _Dir:
    meta: FileMeta
    children: dict[str, _Dir | _Inode | Leaf] = field(default_factory=dict)
    opaque: bool = False
    marked: bool = False  # a whiteout or opaque marker in it or below


class _NotADirectory(BootcError):
    def __init__(self, parts: Parts, *, symlink: bool) -> None:
        super().__init__(f'"{join(parts)}" is not a directory')
        self.symlink = symlink


def _special_kind(member: tarfile.TarInfo) -> SpecialKind:
    if member.isfifo():
        return stat.S_IFIFO, 0, 0
    return stat.S_IFCHR if member.ischr() else stat.S_IFBLK, member.devmajor, member.devminor


class LayerReader:
    """Reads one layer's members into a tree, writing content to `objects`."""

    def __init__(self, objects: ObjectSink, scratch: Path) -> None:
        self._objects = objects
        self._scratch = scratch
        self._root = _Dir(_IMPLIED)
        self._seen: set[Parts] = set()

    # --- the tree while it is read ------------------------------------------------------

    def _dir(self, parts: Parts, *, create: bool) -> _Dir:
        directory = self._root
        for depth, name in enumerate(parts):
            child = directory.children.get(name)
            if child is None:
                if not create:
                    raise BootcError(f'"{join(parts[: depth + 1])}": no such directory')
                child = directory.children[name] = _Dir(_IMPLIED)
            if not isinstance(child, _Dir):
                symlink = isinstance(child, _Inode) and child.kind is LeafKind.SYMLINK
                raise _NotADirectory(parts[: depth + 1], symlink=symlink)
            directory = child
        return directory

    def _mark(self, parts: Parts) -> None:
        directory = self._root
        directory.marked = True
        for name in parts:
            child = directory.children.get(name)
            if not isinstance(child, _Dir):
                return
            child.marked = True
            directory = child

    def read(self, tar: tarfile.TarFile) -> None:
        while (member := next_member(tar)) is not None:
            # A streaming TarFile keeps every member it has read; memory must not grow.
            tar.members.clear()  # type: ignore[attr-defined]
            self._member(tar, member)

    def _member(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        parts = unique_member_parts(member, self._seen)
        if not parts:
            return  # the root's metadata: every deployment's root is 0755 root anyway
        # A directory named `.wh.x/` is an ordinary directory, as in containers-storage.
        marker, name = (Marker.NONE, parts[-1]) if member.isdir() else classify(parts[-1])
        try:
            parent = self._dir(parts[:-1], create=True)
        except _NotADirectory as err:
            # containers-storage ignores a marker below a file of the same layer
            # (there is nothing to hide there), but not one below a symlink.
            if marker is Marker.NONE or err.symlink:
                raise
            return
        if marker is Marker.OPAQUE:
            parent.opaque = True
            self._mark(parts[:-1])
        elif marker is Marker.WHITEOUT:
            if name in parent.children:
                raise BootcError(
                    f'Whiteout "{join(parts)}" hides "{name}", which the same layer writes'
                )
            parent.children[name] = WHITEOUT
            self._mark(parts[:-1])
        elif member.isdir():
            existing = parent.children.get(name)
            if not isinstance(existing, _Dir):
                existing = parent.children[name] = _Dir(_NEW_DIRECTORY)
            existing.meta = _applied(existing.meta, member, fresh=False, directory=True)
        elif member.islnk():
            self._hardlink(member, parts, parent)
        elif member.ischr() and (member.devmajor, member.devminor) == (0, 0):
            # A whiteout by another name: what containers-storage writes for one.
            parent.children[name] = WHITEOUT
            self._mark(parts[:-1])
        else:
            parent.children[name] = self._leaf(tar, member, parts)

    def _leaf(self, tar: tarfile.TarFile, member: tarfile.TarInfo, parts: Parts) -> _Inode:
        meta = _applied(
            FileMeta(0, 0, 0), member, fresh=True, directory=False, symlink=member.issym()
        )
        if member.isreg():
            mode = stat.S_IFREG | stat.S_IMODE(meta.mode)
            inode = _Inode(LeafKind.REGULAR, FileMeta(meta.uid, meta.gid, mode, meta.xattrs))
            inode.checksum = self._content(tar, member, inode.meta)
            inode.written_as = inode.meta
            return inode
        if member.issym():
            return _Inode(
                LeafKind.SYMLINK,
                FileMeta(meta.uid, meta.gid, _SYMLINK_MODE, meta.xattrs),
                target=member.linkname,
            )
        if member.ischr() or member.isblk() or member.isfifo():
            # A placeholder (layers/special.py); its own xattrs go, as they did in
            # the layer commits before.
            return _Inode(
                LeafKind.SPECIAL,
                FileMeta(meta.uid, meta.gid, stat.S_IMODE(meta.mode)),
                special=_special_kind(member),
            )
        raise BootcError(f'Unsupported tar entry type {member.type!r} for "{join(parts)}"')

    def _hardlink(self, member: tarfile.TarInfo, parts: Parts, parent: _Dir) -> None:
        target, where = hardlink_target(member, parts)
        try:
            found = self._dir(target[:-1], create=False).children.get(target[-1])
        except BootcError:
            found = None
        if found is None:
            raise BootcError(f"{where}: the target is not in this layer")
        if isinstance(found, _Dir):
            raise BootcError(f"{where}: the target is a directory")
        if not isinstance(found, _Inode):
            raise BootcError(f"{where}: the target is a whiteout")
        if target == parts:
            # The name is cleared for the link first, which takes its target with it.
            raise BootcError(f'Writing "{join(parts)}": No such file or directory')
        # The link's own header applies to the shared inode, as containers-storage does.
        found.meta = _applied(
            found.meta,
            member,
            fresh=False,
            directory=False,
            symlink=found.kind is LeafKind.SYMLINK,
        )
        if found.kind is LeafKind.SYMLINK:
            found.meta = FileMeta(
                found.meta.uid, found.meta.gid, stat.S_IFLNK | 0o777, found.meta.xattrs
            )
        parent.children[parts[-1]] = found

    # --- content ------------------------------------------------------------------------

    def _content(self, tar: tarfile.TarFile, member: tarfile.TarInfo, meta: FileMeta) -> str:
        """The member's content written as an object: from memory, or through a
        temporary file if it is too large for memory."""
        raw = cast(IO[bytes], tar.fileobj)
        if member.size <= _IN_MEMORY:
            if member.sparse is None:
                return self._objects.regular_from_bytes(meta, _read(raw, member.size))
            buffer = bytearray(member.size)
            for offset, length in cast(list[tuple[int, int]], member.sparse):
                buffer[offset : offset + length] = _read(raw, length)
            return self._objects.regular_from_bytes(meta, bytes(buffer))
        with tempfile.TemporaryFile(dir=self._scratch) as spill:
            fd = spill.fileno()
            runs = cast(list[tuple[int, int]], member.sparse or [(0, member.size)])
            for offset, length in runs:
                os.lseek(fd, offset, os.SEEK_SET)
                remaining = length
                while remaining:
                    chunk = _read(raw, min(remaining, _CHUNK))
                    os.write(fd, chunk)
                    remaining -= len(chunk)
            os.ftruncate(fd, member.size)
            return self._objects.regular_from_fd(meta, fd, member.size)

    # --- the finished tree -----------------------------------------------------------------

    def finish(self) -> LayerRead:
        """The layer as a tree of objects, the inodes' objects made final."""
        tree = self._finish(self._root, {})
        return LayerRead(tree, self.marked())

    def _finish(self, directory: _Dir, finished: dict[int, Leaf]) -> Dir:
        children: dict[str, Dir | Leaf] = {}
        for name, entry in directory.children.items():
            if isinstance(entry, _Dir):
                children[name] = self._finish(entry, finished)
            elif isinstance(entry, Leaf):
                children[name] = entry
            else:
                leaf = finished.get(id(entry))
                if leaf is None:
                    leaf = finished[id(entry)] = Leaf(entry.kind, self._object(entry))
                children[name] = leaf
        return finished_dir(self._objects, directory.meta, children, opaque=directory.opaque)

    def _object(self, inode: _Inode) -> str:
        if inode.kind is LeafKind.REGULAR:
            if inode.written_as != inode.meta:  # a hardlink changed its metadata
                return self._objects.rewrite(inode.checksum, inode.meta)
            return inode.checksum
        if inode.kind is LeafKind.SYMLINK:
            return self._objects.symlink(inode.meta, inode.target)
        return placeholder(self._objects, inode.meta, inode.special)

    def marked(self) -> set[str]:
        """The directories with a whiteout or opaque marker in them or below ("" the root)."""
        found: set[str] = set()

        def visit(directory: _Dir, path: str) -> None:
            if not directory.marked:
                return
            found.add(path)
            for name, child in directory.children.items():
                if isinstance(child, _Dir):
                    visit(child, f"{path}/{name}" if path else name)

        visit(self._root, "")
        return found


def _applied(
    meta: FileMeta,
    member: tarfile.TarInfo,
    *,
    fresh: bool,
    directory: bool,
    symlink: bool = False,
) -> FileMeta:
    """`meta` once the member's header is applied as containers-storage applies it:
    chown (which drops a file's capabilities), chmod (which rewrites a kept access
    ACL), then the member's xattrs (an access ACL among them sets the permissions)."""
    uid, gid = meta.uid, meta.gid
    xattrs = dict(meta.xattrs)
    if fresh or (uid, gid) != (member.uid, member.gid):
        uid, gid = member.uid, member.gid
        if not directory:
            xattrs.pop(kernel_xattrs.CAPABILITY, None)
    mode = stat.S_IFMT(meta.mode) | stat.S_IMODE(member.mode)
    if directory:
        mode = stat.S_IFDIR | stat.S_IMODE(member.mode)
    kernel_xattrs.chmod(mode, xattrs)
    # OSTree keeps no xattr of no value (libostree leaves them out of what it reads),
    # so neither does a tree that becomes its objects.
    own = {name: value for name, value in member_xattrs(member) if is_image_xattr(name) and value}
    xattrs.update(own)
    mode = kernel_xattrs.set_acls(xattrs, mode, own, directory=directory, symlink=symlink)
    return FileMeta.of(uid, gid, mode, xattrs)


def directory_meta(member: tarfile.TarInfo) -> FileMeta:
    """What a directory member's header makes of a directory the layer creates."""
    return _applied(_NEW_DIRECTORY, member, fresh=False, directory=True)


def _read(raw: IO[bytes], size: int) -> bytes:
    data = raw.read(size)
    if len(data) != size:
        raise BootcError("Unexpected end of layer: the tar stream is truncated")
    return data


def read_layer(stream: IO[bytes], objects: ObjectSink, scratch: Path) -> LayerRead:
    """Read one uncompressed tar stream into a tree, writing its content to `objects`;
    files too large to hold in memory pass through `scratch`."""
    reader = LayerReader(objects, scratch)
    try:
        with open_layer_tar(stream) as tar:
            reader.read(tar)
    except tarfile.TarError as err:
        raise BootcError(f"Invalid tar stream: {err}") from None
    except EOFError:
        raise BootcError("Unexpected end of layer: the tar stream is truncated") from None
    return reader.finish()
