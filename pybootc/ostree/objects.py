"""Content and directory-metadata objects written into an OSTree repo from data pybootc
reads itself (a layer's tar stream, a containers-storage diff directory).

Each file's checksum is computed here: SHA-256, by OpenSSL (several times faster than
the GLib hash libostree 2022.7 uses), over the content-stream header libostree itself
makes for the file's metadata, and the content. libostree then writes the object
trusted, without hashing it again, and only if the repo lacks it: an object that exists
is never replaced, so the deployments that hardlink it keep sharing it. (libostree's
own adoption of a file, the CONSUME commit, renames the file over an existing object.)
"""

from __future__ import annotations

import hashlib
import os
import socket
import stat
import tempfile

from pybootc.errors import BootcError
from pybootc.layers.tree import FileMeta
from pybootc.ostree.gi import Gio, GLib, OSTree
from pybootc.ostree.repo import libostree_errors, read_stream
from pybootc.ostree.xattrs import encode, xattrs_of

# Files up to this size are read into memory and written from there; larger ones are
# hashed a buffer of this size at a time and handed to libostree as the open file.
_IN_MEMORY = 1 << 20


def check_utf8(text: str, what: str, *where: str) -> None:
    """Refuse a name or symlink target that is not UTF-8 (read with surrogate escapes,
    as os and tarfile read one): OSTree keeps them as GVariant strings, which are.
    `what` says what it is, with {} where the text goes, quoted, and then `where`; it
    is formatted only for a refusal, since this runs for every entry of a layer."""
    try:
        text.encode()
    except UnicodeEncodeError:
        shown = text.encode(errors="surrogateescape").decode(errors="backslashreplace")
        quoted = '"' + shown + '"'
        raise BootcError(f"{what.format(quoted, *where)} is not UTF-8, as OSTree needs") from None


def _from_be32(value: int) -> int:
    """A dirmeta's uid, gid and mode are stored big-endian; GVariant hands them over
    as they are stored."""
    return socket.ntohl(value)


def read_dirmeta(repo: OSTree.Repo, checksum: str) -> FileMeta:
    """A directory-metadata object: owner, mode and xattrs (in their order)."""
    with libostree_errors(f"Reading directory metadata {checksum}"):
        _, variant = repo.load_variant(OSTree.ObjectType.DIR_META, checksum)
    uid, gid, mode = (_from_be32(variant.get_child_value(i).get_uint32()) for i in range(3))
    return FileMeta(uid, gid, mode, xattrs_of(variant.get_child_value(3)))


def _file_info(meta: FileMeta, size: int, symlink_target: str | None = None) -> Gio.FileInfo:
    info = Gio.FileInfo()
    info.set_attribute_uint32("unix::uid", meta.uid)
    info.set_attribute_uint32("unix::gid", meta.gid)
    info.set_attribute_uint32("unix::mode", meta.mode)
    if symlink_target is not None:
        info.set_file_type(Gio.FileType.SYMBOLIC_LINK)
        info.set_attribute_byte_string("standard::symlink-target", symlink_target)
        info.set_size(0)
    else:
        info.set_file_type(Gio.FileType.REGULAR)
        info.set_size(size)
    return info


def _version(st: os.stat_result) -> tuple[int, int, int, int]:
    """The file, and what any write to it changes: its size, its modification and change
    times."""
    return st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


