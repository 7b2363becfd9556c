"""Unpacks one layer tar stream into an empty directory, as an overlay diff directory.

The result is exactly what containers-storage's overlay driver makes of the same
layer: whiteouts become 0:0 character devices, opaque markers become the
`trusted.overlay.opaque` xattr, parents a layer implies are created 0755 root.
Reading both sources through one diff-directory format is what keeps them equal.
Every path is resolved from the layer's own directory file descriptor, one
component at a time and without following symlinks, so nothing outside is touched.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import stat
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Literal, cast

from pybootc.errors import BootcError
from pybootc.layers import kernel_xattrs
from pybootc.layers.dirfd import DirectoryHandles, NotADirectory
from pybootc.layers.paths import Marker, Parts, classify, is_overlay_xattr, join, split_member_name

_NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_COPY_CHUNK = 1 << 20
_XATTR_PREFIX = "SCHILY.xattr."


@dataclass
class LayerStats:
    entries: int = 0
    bytes: int = 0
    # Whether the layer has an entry for "." that set the root's metadata.
    sets_root: bool = False
    # Directories with an overlay marker somewhere below them (or on them): the
    # merge may move any other directory of this layer whole.
    marked_dirs: set[str] = field(default_factory=set)

    def mark(self, directory: Parts) -> None:
        for depth in range(len(directory) + 1):
            self.marked_dirs.add(join(directory[:depth]))


def member_xattrs(member: tarfile.TarInfo) -> Iterator[tuple[str, bytes]]:
    """The member's xattrs as the kernel keeps them (kernel_xattrs.py), but for ACLs,
    which `kernel_xattrs.set_acls` takes with the file's mode."""
    for key, value in member.pax_headers.items():
        if key.startswith(_XATTR_PREFIX):
            name = key[len(_XATTR_PREFIX) :]
            # Overlay's own xattrs in an image are data overlayfs would obey; drop them.
            if not is_overlay_xattr(name) and kernel_xattrs.supported(name):
                yield name, kernel_xattrs.as_kept(name, value.encode("utf-8", "surrogateescape"))


def hardlink_target(member: tarfile.TarInfo, parts: Parts) -> tuple[Parts, str]:
    """A hardlink member's target as parts, never the root, and how an error names
    the link."""
    target = split_member_name(member.linkname)
    where = f'Hardlink "{join(parts)}" to "{member.linkname}"'
    if not target:
        raise BootcError(f"{where}: the target is the root directory")
    return target, where


def unique_member_parts(member: tarfile.TarInfo, seen: set[Parts]) -> Parts:
    """The member's name as parts, checked: once per layer, and the root (no parts)
    only as a directory. `seen` holds the layer's names so far."""
    parts = split_member_name(member.name)
    if parts in seen:
        raise BootcError(f'Duplicate entry "{join(parts)}" in one layer')
    seen.add(parts)
    if not parts and not member.isdir():
        raise BootcError("The layer root is not a directory")
    return parts


def _proc_path(dir_fd: int, name: str) -> str:
    # os.setxattr has no dir_fd form; this names the entry through the held fd.
    return f"/proc/self/fd/{dir_fd}/{name}"


