"""Builds the Host document (`bootc status`) from a sysroot's deployments.

The roles are upstream's (`sysroot.BootRoles`): `rollback` is the next deployment
of the running one's stateroot. On a sysroot that is not the running system nothing
is booted: the deployment that boots next is `staged`.
"""

from __future__ import annotations

import logging

from pybootc.errors import BootcError
from pybootc.host.fields import normalize_timestamp
from pybootc.host.model import (
    STORE_OSTREE_CONTAINER,
    BootEntry,
    BootEntryOstree,
    BootOrder,
    FilesystemOverlay,
    Host,
    HostSpec,
    HostStatus,
    HostType,
    ImageReference,
    ImageSignature,
    ImageStatus,
)
from pybootc.host.model import FilesystemOverlayAccessMode as Access
from pybootc.host.model import FilesystemOverlayPersistence as Persistence
from pybootc.host.model import SignatureKind as SpecSignatureKind
from pybootc.oci.imgref import ImageReference as ImgRef
from pybootc.oci.imgref import OstreeImageReference, SignatureKind, SignatureSource
from pybootc.ostree.gi import OSTree
from pybootc.ostree.origin import (
    CommitImage,
    cached_update,
    commit_image,
    has_rpm_ostree_changes,
    origin_image,
)
from pybootc.ostree.sysroot import DeploymentInfo, Sysroot, boot_roles

log = logging.getLogger(__name__)


def spec_reference(imgref: OstreeImageReference) -> ImageReference:
    """bootc's ImageReference for an image reference: transport, name and signature."""
    kind = imgref.sigverify.kind
    if kind is SignatureKind.OSTREE_REMOTE:
        signature = ImageSignature.ostree_remote(imgref.sigverify.remote or "")
    elif kind is SignatureKind.CONTAINER_POLICY:
        signature = ImageSignature.container_policy()
    else:
        # As upstream: an image pulled without verification names no signature.
        signature = None
    return ImageReference(
        image=imgref.imgref.name, transport=imgref.imgref.transport.value, signature=signature
    )


def ostree_reference(reference: ImageReference) -> OstreeImageReference:
    """The image reference a spec's ImageReference stands for (spec_reference's inverse)."""
    imgref = ImgRef.from_name_and_transport(reference.image, reference.transport)
    signature = reference.signature
    if signature is None or signature.kind is SpecSignatureKind.INSECURE:
        sigverify = SignatureSource.insecure()
    elif signature.kind is SpecSignatureKind.CONTAINER_POLICY:
        sigverify = SignatureSource.container_policy()
    else:
        sigverify = SignatureSource.ostree_remote(signature.remote or "")
    return OstreeImageReference(sigverify, imgref)


def _timestamp(created: str | None) -> str | None:
    """The image's creation time as bootc writes it; none, with a warning, for text that
    is no RFC 3339 date-time (a label is the image author's to get wrong)."""
    if created is None:
        return None
    try:
        return normalize_timestamp(created)
    except BootcError as err:
        log.warning("Invalid timestamp in image: %s", err)
        return None


def _image_status(reference: ImageReference, image: CommitImage) -> ImageStatus:
    return ImageStatus(
        image=reference,
        image_digest=image.manifest_digest,
        architecture=image.architecture,
        version=image.version,
        timestamp=_timestamp(image.created),
    )


def boot_entry(repo: OSTree.Repo, deployment: DeploymentInfo) -> BootEntry:
    incompatible = has_rpm_ostree_changes(deployment)
    origin = None if incompatible else origin_image(deployment)
    image = cached = None
    store = STORE_OSTREE_CONTAINER
    if origin is not None:
        reference = spec_reference(origin.imgref)
        committed = commit_image(repo, deployment.checksum)
        if committed is not None:
            image = _image_status(reference, committed)
            update = cached_update(repo, deployment.checksum)
            # Kept even with the same digest, as upstream; the human form leaves it out.
            cached = None if update is None else _image_status(reference, update)
        store = origin.backend.store
    return BootEntry(
        image=image,
        cached_update=cached,
        incompatible=incompatible,
        pinned=deployment.pinned,
        download_only=deployment.finalization_locked,
        soft_reboot_capable=deployment.soft_reboot_capable,
        store=store,
        ostree=BootEntryOstree(
            stateroot=deployment.stateroot,
            checksum=deployment.checksum,
            deploy_serial=deployment.deploy_serial,
        ),
    )


# `ostree admin unlock` states as bootc reports them.
_USR_OVERLAYS = {
    "development": FilesystemOverlay(Access.READ_WRITE, Persistence.TRANSIENT),
    "hotfix": FilesystemOverlay(Access.READ_WRITE, Persistence.PERSISTENT),
    "transient": FilesystemOverlay(Access.READ_ONLY, Persistence.TRANSIENT),
}


def build_host(sysroot: Sysroot) -> Host:
    deployments = sysroot.deployments()
    roles = boot_roles(deployments)
    if roles.running is None:
        return Host.empty()
    entries = [boot_entry(sysroot.repo, d) for d in deployments]

    def entry(d: DeploymentInfo | None) -> BootEntry | None:
        return None if d is None else entries[d.index]

    running = entries[roles.running.index]
    if roles.running.is_booted:
        booted, staged = running, entry(roles.staged)
    else:
        # Nothing runs from this sysroot: what boots next is queued, i.e. staged.
        booted, staged = None, running
    spec_entry = staged or booted
    image = spec_entry.image.image if spec_entry and spec_entry.image else None
    return Host(
        spec=HostSpec(
            image=image,
            boot_order=BootOrder.ROLLBACK if roles.rollback_queued else BootOrder.DEFAULT,
        ),
        status=HostStatus(
            staged=staged,
            booted=booted,
            rollback=entry(roles.rollback),
            other_deployments=tuple(entries[d.index] for d in roles.other),
            rollback_queued=roles.rollback_queued,
            usr_overlay=_USR_OVERLAYS.get(roles.running.unlocked) if booted else None,
            # As upstream: whether the running deployment is an image.
            type=HostType.BOOTC_HOST if running.image else None,
        ),
    )
