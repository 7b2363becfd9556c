"""switch, upgrade, rollback and install: from an image reference to a deployment.

Every verb fetches manifest and config first (architecture, digest, "is there
anything new?") and only then pulls. A failure after the pull puts back what it
changed, so bad input leaves the sysroot, its refs and bootc's storage as they were.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pybootc import tools
from pybootc.deployment_image import OriginImage, commit_layers, origin_image
from pybootc.errors import BootcError, error_context
from pybootc.image_metadata import ImageMetadata
from pybootc.imgref import OstreeImageReference
from pybootc.kargs import (
    KARGS_D,
    checked,
    extended,
    host_architecture,
    image_kargs,
    with_image_change,
)
from pybootc.oci.model import Descriptor
from pybootc.ostree_commit import (
    libostree_errors,
    list_refs,
    read_directory,
    set_detached_metadata,
    set_ref,
)
from pybootc.ostree_ext_format import CONTAINER_REF_PREFIX, cached_update_metadata, image_ref
from pybootc.ostree_gi import GLib
from pybootc.progress import NO_PROGRESS, Progress
from pybootc.registry_auth import RegistryAuth
from pybootc.stores import Backend
from pybootc.stores.pipeline import Prepared, collect_garbage, import_image, prepare, runs
from pybootc.stores.protocol import ImageStore, layer_summary
from pybootc.stores.registry import all_stores, store_for
from pybootc.sysroot import DeploymentInfo, Sysroot, initialize, unlock_deployment_roots

DEFAULT_STATEROOT = "default"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Report:
    """What a verb has to say: lines for stdout, and whether it changed what boots next
    (`--apply` reboots only then)."""

    lines: tuple[str, ...]
    changed: bool = True


def _queued(imgref: OstreeImageReference, metadata: ImageMetadata) -> Report:
    lines = [f"Queued for next boot: {imgref}"]
    if metadata.config.version:
        lines.append(f"  Version: {metadata.config.version}")
    lines.append(f"  Digest: {metadata.manifest_digest}")
    return Report(tuple(lines))


def current_deployment(sysroot: Sysroot) -> DeploymentInfo | None:
    """The deployment an upgrade follows: the booted one, else the first in boot order."""
    deployments = sysroot.deployments()
    for deployment in deployments:
        if deployment.is_booted:
            return deployment
    return deployments[0] if deployments else None


def registry_auth(sysroot: Sysroot | None, current: DeploymentInfo | None) -> RegistryAuth:
    """The host's registry credentials: those under a booted host's `/` (or an
    installer's), else under the root of the deployment whose system is updated."""
    if sysroot is None or sysroot.booted or current is None:
        return RegistryAuth.find(Path("/"))
    return RegistryAuth.find(current.deployment_path)


def _store(sysroot: Sysroot | None, path: Path, target: OriginImage) -> ImageStore:
    return store_for(target.backend, path, sysroot.repo if sysroot is not None else None)


def _prepare(
    sysroot: Sysroot | None,
    path: Path,
    target: OriginImage,
    auth: RegistryAuth,
    current: DeploymentInfo | None,
) -> Prepared:
    """Manifest and config, checked (signatures, architecture, what the store can do),
    and the layers the store has, against `current`."""
    return prepare(
        _store(sysroot, path, target),
        target,
        auth,
        repo=sysroot.repo if sysroot is not None else None,
        current=current,
    )


@contextmanager
def _undo_on_failure(sysroot: Sysroot) -> Iterator[None]:
    """Put refs and bootc's storage back as they were if the body fails."""
    refs_before = list_refs(sysroot.repo, CONTAINER_REF_PREFIX)
    try:
        yield
    except BaseException:
        for ref, checksum in list_refs(sysroot.repo, CONTAINER_REF_PREFIX).items():
            if refs_before.get(ref) != checksum:
                set_ref(sysroot.repo, ref, refs_before.get(ref))
        collect_garbage(sysroot)
        sysroot.cleanup()
        raise


def _check_disk_space(sysroot: Sysroot, prepared: Prepared) -> None:
    """Refuse an image whose missing layers do not fit, before fetching any, as
    upstream does: their compressed size against the repo's free space less the
    space libostree keeps free (min-free-space)."""
    target = prepared.target
    required = prepared.bytes_to_fetch
    fs = os.statvfs(sysroot.path / "ostree/repo")
    with libostree_errors("Reading the repo's min-free-space"):
        _, reserved = sysroot.repo.get_min_free_space_bytes()
    usable = max(0, fs.f_bavail * fs.f_frsize - reserved)
    if required > usable:
        raise BootcError(
            f"Insufficient free space for {target.imgref.imgref.name}"
            f" (available: {GLib.format_size(usable)} required: {GLib.format_size(required)})"
        )


def _tidy_up(sysroot: Sysroot, *, drop_ref: str | None = None) -> None:
    """Cleanup once the new deployment is written, or when there was nothing to
    deploy: GC, pruning, an old image's ref. So what a command killed half-way through
    its cleanup left (a half-deleted image in bootc's storage, whose layer podman
    marks incomplete) goes with the retry, even when the retry finds nothing new.

    The verb has succeeded by then, and the deployment boots whatever happens here,
    so a failure is a warning, never an error that would say otherwise.
    """
    try:
        with error_context("Cleaning up after the deployment"):
            if drop_ref is not None:
                set_ref(sysroot.repo, drop_ref, None)
            collect_garbage(sysroot)
            sysroot.cleanup()
    except BootcError as err:
        log.warning("%s", err)


@dataclass(frozen=True)
class InstallKargs:
    """The kernel arguments an install starts from, both checked already."""

    root: tuple[str, ...]
    cli: tuple[str, ...]


def _image_kargs(sysroot: Sysroot, commit: str) -> list[str] | None:
    return image_kargs(read_directory(sysroot.repo, commit, KARGS_D), host_architecture())


def _kargs_for(
    sysroot: Sysroot, commit: str, stateroot: str, install: InstallKargs | None
) -> list[str]:
    """The new deployment's kernel arguments, as upstream computes them: an install's
    root kargs, the image's kargs.d, then --karg; otherwise the merge deployment's,
    moved from its image's kargs.d to the new image's."""
    image = _image_kargs(sysroot, commit)
    if install is not None:
        return extended(extended(install.root, image or ()), install.cli)
    merge = sysroot.merge_deployment(stateroot)
    if merge is None:
        return image or []
    return with_image_change(merge.kargs, _image_kargs(sysroot, merge.checksum) or [], image)


def _deploy(
    sysroot: Sysroot,
    prepared: Prepared,
    *,
    stateroot: str,
    auth: RegistryAuth,
    install: InstallKargs | None = None,
    disable_selinux: bool = False,
    drop_ref: str | None = None,
    lock_finalization: bool = False,
    follow: OriginImage | None = None,
    progress: Progress = NO_PROGRESS,
) -> ImageMetadata:
    """Fetch and deploy the prepared image; the origin records `follow` (default: the
    image itself), the image later upgrades fetch."""
    target = prepared.target
    progress.for_image(str(target.imgref))
    _check_disk_space(sysroot, prepared)
    with _undo_on_failure(sysroot):
        commit, recorded = import_image(
            _store(sysroot, sysroot.path, target),
            sysroot,
            prepared,
            auth=auth,
            disable_selinux=disable_selinux,
            progress=progress,
        )
        new_kargs = _kargs_for(sysroot, commit, stateroot, install)
        with progress.step("deploying"):
            sysroot.deploy(
                commit,
                stateroot=stateroot,
                origin=(follow or target).to_origin(),
                kargs=new_kargs,
                # As `ostree admin deploy` does: the new deployment, the previous
                # default as rollback, and pinned ones; older ones go.
                retain_others=False,
                lock_finalization=lock_finalization,
            )
    _tidy_up(sysroot, drop_ref=drop_ref)
    return recorded


def switch(
    sysroot_path: Path,
    target: OstreeImageReference,
    *,
    backend: Backend | None = None,
    retain: bool = False,
    decryption_key: Path | None = None,
    progress: Progress = NO_PROGRESS,
) -> Report:
    sysroot = Sysroot.open(sysroot_path)
    with sysroot.lock():
        current = current_deployment(sysroot)
        current_image = origin_image(current) if current else None
        chosen = backend or (current_image.backend if current_image else Backend.OSTREE)
        origin = OriginImage(target, chosen, decryption_key.absolute() if decryption_key else None)
        auth = registry_auth(sysroot, current)
        prepared = _prepare(sysroot, sysroot.path, origin, auth, current)
        if current_image == origin and prepared.deployed:
            _tidy_up(sysroot)
            return Report(("Image specification is unchanged.",), changed=False)
        stateroot = current.stateroot if current else DEFAULT_STATEROOT
        drop = not retain and current_image is not None and current_image.imgref != target
        pulled = _deploy(
            sysroot,
            prepared,
            stateroot=stateroot,
            auth=auth,
            drop_ref=image_ref(current_image.imgref) if drop and current_image else None,
            progress=progress,
        )
    return _queued(target, pulled)


def _follow(sysroot: Sysroot) -> tuple[DeploymentInfo, OriginImage]:
    current = current_deployment(sysroot)
    image = origin_image(current) if current else None
    if current is None or image is None:
        raise BootcError("No image to upgrade: the system is not deployed via bootc")
    return current, image


def upgrade(
    sysroot_path: Path, *, download_only: bool = False, progress: Progress = NO_PROGRESS
) -> Report:
    """Deploy the newest version of the image the host follows.

    `download_only` stages it held back from finalization, so a reboot does not apply
    it until `upgrade --from-downloaded`; an update already staged is only re-locked
    or released, as upstream does.
    """
    sysroot = Sysroot.open(sysroot_path)
    with sysroot.lock():
        current, image = _follow(sysroot)
        auth = registry_auth(sysroot, current)
        prepared = _prepare(sysroot, sysroot.path, image, auth, current)
        staged = next((d for d in sysroot.deployments() if d.is_staged), None)
        if staged is not None and runs(sysroot.repo, staged, prepared.metadata):
            if sysroot.set_finalization(locked=download_only):
                line = (
                    "Image downloaded, but will not be applied on reboot"
                    if download_only
                    else "Staged deployment will now be applied on reboot"
                )
                return Report((line,))
            return Report(("Staged update present, not changed",))
        if prepared.deployed:
            _tidy_up(sysroot)
            return Report(("No update available.",), changed=False)
        pulled = _deploy(
            sysroot,
            prepared,
            stateroot=current.stateroot,
            auth=auth,
            lock_finalization=download_only,
            progress=progress,
        )
    return _queued(image.imgref, pulled)


def apply_downloaded(sysroot_path: Path) -> Report:
    """`upgrade --from-downloaded`: let a download-only deployment be finalized."""
    sysroot = Sysroot.open(sysroot_path)
    if sysroot.set_finalization(locked=False):
        return Report(("Staged deployment will now be applied on reboot",))
    return Report(("Staged deployment is already set to apply on reboot",))


def check_for_update(sysroot_path: Path) -> tuple[Report, dict[str, object]]:
    """`upgrade --check`: manifest and config only, kept as the cached update, and what
    an upgrade would fetch: upstream's layer diff against the deployed manifest, then
    the layers the store has already and those it needs."""
    sysroot = Sysroot.open(sysroot_path)
    with sysroot.lock():
        current, image = _follow(sysroot)
        prepared = _prepare(sysroot, sysroot.path, image, registry_auth(sysroot, current), current)
        metadata = prepared.metadata
        set_detached_metadata(sysroot.repo, current.checksum, cached_update_metadata(metadata))
        deployed = commit_layers(sysroot.repo, current.checksum)
    diff = ManifestDiff.between(deployed, metadata.manifest.layers)
    present, needed, needed_size = layer_summary(prepared.layers)
    summary: dict[str, object] = {
        "image": str(image.imgref),
        "updateAvailable": not prepared.deployed,
        "digest": metadata.manifest_digest,
        "version": metadata.config.version,
        "layers": diff.total,
        "size": diff.total_size,
        "removedLayers": diff.removed,
        "removedSize": diff.removed_size,
        "addedLayers": diff.added,
        "addedSize": diff.added_size,
        "layersPresent": present,
        "layersNeeded": needed,
        "bytesNeeded": needed_size,
    }
    if prepared.deployed:
        return Report((f"No changes in: {image.imgref}",)), summary
    lines = [f"Update available for: {image.imgref}"]
    if metadata.config.version:
        lines.append(f"  Version: {metadata.config.version}")
    lines.append(f"  Digest: {metadata.manifest_digest}")
    lines += diff.lines()
    lines.append(prepared.layers_line())
    return Report(tuple(lines)), summary


@dataclass(frozen=True)
class ManifestDiff:
    """Upstream's ManifestDiff: the new image's layers, and those removed and added
    against the deployed one's."""

    total: int
    total_size: int
    removed: int
    removed_size: int
    added: int
    added_size: int

    @classmethod
    def between(cls, old: Sequence[Descriptor], new: Sequence[Descriptor]) -> ManifestDiff:
        old_digests = {d.digest for d in old}
        new_digests = {d.digest for d in new}
        removed = [d for d in old if d.digest not in new_digests]
        added = [d for d in new if d.digest not in old_digests]
        return cls(
            len(new),
            sum(d.size for d in new),
            len(removed),
            sum(d.size for d in removed),
            len(added),
            sum(d.size for d in added),
        )

    def lines(self) -> list[str]:
        size = GLib.format_size
        return [
            f"Total new layers: {self.total:<4}  Size: {size(self.total_size)}",
            f"Removed layers:   {self.removed:<4}  Size: {size(self.removed_size)}",
            f"Added layers:     {self.added:<4}  Size: {size(self.added_size)}",
        ]


def rollback(sysroot_path: Path) -> Report:
    sysroot = Sysroot.open(sysroot_path)
    sysroot.rollback()
    return Report(("Next boot: rollback deployment",))


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
    stateroot: str = DEFAULT_STATEROOT,
    kargs: Sequence[str] = (),
    root_kargs: Sequence[str] = (),
    disable_selinux: bool = False,
    decryption_key: Path | None = None,
    progress: Progress = NO_PROGRESS,
) -> Report:
    """Install the image into the empty filesystem at `path`. `root_kargs` say how to
    find the root (install to-disk's `root=UUID=`); `kargs` are --karg's."""
    install = InstallKargs(
        tuple(checked("the root filesystem", root_kargs)), tuple(checked("--karg", kargs))
    )
    _check_empty_target(path)
    origin = OriginImage(source, backend, decryption_key.absolute() if decryption_key else None)
    # The installer's own credentials, as upstream's install uses.
    auth = registry_auth(None, None)
    # Refuse a missing image or another architecture before anything is written.
    prepared = _prepare(None, path, origin, auth, None)
    try:
        with error_context(f"Installing to {path}"):
            (path / INSTALL_INCOMPLETE).touch()
            initialize(path, stateroot)
            sysroot = Sysroot.open(path)
            with sysroot.lock():
                pulled = _deploy(
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
    return _queued(target_imgref or source, pulled)
