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
from pathlib import Path

from pybootc import tools
from pybootc.errors import BootcError

# linux/sched.h
_CLONE_NEWNS = 0x00020000
_BOOTED = Path("/run/ostree-booted")
_WRITABLE = (Path("/sysroot"), Path("/boot"))


def _in_init_namespace() -> bool:
    return os.readlink("/proc/1/ns/mnt") == os.readlink("/proc/self/ns/mnt")


def make_host_writable(sysroot: Path) -> None:
    """If `sysroot` is the booted host's, enter a private mount namespace with /sysroot
    and /boot writable. To be called before any thread starts: a process with more
    than one cannot leave its mount namespace (unshare fails with EINVAL). A process
    that is in a namespace of its own already (its caller's, or a container's) is left
    as it is, as upstream leaves it."""
    if not _BOOTED.exists() or os.path.realpath(sysroot) != "/" or os.geteuid() != 0:
        return
    if not _in_init_namespace():
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(_CLONE_NEWNS) != 0:
        reason = os.strerror(ctypes.get_errno())
        raise BootcError(f"Entering a mount namespace of its own: {reason}")
    # Nothing mounted or remounted here reaches the host's namespace.
    tools.run(["mount", "--make-rprivate", "/"])
    for mountpoint in _WRITABLE:
        if os.path.ismount(mountpoint) and os.statvfs(mountpoint).f_flag & os.ST_RDONLY:
            tools.run(["mount", "-o", "remount,rw", str(mountpoint)])
