"""The `container` store: bootc's own containers-storage.

The image goes into SYSROOT/ostree/bootc/storage with `skopeo copy`, so
containers-storage brings zstd:chunked and encrypted layers and skips the layers it
holds; its overlay diff directories are what is flattened.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from pybootc.errors import BootcError
from pybootc.layers.flatten import flatten_diff_dirs
from pybootc.oci.auth import RegistryAuth
from pybootc.oci.metadata import ImageMetadata, metadata_at
from pybootc.ostree.gi import OSTree
from pybootc.stores import Backend, bootc_storage
from pybootc.stores.containers_storage import ContainersStorage
from pybootc.stores.protocol import DeployedImages, LayerState

if TYPE_CHECKING:
    from pybootc.ostree.origin import OriginImage


@dataclass(frozen=True)
class _StoredImage:
    """An image pulled into bootc's storage under `name`."""

    storage: ContainersStorage
    name: str
    metadata: ImageMetadata

    def flatten(self, work: Path, root: Path) -> None:
        flatten_diff_dirs(self.storage.layer_diff_dirs(self.name), root)


class ContainerStore:
    """bootc's containers-storage at SYSROOT/ostree/bootc/storage."""

    backend: ClassVar[Backend] = Backend.CONTAINER

    def __init__(self, sysroot_path: Path, repo: OSTree.Repo | None) -> None:
        self._storage = bootc_storage.bootc_storage(sysroot_path)

    def check_target(self, target: OriginImage) -> None:
        key = target.decryption_key
        if key is not None and not key.is_file():
            raise BootcError(f"Decryption key {key}: no such file")

    def check_image(self, target: OriginImage, metadata: ImageMetadata) -> None:
        encrypted = any(layer.layer_format.encrypted for layer in metadata.manifest.layers)
        if encrypted and target.decryption_key is None:
            raise BootcError(f"{target.imgref}: the image is encrypted; use --decryption-key")

    def layer_states(self, metadata: ImageMetadata) -> tuple[LayerState, ...]:
        stored = self._storage.stored_blob_digests()
        return tuple(LayerState(d, d.digest in stored) for d in metadata.manifest.layers)

    def fetch(
        self, target: OriginImage, metadata: ImageMetadata, work: Path, auth: RegistryAuth
    ) -> _StoredImage:
        # skopeo applies the signature policy again to what it pulls. It stages blobs in
        # the work directory: what a killed pull left there goes with it, or with the
        # next import's sweep, never into the host's /var/tmp.
        staging = work / "skopeo"
        staging.mkdir()
        name = bootc_storage.pull(
            self._storage,
            target.imgref.imgref,
            decryption_key=target.decryption_key,
            auth=auth,
            tmpdir=staging,
        )
        stored = metadata_at(self._storage.reference(name))
        # A decrypting pull stores a rewritten manifest, whose digest the registry never
        # serves: recorded, it would make every upgrade and switch see a new image. (The
        # storage itself knows the image by the source's digest too: podman's Digest.)
        recorded = metadata if metadata.config_digest == stored.config_digest else stored
        return _StoredImage(self._storage, name, recorded)

    def collect_garbage(self, deployed: DeployedImages) -> list[str]:
        return bootc_storage.remove_unused(self._storage, deployed.manifest_digests)

    def reset(self) -> None:
        if self._storage.root.exists():
            self._storage.reset(check=False)
