"""Directories below a root, opened one component at a time without following links.

Layer extraction and post-processing both write inside trees whose symlinks
come from an image; resolving every path from the root's file descriptor with
O_NOFOLLOW is what keeps them from writing anywhere else.
"""

from __future__ import annotations

import errno
import os
import stat
from collections import OrderedDict

from pybootc.errors import BootcError
from pybootc.layers.paths import Parts, join

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_OPEN_DIRS_KEPT = 64


class NotADirectory(BootcError):
    def __init__(self, parts: Parts, *, symlink: bool) -> None:
        super().__init__(f'"{join(parts)}" is not a directory')
        self.symlink = symlink


class DirectoryHandles:
    """Directory fds by path below the layer root, resolved without following links."""

    def __init__(self, root_fd: int) -> None:
        self.root_fd = root_fd
        self._open: OrderedDict[Parts, int] = OrderedDict()

    def get(self, parts: Parts, *, create: bool) -> int:
        if not parts:
            return self.root_fd
        fd = self._open.get(parts)
        if fd is not None:
            self._open.move_to_end(parts)
            return fd
        parent = self.get(parts[:-1], create=create)
        name = parts[-1]
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
        except FileNotFoundError:
            if not create:
                raise BootcError(f'"{join(parts)}": no such directory') from None
            os.mkdir(name, 0o755, dir_fd=parent)
            fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
            os.fchmod(fd, 0o755)  # whatever the umask: containers-storage makes 0755
        except OSError as err:
            if err.errno in (errno.ENOTDIR, errno.ELOOP):
                # O_DIRECTORY wins over O_NOFOLLOW: a symlink gives ENOTDIR too.
                st = os.stat(name, dir_fd=parent, follow_symlinks=False)
                raise NotADirectory(parts, symlink=stat.S_ISLNK(st.st_mode)) from None
            raise
        self._open[parts] = fd
        if len(self._open) > _OPEN_DIRS_KEPT:
            _, oldest = self._open.popitem(last=False)
            os.close(oldest)
        return fd

    def forget_below(self, parts: Parts) -> None:
        """Drop handles for `parts` and everything below it, before it is removed."""
        for key in [k for k in self._open if k[: len(parts)] == parts]:
            os.close(self._open.pop(key))

    def close(self) -> None:
        for fd in self._open.values():
            os.close(fd)
        self._open.clear()