class LayerExtractor:
    """Applies the members of one layer to an empty directory."""

    def __init__(self, root_fd: int) -> None:
        self._dirs = DirectoryHandles(root_fd)
        self._seen: set[Parts] = set()
        self._dir_times: list[tuple[Parts, int]] = []
        self.stats = LayerStats()

    def close(self) -> None:
        self._dirs.close()

    def extract(self, tar: tarfile.TarFile) -> LayerStats:
        while (member := next_member(tar)) is not None:
            # A streaming TarFile still keeps every member it has read; memory
            # must not grow with the number of entries.
            tar.members.clear()  # type: ignore[attr-defined]
            try:
                self._member(tar, member)
            except OSError as err:
                raise BootcError(f'Writing "{member.name}": {err.strerror}') from None
        self._restore_dir_times()
        return self.stats

    def _member(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        parts = unique_member_parts(member, self._seen)
        self.stats.entries += 1
        if not parts:
            self._apply_metadata(self._dirs.root_fd, "", member, fd=self._dirs.root_fd)
            self.stats.sets_root = True
            return
        # A directory named `.wh.x/` is an ordinary directory, as in containers-storage.
        marker, name = (Marker.NONE, parts[-1]) if member.isdir() else classify(parts[-1])
        try:
            parent = self._dirs.get(parts[:-1], create=True)
        except NotADirectory as err:
            # containers-storage ignores a marker below a file of the same layer
            # (there is nothing to hide there), but not one below a symlink.
            if marker is Marker.NONE or err.symlink:
                raise
            return
        if marker is not Marker.NONE:
            self.stats.mark(parts[:-1])
        if marker is Marker.OPAQUE:
            os.setxattr(parent, "trusted.overlay.opaque", b"y")
        elif marker is Marker.WHITEOUT:
            try:
                os.mknod(name, stat.S_IFCHR | 0o600, 0, dir_fd=parent)
            except FileExistsError:
                raise BootcError(
                    f'Whiteout "{join(parts)}" hides "{name}", which the same layer writes'
                ) from None
        else:
            self._create(tar, member, parts, parent)

    def _make_room(self, parts: Parts, parent: int, *, keep_dir: bool) -> bool:
        """Clear the way for a new entry; True if an existing directory is kept."""
        name = parts[-1]
        try:
            st = os.lstat(name, dir_fd=parent)
        except FileNotFoundError:
            return False
        if stat.S_ISDIR(st.st_mode):
            if keep_dir:
                return True
            self._dirs.forget_below(parts)
            shutil.rmtree(name, dir_fd=parent)
        else:
            os.unlink(name, dir_fd=parent)
        return False

    def _create(
        self, tar: tarfile.TarFile, member: tarfile.TarInfo, parts: Parts, parent: int
    ) -> None:
        name = parts[-1]
        if member.isreg():
            # Created with its final permission bits (the umask is 0 while a
            # layer is unpacked), so only setuid, setgid and sticky need a chmod.
            perms = stat.S_IMODE(member.mode) & 0o777
            try:
                fd = os.open(name, _NEW_FILE_FLAGS, perms, dir_fd=parent)
            except FileExistsError:
                self._make_room(parts, parent, keep_dir=False)
                fd = os.open(name, _NEW_FILE_FLAGS, perms, dir_fd=parent)
            try:
                self._write_content(tar, member, fd)
                self._apply_metadata(parent, name, member, fd=fd, fresh=True)
            finally:
                os.close(fd)
        elif member.isdir():
            if not self._make_room(parts, parent, keep_dir=True):
                os.mkdir(name, 0o700, dir_fd=parent)
            fd = self._dirs.get(parts, create=False)
            self._apply_metadata(parent, name, member, fd=fd)
            self._dir_times.append((parts, int(member.mtime)))
        elif member.islnk():
            self._hardlink(member, parts, parent)
        else:
            self._make_room(parts, parent, keep_dir=False)
            if member.issym():
                os.symlink(member.linkname, name, dir_fd=parent)
            elif member.ischr() or member.isblk() or member.isfifo():
                kind = stat.S_IFCHR if member.ischr() else stat.S_IFBLK
                if member.isfifo():
                    kind = stat.S_IFIFO
                device = os.makedev(member.devmajor, member.devminor)
                if kind == stat.S_IFCHR and device == 0:
                    self.stats.mark(parts[:-1])  # a whiteout by another name
                os.mknod(name, kind | 0o600, device, dir_fd=parent)
            else:
                raise BootcError(f'Unsupported tar entry type {member.type!r} for "{join(parts)}"')
            self._apply_metadata(parent, name, member, fd=None)

    def _hardlink(self, member: tarfile.TarInfo, parts: Parts, parent: int) -> None:
        target, where = hardlink_target(member, parts)
        try:
            target_dir = self._dirs.get(target[:-1], create=False)
            st = os.lstat(target[-1], dir_fd=target_dir)
        except (BootcError, FileNotFoundError):
            raise BootcError(f"{where}: the target is not in this layer") from None
        if stat.S_ISDIR(st.st_mode):
            raise BootcError(f"{where}: the target is a directory")
        if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
            raise BootcError(f"{where}: the target is a whiteout")
        self._make_room(parts, parent, keep_dir=False)
        os.link(
            target[-1], parts[-1], src_dir_fd=target_dir, dst_dir_fd=parent, follow_symlinks=False
        )
        # The link's own header applies to the shared inode, as containers-storage does.
        self._apply_metadata(parent, parts[-1], member, fd=None, symlink=stat.S_ISLNK(st.st_mode))

    def _write_content(self, tar: tarfile.TarFile, member: tarfile.TarInfo, fd: int) -> None:
        self.stats.bytes += member.size
        if member.sparse is not None:
            self._write_sparse(tar, member, fd)
            return
        # The data follows the header in the stream: reading it there skips
        # tarfile's file-object layers, a large share of the time per file.
        _copy(cast(IO[bytes], tar.fileobj), fd, member.size)

    @staticmethod
    def _write_sparse(tar: tarfile.TarFile, member: tarfile.TarInfo, fd: int) -> None:
        # The runs are stored one after another; reading them straight from the
        # stream keeps the holes as holes instead of reading gigabytes of zeros.
        raw = cast(IO[bytes], tar.fileobj)
        raw.seek(member.offset_data)
        runs = cast(list[tuple[int, int]], member.sparse)
        for offset, length in runs:
            os.lseek(fd, offset, os.SEEK_SET)
            _copy(raw, fd, length)
        os.ftruncate(fd, member.size)

    def _apply_metadata(
        self,
        parent: int,
        name: str,
        member: tarfile.TarInfo,
        *,
        fd: int | None,
        symlink: bool | None = None,
        fresh: bool = False,
    ) -> None:
        """Owner, xattrs, mode and time from the member; `fresh`: a file just made."""
        # chown first: it clears setuid bits and file capabilities, which the
        # xattrs and chmod that follow put back. containers-storage skips a chown
        # that changes nothing, so a hardlink's header does not strip the
        # capabilities of the inode it shares; a fresh file has none to lose.
        is_link = member.issym() if symlink is None else symlink
        if fresh:
            owner_differs = True
        else:
            st = os.fstat(fd) if fd is not None else os.lstat(name, dir_fd=parent)
            owner_differs = (st.st_uid, st.st_gid) != (member.uid, member.gid)
        if owner_differs:
            if fd is not None:
                os.fchown(fd, member.uid, member.gid)
            else:
                os.chown(name, member.uid, member.gid, dir_fd=parent, follow_symlinks=False)
        own = dict(member_xattrs(member))
        # The mode the kernel's view has: an access ACL's permissions, if there is one.
        mode = kernel_xattrs.set_acls(
            dict(own), stat.S_IMODE(member.mode), own, directory=member.isdir(), symlink=is_link
        )
        for key, value in own.items():
            try:
                if fd is not None:
                    os.setxattr(fd, key, value)
                else:
                    os.setxattr(_proc_path(parent, name), key, value, follow_symlinks=False)
            except OSError as err:
                # An ACL of another version, or on a symlink: containers-storage goes
                # on without what the kernel does not support.
                if err.errno != errno.EOPNOTSUPP:
                    raise
        if is_link:
            return
        if fd is not None:
            if not fresh or mode != stat.S_IMODE(member.mode) & 0o777:
                os.fchmod(fd, mode)
            if not member.isdir():
                os.utime(fd, (member.mtime, member.mtime))
        else:
            os.chmod(name, mode, dir_fd=parent, follow_symlinks=True)

    def _restore_dir_times(self) -> None:
        # Children change their parent's mtime, so directories get theirs last.
        for parts, mtime in reversed(self._dir_times):
            fd = self._dirs.get(parts, create=False)
            os.utime(fd, (mtime, mtime))


def _copy(source: IO[bytes], fd: int, size: int) -> None:
    remaining = size
    while remaining > 0:
        chunk = source.read(min(remaining, _COPY_CHUNK))
        if not chunk:
            raise BootcError("Unexpected end of layer: the tar stream is truncated")
        _write_all(fd, chunk)
        remaining -= len(chunk)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


# The numbers Go's reader takes (strconv.ParseInt into 64 bits, and seconds with a
# fraction for a time); tarfile's int() would also take spaces and underscores, and
# more signs. Ids must also fit the 32 bits a file's owner has.
_ID, _TIME = re.compile(r"\+?[0-9]+"), re.compile(r"[+-]?[0-9]+(\.[0-9]*)?")
_PAX_NUMBERS = {"uid": _ID, "gid": _ID, "size": _ID, "mtime": _TIME, "atime": _TIME, "ctime": _TIME}
_ID_LIMIT, _NUMBER_LIMIT = 1 << 32, 1 << 63
_XATTR_RECORD = "SCHILY.xattr."
# The headers whose data is a header of the next member, and Go's bound on them.
_SPECIAL_HEADERS = frozenset(
    {tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE, tarfile.GNUTYPE_LONGNAME,
     tarfile.GNUTYPE_LONGLINK}
)  # fmt: skip
_SPECIAL_HEADER_LIMIT = 1 << 20


def _valid_sparse_map(runs: list[tuple[int, int]], size: int, stored: int) -> bool:
    """Whether the data runs of a sparse file are in order, apart, and within its
    `size`, as Go's reader requires of them, and hold no more than the `stored` bytes
    of data the member has."""
    end = 0
    for offset, length in runs:
        if offset < end or length < 0 or offset > size - length:
            return False
        end = offset + length
    return sum(length for _, length in runs) <= stored


# How tarfile's next() tells a header it cannot read (the end of the archive, when
# not the first) from one that fails the archive: its own exceptions, not public.
_EOF_HEADER: type[Exception] = tarfile.EOFHeaderError  # type: ignore[attr-defined]
_EMPTY_HEADER: type[Exception] = tarfile.EmptyHeaderError  # type: ignore[attr-defined]
_INVALID_HEADER: type[Exception] = tarfile.InvalidHeaderError  # type: ignore[attr-defined]
_TRUNCATED_HEADER: type[Exception] = tarfile.TruncatedHeaderError  # type: ignore[attr-defined]
_LATER_HEADER: type[Exception] = tarfile.SubsequentHeaderError  # type: ignore[attr-defined]
# What tarfile raises of a header it cannot make sense of (a sparse map, a number).
_UNREADABLE = (ValueError, IndexError, OverflowError)


class LayerTarInfo(tarfile.TarInfo):
    """A member as Go's archive/tar reads it, which containers-storage unpacks layers
    with, where tarfile reads otherwise:
    - a PAX record with an empty value is no record: the header's own field stands
      (tarfile takes an empty uid, gid or size for 0). An xattr of no value stays one,
      as containers-storage 1.57 sets it (1.43 leaves it out);
    - a number record that is not one, or out of range, is an invalid header (tarfile
      takes 0, or takes what a file's owner cannot hold);
    - an invalid or cut-short header after the first is an error, and so is a zero
      block followed by anything but another, or the end (tarfile takes either for
      the end of the archive, and would leave the rest of the layer out);
    - a stream of no bytes is a layer of no members (tarfile: "empty file");
    - a stream may end in its last member's padding (_LayerTarFile);
    - an old-style member (type NUL) is a directory if its name ends in a slash once
      its PAX path is applied (tarfile looks at the header's own name only), and its
      data, if it has any, is then the next header, as Go reads it;
    - a PAX or GNU long-name header over 1 MiB is refused ("header field too long";
      tarfile reads one into memory whole, however long), and so is a GNU sparse 1.0
      map over 1 MiB;
    - a sparse map whose runs are out of order, overlap, end past the file or hold
      more than the member's stored data is refused (tarfile writes each run where
      it says, reading on into the next member)."""

    old_style = False
    retyped = False

    def _proc_member(self, archive: tarfile.TarFile) -> tarfile.TarInfo:
        if self.type in _SPECIAL_HEADERS and self.size > _SPECIAL_HEADER_LIMIT:
            raise _LATER_HEADER("header field too long")
        return super()._proc_member(archive)  # type: ignore[misc,no-any-return]

    def _proc_gnusparse_10(
        self, next: tarfile.TarInfo, pax_headers: dict[str, str], archive: tarfile.TarFile
    ) -> None:
        """A GNU sparse 1.0 map, at the start of the file's data: its count of runs, then
        each run's offset and length, a number per line. Read as tarfile does, but
        bound as a special header is (Go's reader bounds it too)."""
        raw = archive.fileobj
        assert raw is not None
        buf = raw.read(tarfile.BLOCKSIZE)
        read = len(buf)
        count, _, buf = buf.partition(b"\n")
        if not count.isdigit():
            raise _LATER_HEADER("invalid GNU sparse map")
        numbers: list[int] = []
        while len(numbers) < 2 * int(count):
            while b"\n" not in buf:
                block = raw.read(tarfile.BLOCKSIZE)
                read += len(block)
                if not block or read > _SPECIAL_HEADER_LIMIT:
                    raise _LATER_HEADER("header field too long")
                buf += block
            number, _, buf = buf.partition(b"\n")
            if not number.isdigit():
                raise _LATER_HEADER("invalid GNU sparse map")
            numbers.append(int(number))
        next.offset_data = raw.tell()
        next.sparse = list(zip(numbers[::2], numbers[1::2], strict=True))  # type: ignore[assignment]

    @classmethod
    def frombuf(cls, buf: bytes | bytearray, encoding: str, errors: str) -> LayerTarInfo:
        found = super().frombuf(buf, encoding, errors)
        found.old_style = buf[156:157] == tarfile.AREGTYPE
        return found

    @classmethod
    def fromtarfile(cls, archive: tarfile.TarFile) -> LayerTarInfo:
        try:
            found = super().fromtarfile(archive)
        except _EOF_HEADER:
            after = archive.fileobj.read(tarfile.BLOCKSIZE)
            if after.strip(b"\0") or len(after) not in (0, tarfile.BLOCKSIZE):
                raise _LATER_HEADER("a zero block, and then not the end of the archive") from None
            raise
        except _EMPTY_HEADER:
            if archive.offset == 0:
                raise _EOF_HEADER("a layer of no members") from None
            raise
        except (_INVALID_HEADER, _TRUNCATED_HEADER) as err:
            if archive.offset == 0:
                raise
            raise _LATER_HEADER(str(err)) from None
        if not (0 <= found.uid < _ID_LIMIT and 0 <= found.gid < _ID_LIMIT):
            raise _LATER_HEADER(f"owner {found.uid}:{found.gid} out of range")
        runs = cast(list[tuple[int, int]] | None, found.sparse)
        if runs is not None:
            # The data the runs are read from ends where the next header starts.
            stored = archive.offset - found.offset_data
            if not _valid_sparse_map(runs, found.size, stored):
                raise _LATER_HEADER(f"invalid sparse map of {found.name}")
        if found.retyped:
            # Where the next header starts, as tarfile says it for a new size.
            has_data = found.isreg() or found.type not in tarfile.SUPPORTED_TYPES
            archive.offset = found.offset_data + (found._block(found.size) if has_data else 0)  # type: ignore[attr-defined]
        return found

    def _apply_pax_info(self, pax_headers: dict[str, str], encoding: str, errors: str) -> None:
        records = {
            key: value
            for key, value in pax_headers.items()
            if value != "" or key.startswith(_XATTR_RECORD)
        }
        for key, pattern in _PAX_NUMBERS.items():
            value = records.get(key)
            if value is not None and not (
                pattern.fullmatch(value) and abs(float(value)) < _NUMBER_LIMIT
            ):
                raise _LATER_HEADER(f"invalid PAX record {key}={value!r}")
        super()._apply_pax_info(records, encoding, errors)  # type: ignore[misc]
        if self.old_style and "path" in records:
            kind = tarfile.DIRTYPE if records["path"].endswith("/") else tarfile.REGTYPE
            self.retyped = kind != self.type
            self.type = kind


class _LayerTarFile(tarfile.TarFile):
    """A layer's tar stream that may end in its last member's padding, which Go's reader
    takes for the end of the archive (its own writer leaves the padding out when it is
    never closed); tarfile would say "unexpected end of data"."""

    _last: tarfile.TarInfo | None = None

    def next(self) -> tarfile.TarInfo | None:
        try:
            self._last = found = super().next()
        except tarfile.ReadError:
            last = self._last
            end = self.fileobj.tell()
            if last is None or not (last.offset_data + last.size <= end < self.offset):
                raise
            return None
        return found


def next_member(tar: tarfile.TarFile) -> tarfile.TarInfo | None:
    """`tar.next()`, with what tarfile raises of a header it cannot make sense of as the
    invalid header it is."""
    try:
        return tar.next()
    except _UNREADABLE as err:
        raise tarfile.ReadError(f"invalid header: {err}") from None


class NoGlobalHeaders(dict[str, str]):
    """Stands in for TarFile.pax_headers so that PAX global (`g`) records are dropped.

    tarfile would otherwise merge a global `path` or `SCHILY.xattr.*` into every
    later member that has an extended header of its own.
    """

    def __setitem__(self, key: str, value: str) -> None:
        pass

    def copy(self) -> dict[str, str]:
        return {}


def open_layer_tar(stream: IO[bytes], mode: Literal["r|", "r:"] = "r|") -> tarfile.TarFile:
    """A layer's tar stream, read as containers-storage reads it (LayerTarInfo), with PAX
    global headers ignored (NoGlobalHeaders). The stand-in for the global records must
    be there before tarfile reads the first member."""
    try:
        # Opening reads the first member.
        return _LayerTarFile.open(
            fileobj=stream,
            mode=mode,
            errorlevel=2,
            pax_headers=NoGlobalHeaders(),
            tarinfo=LayerTarInfo,
        )
    except _UNREADABLE as err:
        raise tarfile.ReadError(f"invalid header: {err}") from None


def extract_layer(stream: IO[bytes], dest_fd: int) -> LayerStats:
    """Unpack one uncompressed tar stream into the empty directory `dest_fd`."""
    extractor = LayerExtractor(dest_fd)
    umask = os.umask(0)
    try:
        with open_layer_tar(stream) as tar:
            return extractor.extract(tar)
    except tarfile.TarError as err:
        raise BootcError(f"Invalid tar stream: {err}") from None
    except EOFError:
        raise BootcError("Unexpected end of layer: the tar stream is truncated") from None
    finally:
        os.umask(umask)
        extractor.close()
