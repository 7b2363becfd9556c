"""What a deployment says about its image: its origin keyfile and its commit metadata.

The origin holds what to follow (`container-image-reference`), which backend
brought it and where a decryption key lives (never the key itself); the commit
holds what was deployed (manifest digest, config, version).
"""

from __future__ import annotations

import datetime
import json
from dataclasses import dataclass
from pathlib import Path

from pybootc.backends import Backend
from pybootc.errors import BootcError
from pybootc.imgref import OstreeImageReference
from pybootc.oci.model import Manifest
from pybootc.ostree_commit import (
    commit_timestamp,
    image_ref_name,
    read_commit_metadata,
    read_detached_metadata,
)
from pybootc.ostree_gi import OSTree
from pybootc.sysroot import DeploymentInfo, Origin

ORIGIN_GROUP = "origin"
IMAGE_KEY = "container-image-reference"
PYBOOTC_GROUP = "pybootc"
BACKEND_KEY = "backend"
DECRYPTION_KEY_KEY = "decryption-key"

# ostree-ext's keys for an update found by `upgrade --check`, as detached metadata.
CACHED_DIGEST = "ostree-ext.cached.manifest-digest"
CACHED_MANIFEST = "ostree-ext.cached.manifest"
CACHED_CONFIG = "ostree-ext.cached.config"


def image_ref(imgref: OstreeImageReference) -> str:
    """The ref that holds an image's merge commit: ostree-ext names it after
    `transport:name`, whatever the signature policy."""
    return image_ref_name(f"{imgref.imgref.transport.value}:{imgref.imgref.name}")


@dataclass(frozen=True)
class OriginImage:
    imgref: OstreeImageReference
    backend: Backend
    decryption_key: Path | None = None

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
        backend = Backend(ours.get(BACKEND_KEY, Backend.OSTREE.value))
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
        created = labels_dict.get("org.opencontainers.image.created") or config.get("created")
        return cls(
            manifest_digest=digest,
            architecture=str(config.get("architecture", "")),
            version=str(version) if version else None,
            created=str(created) if created else None,
        )


def commit_image(repo: OSTree.Repo, checksum: str) -> CommitImage | None:
    meta = read_commit_metadata(repo, checksum)
    digest = meta.get("ostree.manifest-digest")
    config_text = meta.get("ostree.container.image-config")
    if not isinstance(digest, str) or not isinstance(config_text, str):
        return None
    image = CommitImage.from_config(digest, json.loads(config_text))
    if image.created is None:
        timestamp = commit_timestamp(repo, checksum)
        created = datetime.datetime.fromtimestamp(timestamp, datetime.UTC).isoformat()
        return CommitImage(image.manifest_digest, image.architecture, image.version, created)
    return image


def commit_layer_digests(repo: OSTree.Repo, checksum: str) -> set[str]:
    """The layer digests of the manifest a commit was made from."""
    raw = read_commit_metadata(repo, checksum).get("ostree.manifest")
    if not isinstance(raw, str):
        return set()
    return {layer.digest for layer in Manifest.parse(raw.encode()).layers}


def cached_update(repo: OSTree.Repo, checksum: str) -> CommitImage | None:
    detached = read_detached_metadata(repo, checksum)
    digest = detached.get(CACHED_DIGEST)
    config_text = detached.get(CACHED_CONFIG)
    if not isinstance(digest, str) or not isinstance(config_text, str):
        return None
    return CommitImage.from_config(digest, json.loads(config_text))


def origin_image(deployment: DeploymentInfo) -> OriginImage | None:
    try:
        return OriginImage.from_origin(deployment.origin)
    except BootcError as err:
        raise err.with_context(f"Reading the origin of deployment {deployment.index}") from None
