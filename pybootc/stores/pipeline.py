"""From an image reference to a commit in the repo, the same way for every store.

`prepare` fetches manifest and config (judged by the signature policy), lets the store
refuse what it cannot do, and asks it which layers it has: ostree-ext's `prepare()`.
`import_image` then has the store fetch the rest into a work directory, flatten the
layers, and commits the post-processed tree. `collect_garbage` lets every store drop
what no deployment needs.
"""

from __future__ import annotations

from dataclasses import dataclass

from pybootc.errors import BootcError
from pybootc.oci.auth import RegistryAuth
from pybootc.oci.imgref import OstreeImageReference, SignatureKind
from pybootc.oci.metadata import ImageMetadata, fetch_image_metadata
from pybootc.oci.sigpolicy import require_enforcing_policy
from pybootc.ostree.gi import GLib, OSTree
from pybootc.ostree.origin import OriginImage, commit_image
from pybootc.ostree.sysroot import DeploymentInfo, Sysroot
from pybootc.progress import Progress
from pybootc.stores.commit import import_layers, import_workdir
from pybootc.stores.protocol import DeployedImages, ImageStore, LayerState, Pruned, layer_summary
from pybootc.stores.registry import all_stores


@dataclass(frozen=True)
class Prepared:
    """What is known before any layer is fetched (ostree-ext's PrepareResult): the
    image's manifest and config, each layer's state in the store, and whether the
    deployment it was prepared against already runs this exact image."""

    target: OriginImage
    metadata: ImageMetadata
    layers: tuple[LayerState, ...]
    deployed: bool

    @property
    def bytes_to_fetch(self) -> int:
        return layer_summary(self.layers)[2]

    def layers_line(self) -> str:
        """Upstream's line before a pull: what is there, and what is to come."""
        present, needed, size = layer_summary(self.layers)
        return (
            f"layers already present: {present}; layers needed: {needed} ({GLib.format_size(size)})"
        )


def fetch_metadata(imgref: OstreeImageReference, auth: RegistryAuth) -> ImageMetadata:
    """Manifest and config, judged by the signature policy. An `ostree-image-signed:`
    image also needs a policy that does not accept anything by default: ostree-ext
    refuses it otherwise, upgrades and checks included. `ostree-remote-image:` asks for
    a check by an ostree remote's keys, which pybootc has none of: refused, never
    pulled unverified."""
    if imgref.sigverify.kind is SignatureKind.OSTREE_REMOTE:
        raise BootcError(
            f"{imgref}: verifying with the keys of ostree remote {imgref.sigverify.remote}"
            " is not supported; sign the image and use ostree-image-signed: with a"
            " containers policy"
        )
    if imgref.sigverify.kind is SignatureKind.CONTAINER_POLICY:
        require_enforcing_policy()
    return fetch_image_metadata(imgref.imgref, auth=auth)


def runs(repo: OSTree.Repo, deployment: DeploymentInfo, metadata: ImageMetadata) -> bool:
    """Whether `deployment` was made from exactly this image (its manifest digest): the
    one test of "already deployed"."""
    deployed = commit_image(repo, deployment.checksum)
    return deployed is not None and deployed.manifest_digest == metadata.manifest_digest


def prepare(
    store: ImageStore,
    target: OriginImage,
    auth: RegistryAuth,
    *,
    repo: OSTree.Repo | None,
    current: DeploymentInfo | None,
) -> Prepared:
    """Everything that can refuse `target` before a layer is fetched, and what the
    store would fetch; `current` is the deployment to compare with (None on install)."""
    store.check_target(target)
    metadata = fetch_metadata(target.imgref, auth)
    store.check_image(target, metadata)
    deployed = repo is not None and current is not None and runs(repo, current, metadata)
    return Prepared(target, metadata, store.layer_states(metadata), deployed)


def import_image(
    store: ImageStore,
    sysroot: Sysroot,
    prepared: Prepared,
    *,
    auth: RegistryAuth,
    disable_selinux: bool,
    progress: Progress,
) -> tuple[str, ImageMetadata]:
    """Fetch, flatten, post-process and commit; the commit and the metadata it records."""
    imgref = prepared.target.imgref
    progress.layers(
        [(state.descriptor.digest, state.size, state.present) for state in prepared.layers],
        prepared.layers_line(),
    )
    with import_workdir(sysroot.path, imgref) as work:
        with progress.step("pulling"), progress.fetching():
            fetched = store.fetch(prepared.target, prepared.metadata, work, auth, progress)
        commit = import_layers(
            fetched, work, imgref, disable_selinux=disable_selinux, progress=progress
        )
    return commit, fetched.metadata


def collect_garbage(sysroot: Sysroot) -> Pruned:
    """Let every store remove what no deployment needs; what went."""
    deployed = DeployedImages.of(sysroot)
    pruned = Pruned()
    for store in all_stores(sysroot.path, sysroot.repo):
        pruned += store.collect_garbage(deployed)
    return pruned
