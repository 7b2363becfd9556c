"""A booted host's /sysroot and /boot, writable for one command and nobody else.

`bootc install` sets `sysroot.readonly = true` in the repo's config, as upstream does:
ostree-prepare-root then mounts /sysroot read-only, and so do hosts that upstream
bootc installed. A command that changes the host first enters a mount namespace of its
own, as upstream's `ensure_self_unshared_mount_namespace` does, and remounts /sysroot
(and /boot, if it is a read-only mount) read-write there: the host's own mounts stay
read-only, and what the command's helpers (skopeo, podman) write into bootc's storage
lands too.
"""

from __future__ import annotations

import ctypes
import os
import re
from pathlib import Path

from pybootc import tools
from pybootc.errors import BootcError

# linux/sched.h
_CLONE_NEWNS = 0x00020000
_BOOTED = Path("/run/ostree-booted")
_WRITABLE = (Path("/sysroot"), Path("/boot"))


def _in_init_namespace() -> bool:
    try:
        return os.readlink("/proc/1/ns/mnt") == os.readlink("/proc/self/ns/mnt")
    except OSError:
        return False  # pid 1's is not ours to see: a container's namespace


def make_host_writable(sysroot: Path) -> None:
    """If `sysroot` is the booted host's, have /sysroot and /boot writable for this
    process and its children only: in a mount namespace of its own, entered here if
    the process is still in the host's. To be called before any thread starts: a
    process with more than one cannot leave its mount namespace (unshare fails with
    EINVAL). In a namespace that is not the host's (a caller's, a container's) the
    remount happens there, as libostree's does for upstream."""
    if not _BOOTED.exists() or os.path.realpath(sysroot) != "/" or os.geteuid() != 0:
        return
    if _in_init_namespace():
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.unshare(_CLONE_NEWNS) != 0:
            reason = os.strerror(ctypes.get_errno())
            raise BootcError(f"Entering a mount namespace of its own: {reason}")
        # Nothing mounted or remounted here reaches the host's namespace.
        tools.run(["mount", "--make-rprivate", "/"])
    mounted = _mountpoints()
    for mountpoint in _WRITABLE:
        if mountpoint in mounted and os.statvfs(mountpoint).f_flag & os.ST_RDONLY:
            tools.run(["mount", "-o", "remount,rw", str(mountpoint)])


def _mountpoints() -> set[Path]:
    """Where something is mounted, from the kernel's own table. (os.path.ismount cannot
    tell: /sysroot is on the device of the root, which is a bind mount from it.)"""
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as table:
        # Field 5 is the mount point, with space, tab, newline and backslash as octal.
        return {Path(_unescape(line.split()[4])) for line in table if line.strip()}


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), field)
