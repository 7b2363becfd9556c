"""`install to-filesystem`: a fresh sysroot in an empty filesystem, or nothing."""

from __future__ import annotations

import logging
import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
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
from pybootc.oci.auth import RegistryAuth
from pybootc.oci.imgref import OstreeImageReference
from pybootc.ostree.kargs import checked
from pybootc.ostree.origin import OriginImage
from pybootc.ostree.sysroot import (
    Sysroot,
    check_stateroot_name,
    initialize,
    unlock_deployment_roots,
)
from pybootc.progress import NO_PROGRESS, Progress
from pybootc.stores import Backend
from pybootc.stores.pipeline import Prepared
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


@dataclass(frozen=True)
class InstallPlan:
    """An install, checked whole before anything is written: the image (manifest,
    config, architecture, signatures), the stateroot's name and every kernel argument
    but those of the root filesystem, which only writing it makes."""

    prepared: Prepared
    auth: RegistryAuth
    stateroot: str
    config_kargs: tuple[str, ...]
    cli_kargs: tuple[str, ...]
    karg_deletes: tuple[str, ...]


def plan_install(
    where: Path,
    source: OstreeImageReference,
    *,
    backend: Backend,
    stateroot: str | None,
    kargs: Sequence[str],
    decryption_key: Path | None,
) -> InstallPlan:
    """Check an install of `source` into the empty filesystem at `where` (which holds
    no store yet, whatever it is). The install configuration of the root bootc runs
    in adds its kargs and names the stateroot, unless `stateroot` does."""
    config = install_config.load(Path("/")) or {}
    config_kargs = tuple(checked("the install configuration", config.get("kargs", ())))
    cli_kargs = tuple(checked("--karg", kargs))
    deletes = tuple(checked("the install configuration", config.get("karg-deletes", ())))
    if stateroot is None:
        stateroot = config.get("stateroot") or DEFAULT_STATEROOT
    check_stateroot_name(stateroot)
    origin = OriginImage(source, backend, decryption_key)
    # The installer's own credentials, as upstream's install uses.
    auth = registry_auth(None, None)
    prepared = prepare_target(where, origin, auth, None)
    return InstallPlan(prepared, auth, stateroot, config_kargs, cli_kargs, deletes)


def install_to_filesystem(
    path: Path,
    source: OstreeImageReference,
    *,
    target_imgref: OstreeImageReference | None = None,
    backend: Backend = Backend.OSTREE,
    stateroot: str | None = None,
    kargs: Sequence[str] = (),
    disable_selinux: bool = False,
    decryption_key: Path | None = None,
    progress: Progress = NO_PROGRESS,
) -> Report:
    """Install the image into the empty filesystem at `path`; `kargs` are --karg's."""
    _check_empty_target(path)
    plan = plan_install(
        path,
        source,
        backend=backend,
        stateroot=stateroot,
        kargs=kargs,
        decryption_key=decryption_key,
    )
    return install_planned(
        path, plan, target_imgref=target_imgref, disable_selinux=disable_selinux, progress=progress
    )


def install_planned(
    path: Path,
    plan: InstallPlan,
    *,
    root_kargs: Sequence[str] = (),
    target_imgref: OstreeImageReference | None = None,
    disable_selinux: bool = False,
    progress: Progress = NO_PROGRESS,
) -> Report:
    """Carry out `plan` in the empty filesystem at `path`. `root_kargs` say how to find
    the root (install to-disk's `root=UUID=`); the install configuration's come after
    them."""
    install = InstallKargs(
        tuple(checked("the root filesystem", root_kargs)) + plan.config_kargs,
        plan.cli_kargs,
        plan.karg_deletes,
    )
    origin = plan.prepared.target
    try:
        with error_context(f"Installing to {path}"):
            (path / INSTALL_INCOMPLETE).touch()
            initialize(path, plan.stateroot)
            sysroot = Sysroot.open(path)
            with sysroot.lock():
                pulled = deploy_prepared(
                    sysroot,
                    plan.prepared,
                    stateroot=plan.stateroot,
                    auth=plan.auth,
                    install=install,
                    disable_selinux=disable_selinux,
                    follow=OriginImage(target_imgref, origin.backend, origin.decryption_key)
                    if target_imgref is not None
                    else None,
                    progress=progress,
                )
            (path / INSTALL_INCOMPLETE).unlink()
    except BaseException:
        _empty_again(path)
        raise
    return queued(target_imgref or origin.imgref, pulled)
