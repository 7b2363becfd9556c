"""`install to-filesystem`: a fresh sysroot in an empty filesystem, or nothing."""

from __future__ import annotations

import logging
import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path

from pybootc import tools
from pybootc.commands import install_config
from pybootc.commands.deploy import (
    DEFAULT_STATEROOT,
    InstallKargs,
    deploy_prepared,
    prepare_target,
    registry_auth,
)
from pybootc.commands.report import Report, queued
from pybootc.errors import BootcError, error_context
from pybootc.oci.imgref import OstreeImageReference
from pybootc.ostree.kargs import checked
from pybootc.ostree.origin import OriginImage
from pybootc.ostree.sysroot import Sysroot, initialize, unlock_deployment_roots
from pybootc.progress import NO_PROGRESS, Progress
from pybootc.stores import Backend
from pybootc.stores.registry import all_stores

log = logging.getLogger(__name__)


# Marks an install that has not finished: a retry may start over where it lies.
INSTALL_INCOMPLETE = ".pybootc-install-incomplete"


def _check_empty_target(path: Path) -> None:
    """Refuse a target with anything in it, but what an interrupted install left."""
    if not path.is_dir():
        raise BootcError(f"{path} is not a directory")
    leftovers = sorted(set(os.listdir(path)) - {"lost+found"})
    if INSTALL_INCOMPLETE in leftovers:
        log.warning("Removing what an interrupted install left in %s", path)
        _empty_again(path)
        return
    if leftovers:
        raise BootcError(f"{path} is not empty (it has {', '.join(leftovers[:3])})")


def _mounts_below(path: Path) -> list[Path]:
    """Mount points strictly below `path`, deepest first."""
    below = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as table:
        for line in table:
            # Field 5 is the mount point, with space, tab, newline, backslash as \ooo.
            point = Path(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), line.split()[4]))
            if point != path and point.is_relative_to(path):
                below.append(point)
    return sorted(below, key=lambda p: len(p.parts), reverse=True)


def _empty_again(path: Path) -> None:
    """Remove what a failed or killed install created in `path`: its deployments are
    immutable, and containers-storage may have left its overlay home mounted."""
    unlock_deployment_roots(path, check=False)
    for store in all_stores(path, None):
        store.reset()
    for mount in _mounts_below(path):
        tools.run(["umount", "--lazy", mount], check=False)
    try:
        for child in path.iterdir():
            if child.name == "lost+found":
                continue
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
    except OSError as err:
        raise BootcError(f"Emptying {path} again: {err}") from None


def install_to_filesystem(
    path: Path,
    source: OstreeImageReference,
    *,
    target_imgref: OstreeImageReference | None = None,
    backend: Backend = Backend.OSTREE,
    stateroot: str | None = None,
    kargs: Sequence[str] = (),
    root_kargs: Sequence[str] = (),
    disable_selinux: bool = False,
    decryption_key: Path | None = None,
    progress: Progress = NO_PROGRESS,
) -> Report:
    """Install the image into the empty filesystem at `path`. `root_kargs` say how to
    find the root (install to-disk's `root=UUID=`); `kargs` are --karg's. The install
    configuration of the root bootc runs in adds its kargs after the root ones and
    names the stateroot, unless `stateroot` does."""
    config = install_config.load(Path("/")) or {}
    install = InstallKargs(
        tuple(
            checked("the root filesystem", root_kargs)
            + checked("the install configuration", config.get("kargs", ()))
        ),
        tuple(checked("--karg", kargs)),
        tuple(checked("the install configuration", config.get("karg-deletes", ()))),
    )
    if stateroot is None:
        stateroot = config.get("stateroot") or DEFAULT_STATEROOT
    _check_empty_target(path)
    origin = OriginImage(source, backend, decryption_key)
    # The installer's own credentials, as upstream's install uses.
    auth = registry_auth(None, None)
    # Refuse a missing image or another architecture before anything is written.
    prepared = prepare_target(path, origin, auth, None)
    try:
        with error_context(f"Installing to {path}"):
            (path / INSTALL_INCOMPLETE).touch()
            initialize(path, stateroot)
            sysroot = Sysroot.open(path)
            with sysroot.lock():
                pulled = deploy_prepared(
                    sysroot,
                    prepared,
                    stateroot=stateroot,
                    auth=auth,
                    install=install,
                    disable_selinux=disable_selinux,
                    follow=OriginImage(target_imgref, backend, origin.decryption_key)
                    if target_imgref is not None
                    else None,
                    progress=progress,
                )
            (path / INSTALL_INCOMPLETE).unlink()
    except BaseException:
        _empty_again(path)
        raise
    return queued(target_imgref or source, pulled)
