"""systemd tmpfiles.d lines: reading which paths an image's files declare, and
writing the lines that recreate a directory, symlink or file in /var.

Shared by post-processing (which seeds the image's /var through tmpfiles.d) and by
`container lint` (which reports /var content that nothing recreates).
"""

from __future__ import annotations

import os
import re
import shlex
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

# Where an image keeps tmpfiles.d, before post-processing (etc) and after (usr/etc).
TMPFILES_DIRS = ("usr/lib/tmpfiles.d", "etc/tmpfiles.d", "usr/etc/tmpfiles.d")


# How systemd-tmpfiles reads a line back. systemd 252 (Debian 12) takes the path field
# with quotes and a backslash before a character, but decodes no C escape there
# (`\x20` stays four characters); later versions decode C escapes as well. Both decode
# C escapes in the argument field, which runs to the end of the line, and expand `%`
# specifiers in each. So a path is written raw, in double quotes where it must be, and
# an argument with escapes: each reads back the same on both.
_QUOTED_IN_PATH = frozenset(" \t\"'\\")


def _control(c: str) -> bool:
    return ord(c) < 0x20 or ord(c) == 0x7F


def path_field(path: str) -> str:
    """`path` as a line's path field. A control character other than a tab can only be
    written as a C escape, which systemd 252 does not decode there."""
    text = path.replace("%", "%%")
    if not any(c in _QUOTED_IN_PATH or _control(c) for c in text):
        return text
    return '"' + "".join(_in_quotes(c) for c in text) + '"'


def _in_quotes(c: str) -> str:
    if c in '\\"':
        return f"\\{c}"
    if _control(c) and c != "\t":
        return f"\\x{ord(c):02x}"
    return c


def argument_field(text: str) -> str:
    """`text` as a line's argument field: C escapes for whitespace (which would end or
    start the field), backslashes and control characters; `-` alone means none."""
    if text == "-":
        return "\\x2d"
    escaped = "".join(f"\\x{ord(c):02x}" if c in " \t\\" or _control(c) else c for c in text)
    return escaped.replace("%", "%%")


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
        if line.lstrip().startswith("#"):
            continue
        # The type and the path, quotes and backslashes as systemd reads them, and C
        # escapes as the versions after 252 do (most images'); read no further, as the
        # argument field is read otherwise.
        escaped = re.sub(r"\\x([0-9a-fA-F]{2})", lambda m: "\\" + chr(int(m[1], 16)), line)
        words = shlex.shlex(escaped, posix=True, punctuation_chars=False)
        words.whitespace_split = True
        words.commenters = ""
        try:
            fields = [words.get_token(), words.get_token()]
        except ValueError:
            continue  # an unbalanced quote: systemd skips the line too
        if fields[1]:
            paths.add(os.path.normpath(fields[1].replace("%%", "%")))
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
        return f"d {path_field(path)} {stat.S_IMODE(st.st_mode):04o} {st.st_uid} {st.st_gid} - -"
    if link is not None:
        return f"L {path_field(path)} - - - - {argument_field(link)}"
    return f"C {path_field(path)} - - - - {argument_field(copy_from or '')}"
