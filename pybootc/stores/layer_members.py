"""A stored layer's tar members, as containers-storage keeps them.

Its tar-split data (`overlay-layers/<id>.tar-split.gz`) keeps the layer's tar stream as
entries in order: segments, the raw bytes Go's tar reader read between two members'
contents (the previous member's padding, then this member's header blocks, its own
header last, maybe with an old GNU sparse file's extension blocks after it), and the
members themselves, by the names Go's reader gave them. A PAX global header is a
member of its own there, whose data (unpadded) ends its segment.

A layer pulled partially has a table of contents instead (zstd:chunked), which lists
the same members with their metadata.
"""

from __future__ import annotations

import base64
import binascii
import functools
import gzip
import io
import json
import stat
import tarfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from pybootc.errors import BootcError
from pybootc.layers.extract import LayerTarInfo, next_member, open_layer_tar
from pybootc.layers.member_markers import Member, MemberKind

_SEGMENT, _FILE_ENTRY = 2, 1
_BLOCK = 512
_TYPEFLAG = 156
_SIZE, _CHECKSUM = slice(124, 136), slice(148, 156)
_DEVICE = (slice(329, 337), slice(337, 345))
_EXTENDED_HEADERS = b"xgLK"
_TAR_KINDS = {
    ord(tarfile.DIRTYPE): MemberKind.DIRECTORY,
    ord(tarfile.SYMTYPE): MemberKind.SYMLINK,
    ord(tarfile.LNKTYPE): MemberKind.HARDLINK,
}
_TOC_KINDS = {
    "dir": MemberKind.DIRECTORY,
    "symlink": MemberKind.SYMLINK,
    "hardlink": MemberKind.HARDLINK,
}


def _number(field: bytes) -> int | None:
    """A header's octal number field; None if it is not one (or in base 256)."""
    try:
        return int(field.replace(b"\0", b" ").strip() or b"0", 8)
    except ValueError:
        return None


def _is_header(block: bytes) -> bool:
    """Whether `block` is a tar header: its checksum, unsigned or signed, as Go checks it
    (the checksum field counts as spaces)."""
    recorded = _number(block[_CHECKSUM])
    if recorded is None or not block.strip(b"\0"):
        return False
    unsigned = sum(block) - sum(block[_CHECKSUM]) + 8 * ord(" ")
    if recorded == unsigned:
        return True
    high = sum(1 for b in block[:148] + block[156:] if b > 127)
    return recorded == unsigned - 256 * high


