"""What every image store does, and the values that pass between a store and the pipeline.

A store is where an image's layers are kept between the registry and the OSTree commit
that is deployed: layer commits in the repo (`ostree`), or bootc's containers-storage
(`container`). The pipeline (stores/pipeline.py) asks a store what it cannot do, which
layers it has, and to fetch the rest; either store hands over every layer as a commit
of its own (stores/layered.py), and nothing outside the stores knows how it got them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Protocol, runtime_checkable

from pybootc.oci.model import Descriptor
from pybootc.ostree.ext_format import IMAGE_REF_PREFIX
from pybootc.ostree.origin import commit_image, commit_layer_digests
from pybootc.ostree.repo import list_refs

if TYPE_CHECKING:
    from pybootc.oci.auth import RegistryAuth
    from pybootc.oci.metadata import ImageMetadata
    from pybootc.ostree.gi import OSTree
    from pybootc.ostree.origin import OriginImage
    from pybootc.ostree.sysroot import Sysroot
    from pybootc.progress import Progress
    from pybootc.stores import Backend
    from pybootc.stores.layered import LayeredImage


@dataclass(frozen=True)
class LayerState:
    """One layer of an image, and whether the store has it already."""

    descriptor: Descriptor
    present: bool

    @property
    def size(self) -> int:
        return self.descriptor.size


@dataclass(frozen=True)
class DeployedImages:
    """What garbage collection must keep, computed once for every store: the deployed
    commits, the manifest digests they were made from, and the layer digests of those
    commits and of every image ref's commit."""

    commits: frozenset[str]
    manifest_digests: frozenset[str]
    layer_digests: frozenset[str]

    @classmethod
    def of(cls, sysroot: Sysroot) -> DeployedImages:
        repo = sysroot.repo
        deployed = {d.checksum for d in sysroot.deployments()}
        digests = set()
        for commit in deployed:
            image = commit_image(repo, commit)
            if image is not None:
                digests.add(image.manifest_digest)
        rooted = deployed | set(list_refs(repo, IMAGE_REF_PREFIX).values())
        layers: set[str] = set().union(*(commit_layer_digests(repo, c) for c in rooted))
        return cls(frozenset(deployed), frozenset(digests), frozenset(layers))


@dataclass(frozen=True)
class Pruned:
    """What garbage collection removed: images (from bootc's storage) and layer
    commits; the bytes freed are the repo's prune's to say."""

    images: tuple[str, ...] = ()
    layers: int = 0

    def __add__(self, other: Pruned) -> Pruned:
        return Pruned(self.images + other.images, self.layers + other.layers)


@runtime_checkable
class ImageStore(Protocol):
    """One way to keep images between the registry and the repo."""

    backend: ClassVar[Backend]

    def __init__(self, sysroot_path: Path, repo: OSTree.Repo | None) -> None:
        """The store of the sysroot at `sysroot_path`; `repo` is None before an install
        has made one."""

    def check_target(self, target: OriginImage) -> None:
        """Refuse, before anything is fetched, what this store cannot do with `target`
        (a decryption key it cannot use, say)."""

    def check_image(self, target: OriginImage, metadata: ImageMetadata) -> None:
        """Refuse, before any layer is fetched, an image this store cannot take."""

    def layer_states(self, metadata: ImageMetadata) -> tuple[LayerState, ...]:
        """Each layer of the image, present in this store already or to be fetched."""

    def fetch(
        self,
        target: OriginImage,
        metadata: ImageMetadata,
        work: Path,
        auth: RegistryAuth,
        progress: Progress,
    ) -> LayeredImage:
        """Fetch what the store lacks of the image (and only that), staging in `work`,
        telling `progress` the bytes of each layer as they arrive; every layer ends up
        a commit in the repo, ready to be merged."""

    def deployed_source(self, target: OriginImage, commit: str, work: Path) -> tuple[str, str]:
        """The name to show for the image `target` that the deployed commit `commit`
        was made from, and a skopeo source of it: `image copy-to-storage`'s source.
        `work` is scratch space the caller removes afterwards."""

    def collect_garbage(self, deployed: DeployedImages) -> Pruned:
        """Remove what no deployment needs; what went."""

    def reset(self) -> None:
        """Forget everything, after an install that failed."""


def layer_summary(layers: Iterable[LayerState]) -> tuple[int, int, int]:
    """(present, needed, bytes needed) of an image's layers."""
    states = list(layers)
    needed = [state for state in states if not state.present]
    return len(states) - len(needed), len(needed), sum(state.size for state in needed)
