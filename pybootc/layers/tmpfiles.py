"""systemd tmpfiles.d lines: reading which paths an image's files declare, and
writing the lines that recreate a directory, symlink or file in /var.

Shared by post-processing (which seeds the image's /var through tmpfiles.d) and by
`container lint` (which reports /var content that nothing recreates).
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

# Where an image keeps tmpfiles.d, before post-processing (etc) and after (usr/etc).
TMPFILES_DIRS = ("usr/lib/tmpfiles.d", "etc/tmpfiles.d", "usr/etc/tmpfiles.d")


def escape(path: str) -> str:
    return "".join(c if c.isprintable() and c not in " \\\t" else f"\\x{ord(c):02x}" for c in path)


def unescape(path: str) -> str:
    return re.sub(r"\\x([0-9a-fA-F]{2})", lambda m: chr(int(m.group(1), 16)), path)


def declared_paths(root: Path, *, ignore: Iterable[str] = ()) -> frozenset[str]:
    """The paths the tmpfiles.d files under `root` declare, but those in the files
    named in `ignore`."""
    skipped = set(ignore)
    paths: set[str] = set()
    for directory in TMPFILES_DIRS:
        confs = root / directory
        if not confs.is_dir() or confs.is_symlink():
            continue
        for conf in sorted(confs.glob("*.conf")):
            text = None if conf.name in skipped else read_in_root(root, f"{directory}/{conf.name}")
            if text is not None:
                paths |= declared_in(text)
    return frozenset(paths)


# The kernel's limit too: more symlinks than this on one path fail with ELOOP.
_MAX_SYMLINKS = 40


def _components(path: str) -> list[str]:
    """The names along `path`; a trailing "." stands for a trailing slash, which
    asks (as the kernel does) that what the path names be a directory."""
    parts = [part for part in path.split("/") if part not in ("", ".")]
    if parts and (path.endswith("/") or path.endswith("/.")):
        parts.append(".")
    return parts


def read_in_root(root: Path, rel: str) -> str | None:
    """The text of the regular file that `rel` names in the tree at `root`, None if it
    names none. Its symlinks resolve as on the booted image, with `root` as /: so a
    link such as `x.conf -> /usr/share/x.conf` reads the image's file, never the file
    at that path on the host this runs on. Only a regular file is opened: no device
    node, FIFO or terminal a link might name."""
    pending = _components(rel)
    resolved: list[str] = []
    found: os.stat_result | None = None
    links = 0
    while pending:
        part = pending.pop(0)
        if part == ".":
            continue
        if part == "..":
            if resolved:
                resolved.pop()
            found = None
            continue
        path = root.joinpath(*resolved, part)
        try:
            found = path.lstat()
            target = os.readlink(path) if stat.S_ISLNK(found.st_mode) else None
        except OSError:
            return None
        if target is None:
            # As the kernel: a name that more of the path follows is a directory.
            if pending and not stat.S_ISDIR(found.st_mode):
                return None
            resolved.append(part)
            continue
        links += 1
        if links > _MAX_SYMLINKS:
            return None
        if target.startswith("/"):
            resolved = []
        pending[:0] = _components(target)
        found = None
    if found is None or not stat.S_ISREG(found.st_mode):
        return None
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    try:
        fd = os.open(root.joinpath(*resolved), flags)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # replaced since the lstat
            return None
        with open(fd, "rb", closefd=False) as file:
            return file.read().decode(errors="replace")
    finally:
        os.close(fd)


def declared_in(text: str) -> set[str]:
    """The paths the lines of one tmpfiles.d file declare."""
    paths = set()
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 2 and not fields[0].startswith("#"):
            paths.add(os.path.normpath(unescape(fields[1])))
    return paths


class Owned(Protocol):
    """What a line needs of a file: its type and mode, and its owner (an os.stat_result
    has them, and so does a file of a tree in memory)."""

    @property
    def st_mode(self) -> int: ...
    @property
    def st_uid(self) -> int: ...
    @property
    def st_gid(self) -> int: ...


def line(path: str, st: Owned, *, link: str | None, copy_from: str | None) -> str:
    """The line that recreates `path`: a directory with its mode and owner (`d`), a
    symlink (`L`), or a copy of `copy_from` (`C`)."""
    if stat.S_ISDIR(st.st_mode):
        return f"d {escape(path)} {stat.S_IMODE(st.st_mode):04o} {st.st_uid} {st.st_gid} - -"
    if link is not None:
        return f"L {escape(path)} - - - - {link}"
    return f"C {escape(path)} - - - - {escape(copy_from or '')}"
