"""The `container` store: bootc's own containers-storage.

The image goes into SYSROOT/ostree/bootc/storage with `skopeo copy`, so
containers-storage brings zstd:chunked and encrypted layers and skips the layers it
holds. Each overlay diff directory the repo has no commit of yet is then read into one
(stores/layered.py), its files hashed once and copied into objects by the kernel.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import tempfile
import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from pybootc.errors import BootcError, error_context
from pybootc.layers.diffdir_tree import read_diff_dir
from pybootc.layers.flatten import BlobLayer, unpack_blob
from pybootc.layers.tree import LayerRead, ObjectSink
from pybootc.oci.auth import RegistryAuth
from pybootc.oci.metadata import ImageMetadata, metadata_at
from pybootc.oci.model import Descriptor
from pybootc.oci.proxy import ImageProxy
from pybootc.ostree.gi import OSTree
from pybootc.stores import Backend, bootc_storage
from pybootc.stores.containers_storage import ContainersStorage, IncompleteImage, StoredLayer
from pybootc.stores.layered import LayeredImage, current_layer_commit, layer_commit
from pybootc.stores.protocol import DeployedImages, LayerState, Pruned

if TYPE_CHECKING:
    from pybootc.ostree.origin import OriginImage
    from pybootc.progress import Progress


# How skopeo names the layer containers-storage would not unpack.
_REFUSED_LAYER = re.compile(r'adding layer with blob "(sha256:[0-9a-f]{64})"')


def _explain_refused_layer(
    err: BootcError, target: OriginImage, metadata: ImageMetadata, work: Path, auth: RegistryAuth
) -> None:
    """containers-storage refuses a hostile layer in words of its own (`processing tar
    file(no such file or directory)`). Read that layer by the blob path's rules, which
    the ostree backend applies, and raise what they say is wrong in it: both backends
    then refuse a layer with the same line. Nothing is raised if they find no fault."""
    found = _REFUSED_LAYER.search(err.message)
    layers = metadata.manifest.layers
    index = next((i for i, d in enumerate(layers) if found and d.digest == found[1]), None)
    if index is None or layers[index].layer_format.encrypted:
        return
    descriptor = layers[index]
    with (
        tempfile.TemporaryDirectory(dir=work) as scratch,
        ImageProxy(auth=auth, staging=Path(scratch)) as proxy,
    ):
        opened = proxy.open_image(metadata.source_of(target.imgref.imgref))
        layer = BlobLayer(
            descriptor,
            metadata.config.diff_ids[index] if index < len(metadata.config.diff_ids) else None,
            lambda: proxy.open_blob(opened, descriptor.digest, descriptor.size),
            source_checks_digest=True,
        )
        with error_context(f"Layer {descriptor.digest}"):
            unpack_blob(layer, Path(scratch))


# How often a pull's progress is looked at (s).
_WATCH_INTERVAL = 0.25


def read_stored_layer(
    storage: ContainersStorage, layer: StoredLayer, objects: ObjectSink
) -> LayerRead:
    """Read a layer of the storage into a layer tree, writing its content to `objects`:
    its files from its diff directory, its markers as its members give them (read
    again for a layer whose names passed before)."""
    markers = layer.markers
    if markers is None:
        with error_context(f"Layer {layer.digest}"):
            markers = storage.layer_markers(layer.layer_id)
    return read_diff_dir(layer.diff_dir, markers, objects)


def check_diff_id(layer: StoredLayer, descriptor: Descriptor, diff_id: str | None) -> str | None:
    """Refuse a layer whose tar stream, as the storage unpacked it, is not the one the
    image's config names: the ostree backend refuses it as it reads the blob, and in
    the same words; skopeo 1.9 stores it without comparing the two. The digest the
    layer was found to be, None where it cannot be compared.

    Not for a zstd:chunked layer: skopeo 1.9 writes one by rewriting the tar stream's
    headers, and keeps the source's diff_id, so every such layer it made would be
    refused (the ostree backend refuses them)."""
    got = layer.diff_digest
    if diff_id is None or got is None or descriptor.toc_digest is not None:
        return None
    if got == diff_id:
        return got
    blob = descriptor.digest
    with error_context(f"Layer {blob}"):
        raise BootcError(
            f"Uncompressed digest mismatch for blob {blob}: expected diff_id {diff_id}, got {got}"
        )


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
                stored = storage.stored_layer_digests()
            except BootcError:
                continue  # read again at the next look; the pull itself says what failed
            in_flight = _staged_bytes(staging)
            for layer in metadata.manifest.layers:
                if layer.known_as & stored:
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
        self._repo_or_none = repo

    def _repo(self) -> OSTree.Repo:
        if self._repo_or_none is None:
            raise BootcError("The container store has no repo yet")
        return self._repo_or_none

    def check_target(self, target: OriginImage) -> None:
        key = target.decryption_key
        if key is not None and not key.is_file():
            raise BootcError(f"Decryption key {key}: no such file")

    def check_image(self, target: OriginImage, metadata: ImageMetadata) -> None:
        encrypted = any(layer.layer_format.encrypted for layer in metadata.manifest.layers)
        if encrypted and target.decryption_key is None:
            raise BootcError(f"{target.imgref}: the image is encrypted; use --decryption-key")

    def layer_states(self, metadata: ImageMetadata) -> tuple[LayerState, ...]:
        stored = self._storage.stored_layer_digests()
        return tuple(LayerState(d, bool(d.known_as & stored)) for d in metadata.manifest.layers)

    def fetch(
        self,
        target: OriginImage,
        metadata: ImageMetadata,
        work: Path,
        auth: RegistryAuth,
        progress: Progress,
    ) -> LayeredImage:
        # skopeo applies the signature policy again to what it pulls. It stages blobs in
        # the work directory: what a killed pull left there goes with it, or with the
        # next import's sweep, never into the host's /var/tmp.
        staging = work / "skopeo"
        staging.mkdir()
        pull = functools.partial(
            bootc_storage.pull,
            self._storage,
            target.imgref.imgref,
            decryption_key=target.decryption_key,
            auth=auth,
            tmpdir=staging,
            source=metadata.judged_source,
        )
        try:
            with _watched_pull(self._storage, metadata, staging, progress):
                name, checked = self._pull_importing(pull, metadata)
        except BootcError as err:
            _explain_refused_layer(err, target, metadata, work, auth)
            raise
        # Every member name is checked here, as the ostree backend checks them while it
        # fetches: a layer is refused by both at the same point, in the same words.
        try:
            layers = self._storage.image_layers(name, checked=checked)
        except IncompleteImage:
            # Pulled again from scratch, it comes back whole.
            self._storage.remove(name)
            name = pull()
            layers = self._storage.image_layers(name)
        stored = metadata_at(self._storage.reference(name))
        # A decrypting pull stores a rewritten manifest, whose digest the registry never
        # serves: recorded, it would make every upgrade and switch see a new image. (The
        # storage itself knows the image by the source's digest too: podman's Digest.)
        recorded = metadata if metadata.config_digest == stored.config_digest else stored
        described = recorded.manifest.layers
        if len(described) != len(layers):
            raise BootcError(
                f"{target.imgref}: bootc's storage holds {len(layers)} layers of an image"
                f" whose manifest lists {len(described)}"
            )
        diff_ids = metadata.config.diff_ids
        verified = [
            check_diff_id(layer, descriptor, diff_ids[index] if index < len(diff_ids) else None)
            for index, (layer, descriptor) in enumerate(zip(layers, described, strict=True))
        ]
        # Named by the digests the commit will record (a decrypted layer's blob in the
        # storage is not the registry's), so garbage collection keeps them.
        commits = tuple(
            layer_commit(
                self._repo(),
                descriptor.digest,
                functools.partial(read_stored_layer, self._storage, layer),
                diff_id,
            )
            for layer, descriptor, diff_id in zip(layers, described, verified, strict=True)
        )
        return LayeredImage(self._repo(), commits, recorded)

    def _pull_importing(
        self, pull: Callable[[], str], metadata: ImageMetadata
    ) -> tuple[str, frozenset[str]]:
        """Run `pull`, and meanwhile read each layer it has finished unpacking into its
        commit: containers-storage unpacks the layers one after another, so the import
        of one overlaps the unpacking of the next. The name `pull` stored the image
        under, and the layers whose member names have passed: the IDs of the storage's
        layers read here, and the blob digests of those committed before (their names
        passed when their commits were made, from the same bytes).

        A layer is read only once the storage lists it whole, by a digest it is known
        by (`Descriptor.known_as`; an encrypted layer's blob is not the manifest's, and
        those wait for the pull). If the pull fails, that is the error raised, as it
        would have been without the early imports."""
        repo = self._repo()
        layers = metadata.manifest.layers
        diff_ids = dict(zip((d.digest for d in layers), metadata.config.diff_ids, strict=False))
        waiting = [d for d in layers if current_layer_commit(repo, d.digest) is None]
        passed = {d.digest for d in layers} - {d.digest for d in waiting}
        with ThreadPoolExecutor(1, thread_name_prefix="pull") as pool:
            pulling = pool.submit(pull)
            try:
                while waiting and not pulling.done():
                    complete = self._storage.complete_layers(
                        frozenset().union(*(d.known_as for d in waiting))
                    )
                    for descriptor in list(waiting):
                        record = next(
                            (complete[k] for k in descriptor.known_as if k in complete), None
                        )
                        if record is None:
                            continue
                        layer = self._storage.complete_layer(record)
                        diff_id = check_diff_id(layer, descriptor, diff_ids.get(descriptor.digest))
                        read = functools.partial(read_stored_layer, self._storage, layer)
                        layer_commit(repo, descriptor.digest, read, diff_id)
                        passed.add(layer.layer_id)
                        waiting.remove(descriptor)
                    futures.wait([pulling], timeout=_WATCH_INTERVAL)
            except BaseException:
                if pulling.exception() is None:
                    raise
            return pulling.result(), frozenset(passed)

    def deployed_source(self, target: OriginImage, commit: str, work: Path) -> tuple[str, str]:
        # Named as upstream names the image it copies (`docker://...`); the image is
        # the last fetched under that name, as upstream's export takes it too.
        name = bootc_storage.stored_name(target.imgref.imgref)
        return str(target.imgref.imgref), self._storage.reference(name)

    def collect_garbage(self, deployed: DeployedImages) -> Pruned:
        return Pruned(tuple(bootc_storage.remove_unused(self._storage, deployed.manifest_digests)))

    def reset(self) -> None:
        if self._storage.root.exists():
            self._storage.reset(check=False)
