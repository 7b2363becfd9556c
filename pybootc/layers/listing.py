"""A canonical listing of a file tree, so that any two trees can be compared.

It records what a flattened image is made of (type, mode, owner, size, content
digest, link target, xattrs, device numbers, hardlink groups) and nothing that
depends on where or when the tree was written (inode numbers, times).
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

# Recomputed from the image's policy, never taken from layers: not part of a tree's identity.
IGNORED_XATTRS = frozenset({"security.selinux"})


@dataclass(frozen=True, order=True)
class ListedEntry:
    path: str
    kind: str
    mode: int
    uid: int
    gid: int
    size: int
    sha256: str = ""
    target: str = ""
    xattrs: tuple[tuple[str, bytes], ...] = ()
    rdev: tuple[int, int] | None = None
    # The smallest path among the names that share this inode, when there are several.
    link_group: str | None = None

    def describe(self) -> str:
        parts = [self.path, self.kind, f"{self.mode:04o}", f"{self.uid}:{self.gid}"]
        if self.kind == "file":
            parts += [str(self.size), self.sha256[:12]]
        if self.target:
            parts.append(f"-> {self.target}")
        if self.rdev is not None:
            parts.append(f"dev {self.rdev[0]}:{self.rdev[1]}")
        if self.xattrs:
            parts.append(f"xattrs {dict(self.xattrs)!r}")
        if self.link_group is not None:
            parts.append(f"linked {self.link_group}")
        return " ".join(parts)


_KINDS = {
    stat.S_IFREG: "file",
    stat.S_IFDIR: "dir",
    stat.S_IFLNK: "symlink",
    stat.S_IFCHR: "char",
    stat.S_IFBLK: "block",
    stat.S_IFIFO: "fifo",
    stat.S_IFSOCK: "socket",
}


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _xattrs(path: str) -> tuple[tuple[str, bytes], ...]:
    names = sorted(set(os.listxattr(path, follow_symlinks=False)) - IGNORED_XATTRS)
    return tuple((n, os.getxattr(path, n, follow_symlinks=False)) for n in names)


def _walk(root: str, rel: str) -> Iterator[tuple[str, os.stat_result]]:
    try:
        entries = sorted(os.scandir(os.path.join(root, rel) if rel else root), key=lambda e: e.name)
    except FileNotFoundError:
        return
    for entry in entries:
        path = f"{rel}/{entry.name}" if rel else entry.name
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError as err:
            # Overlay mounts list whiteouts of upper-only directories that lstat
            # cannot find: they are not there.
            if err.errno == errno.ENOENT:
                continue
            raise
        yield path, st
        if stat.S_ISDIR(st.st_mode):
            yield from _walk(root, path)


def list_tree(root: Path, *, include_root: bool = False) -> list[ListedEntry]:
    """List every entry below `root` (and `root` itself as "." if asked)."""
    top = os.fspath(root)
    found: list[tuple[str, os.stat_result]] = list(_walk(top, ""))
    if include_root:
        found.insert(0, (".", os.lstat(top)))
    names_by_inode: dict[tuple[int, int], list[str]] = defaultdict(list)
    for path, st in found:
        if not stat.S_ISDIR(st.st_mode):
            names_by_inode[(st.st_dev, st.st_ino)].append(path)
    listing = []
    for path, st in found:
        full = top if path == "." else os.path.join(top, path)
        fmt = stat.S_IFMT(st.st_mode)
        kind = _KINDS[fmt]
        names = names_by_inode.get((st.st_dev, st.st_ino), [])
        listing.append(
            ListedEntry(
                path=path,
                kind=kind,
                mode=stat.S_IMODE(st.st_mode),
                uid=st.st_uid,
                gid=st.st_gid,
                size=st.st_size if kind == "file" else 0,
                sha256=_sha256(full) if kind == "file" else "",
                target=os.readlink(full) if kind == "symlink" else "",
                xattrs=_xattrs(full),
                rdev=(os.major(st.st_rdev), os.minor(st.st_rdev))
                if kind in ("char", "block")
                else None,
                link_group=min(names) if len(names) > 1 else None,
            )
        )
    return sorted(listing)


def diff_listings(expected: list[ListedEntry], actual: list[ListedEntry]) -> list[str]:
    """Human-readable differences, empty when the trees are the same."""
    want = {e.path: e for e in expected}
    got = {e.path: e for e in actual}
    lines = []
    for path in sorted(want.keys() | got.keys()):
        a, b = want.get(path), got.get(path)
        if a == b:
            continue
        if a is None:
            lines.append(f"+ {b.describe() if b else path}")
        elif b is None:
            lines.append(f"- {a.describe()}")
        else:
            lines.append(f"- {a.describe()}\n+ {b.describe()}")
    return lines
