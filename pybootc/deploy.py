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

from pybootc import bootc_storage, tools
from pybootc.backends import Backend
from pybootc.backends import container as container_backend
from pybootc.backends import ostree as ostree_backend
from pybootc.deployment_image import (
    OriginImage,
    commit_image,
    commit_layer_digests,
    origin_image,
)
from pybootc.errors import BootcError, error_context
from pybootc.image_metadata import ImageMetadata, fetch_image_metadata
from pybootc.imgref import OstreeImageReference, SignatureKind
from pybootc.kargs import (
    KARGS_D,
    checked,
    extended,
    host_architecture,
    image_kargs,
    with_image_change,
)
from pybootc.ostree_commit import (
    libostree_errors,
    list_refs,
    read_directory,
    set_detached_metadata,
    set_ref,
)
from pybootc.ostree_ext_format import (
    CONTAINER_REF_PREFIX,
    IMAGE_REF_PREFIX,
    cached_update_metadata,
    image_ref,
)
from pybootc.ostree_gi import GLib
from pybootc.progress import NO_PROGRESS, Progress
from pybootc.registry_auth import RegistryAuth
from pybootc.sigpolicy import require_enforcing_policy
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


def deployed_digests(sysroot: Sysroot) -> set[str]:
    """Manifest digests of the images the deployments came from: GC's roots."""
    digests = set()
    for deployment in sysroot.deployments():
        image = commit_image(sysroot.repo, deployment.checksum)
        if image is not None:
            digests.add(image.manifest_digest)
    return digests


def collect_garbage(sysroot: Sysroot) -> list[str]:
    """Remove the images in bootc's storage that no deployment uses, and the layer
    commits of the ostree backend that no deployment or image ref needs."""
    repo = sysroot.repo
    commits = {d.checksum for d in sysroot.deployments()}
    commits |= set(list_refs(repo, IMAGE_REF_PREFIX).values())
    layers = set().union(*(commit_layer_digests(repo, commit) for commit in commits))
    ostree_backend.prune_layer_refs(repo, layers)
    return bootc_storage.remove_unused(
        bootc_storage.bootc_storage(sysroot.path), deployed_digests(sysroot)
    )


def registry_auth(sysroot: Sysroot | None, current: DeploymentInfo | None) -> RegistryAuth:
    """The host's registry credentials: those under a booted host's `/` (or an
    installer's), else under the root of the deployment whose system is updated."""
    if sysroot is None or sysroot.booted or current is None:
        return RegistryAuth.find(Path("/"))
    return RegistryAuth.find(current.deployment_path)


def _fetch_metadata(imgref: OstreeImageReference, auth: RegistryAuth) -> ImageMetadata:
    """Manifest and config, judged by the signature policy. An `ostree-image-signed:`
    image also needs a policy that does not accept anything by default: ostree-ext
    refuses it otherwise, upgrades and checks included."""
    if imgref.sigverify.kind is SignatureKind.CONTAINER_POLICY:
        require_enforcing_policy()
    return fetch_image_metadata(imgref.imgref, auth=auth)


def _prepare(target: OriginImage, auth: RegistryAuth) -> ImageMetadata:
    """Manifest and config, checked: signatures, architecture, and a way to decrypt
    encrypted layers. A key the store cannot use is refused before any of it."""
    key = target.decryption_key
    if key is not None and target.backend is Backend.OSTREE:
        raise BootcError(
            f"Decryption key {key}: the ostree backend cannot decrypt images;"
            " use --backend container"
        )
    if key is not None and not key.is_file():
        raise BootcError(f"Decryption key {key}: no such file")
    metadata = _fetch_metadata(target.imgref, auth)
    encrypted = any(layer.layer_format.encrypted for layer in metadata.manifest.layers)
    if encrypted and target.backend is Backend.OSTREE:
        raise BootcError(
            f"{target.imgref}: the image is encrypted, which the ostree backend cannot"
            " decrypt; use --backend container"
        )
    if encrypted and target.decryption_key is None:
        raise BootcError(f"{target.imgref}: the image is encrypted; use --decryption-key")
    return metadata


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


def _import(
    sysroot: Sysroot,
    target: OriginImage,
    source: ImageMetadata,
    *,
    auth: RegistryAuth,
    disable_selinux: bool = False,
    progress: Progress,
) -> tuple[str, ImageMetadata]:
    """Commit the image with the target's backend: the commit and the metadata it records."""
    if target.backend is Backend.OSTREE:
        commit, _ = ostree_backend.import_image(
            sysroot.path,
            sysroot.repo,
            target.imgref,
            source=source,
            auth=auth,
            disable_selinux=disable_selinux,
            progress=progress,
        )
        return commit, source
    if target.decryption_key is not None and not target.decryption_key.is_file():
        raise BootcError(f"Decryption key {target.decryption_key} does not exist")
    imported = container_backend.import_image(
        sysroot.path,
        sysroot.repo,
        target.imgref,
        source=source,
        decryption_key=target.decryption_key,
        auth=auth,
        disable_selinux=disable_selinux,
        progress=progress,
    )
    return imported.commit, imported.metadata


