"""An OSTree sysroot through libostree: its deployments, origins, lock and changes.

Deploying writes the new deployment first in boot order, staged on a booted host and
directly (deploy plus bootloader entries) on a sysroot that is not the running system.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pybootc import tools
from pybootc.errors import BootcError
from pybootc.ostree.gi import Gio, GLib, OSTree
from pybootc.ostree.kargs import split as split_kargs
from pybootc.ostree.repo import libostree_errors, prune_marker

OSTREE_BOOTED = Path("/run/ostree-booted")
# ostree-finalize-staged.service leaves the staged deployment alone while this exists.
STAGED_LOCKED = Path("/run/ostree/staged-deployment-locked")
Origin = Mapping[str, Mapping[str, str]]


@dataclass(frozen=True)
class DeploymentInfo:
    """One deployment, as a plain value; `index` is its place in boot order."""

    index: int
    checksum: str
    deploy_serial: int
    stateroot: str
    origin: Mapping[str, Mapping[str, str]] = field(hash=False)
    pinned: bool
    is_booted: bool
    is_staged: bool
    deployment_path: Path
    kargs: tuple[str, ...] = ()
    # `ostree admin unlock`'s state: "none", "development", "hotfix" or "transient".
    unlocked: str = "none"
    # A staged deployment held back from finalization (`upgrade --download-only`).
    finalization_locked: bool = False
    # Whether `systemctl soft-reboot` can enter it: this host can soft-reboot, and it
    # has the booted deployment's kernel and initramfs.
    soft_reboot_capable: bool = False


@dataclass(frozen=True)
class CleanupResult:
    objects_pruned: int
    bytes_freed: int


def check_stateroot_name(stateroot: str) -> None:
    if not stateroot or "/" in stateroot or stateroot in {".", ".."} or "\0" in stateroot:
        raise BootcError(f"Invalid stateroot name: {stateroot!r}")


def initialize(path: Path, stateroot: str) -> None:
    """Make `path` a sysroot with one stateroot, as `ostree admin init-fs --modern PATH`
    plus `os-init STATEROOT` do, with the repo set up the way `bootc install` sets it.

    It never touches an existing sysroot: one already at `path` is an error.
    """
    check_stateroot_name(stateroot)
    if not path.is_dir():
        raise BootcError(f"{path} is not a directory")
    if (path / "ostree").exists():
        raise BootcError(f"{path} already holds an OSTree sysroot")
    sysroot = OSTree.Sysroot.new(Gio.File.new_for_path(str(path)))
    with libostree_errors(f"Initializing sysroot {path}"):
        (path / "boot").mkdir(mode=0o755, exist_ok=True)
        # Creates ostree/repo in `bare` mode and ostree/deploy, like init-fs.
        sysroot.ensure_initialized(None)
        sysroot.init_osname(stateroot, None)
        _, repo = sysroot.get_repo(None)
        # bootc install sets these: BLS entries only, never grub2-mkconfig and the like
        # (which `auto` would run if the sysroot happened to have a grub.cfg); and a
        # /sysroot that ostree-prepare-root mounts read-only, which only bootc's own
        # commands make writable, in a mount namespace of their own
        # (ostree/mount_namespace.py).
        config = repo.copy_config()
        config.set_string("sysroot", "bootloader", "none")
        config.set_string("sysroot", "readonly", "true")
        repo.write_config(config)


def _origin_keyfile(origin: Origin) -> GLib.KeyFile:
    keyfile = GLib.KeyFile()
    for group, keys in origin.items():
        for key, value in keys.items():
            keyfile.set_string(group, key, value)
    return keyfile


def _origin_dict(keyfile: GLib.KeyFile | None) -> dict[str, dict[str, str]]:
    if keyfile is None:
        return {}
    groups, _ = keyfile.get_groups()
    origin: dict[str, dict[str, str]] = {}
    for group in groups:
        keys, _ = keyfile.get_keys(group)
        origin[str(group)] = {str(key): str(keyfile.get_string(group, key)) for key in keys}
    return origin


# What makes a directory an OSTree sysroot.
_SYSROOT_DIRS = ("ostree/repo", "ostree/deploy")


def is_ostree_sysroot(path: Path) -> bool:
    return all((path / needed).is_dir() for needed in _SYSROOT_DIRS)


def unlock_deployment_roots(path: Path, *, check: bool = True) -> None:
    """Clear the immutable attribute libostree puts on each deployment root of the
    sysroot at `path`, so that the tree can be removed (installs undone, tests, demo)."""

    roots = sorted(path.glob("ostree/deploy/*/deploy/*"))
    dirs = [root for root in roots if root.is_dir() and not root.is_symlink()]
    if dirs:
        tools.run(["chattr", "-i", *dirs], check=check)


def is_booted_root(path: Path) -> bool:
    """Whether `path` is the running system's root, booted through OSTree."""
    return OSTREE_BOOTED.exists() and os.path.realpath(path) == "/"