class ObjectWriter:
    """Writes objects into `repo`, inside a transaction the caller holds. Several
    threads may write at once: libostree's writes allow it, and two threads that miss
    in a cache at the same moment only store equal values."""

    def __init__(self, repo: OSTree.Repo) -> None:
        self.repo = repo
        self._headers: dict[tuple[FileMeta, str | None], bytes] = {}
        self._dirmetas: dict[FileMeta, str] = {}
        self._xattrs: dict[FileMeta, GLib.Variant] = {}

    def _xattrs_of(self, meta: FileMeta) -> GLib.Variant:
        found = self._xattrs.get(meta)
        if found is None:
            found = self._xattrs[meta] = encode(meta.xattrs)
        return found

    def header(self, meta: FileMeta, symlink_target: str | None, *, cache: bool = True) -> bytes:
        """libostree's content-stream header for a file of `meta`: the same for every
        regular file of that owner, mode and xattrs, so it is made once."""
        key = (meta, symlink_target)
        header = self._headers.get(key) if cache else None
        if header is None:
            info = _file_info(meta, 0, symlink_target)
            with libostree_errors("Making a file header"):
                _, stream, length = OSTree.raw_file_to_content_stream(
                    Gio.MemoryInputStream.new(), info, self._xattrs_of(meta)
                )
                header = stream.read_bytes(length, None).get_data()
            if cache:
                self._headers[key] = header
        return header

    def _write(self, checksum: str, meta: FileMeta, content: Gio.InputStream, size: int) -> None:
        info = _file_info(meta, size)
        with libostree_errors(f"Writing object {checksum}"):
            _, stream, length = OSTree.raw_file_to_content_stream(
                content, info, self._xattrs_of(meta)
            )
            # Checks for the object first: one the repo has is left as it is.
            self.repo.write_content_trusted(checksum, stream, length, None)

    def regular_from_bytes(self, meta: FileMeta, data: bytes) -> str:
        """A regular file whose content is `data`; its checksum."""
        checksum, parts = self.content_stream(meta, data)
        self.write_stream(checksum, parts)
        return checksum

    def content_stream(self, meta: FileMeta, data: bytes) -> tuple[str, tuple[bytes, bytes]]:
        """The checksum and content stream (header, content) of a regular file of `meta`
        holding `data`, not written."""
        header = self.header(meta, None)
        hasher = hashlib.sha256(header)
        hasher.update(data)
        return hasher.hexdigest(), (header, data)

    def write_stream(self, checksum: str, parts: tuple[bytes, ...]) -> None:
        """The object whose content stream (libostree's header, then the content) is
        `parts`, written as it is: no second header is made, and libostree copies from
        memory."""
        stream = Gio.MemoryInputStream.new()
        for part in parts:
            stream.add_bytes(GLib.Bytes.new(part))
        with libostree_errors(f"Writing object {checksum}"):
            # Checks for the object first: one the repo has is left as it is.
            self.repo.write_content_trusted(checksum, stream, sum(map(len, parts)), None)

    def regular_from_fd(self, meta: FileMeta, fd: int, size: int) -> str:
        """A regular file whose content is the open file `fd` (read from its start,
        `size` bytes); its checksum."""
        if size <= _IN_MEMORY:
            return self.regular_from_bytes(meta, os.pread(fd, size, 0) if size else b"")
        # libostree reads the file a second time as it writes it, and does not hash it
        # (a trusted write): a file that changed in between would be an object whose
        # content is not its name. A write to it changes its times, so that is refused.
        before = _version(os.fstat(fd))
        # Read through one buffer, not mapped: the pages of a mapping count as the
        # process's memory, all 4 GiB of a 4 GiB file.
        hasher = hashlib.sha256(self.header(meta, None))
        buffer = bytearray(_IN_MEMORY)
        offset = 0
        while offset < size:
            read = os.preadv(fd, [buffer], offset)
            if read == 0:
                raise BootcError(f"Reading a file of {size} bytes: it ended at {offset}")
            hasher.update(memoryview(buffer)[:read])
            offset += read
        checksum = hasher.hexdigest()
        os.lseek(fd, 0, os.SEEK_SET)
        self._write(checksum, meta, Gio.UnixInputStream.new(fd, False), size)
        if _version(os.fstat(fd)) != before:
            self._discard_staged(checksum)
            raise BootcError(f"A file of {size} bytes changed while it was read into the repo")
        return checksum

    def _discard_staged(self, checksum: str) -> None:
        """Remove the object `checksum` that this transaction staged: libostree moves
        what an aborted transaction staged into the repo with the next transaction it
        commits (its staging directory is taken up again). An object the repo had
        already was left as it was, and stays."""
        with libostree_errors(f"Reading object {checksum}"):
            _, stream, _, _ = self.repo.load_file(checksum, None)
        if not isinstance(stream, Gio.UnixInputStream):
            return
        try:
            path = os.readlink(f"/proc/self/fd/{stream.get_fd()}")
        finally:
            stream.close(None)
        staging = os.path.realpath(os.path.join(self.repo.get_path().get_path(), "tmp"))
        if path.startswith(staging + os.sep):
            os.unlink(path)

    def rewrite(self, checksum: str, meta: FileMeta) -> str:
        """The regular file `checksum` again, with `meta` instead of its own (a layer's
        hardlink can change the owner, mode and xattrs of the file it links)."""
        with libostree_errors(f"Reading object {checksum}"):
            _, stream, info, _ = self.repo.load_file(checksum, None)
        return self.rewritten(stream, meta, info.get_size())

    def rewritten(self, stream: Gio.InputStream | None, meta: FileMeta, size: int) -> str:
        """The regular file whose content `stream` (of `size` bytes, from load_file) is,
        with `meta`; the stream is closed."""
        if stream is None:  # what load_file gives for an empty file
            return self.regular_from_bytes(meta, b"")
        try:
            if isinstance(stream, Gio.UnixInputStream):
                # A bare repo's object, opened: its content is the file's own.
                return self.regular_from_fd(meta, stream.get_fd(), size)
            if size <= _IN_MEMORY:
                return self.regular_from_bytes(meta, read_stream(stream))
            # A large file is read through a scratch file, never whole into memory.
            scratch_dir = os.path.join(self.repo.get_path().get_path(), "tmp")
            with tempfile.TemporaryFile(dir=scratch_dir) as scratch:
                while chunk := stream.read_bytes(_IN_MEMORY, None).get_data():
                    scratch.write(chunk)
                scratch.flush()
                return self.regular_from_fd(meta, scratch.fileno(), size)
        finally:
            stream.close(None)

    def symlink(self, meta: FileMeta, target: str) -> str:
        """A symlink to `target`; its checksum."""
        check_utf8(target, "The symlink target {}")
        header = self.header(meta, target, cache=False)
        checksum = hashlib.sha256(header).hexdigest()
        self.write_stream(checksum, (header,))
        return checksum

    def dirmeta(self, meta: FileMeta) -> str:
        """A directory's metadata object (owner, mode, xattrs); its checksum."""
        found = self._dirmetas.get(meta)
        if found is not None:
            return found
        info = Gio.FileInfo()
        info.set_attribute_uint32("unix::uid", meta.uid)
        info.set_attribute_uint32("unix::gid", meta.gid)
        info.set_attribute_uint32("unix::mode", stat.S_IFDIR | stat.S_IMODE(meta.mode))
        variant = OSTree.create_directory_metadata(info, encode(meta.xattrs))
        with libostree_errors("Writing directory metadata"):
            _, raw = self.repo.write_metadata(OSTree.ObjectType.DIR_META, None, variant, None)
        checksum = str(OSTree.checksum_from_bytes(raw))
        self._dirmetas[meta] = checksum
        return checksum