def _headers(blocks: bytes, *, check: bool) -> tuple[bytes, int] | None:
    """From the start of `blocks`, a member's header blocks up to its own header, and
    the size of the last extended header's data; no header blocks if there are only
    extended ones (a PAX global header's segment, whose data is not padded). With
    `check`, None if `blocks` does not start with headers (that guess of where they
    start is wrong)."""
    offset = size = 0
    while offset + _BLOCK <= len(blocks):
        block = blocks[offset : offset + _BLOCK]
        if check and not _is_header(block):
            return None
        if block[_TYPEFLAG] not in _EXTENDED_HEADERS:
            return blocks[: offset + _BLOCK], size
        found = _number(block[_SIZE])
        if found is None:
            return None
        size = found
        offset += _BLOCK + -(-size // _BLOCK) * _BLOCK
    return b"", size


def _member_headers(segment: bytes, previous_size: int) -> tuple[bytes, int]:
    """The header blocks of the member a segment comes before, and how much data the
    member has before the next segment (the size of a PAX global header's data,
    which tar-split counts as none). The blocks start after the previous member's
    padding: what the segment's length says it is, but in the segment after a PAX
    global header (whose data is not padded), what the previous member's size says."""
    starts = dict.fromkeys((len(segment) % _BLOCK, -previous_size % _BLOCK))
    for start in starts:
        # Where both say the same, that is where they start; else the headers tell.
        found = _headers(segment[start:], check=len(starts) > 1)
        if found is not None:
            return found
    return b"", 0


def _segment_kind(name: str, headers: bytes) -> MemberKind:
    if not headers:
        return MemberKind.OTHER
    own = headers[-_BLOCK:]
    typeflag = own[_TYPEFLAG]
    if typeflag == ord(tarfile.CHRTYPE):
        if all(_number(own[field]) == 0 for field in _DEVICE):
            return MemberKind.WHITEOUT_DEVICE
        return MemberKind.OTHER
    # Go's reader makes a directory of an old-style regular file (type NUL) whose name,
    # PAX records and long names applied, ends in a slash.
    if typeflag == 0 and name.endswith("/"):
        return MemberKind.DIRECTORY
    return _TAR_KINDS.get(typeflag, MemberKind.OTHER)


def _read_headers(headers: bytes) -> tarfile.TarInfo:
    """The member whose header blocks these are, as the blob path's reader reads it."""
    try:
        with open_layer_tar(io.BytesIO(headers + bytes(2 * _BLOCK)), "r:") as tar:
            member = next_member(tar)
    except (tarfile.TarError, EOFError) as err:
        raise BootcError(f"Reading a header in the tar-split data: {err}") from None
    if member is None:
        raise BootcError("Reading a header in the tar-split data: there is none")
    return member


def _tar_split_entry(line: str) -> dict[str, Any]:
    """One line of tar-split data as an entry; ValueError for what containers-storage
    does not write (no object, or fields of other types than its own)."""
    entry = json.loads(line)
    if not isinstance(entry, dict):
        raise ValueError(f"not an entry: {line.strip()[:40]}")
    for key, kind in (("payload", str), ("name_raw", str), ("size", int)):
        if entry.get(key) is not None and not isinstance(entry[key], kind):
            raise ValueError(f"{key} is not a {kind.__name__}: {entry[key]!r:.40}")
    return entry


def tar_split_members(path: Path) -> Iterator[Member]:
    """The members of a layer's tar-split data, in order; ValueError (or OSError,
    EOFError) for data that is no tar-split data."""
    with gzip.open(path, "rt", encoding="utf-8") as lines:
        segment = b""
        previous_size = 0
        for line in lines:
            entry = _tar_split_entry(line)
            if entry.get("type") == _SEGMENT:
                segment = base64.b64decode(entry.get("payload") or "")
                continue
            if entry.get("type") != _FILE_ENTRY:
                continue
            raw = entry.get("name_raw")
            name = (
                base64.b64decode(raw).decode(errors="surrogateescape")
                if raw
                else str(entry.get("name", ""))
            )
            headers, extended = _member_headers(segment, previous_size)
            # A PAX global header is a member of no size whose data ends its segment.
            previous_size = int(entry.get("size") or 0) if headers else extended
            read = functools.partial(_read_headers, headers)
            yield Member(name, _segment_kind(name, headers), read)


def _toc_header(entry: Mapping[str, Any]) -> tarfile.TarInfo:
    """The tar header a table of contents entry stands for, as far as the markers need
    it: a directory's owner, mode and xattrs, a hardlink's target."""
    try:
        header = LayerTarInfo(str(entry.get("name") or ""))
        header.type = tarfile.DIRTYPE if entry.get("type") == "dir" else tarfile.LNKTYPE
        header.linkname = str(entry.get("linkName") or "")
        header.uid, header.gid = int(entry.get("uid") or 0), int(entry.get("gid") or 0)
        header.mode = stat.S_IMODE(int(entry.get("mode") or 0))
        header.pax_headers = {
            f"SCHILY.xattr.{key}": base64.b64decode(value or "").decode("utf-8", "surrogateescape")
            for key, value in dict(entry.get("xattrs") or {}).items()
        }
    except (TypeError, ValueError, binascii.Error) as err:
        raise BootcError(f"Reading an entry of the table of contents: {err}") from None
    return header


def toc_members(entries: list[dict[str, Any]]) -> Iterator[Member]:
    """The members a zstd:chunked table of contents lists, in order."""
    for entry in entries:
        kind_name = entry.get("type")
        if kind_name == "chunk":
            continue
        kind = _TOC_KINDS.get(str(kind_name), MemberKind.OTHER)
        if kind_name == "char" and not entry.get("devMajor") and not entry.get("devMinor"):
            kind = MemberKind.WHITEOUT_DEVICE
        yield Member(str(entry.get("name") or ""), kind, functools.partial(_toc_header, entry))