def _finalization_locked(deployment: Any) -> bool:
    if hasattr(deployment, "is_finalization_locked"):
        return bool(deployment.is_finalization_locked())
    return STAGED_LOCKED.exists()


def _start_finalization_service() -> None:
    """Have ostree-finalize-staged.service running before the command returns.

    libostree older than 2025.2 leaves it to a path unit watching
    /run/ostree/staged-deployment, and systemd starts the service some time later: a
    reboot (`--apply`) in between cancels the start, and the staged deployment is never
    written out. libostree 2025.2 starts the service itself, synchronously; so do we.
    """
    if OSTree.check_version(2025, 2):
        return
    tools.run(["systemctl", "start", "--quiet", "ostree-finalize-staged.service"])


class Sysroot:
    """A loaded sysroot. Every method that changes it holds the sysroot lock."""

    def __init__(self, path: Path, sysroot: OSTree.Sysroot) -> None:
        self.path = path
        self._sysroot = sysroot
        self._lock_depth = 0

    @classmethod
    def open(cls, path: Path) -> Sysroot:
        """Load the sysroot at `path`; nothing is created there."""
        # libostree's load() would only say "opendir(ostree/repo): No such file...".
        for needed in _SYSROOT_DIRS:
            if not (path / needed).is_dir():
                raise BootcError(f"{path} is not an OSTree sysroot (it has no {needed})")
        sysroot = OSTree.Sysroot.new(Gio.File.new_for_path(str(path)))
        with libostree_errors(f"Loading sysroot {path}"):
            sysroot.load(None)
        return cls(path, sysroot)

    @property
    def repo(self) -> OSTree.Repo:
        """The sysroot's OSTree.Repo."""
        return self._sysroot.repo()

    @property
    def booted(self) -> bool:
        """Whether this sysroot is the running system, booted through OSTree."""
        return is_booted_root(self.path)

    def _info(self, index: int, deployment: Any) -> DeploymentInfo:
        booted = self._sysroot.get_booted_deployment()
        bootconfig = deployment.get_bootconfig()
        options = bootconfig.get("options") if bootconfig is not None else None
        return DeploymentInfo(
            index=index,
            checksum=str(deployment.get_csum()),
            deploy_serial=int(deployment.get_deployserial()),
            stateroot=str(deployment.get_osname()),
            origin=_origin_dict(deployment.get_origin()),
            pinned=bool(deployment.is_pinned()),
            is_booted=booted is not None and bool(deployment.equal(booted)),
            is_staged=bool(deployment.is_staged()),
            deployment_path=self.path / str(self._sysroot.get_deployment_dirpath(deployment)),
            kargs=tuple(split_kargs(str(options))) if options else (),
            unlocked=OSTree.Deployment.unlocked_state_to_string(deployment.get_unlocked()),
            finalization_locked=bool(deployment.is_staged()) and _finalization_locked(deployment),
            soft_reboot_capable=self._can_soft_reboot(deployment),
        )

    def _can_soft_reboot(self, deployment: Any) -> bool:
        from pybootc.commands.booted import composefs_enabled, soft_reboot_unavailable

        return (
            self.booted
            and hasattr(self._sysroot, "deployment_can_soft_reboot")
            and soft_reboot_unavailable() is None
            and bool(self._sysroot.deployment_can_soft_reboot(deployment))
            and composefs_enabled(
                self.path / str(self._sysroot.get_deployment_dirpath(deployment)),
                Path("/proc/cmdline").read_text(),
            )
        )

    def _deployments(self) -> list[Any]:
        return list(self._sysroot.get_deployments())

    def deployments(self) -> list[DeploymentInfo]:
        """All deployments in boot order: the staged one first, if any."""
        return [self._info(i, d) for i, d in enumerate(self._deployments())]

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the sysroot lock (ostree/lock) and work on a freshly loaded state.

        If another process holds it, wait for it, saying so as upstream does. Nesting
        is allowed.
        """
        if self._lock_depth:
            self._lock_depth += 1
            try:
                yield
            finally:
                self._lock_depth -= 1
            return
        with libostree_errors(f"Locking sysroot {self.path}"):
            _, acquired = self._sysroot.try_lock()
            if not acquired:
                print("Waiting for sysroot lock...", file=sys.stderr, flush=True)
                self._sysroot.lock()
        self._lock_depth = 1
        try:
            self._reload()
            yield
        finally:
            self._lock_depth = 0
            self._sysroot.unlock()

    def _reload(self) -> None:
        with libostree_errors(f"Loading sysroot {self.path}"):
            self._sysroot.load(None)

    def _write_deployments(self, deployments: Sequence[Any]) -> None:
        # The default write_deployments() also prunes the repo, which would delete any
        # commit that no ref or deployment holds: keep pruning an explicit cleanup().
        options = OSTree.SysrootWriteDeploymentsOpts()
        options.do_postclean = False
        self._sysroot.write_deployments_with_options(list(deployments), options, None)
        # Removes the deployment directories and boot entries just dropped, and writes
        # the ostree/B/S/N refs that keep each deployed commit from being pruned.
        self._sysroot.prepare_cleanup(None)

    def _find(self, deployment: Any) -> DeploymentInfo:
        for i, candidate in enumerate(self._deployments()):
            if candidate.equal(deployment):
                return self._info(i, candidate)
        raise BootcError(f"Deployment of {deployment.get_csum()} not found after writing it")

    def merge_deployment(self, stateroot: str) -> DeploymentInfo | None:
        """The deployment a new one in `stateroot` merges /etc and kargs from: the
        booted one if it is there, else the stateroot's first."""
        merge = self._sysroot.get_merge_deployment(stateroot)
        return None if merge is None else self._find(merge)

    def deploy(
        self,
        checksum: str,
        *,
        stateroot: str,
        origin: Origin,
        kargs: Sequence[str] | None = None,
        retain_others: bool = True,
        lock_finalization: bool = False,
    ) -> DeploymentInfo:
        """Deploy `checksum` as the next boot, /etc merged from the stateroot's current
        deployment, and return it.

        `kargs` replace the kernel arguments; without them they are inherited. On a booted
        host it is staged (libostree finishes it at shutdown). Otherwise the deployments
        are written directly: the new one first, then the previous first one as rollback,
        then the others unless `retain_others` is false (pinned deployments and other
        stateroots' deployments are kept regardless). `lock_finalization` keeps a staged
        deployment from being finalized at shutdown until `set_finalization` says so.
        """
        check_stateroot_name(stateroot)
        if not (self.path / "ostree/deploy" / stateroot).is_dir():
            raise BootcError(f"Sysroot {self.path} has no stateroot {stateroot}")
        argv = None if kargs is None else list(kargs)
        keyfile = _origin_keyfile(origin)
        with self.lock(), libostree_errors(f"Deploying {checksum}"):
            merge = self._sysroot.get_merge_deployment(stateroot)
            if self.booted:
                _, new = self._sysroot.stage_tree(stateroot, checksum, keyfile, merge, argv, None)
                _start_finalization_service()
                self._reload()
                self.set_finalization(locked=lock_finalization)
                return self._find(new)
            _, new = self._sysroot.deploy_tree(stateroot, checksum, keyfile, merge, argv, None)
            previous = [d for d in self._deployments() if not d.is_staged()]
            if not retain_others:
                previous = [
                    d
                    for i, d in enumerate(previous)
                    if i == 0
                    or d.is_pinned()
                    or d.get_osname() != stateroot
                    or (merge is not None and d.equal(merge))
                ]
            self._write_deployments([new, *previous])
            return self._find(new)

    def staged(self) -> Any | None:
        return next((d for d in self._deployments() if d.is_staged()), None)

    def set_finalization(self, *, locked: bool) -> bool:
        """Hold the staged deployment back from finalization, or let it go; whether
        that changed anything. A staged deployment is required."""
        with self.lock():
            staged = self.staged()
            if staged is None:
                raise BootcError("No staged deployment found")
            if _finalization_locked(staged) == locked:
                return False
            if hasattr(self._sysroot, "change_finalization"):
                with libostree_errors("Changing finalization"):
                    self._sysroot.change_finalization(staged)
            elif locked:
                STAGED_LOCKED.parent.mkdir(parents=True, exist_ok=True)
                STAGED_LOCKED.touch()
            else:
                STAGED_LOCKED.unlink(missing_ok=True)
            self._reload()
            return True

    def prepare_soft_reboot(self, *, staged: bool, required: bool) -> bool:
        """Make the next `systemctl soft-reboot` enter the staged deployment, or the
        first in boot order (a rollback); whether it did. One that cannot be entered so
        (another kernel) is refused if `required`, else left to a full reboot, as upstream."""
        kind = "staged" if staged else "rollback"
        with self.lock():
            target = self.staged() if staged else self._deployments()[0]
            if target is None:
                raise BootcError("No staged deployment found")
            if not self._can_soft_reboot(target):
                if required:
                    raise BootcError(
                        f"Soft reboot was required but {kind} deployment is not soft-reboot capable"
                    )
                return False
            with libostree_errors("Preparing soft reboot"):
                self._sysroot.deployment_set_soft_reboot(target, False, None)
            return True

    def _unreachable_commits(self) -> list[str]:
        """The commit objects that no ref reaches."""
        _, refs = self.repo.list_refs(None, None)
        reachable = set(refs.values())
        _, commits = self.repo.list_commit_objects_starting_with("", None)
        checksums = (name.unpack()[0] for name in commits)
        return [checksum for checksum in checksums if checksum not in reachable]

    def rollback(self, check: Callable[[DeploymentInfo], None] = lambda target: None) -> bool:
        """Put the rollback deployment (`BootRoles`) first in boot order, or, when it is
        first already (a queued rollback), the running one back before it: upstream's
        order, those two then the rest. Whether that reverted a queued rollback.
        `check` may refuse the target before anything is written.

        A staged deployment is dropped: the rollback target is what boots next.
        """
        with self.lock(), libostree_errors("Rolling back"):
            found = self._deployments()
            roles = boot_roles([self._info(i, d) for i, d in enumerate(found)])
            if roles.running is None or roles.rollback is None:
                raise BootcError("No rollback available")
            check(roles.rollback)
            reverting = roles.rollback_queued
            first = [roles.running, roles.rollback]
            order = [*(first if reverting else reversed(first)), *roles.other]
            self._write_deployments([found[d.index] for d in order if not d.is_staged])
        return reverting

    def set_origin(self, index: int, origin: Origin) -> None:
        """Replace the origin of the deployment at `index` in boot order."""
        with self.lock(), libostree_errors("Writing origin"):
            deployments = self._deployments()
            if not 0 <= index < len(deployments):
                raise BootcError(f"No deployment at index {index}")
            if deployments[index].is_staged():
                raise BootcError("The origin of a staged deployment cannot be changed")
            self._sysroot.write_origin_file(deployments[index], _origin_keyfile(origin), None)
            self._reload()

    def remove_all_deployments(self) -> int:
        """Remove every deployment, as `bootc state wipe-ostree` does; how many went.
        libostree refuses to remove the booted one."""
        with self.lock(), libostree_errors("removing deployments"):
            count = len(self._deployments())
            self._write_deployments([])
            self._reload()
        return count

    def cleanup(self) -> CleanupResult:
        """Remove what no deployment uses: old deployment directories, boot entries and
        the repo objects that no ref reaches (every deployment holds a ref)."""
        with self.lock(), libostree_errors("Cleaning up"):
            # Not Sysroot.cleanup(): it prints "Freed objects" to stdout. And not
            # cleanup_prune_repo(): from Python its options cannot carry the `reachable`
            # set, and with that NULL it deletes every object in the repo.
            self._sysroot.prepare_cleanup(None)
            unreachable = self._unreachable_commits()
            # The marker says a prune was begun and not finished. The cleanup prunes
            # only when a commit has become unreachable, and deletes those commits
            # before the prune; so after a kill half-way, what is left unreachable
            # names no commit, and only the marker says so.
            pending = prune_marker(self.repo)
            if not unreachable and not pending.exists():
                # Objects become unreachable with their commits: a transaction lands
                # its objects and the ref to them together (a kill inside that can
                # orphan a few, which the next prune takes). So none are, and the
                # prune's walk of every tree in the repo (0.2 s at 800 MB) is skipped.
                return CleanupResult(objects_pruned=0, bytes_freed=0)
            pending.parent.mkdir(parents=True, exist_ok=True)
            pending.touch()
            # The commits go first: prune deletes objects in directory order, so a kill
            # half-way could leave a commit whose tree is gone, which `ostree fsck`
            # reports; this way a kill leaves only unreferenced trees and files, and
            # the marker, for the next cleanup to take.
            for checksum in unreachable:
                self.repo.delete_object(OSTree.ObjectType.COMMIT, checksum, None)
            _, _, pruned, freed = self.repo.prune(OSTree.RepoPruneFlags.REFS_ONLY, 0, None)
            pending.unlink()
        return CleanupResult(objects_pruned=int(pruned) + len(unreachable), bytes_freed=int(freed))


