"""The disk each backend uses, on each kind of filesystem, beside two baselines that
show what the filesystem and keeping layers cost on their own:
- the image unpacked (`umoci raw unpack`): one copy of its files, and nothing else;
- the image in containers-storage alone (`skopeo copy`), as (a) and podman keep it: every
  layer's files, those a higher layer deletes or rewrites included.

For the container backend, where its disk goes: bootc's storage (what removing it frees;
on XFS and btrfs its file data is shared with the repo, so only its own metadata), the
deployment (its /etc, its directories, the boot entries), and the repo, object by kind.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import pipelines as p
from scratchfs import FsKind, used_bytes
from workloads import Workload

from pybootc import tools

FILESYSTEMS = (FsKind.EXT4, FsKind.XFS, FsKind.BTRFS, FsKind.TMPFS)


def disk_use(
    env: p.Env, workload: Workload, repo: str, say: Callable[[str], None]
) -> dict[str, object]:
    """Per filesystem: the baselines, each backend after an install and after an update
    (used blocks, so data that reflinks share counts once), and the container backend's
    install taken apart."""
    found: dict[str, object] = {}
    for fs in FILESYSTEMS:
        unpacked = _used_by(env, fs, lambda mount: _unpack(mount, workload))
        storage_alone = _used_by(env, fs, lambda mount: _storage_alone(mount, workload))
        backends = {backend: _backend(env, fs, repo, backend) for backend in p.BACKENDS}
        found[fs.value] = {
            "unpacked": unpacked,
            "storage_alone": storage_alone,
            **backends,
            "container_parts": _container_parts(env, fs, repo),
        }
        say(
            f"  disk {fs}: unpacked {unpacked >> 20} MB, storage alone {storage_alone >> 20} MB, "
            + ", ".join(
                f"{backend} {used['install'] >> 20} MB installed, {used['update'] >> 20} MB updated"
                for backend, used in backends.items()
            )
        )
    return found


def _used_by(env: p.Env, fs: FsKind, make: Callable[[Path], None]) -> int:
    """What `make` leaves on a new filesystem of kind `fs`."""
    with env.filesystem(fs) as mount:
        empty = _settled_used(mount)
        make(mount)
        return _settled_used(mount) - empty


def _settled_used(mount: Path) -> int:
    """Used blocks once what was written has reached the filesystem (btrfs accounts
    for its extents at commit)."""
    tools.run(["sync", "--file-system", mount])
    return used_bytes(mount)


def _unpack(mount: Path, workload: Workload) -> None:
    tools.run(["umoci", "raw", "unpack", "--image", workload.umoci_ref("v1"), mount / "rootfs"])


def _storage_alone(mount: Path, workload: Workload) -> None:
    runroot = Path(tempfile.mkdtemp(prefix="bench-rr-", dir="/run"))
    try:
        storage = f"overlay@{mount / 'storage'}+{runroot}"
        tools.run(
            ["skopeo", "--tmpdir", mount, "copy", "--quiet", workload.ref("v1"),
             f"containers-storage:[{storage}]bench:latest"]
        )  # fmt: skip
    finally:
        tools.run(["rm", "-rf", runroot], check=False)


def _backend(env: p.Env, fs: FsKind, repo: str, backend: str) -> dict[str, int]:
    with env.filesystem(fs) as mount:
        empty = _settled_used(mount)
        p.retag(env, repo, "v1", "stream")
        p.install(env, mount, env.image(repo, "stream"), backend)
        installed = _settled_used(mount) - empty
        p.retag(env, repo, "v2", "stream")
        tools.run(p.bootc("--sysroot", mount / "sysroot", "upgrade"))
        updated = _settled_used(mount) - empty
        passed = p.check_repo(mount)
        p.reset_storage(mount / "sysroot")
    return {"install": installed, "update": updated, "fsck_ok": int(passed)}


def _container_parts(env: p.Env, fs: FsKind, repo: str) -> dict[str, int]:
    """The container backend's install, taken apart by removing each part in turn."""
    with env.filesystem(fs) as mount:
        empty = _settled_used(mount)
        p.retag(env, repo, "v1", "stream")
        p.install(env, mount, env.image(repo, "stream"), "container")
        sysroot = mount / "sysroot"
        installed = _settled_used(mount)
        p.check_repo(mount)
        parts = {"install": installed - empty, **_objects(sysroot / "ostree/repo/objects")}
        p.reset_storage(sysroot)
        tools.run(["rm", "-rf", sysroot / "ostree/bootc/storage"])
        without_storage = _settled_used(mount)
        deployments = sysroot / "ostree/deploy/default/deploy"
        tools.run(["chattr", "-R", "-i", deployments], check=False)
        tools.run(["rm", "-rf", deployments, sysroot / "boot/ostree"])
        repo_alone = _settled_used(mount)
    return {
        **parts,
        "storage_own": installed - without_storage,
        "deployment_own": without_storage - repo_alone,
        "repo": repo_alone - empty,
    }


def _objects(objects: Path) -> dict[str, int]:
    """The repo's file objects (their bytes, and the blocks they take) and its other
    objects (directory trees and metadata, commits: their blocks and how many)."""
    found = {"file_bytes": 0, "file_blocks": 0, "other_blocks": 0, "other_count": 0}
    for directory, _, names in os.walk(objects):
        for name in names:
            st = os.lstat(os.path.join(directory, name))
            if name.endswith(".file"):
                found["file_bytes"] += st.st_size
                found["file_blocks"] += st.st_blocks * 512
            else:
                found["other_blocks"] += st.st_blocks * 512
                found["other_count"] += 1
    return found
