"""What a deployment says about its image: its origin keyfile and its commit metadata.

The origin holds what to follow (`container-image-reference`), which backend
brought it and where a decryption key lives (never the key itself); the commit
holds what was deployed (manifest digest, config, version).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pybootc.errors import BootcError
from pybootc.oci.imgref import OstreeImageReference
from pybootc.oci.model import Descriptor, Manifest
from pybootc.ostree.ext_format import cached_update_of, image_of_commit, manifest_of_commit
from pybootc.ostree.gi import OSTree
from pybootc.ostree.repo import read_commit_metadata, read_detached_metadata
from pybootc.ostree.sysroot import DeploymentInfo, Origin
from pybootc.stores import Backend

ORIGIN_GROUP = "origin"
IMAGE_KEY = "container-image-reference"
PYBOOTC_GROUP = "pybootc"
BACKEND_KEY = "backend"
DECRYPTION_KEY_KEY = "decryption-key"


@dataclass(frozen=True)
class OriginImage:
    imgref: OstreeImageReference
    backend: Backend
    decryption_key: Path | None = None

    def __post_init__(self) -> None:
        # Recorded in the origin, a key path must not depend on where bootc ran from.
        if self.decryption_key is not None:
            object.__setattr__(self, "decryption_key", self.decryption_key.absolute())

    def to_origin(self) -> Origin:
        pybootc = {BACKEND_KEY: self.backend.value}
        if self.decryption_key is not None:
            pybootc[DECRYPTION_KEY_KEY] = str(self.decryption_key)
        return {ORIGIN_GROUP: {IMAGE_KEY: str(self.imgref)}, PYBOOTC_GROUP: pybootc}

    @classmethod
    def from_origin(cls, origin: Origin) -> OriginImage | None:
        text = origin.get(ORIGIN_GROUP, {}).get(IMAGE_KEY)
        if text is None:
            return None
        ours = origin.get(PYBOOTC_GROUP, {})
        # Deployments upstream bootc made carry no backend: they are ostree ones.
        named = ours.get(BACKEND_KEY, Backend.OSTREE.value)
        try:
            backend = Backend(named)
        except ValueError:
            known = ", ".join(b.value for b in Backend)
            raise BootcError(
                f"Unknown backend {named!r} in [{PYBOOTC_GROUP}] (known: {known})"
            ) from None
        key = ours.get(DECRYPTION_KEY_KEY)
        return cls(OstreeImageReference.parse(text), backend, Path(key) if key else None)


@dataclass(frozen=True)
class CommitImage:
    """The image a commit was made from, per its metadata."""

    manifest_digest: str
    architecture: str
    version: str | None
    created: str | None

    @classmethod
    def from_config(cls, digest: str, config: dict[str, object]) -> CommitImage:
        labels = config.get("config")
        label_map = labels.get("Labels") if isinstance(labels, dict) else None
        labels_dict = label_map if isinstance(label_map, dict) else {}
        version = labels_dict.get("org.opencontainers.image.version") or labels_dict.get("version")
        # The label when there is one, even empty (then no time at all), as upstream.
        created_label = "org.opencontainers.image.created"
        created = (
            labels_dict[created_label] if created_label in labels_dict else config.get("created")
        )
        return cls(
            manifest_digest=digest,
            architecture=str(config.get("architecture", "")),
            version=str(version) if version else None,
            created=str(created) if created else None,
        )


def commit_image(repo: OSTree.Repo, checksum: str) -> CommitImage | None:
    recorded = image_of_commit(read_commit_metadata(repo, checksum))
    return None if recorded is None else CommitImage.from_config(*recorded)


def commit_layers(repo: OSTree.Repo, checksum: str) -> tuple[Descriptor, ...]:
    """The layers of the manifest a commit was made from (none if it records none)."""
    raw = manifest_of_commit(read_commit_metadata(repo, checksum))
    return () if raw is None else tuple(Manifest.parse(raw).layers)


def commit_layer_digests(repo: OSTree.Repo, checksum: str) -> set[str]:
    """The layer digests of the manifest a commit was made from."""
    return {layer.digest for layer in commit_layers(repo, checksum)}


def cached_update(repo: OSTree.Repo, checksum: str) -> CommitImage | None:
    recorded = cached_update_of(read_detached_metadata(repo, checksum))
    return None if recorded is None else CommitImage.from_config(*recorded)


# Origin groups of rpm-ostree's machine-local changes (packages layered, overrides):
# a deployment with any of them is no image bootc can stand for or update
# (upstream's origin_has_rpmostree_stuff).
_RPM_OSTREE_GROUPS = ("rpmostree", "packages", "overrides", "modules")


def has_rpm_ostree_changes(deployment: DeploymentInfo) -> bool:
    return any(group in deployment.origin for group in _RPM_OSTREE_GROUPS)


def origin_image(deployment: DeploymentInfo) -> OriginImage | None:
    try:
        return OriginImage.from_origin(deployment.origin)
    except BootcError as err:
        raise err.with_context(f"Reading the origin of deployment {deployment.index}") from None
