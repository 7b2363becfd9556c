"""switch, upgrade (and --from-downloaded) and rollback of an existing sysroot."""

from __future__ import annotations

from pathlib import Path

from pybootc.commands.deploy import (
    DEFAULT_STATEROOT,
    deploy_prepared,
    followed,
    prepare_target,
    registry_auth,
    tidy_up,
)
from pybootc.commands.report import ManifestDiff, Report, no_changes, queued
from pybootc.errors import BootcError
from pybootc.oci.imgref import OstreeImageReference
from pybootc.ostree.ext_format import image_ref
from pybootc.ostree.origin import (
    ORIGIN_GROUP,
    OriginImage,
    commit_image,
    commit_layers,
    origin_image,
)
from pybootc.ostree.sysroot import (
    DeploymentInfo,
    Sysroot,
    current_deployment,
    followed_deployment,
)
from pybootc.progress import NO_PROGRESS, Progress
from pybootc.stores import Backend


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
        current = followed_deployment(sysroot)
        current_image = origin_image(current) if current else None
        chosen = backend or (current_image.backend if current_image else Backend.OSTREE)
        origin = OriginImage(target, chosen, decryption_key)
        if current_image == origin:
            # As upstream, the spec alone decides: nothing is fetched, and a newer image
            # under the same name is upgrade's job. The cleanup still runs, so a retry
            # of a switch killed in its cleanup finishes it.
            tidy_up(sysroot, progress=progress)
            # As upstream: --apply still reboots into a deployment staged before.
            staged = current is not None and current.is_staged
            return Report(("Image specification is unchanged.",), changed=staged)
        auth = registry_auth(sysroot, current)
        prepared = prepare_target(sysroot, origin, auth, current)
        stateroot = current.stateroot if current else DEFAULT_STATEROOT
        # The ref is the image's by transport and name alone: a switch that changes
        # only how the image is verified keeps it, since the import has just set it.
        left = image_ref(current_image.imgref.imgref) if current_image else None
        drop = not retain and left != image_ref(target.imgref)
        pulled = deploy_prepared(
            sysroot,
            prepared,
            stateroot=stateroot,
            auth=auth,
            drop_ref=left if drop else None,
            progress=progress,
        )
    return queued(target, pulled)


def switch_in_place(sysroot_path: Path, target: OstreeImageReference) -> Report:
    """`switch --mutate-in-place`: the followed deployment's origin names `target` from
    now on, with nothing fetched or deployed; the next upgrade pulls from it. Upstream
    keeps it for installers that deployed from a local copy of the image (Anaconda's
    %post) and must point the host at the registry."""
    sysroot = Sysroot.open(sysroot_path)
    with sysroot.lock():
        current = followed_deployment(sysroot)
        if current is None:
            raise BootcError("Failed to find a deployment")
        image = origin_image(current)
        backend = image.backend if image else Backend.OSTREE
        key = image.decryption_key if image else None
        # The image's group is written as upstream writes it; the origin's other
        # groups (rpm-ostree's, say) stay, where upstream starts a fresh origin.
        origin = {
            **{g: keys for g, keys in current.origin.items() if g != ORIGIN_GROUP},
            **OriginImage(target, backend, key).to_origin(),
        }
        sysroot.set_origin(current.index, origin)
    deployid = f"{current.checksum}.{current.deploy_serial}"
    return Report((f"Updated {deployid} to pull from {target}",), changed=False)


def upgrade(
    sysroot_path: Path,
    *,
    download_only: bool = False,
    tag: str | None = None,
    progress: Progress = NO_PROGRESS,
) -> Report:
    """Deploy the newest version of the image the host follows (under `tag`, if given:
    the new deployment then follows that tag).

    `download_only` stages it held back from finalization, so a reboot does not apply
    it until `upgrade --from-downloaded`; an update already staged is only re-locked
    or released, as upstream does.
    """
    sysroot = Sysroot.open(sysroot_path)
    with sysroot.lock():
        current, image = followed(sysroot, tag)
        auth = registry_auth(sysroot, current)
        prepared = prepare_target(sysroot, image, auth, current)
        # What the host follows is the staged deployment, if there is one.
        if current.is_staged and prepared.deployed:
            present = no_changes(image.imgref, prepared.metadata)
            if sysroot.set_finalization(locked=download_only):
                line = (
                    "Image downloaded, but will not be applied on reboot"
                    if download_only
                    else "Staged deployment will now be applied on reboot"
                )
                return Report((present, line))
            return Report((present, "Staged update present, not changed"))
        # As upstream, the image is what counts, not its name: another tag of the same
        # build (`--tag`) is no update either, and the host keeps following its tag.
        if prepared.deployed and (tag is not None or image == origin_image(current)):
            tidy_up(sysroot, progress=progress)
            present = no_changes(image.imgref, prepared.metadata)
            return Report((present, "No update available."), changed=False)
        # As upstream, the layers that change against what runs now.
        running = current_deployment(sysroot)
        before = commit_layers(sysroot.repo, running.checksum) if running else ()
        diff = ManifestDiff.between(before, prepared.metadata.manifest.layers).lines()
        pulled = deploy_prepared(
            sysroot,
            prepared,
            stateroot=current.stateroot,
            auth=auth,
            lock_finalization=download_only,
            progress=progress,
        )
    return queued(image.imgref, pulled, diff)


def apply_downloaded(sysroot_path: Path) -> Report:
    """`upgrade --from-downloaded`: let a download-only deployment be finalized."""
    sysroot = Sysroot.open(sysroot_path)
    if sysroot.set_finalization(locked=False):
        return Report(("Staged deployment will now be applied on reboot",))
    return Report(("Staged deployment is already set to apply on reboot",))


def rollback(sysroot_path: Path) -> Report:
    sysroot = Sysroot.open(sysroot_path)

    def container_based(target: DeploymentInfo) -> None:
        # As upstream: bootc rolls back only to an image it deployed.
        if commit_image(sysroot.repo, target.checksum) is None:
            raise BootcError("Rollback is not container image based")

    if sysroot.rollback(check=container_based):
        # As upstream: the booted deployment boots next again.
        return Report(("notice: Reverting queued rollback state", "Next boot: current deployment"))
    return Report(("Next boot: rollback deployment",))
