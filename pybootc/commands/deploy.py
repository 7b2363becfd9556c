"""From a prepared image to a deployment: what install, switch and upgrade share.

Every verb fetches manifest and config first (architecture, digest, "is there
anything new?") and only then pulls. A failure after the pull puts back what it
changed, so bad input leaves the sysroot, its refs and bootc's storage as they were.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pybootc.errors import BootcError, error_context
from pybootc.oci.auth import RegistryAuth
from pybootc.oci.imgref import OstreeImageReference
from pybootc.oci.metadata import ImageMetadata
from pybootc.ostree.ext_format import CONTAINER_REF_PREFIX
from pybootc.ostree.gi import GLib
from pybootc.ostree.kargs import (
    KARGS_D,
    extended,
    host_architecture,
    image_kargs,
    with_image_change,
)
from pybootc.ostree.merged_image import MERGED_REF_PREFIX
from pybootc.ostree.origin import OriginImage, has_rpm_ostree_changes, origin_image
from pybootc.ostree.repo import libostree_errors, list_refs, read_directory, set_ref
from pybootc.ostree.sysroot import DeploymentInfo, Sysroot, followed_deployment
from pybootc.progress import NO_PROGRESS, Progress
from pybootc.stores.pipeline import Prepared, collect_garbage, import_image, prepare
from pybootc.stores.protocol import ImageStore
from pybootc.stores.registry import store_for

DEFAULT_STATEROOT = "default"

log = logging.getLogger(__name__)


def registry_auth(sysroot: Sysroot | None, current: DeploymentInfo | None) -> RegistryAuth:
    """The host's registry credentials: those under a booted host's `/` (or an
    installer's), else under the root of the deployment whose system is updated."""
    if sysroot is None or sysroot.booted or current is None:
        return RegistryAuth.find(Path("/"))
    return RegistryAuth.find(current.deployment_path)


def store_of(where: Sysroot | Path, target: OriginImage) -> ImageStore:
    """`target`'s store in the sysroot, or at the path an install is about to make one."""
    if isinstance(where, Path):
        return store_for(target.backend, where, None)
    return store_for(target.backend, where.path, where.repo)


def prepare_target(
    where: Sysroot | Path,
    target: OriginImage,
    auth: RegistryAuth,
    current: DeploymentInfo | None,
) -> Prepared:
    """Manifest and config, checked (signatures, architecture, what the store can do),
    and the layers the store has, against `current`; `where` is the sysroot, or the
    empty path an install is about to make one in."""
    repo = None if isinstance(where, Path) else where.repo
    return prepare(store_of(where, target), target, auth, repo=repo, current=current)


def _import_refs(sysroot: Sysroot) -> dict[str, str]:
    """The refs an import sets: images, layers, and the merges kept of them."""
    return list_refs(sysroot.repo, CONTAINER_REF_PREFIX) | list_refs(
        sysroot.repo, MERGED_REF_PREFIX
    )


@contextmanager
def _undo_on_failure(sysroot: Sysroot) -> Iterator[None]:
    """Put refs and bootc's storage back as they were if the body fails."""
    refs_before = _import_refs(sysroot)
    try:
        yield
    except BaseException:
        for ref, checksum in _import_refs(sysroot).items():
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


def tidy_up(
    sysroot: Sysroot, *, drop_ref: str | None = None, progress: Progress = NO_PROGRESS
) -> None:
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
                # As upstream's switch drops the ref it leaves: not counted as pruned.
                set_ref(sysroot.repo, drop_ref, None)
            pruned = collect_garbage(sysroot)
            progress.pruned(pruned, sysroot.cleanup().bytes_freed)
    except BootcError as err:
        log.warning("%s", err)


@dataclass(frozen=True)
class InstallKargs:
    """The kernel arguments an install starts from, both checked already."""

    root: tuple[str, ...]
    cli: tuple[str, ...]
    # The install configuration's `karg-deletes`: parameters dropped from the result.
    deletes: tuple[str, ...] = ()


def _image_kargs(sysroot: Sysroot, commit: str) -> list[str] | None:
    return image_kargs(read_directory(sysroot.repo, commit, KARGS_D), host_architecture())


def _kargs_for(
    sysroot: Sysroot, commit: str, stateroot: str, install: InstallKargs | None
) -> list[str]:
    """The new deployment's kernel arguments, as upstream computes them: an install's
    root kargs (the install configuration's among them), the image's kargs.d, then
    --karg, less the configuration's `karg-deletes`; otherwise the merge deployment's,
    moved from its image's kargs.d to the new image's."""
    image = _image_kargs(sysroot, commit)
    if install is not None:
        kargs = extended(extended(install.root, image or ()), install.cli)
        return [karg for karg in kargs if karg not in install.deletes]
    merge = sysroot.merge_deployment(stateroot)
    if merge is None:
        return image or []
    return with_image_change(merge.kargs, _image_kargs(sysroot, merge.checksum) or [], image)


def deploy_prepared(
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
            store_of(sysroot, target),
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
    tidy_up(sysroot, drop_ref=drop_ref, progress=progress)
    return recorded


def followed(sysroot: Sysroot, tag: str | None = None) -> tuple[DeploymentInfo, OriginImage]:
    """The deployment the host follows (the staged one, else the running one) and its
    image; with `tag`, that image under another tag (`upgrade --tag`), which the new
    deployment's origin then records."""
    current = followed_deployment(sysroot)
    if current is not None and has_rpm_ostree_changes(current):
        # As upstream: an upgrade of the image would drop those changes.
        raise BootcError(
            "Deployment contains local rpm-ostree modifications; cannot upgrade via bootc."
            " You can run `rpm-ostree reset` to undo the modifications."
        )
    image = origin_image(current) if current else None
    if current is None or image is None:
        raise BootcError("No image source specified")
    if tag is not None:
        retagged = OstreeImageReference(image.imgref.sigverify, image.imgref.imgref.with_tag(tag))
        image = dataclasses.replace(image, imgref=retagged)
    return current, image
