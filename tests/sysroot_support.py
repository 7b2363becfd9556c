"""Scratch sysroots for tests: a tmpfs to hold them and small bootable trees to deploy.

Sysroots live on a tmpfs of their own because libostree freezes and thaws the
filesystem that holds /boot (FIFREEZE) every time it writes boot entries; on a
tmpfs that is a plain syncfs instead of a freeze of the machine's root filesystem.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.synchronize
import os
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from pybootc.ostree.gi import OSTree
from pybootc.ostree.repo import CommitInfo, commit_directory
from pybootc.ostree.sysroot import Sysroot, unlock_deployment_roots

KERNEL_VERSION = "6.1.0-test"


def os_release(version: str) -> bytes:
    return f'ID=test\nVERSION_ID={version}\nPRETTY_NAME="Test OS {version}"\n'.encode()


def write_bootable_tree(root: Path, version: str, files: Mapping[str, bytes] = {}) -> Path:
    """The least libostree deploys: a kernel, os-release with ID, and /usr/etc."""
    contents = {
        f"usr/lib/modules/{KERNEL_VERSION}/vmlinuz": f"kernel {version}".encode(),
        "usr/lib/os-release": os_release(version),
        "usr/etc/os-release": os_release(version),
        "usr/etc/motd": f"welcome to {version}\n".encode(),
        "usr/bin/sh": b"#!/bin/true\n",
        **files,
    }
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)
    for relpath, data in contents.items():
        path = root / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    (root / "usr/bin/sh").chmod(0o755)
    return root


def commit_bootable_tree(
    repo: OSTree.Repo, workdir: Path, version: str, files: Mapping[str, bytes] = {}
) -> str:
    tree = write_bootable_tree(workdir / f"tree-{version}", version, files)
    info = CommitInfo(subject=version, metadata={}, timestamp=1_700_000_000)
    return commit_directory(repo, tree, info=info, selinux_policy=None)


def hold_lock(
    path: str, locked: multiprocessing.synchronize.Event, done: multiprocessing.synchronize.Event
) -> None:
    """Hold the sysroot lock of `path` from `locked` until `done` (a spawned process)."""
    held = Sysroot.open(Path(path))
    with held.lock():
        locked.set()
        done.wait(30)


@contextmanager
def lock_held_elsewhere(path: Path) -> Iterator[None]:
    """The sysroot lock of `path`, held by another process for the block."""
    context = multiprocessing.get_context("spawn")
    locked, done = context.Event(), context.Event()
    holder = context.Process(target=hold_lock, args=(str(path), locked, done))
    holder.start()
    try:
        assert locked.wait(30)
        yield
    finally:
        done.set()
        holder.join(30)


def unreachable_objects(repo: Path) -> int:
    """How many objects of `repo` no ref reaches, as `ostree prune` counts them."""
    out = subprocess.run(
        ["ostree", "prune", f"--repo={repo}", "--refs-only", "--no-prune"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    if "No unreachable objects" in out:
        return 0
    _, _, rest = out.partition("Would delete: ")
    return int(rest.split(" ", 1)[0])


def remove_sysroot(sysroot: Path) -> None:
    if sysroot.exists():
        unlock_deployment_roots(sysroot)
        shutil.rmtree(sysroot)


def _unmount_with_sysroots(mount: Path) -> None:
    """Remove the sysroots on a scratch filesystem (deployment roots are immutable),
    then unmount it."""
    for child in mount.iterdir():
        if child.is_dir() and not child.is_symlink():
            # A mount a killed command left below stays busy; the lazy unmount
            # detaches it with the rest.
            with contextlib.suppress(OSError):
                remove_sysroot(child)
    # Lazy: libostree objects a failed test keeps alive still hold fds in it.
    subprocess.run(["umount", "--lazy", mount], check=True)


@contextmanager
def scratch_tmpfs(where: Path, size: str = "512m") -> Iterator[Path]:
    """A fresh tmpfs of `size` mounted at `where` (created) for the duration."""
    where.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"mode=0755,size={size}", "pybootc-test", where],
        check=True,
    )
    try:
        yield where
    finally:
        _unmount_with_sysroots(where)


@contextmanager
def scratch_loop_filesystem(where: Path, fstype: str, size: int = 1 << 30) -> Iterator[Path]:
    """A fresh filesystem of `fstype` (xfs with reflinks, btrfs, ext4) on an image in a
    tmpfs of its own, loop-mounted at `where/mnt` for the duration."""
    mkfs = {
        "xfs": ["mkfs.xfs", "-q", "-f", "-m", "reflink=1"],
        "btrfs": ["mkfs.btrfs", "-q", "-f"],
        "ext4": ["mkfs.ext4", "-q", "-F"],
    }[fstype]
    with scratch_tmpfs(where / "image", f"{size + (64 << 20)}") as holder:
        image = holder / f"{fstype}.img"
        with image.open("wb") as f:
            f.truncate(size)
        subprocess.run([*mkfs, image], check=True)
        mount = where / "mnt"
        mount.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-o", "loop", image, mount], check=True)
        try:
            yield mount
        finally:
            _unmount_with_sysroots(mount)


def snapshot(path: Path) -> list[tuple[str, int, int]]:
    """Every path under `path` with its mode and size: to show that nothing changed."""
    found = [("", os.lstat(path).st_mode, 0)] if path.exists() else []
    for dirpath, dirnames, filenames in os.walk(path):
        for name in sorted(dirnames + filenames):
            full = Path(dirpath, name)
            st = os.lstat(full)
            found.append((str(full.relative_to(path)), st.st_mode, st.st_size))
    return sorted(found)