def _running(deployments: Sequence[DeploymentInfo]) -> DeploymentInfo | None:
    booted = next((d for d in deployments if d.is_booted), None)
    return booted or (deployments[0] if deployments else None)


@dataclass(frozen=True)
class BootRoles:
    """The deployments in the roles upstream's status gives them. `running` is the
    booted one (on a sysroot nothing boots from, the first in boot order); `staged`
    and `rollback` are of its stateroot: the staged one, and the first of the rest in
    boot order. `other` is the rest of its stateroot, then the other stateroots'."""

    running: DeploymentInfo | None
    staged: DeploymentInfo | None
    rollback: DeploymentInfo | None
    other: tuple[DeploymentInfo, ...]

    @property
    def rollback_queued(self) -> bool:
        """Whether the rollback boots before the booted deployment (bootOrder
        `rollback`)."""
        return (
            self.running is not None
            and self.running.is_booted
            and self.rollback is not None
            and self.rollback.index < self.running.index
        )


def boot_roles(deployments: Sequence[DeploymentInfo]) -> BootRoles:
    running = _running(deployments)
    if running is None:
        return BootRoles(None, None, None, ())
    related = [d for d in deployments if d.stateroot == running.stateroot and d != running]
    staged = next((d for d in related if d.is_staged), None)
    rest = [d for d in related if d != staged]
    foreign = [d for d in deployments if d.stateroot != running.stateroot]
    return BootRoles(running, staged, rest[0] if rest else None, (*rest[1:], *foreign))


def current_deployment(sysroot: Sysroot) -> DeploymentInfo | None:
    """The running deployment: the booted one, else the first in boot order."""
    return _running(sysroot.deployments())


def followed_deployment(sysroot: Sysroot) -> DeploymentInfo | None:
    """The deployment whose image the host follows, upstream's `spec.image`: the staged
    one (what the next boot runs), else the running one. A switch or an upgrade
    compares with it, so a staged switch is neither forgotten nor undone."""
    roles = boot_roles(sysroot.deployments())
    return roles.staged or roles.running
