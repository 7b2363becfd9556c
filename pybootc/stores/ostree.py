"""The `ostree` backend, ostree-ext's way: every layer is a commit of its own.

Layer blobs come through skopeo's image proxy; each layer's tar stream is read straight
into the repo, its files written as objects as they stream by, and kept as a commit
under `ostree/container/blob/<digest>` (stores/layered.py), so an update fetches only the
layers the repo lacks. The image is merged from those commits and post-processed and
committed exactly as the container backend's is.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, BinaryIO, ClassVar

from pybootc.errors import BootcError
from pybootc.layers.flatten import BlobLayer, read_blob
from pybootc.layers.tar_tree import read_layer
from pybootc.layers.tree import LayerRead
from pybootc.oci.auth import ANONYMOUS, RegistryAuth
from pybootc.oci.imgref import OstreeImageReference
from pybootc.oci.metadata import ImageMetadata
from pybootc.oci.proxy import ImageProxy
from pybootc.ostree.ext_format import BLOB_REF_PREFIX, blob_digest_of_commit
from pybootc.ostree.gi import OSTree
from pybootc.ostree.merged_image import prune_merged_refs
from pybootc.ostree.objects import ObjectWriter
from pybootc.ostree.repo import list_refs, read_commit_metadata, set_ref
from pybootc.ostree.write_behind import WriteBehind
from pybootc.stores import Backend
from pybootc.stores.export import export_image
from pybootc.stores.layered import LayeredImage, current_layer_commit, layer_commit
from pybootc.stores.protocol import DeployedImages, LayerState, Pruned

if TYPE_CHECKING:
    from pybootc.ostree.origin import OriginImage
    from pybootc.progress import Progress


class _CountingReader(io.RawIOBase):
    """A blob stream that says how much of it has been read."""

    def __init__(self, stream: BinaryIO, on_bytes: Callable[[int], None]) -> None:
        self._stream = stream
        self._on_bytes = on_bytes
        self._done = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._stream.read(len(buffer))
        buffer[: len(data)] = data
        self._done += len(data)
        self._on_bytes(self._done)
        return len(data)


@contextmanager
def _counted(
    open_stream: Callable[[], AbstractContextManager[BinaryIO]], on_bytes: Callable[[int], None]
) -> Iterator[IO[bytes]]:
    with open_stream() as opened:
        yield io.BufferedReader(_CountingReader(opened, on_bytes), buffer_size=1 << 20)


def import_layers(
    repo: OSTree.Repo,
    imgref: OstreeImageReference,
    metadata: ImageMetadata,
    work: Path,
    auth: RegistryAuth = ANONYMOUS,
    *,
    on_bytes: Callable[[str, int], None] = lambda digest, done: None,
) -> LayeredImage:
    """Make sure every layer of the image is a commit in `repo`; fetch only the missing."""
    commits: list[str] = []
    with ImageProxy(auth=auth, staging=work) as proxy:
        # The manifest the policy judged, by digest: its blobs, whatever the tag is now.
        opened = proxy.open_image(metadata.source_of(imgref.imgref))
        for descriptor, diff_id in zip(
            metadata.manifest.layers, metadata.config.diff_ids, strict=True
        ):
            opener = functools.partial(
                _counted,
                functools.partial(proxy.open_blob, opened, descriptor.digest, descriptor.size),
                functools.partial(on_bytes, descriptor.digest),
            )
            blob = BlobLayer(descriptor, diff_id, opener, source_checks_digest=True)

            def read(objects: ObjectWriter, blob: BlobLayer = blob) -> LayerRead:
                with WriteBehind(objects) as behind:
                    return read_blob(blob, lambda stream: read_layer(stream, behind, work))

            commits.append(layer_commit(repo, descriptor.digest, read, diff_id))
    return LayeredImage(repo, tuple(commits), metadata)


class OstreeStore:
    """ostree-ext's way: each layer a commit of its own in the sysroot's repo."""

    backend: ClassVar[Backend] = Backend.OSTREE

    def __init__(self, sysroot_path: Path, repo: OSTree.Repo | None) -> None:
        self._repo = repo

    def check_target(self, target: OriginImage) -> None:
        if target.decryption_key is not None:
            raise BootcError(
                f"Decryption key {target.decryption_key}: the ostree backend cannot decrypt"
                " images; use --backend container"
            )

    def check_image(self, target: OriginImage, metadata: ImageMetadata) -> None:
        if any(layer.layer_format.encrypted for layer in metadata.manifest.layers):
            raise BootcError(
                f"{target.imgref}: the image is encrypted, which the ostree backend cannot"
                " decrypt; use --backend container"
            )
        if len(metadata.config.diff_ids) != len(metadata.manifest.layers):
            raise BootcError(
                f"{target.imgref}: the image's config and manifest disagree on its layers"
            )

    def layer_states(self, metadata: ImageMetadata) -> tuple[LayerState, ...]:
        repo = self._repo
        return tuple(
            LayerState(
                d, repo is not None and current_layer_commit(repo, d.digest, diff_id) is not None
            )
            for d, diff_id in zip(metadata.manifest.layers, metadata.config.diff_ids, strict=True)
        )

    def fetch(
        self,
        target: OriginImage,
        metadata: ImageMetadata,
        work: Path,
        auth: RegistryAuth,
        progress: Progress,
    ) -> LayeredImage:
        return import_layers(
            self._opened(), target.imgref, metadata, work, auth, on_bytes=progress.fetched
        )

    def deployed_source(self, target: OriginImage, commit: str, work: Path) -> tuple[str, str]:
        # The store keeps no image, only its layer commits: written out as one.
        return str(target.imgref.imgref), export_image(
            self._opened(), commit, work / "layout", "image", work
        )

    def collect_garbage(self, deployed: DeployedImages) -> Pruned:
        if self._repo is None:
            return Pruned()
        # The layer commits of both backends are the repo's, and so are the merges kept
        # of them: pruned here, whichever store made them.
        layers = prune_layer_refs(self._repo, set(deployed.layer_digests))
        prune_merged_refs(self._repo)
        return Pruned(layers=len(layers))

    def reset(self) -> None:
        """The layer commits live in the repo, which goes with the failed install."""

    def _opened(self) -> OSTree.Repo:
        if self._repo is None:
            raise BootcError("The ostree store has no repo yet")
        return self._repo


def prune_layer_refs(repo: OSTree.Repo, in_use: set[str]) -> list[str]:
    """Drop the refs of layer commits whose digest is not in `in_use`; return them."""
    dropped = []
    for ref, commit in list_refs(repo, BLOB_REF_PREFIX).items():
        digest = blob_digest_of_commit(read_commit_metadata(repo, commit))
        if digest not in in_use:
            set_ref(repo, ref, None)
            dropped.append(ref)
    return dropped