def _check_disk_space(sysroot: Sysroot, target: OriginImage, source: ImageMetadata) -> None:
    """Refuse an image whose missing layers do not fit, before fetching any, as
    upstream does: their compressed size against the repo's free space less the
    space libostree keeps free (min-free-space)."""
    if target.backend is Backend.OSTREE:
        missing = ostree_backend.missing_layers(sysroot.repo, source)
    else:
        missing = container_backend.missing_layers(sysroot.path, source)
    required = sum(layer.size for layer in missing)
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
    """Cleanup once the new deployment is written: GC, pruning, an old image's ref.

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
    target: OriginImage,
    source: ImageMetadata,
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
    """Fetch and deploy `target`; the origin records `follow` (default: `target`),
    the image later upgrades fetch."""
    progress.for_image(str(target.imgref))
    _check_disk_space(sysroot, target, source)
    with _undo_on_failure(sysroot):
        commit, recorded = _import(
            sysroot, target, source, auth=auth, disable_selinux=disable_selinux, progress=progress
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
        metadata = _prepare(origin, auth)
        if current is not None and current_image == origin and _runs(sysroot, current, metadata):
            return Report(("Image specification is unchanged.",), changed=False)
        stateroot = current.stateroot if current else DEFAULT_STATEROOT
        drop = not retain and current_image is not None and current_image.imgref != target
        pulled = _deploy(
            sysroot,
            origin,
            metadata,
            stateroot=stateroot,
            auth=auth,
            drop_ref=image_ref(current_image.imgref) if drop and current_image else None,
            progress=progress,
        )
    return _queued(target, pulled)


def _runs(sysroot: Sysroot, deployment: DeploymentInfo, metadata: ImageMetadata) -> bool:
    """Whether `deployment` was made from exactly this image (its manifest digest): the
    one test of "already deployed"."""
    deployed = commit_image(sysroot.repo, deployment.checksum)
    return deployed is not None and deployed.manifest_digest == metadata.manifest_digest


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
        metadata = _prepare(image, auth)
        staged = next((d for d in sysroot.deployments() if d.is_staged), None)
        if staged is not None and _runs(sysroot, staged, metadata):
            if sysroot.set_finalization(locked=download_only):
                line = (
                    "Image downloaded, but will not be applied on reboot"
                    if download_only
                    else "Staged deployment will now be applied on reboot"
                )
                return Report((line,))
            return Report(("Staged update present, not changed",))
        if _runs(sysroot, current, metadata):
            return Report(("No update available.",), changed=False)
        pulled = _deploy(
            sysroot,
            image,
            metadata,
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
    """`upgrade --check`: manifest and config only, kept as the cached update."""
    sysroot = Sysroot.open(sysroot_path)
    with sysroot.lock():
        current, image = _follow(sysroot)
        metadata = _fetch_metadata(image.imgref, registry_auth(sysroot, current))
        unchanged = _runs(sysroot, current, metadata)
        set_detached_metadata(
            sysroot.repo,
            current.checksum,
            cached_update_metadata(metadata),
        )
    size = sum(layer.size for layer in metadata.manifest.layers)
    summary: dict[str, object] = {
        "image": str(image.imgref),
        "updateAvailable": not unchanged,
        "digest": metadata.manifest_digest,
        "version": metadata.config.version,
        "layers": len(metadata.manifest.layers),
        "size": size,
    }
    if unchanged:
        return Report((f"No changes in: {image.imgref}",)), summary
    lines = [f"Update available for: {image.imgref}"]
    if metadata.config.version:
        lines.append(f"  Version: {metadata.config.version}")
    lines.append(f"  Digest: {metadata.manifest_digest}")
    lines.append(f"Total new layers: {len(metadata.manifest.layers)}  Size: {_human_size(size)}")
    return Report(tuple(lines)), summary


def _human_size(size: int) -> str:
    if size < 1000:
        return f"{size} B"
    value = size / 1000
    for unit in ("kB", "MB"):
        if value < 1000:
            return f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} GB"


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
    storage = bootc_storage.bootc_storage(path)
    if storage.root.exists():
        storage.reset(check=False)
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
    metadata = _prepare(origin, auth)
    try:
        with error_context(f"Installing to {path}"):
            (path / INSTALL_INCOMPLETE).touch()
            initialize(path, stateroot)
            sysroot = Sysroot.open(path)
            with sysroot.lock():
                pulled = _deploy(
                    sysroot,
                    origin,
                    metadata,
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
