"""The `container` store: bootc's own containers-storage.

The image goes into SYSROOT/ostree/bootc/storage with `skopeo copy`, so
containers-storage brings zstd:chunked and encrypted layers and skips the layers it
holds; its overlay diff directories are what is flattened.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
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
    from pybootc.progress import Progress


@dataclass(frozen=True)
class _StoredImage:
    """An image pulled into bootc's storage under `name`."""

    storage: ContainersStorage
    name: str
    metadata: ImageMetadata

    def flatten(self, work: Path, root: Path) -> None:
        flatten_diff_dirs(self.storage.layer_diff_dirs(self.name), root)


# How often a pull's progress is looked at (s).
_WATCH_INTERVAL = 0.25


def _staged_bytes(staging: Path) -> int:
    total = 0
    for dirpath, _, names in os.walk(staging):
        for name in names:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


@contextmanager
def _watched_pull(
    storage: ContainersStorage, metadata: ImageMetadata, staging: Path, progress: Progress
) -> Iterator[None]:
    """Tell `progress` how a `skopeo copy` into `storage` gets on, from outside it: a
    layer is complete once the storage lists it; the blobs skopeo is still downloading
    are in `staging`. skopeo fetches several at once and names its files by no digest,
    so those bytes go to the unfinished layers in manifest order: the total is right,
    the split between layers in flight is an estimate."""
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(_WATCH_INTERVAL):
            try:
                stored = storage.stored_blob_digests()
            except BootcError:
                continue  # read again at the next look; the pull itself says what failed
            in_flight = _staged_bytes(staging)
            for layer in metadata.manifest.layers:
                if layer.digest in stored:
                    progress.fetched(layer.digest, layer.size)
                elif in_flight > 0:
                    share = min(in_flight, layer.size)
                    progress.fetched(layer.digest, share)
                    in_flight -= share

    watcher = threading.Thread(target=watch, name="pull-progress", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        stop.set()
        watcher.join()


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
        self,
        target: OriginImage,
        metadata: ImageMetadata,
        work: Path,
        auth: RegistryAuth,
        progress: Progress,
    ) -> _StoredImage:
        # skopeo applies the signature policy again to what it pulls. It stages blobs in
        # the work directory: what a killed pull left there goes with it, or with the
        # next import's sweep, never into the host's /var/tmp.
        staging = work / "skopeo"
        staging.mkdir()
        with _watched_pull(self._storage, metadata, staging, progress):
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
