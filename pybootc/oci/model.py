"""OCI and Docker image manifests, descriptors and configs, as frozen values.

Parses the JSON that registries and `oci:` layouts hand out (OCI image manifests and
Docker v2s2 manifests, image configs) and says how each layer is stored. No I/O here.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from pybootc.errors import BootcError

MEDIA_TYPE_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_TYPE_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_TYPE_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_TYPE_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MEDIA_TYPE_DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MEDIA_TYPE_DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
MEDIA_TYPE_DOCKER_SCHEMA1_MANIFEST = "application/vnd.docker.distribution.manifest.v1+json"
MEDIA_TYPE_DOCKER_SCHEMA1_SIGNED_MANIFEST = (
    "application/vnd.docker.distribution.manifest.v1+prettyjws"
)

MEDIA_TYPE_OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
MEDIA_TYPE_OCI_LAYER_GZIP = MEDIA_TYPE_OCI_LAYER + "+gzip"
MEDIA_TYPE_OCI_LAYER_ZSTD = MEDIA_TYPE_OCI_LAYER + "+zstd"
MEDIA_TYPE_OCI_NONDISTRIBUTABLE_LAYER = "application/vnd.oci.image.layer.nondistributable.v1.tar"
MEDIA_TYPE_DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
MEDIA_TYPE_DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
MEDIA_TYPE_DOCKER_FOREIGN_LAYER_GZIP = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
# ocicrypt appends this to any OCI layer type it encrypts.
ENCRYPTED_SUFFIX = "+encrypted"

MANIFEST_MEDIA_TYPES = frozenset({MEDIA_TYPE_OCI_MANIFEST, MEDIA_TYPE_DOCKER_MANIFEST})
INDEX_MEDIA_TYPES = frozenset({MEDIA_TYPE_OCI_INDEX, MEDIA_TYPE_DOCKER_MANIFEST_LIST})
_SCHEMA1_MEDIA_TYPES = frozenset(
    {MEDIA_TYPE_DOCKER_SCHEMA1_MANIFEST, MEDIA_TYPE_DOCKER_SCHEMA1_SIGNED_MANIFEST}
)

# Hex lengths of the algorithms containers/image (go-digest) can verify.
_DIGEST_HEX_LENGTHS = {"sha256": 64, "sha384": 96, "sha512": 128}


class LayerCompression(StrEnum):
    """How a layer's tar stream is compressed."""

    NONE = "none"
    GZIP = "gzip"
    ZSTD = "zstd"

    @classmethod
    def from_media_type(cls, media_type: str) -> LayerCompression:
        """The compression of a layer of `media_type`; BootcError if it is no layer type."""
        return LayerFormat.from_media_type(media_type).compression


@dataclass(frozen=True)
class LayerFormat:
    """Everything a layer's media type says about how its bytes are stored."""

    compression: LayerCompression
    encrypted: bool = False
    nondistributable: bool = False

    @classmethod
    def from_media_type(cls, media_type: str) -> LayerFormat:
        known = _DOCKER_LAYER_FORMATS.get(media_type)
        if known is not None:
            return known
        base, encrypted = media_type, media_type.endswith(ENCRYPTED_SUFFIX)
        if encrypted:
            base = media_type.removesuffix(ENCRYPTED_SUFFIX)
        tar, plus, suffix = base.partition("+")
        compression = _OCI_COMPRESSION_SUFFIXES.get(suffix) if plus else LayerCompression.NONE
        if compression is None or tar not in _OCI_LAYER_TYPES:
            raise BootcError(f"Unknown layer media type: {media_type}")
        nondistributable = tar == MEDIA_TYPE_OCI_NONDISTRIBUTABLE_LAYER
        return cls(compression, encrypted, nondistributable)


_OCI_LAYER_TYPES = frozenset({MEDIA_TYPE_OCI_LAYER, MEDIA_TYPE_OCI_NONDISTRIBUTABLE_LAYER})
_OCI_COMPRESSION_SUFFIXES = {"gzip": LayerCompression.GZIP, "zstd": LayerCompression.ZSTD}
_DOCKER_LAYER_FORMATS = {
    MEDIA_TYPE_DOCKER_LAYER: LayerFormat(LayerCompression.NONE),
    MEDIA_TYPE_DOCKER_LAYER_GZIP: LayerFormat(LayerCompression.GZIP),
    MEDIA_TYPE_DOCKER_FOREIGN_LAYER_GZIP: LayerFormat(LayerCompression.GZIP, nondistributable=True),
}


def manifest_digest(raw: bytes) -> str:
    """The digest that names a manifest: sha256 of its exact bytes."""
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def is_valid_digest(digest: object) -> bool:
    """Whether `digest` is `algorithm:hex` with an algorithm skopeo can verify."""
    if not isinstance(digest, str):
        return False
    algorithm, colon, encoded = digest.partition(":")
    length = _DIGEST_HEX_LENGTHS.get(algorithm)
    # Digests end up in file names and ostree refs, so only plain lowercase hex passes.
    return (
        bool(colon)
        and length is not None
        and re.fullmatch(f"[0-9a-f]{{{length}}}", encoded) is not None
    )


def _parse_json_object(raw: bytes, what: str) -> Mapping[str, object]:
    try:
        value = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BootcError(f"Invalid {what}: not JSON: {err}") from None
    except RecursionError:
        raise BootcError(f"Invalid {what}: it nests too deeply") from None
    if not isinstance(value, dict):
        raise BootcError(f"Invalid {what}: expected a JSON object")
    return value


def _string_map(value: object, what: str) -> Mapping[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise BootcError(f"Invalid {what}: expected an object of strings")
    return dict(value)


def _string(obj: Mapping[str, object], key: str, what: str, *, required: bool = True) -> str:
    value = obj.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise BootcError(f'Invalid {what}: "{key}" must be a string')
    return value


# The annotation with the digest of a zstd:chunked layer's table of contents: named
# io.github.containers... by containers-storage 1.57 (Debian 13), io.containers... by
# 1.43 (Debian 12).
TOC_DIGEST_ANNOTATIONS = (
    "io.github.containers.zstd-chunked.manifest-checksum",
    "io.containers.zstd-chunked.manifest-checksum",
)


@dataclass(frozen=True)
class Descriptor:
    """A pointer to a blob: its media type, digest and size (OCI descriptor)."""

    media_type: str
    digest: str
    size: int
    annotations: Mapping[str, str] = field(default_factory=dict, hash=False)

    @classmethod
    def from_json(cls, obj: object, what: str) -> Descriptor:
        if not isinstance(obj, dict):
            raise BootcError(f"Invalid {what}: expected a JSON object")
        size = obj.get("size")
        # bool is an int in Python, but `true` is no size.
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise BootcError(f'Invalid {what}: "size" must be a non-negative integer')
        digest = _string(obj, "digest", what)
        if not is_valid_digest(digest):
            raise BootcError(f'Invalid {what}: bad digest "{digest}"')
        return cls(
            media_type=_string(obj, "mediaType", what),
            digest=digest,
            size=size,
            annotations=_string_map(obj.get("annotations"), f"{what} annotations"),
        )

    @property
    def layer_format(self) -> LayerFormat:
        """How this layer is stored; BootcError if the media type is no layer type."""
        return LayerFormat.from_media_type(self.media_type)

    @property
    def compression(self) -> LayerCompression:
        return self.layer_format.compression

    @property
    def toc_digest(self) -> str | None:
        """The digest of a zstd:chunked layer's table of contents, by which
        containers-storage 1.57 knows a layer it pulled partially; None for others. The
        annotation on a layer of another compression names nothing of its blob: a
        layer the storage holds by that digest is not this one."""
        if self.compression is not LayerCompression.ZSTD:
            return None
        return next(
            (self.annotations[k] for k in TOC_DIGEST_ANNOTATIONS if k in self.annotations), None
        )

    @property
    def known_as(self) -> frozenset[str]:
        """The digests a store may know this layer by: its blob's, and its table of
        contents' if it has one."""
        return frozenset(d for d in (self.digest, self.toc_digest) if d is not None)


@dataclass(frozen=True)
class Manifest:
    """An image manifest (OCI, or Docker schema 2): one config and its layers."""

    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]
    annotations: Mapping[str, str] = field(default_factory=dict, hash=False)

    @classmethod
    def parse(cls, raw: bytes) -> Manifest:
        what = "image manifest"
        obj = _parse_json_object(raw, what)
        # mediaType is optional in OCI manifests; then `manifests` marks an index.
        media_type = _string(obj, "mediaType", what, required=False) or MEDIA_TYPE_OCI_MANIFEST
        if "mediaType" not in obj and "manifests" in obj:
            media_type = MEDIA_TYPE_OCI_INDEX
        if media_type in INDEX_MEDIA_TYPES:
            raise BootcError(f"Expected an image manifest, found an image index ({media_type})")
        if media_type in _SCHEMA1_MEDIA_TYPES or obj.get("schemaVersion") == 1:
            raise BootcError("Unsupported legacy manifest type: Docker schema 1")
        if media_type not in MANIFEST_MEDIA_TYPES:
            raise BootcError(f"Unsupported manifest media type: {media_type}")
        if obj.get("schemaVersion") != 2:
            raise BootcError(f'Invalid {what}: "schemaVersion" must be 2')
        layers = obj.get("layers")
        if not isinstance(layers, list):
            raise BootcError(f'Invalid {what}: "layers" must be a list')
        return cls(
            media_type=media_type,
            config=Descriptor.from_json(obj.get("config"), "image config descriptor"),
            layers=tuple(
                Descriptor.from_json(layer, f"descriptor of layer {i}")
                for i, layer in enumerate(layers)
            ),
            annotations=_string_map(obj.get("annotations"), "manifest annotations"),
        )


# The labels bootc reads an image's version from, in order of preference.
VERSION_LABELS = ("org.opencontainers.image.version", "version")


@dataclass(frozen=True)
class ImageConfig:
    """An image configuration: platform, creation time, labels and layer diff IDs."""

    architecture: str
    os: str
    created: str | None
    labels: Mapping[str, str] = field(hash=False)
    diff_ids: tuple[str, ...]
    raw: Mapping[str, object] = field(hash=False, repr=False)

    @classmethod
    def parse(cls, raw: bytes) -> ImageConfig:
        what = "image config"
        obj = _parse_json_object(raw, what)
        container_config = obj.get("config")
        if container_config is not None and not isinstance(container_config, dict):
            raise BootcError(f'Invalid {what}: "config" must be an object')
        labels = (container_config or {}).get("Labels")
        rootfs = obj.get("rootfs")
        if not isinstance(rootfs, dict) or not isinstance(rootfs.get("diff_ids"), list):
            raise BootcError(f'Invalid {what}: "rootfs.diff_ids" must be a list')
        diff_ids = tuple(rootfs["diff_ids"])
        for diff_id in diff_ids:
            if not is_valid_digest(diff_id):
                raise BootcError(f'Invalid {what}: bad diff ID "{diff_id}"')
        created = _string(obj, "created", what, required=False)
        return cls(
            architecture=_string(obj, "architecture", what),
            os=_string(obj, "os", what),
            created=created or None,
            labels=_string_map(labels, f"{what} labels"),
            diff_ids=diff_ids,
            raw=obj,
        )

    @property
    def version(self) -> str | None:
        """The image's version as bootc reports it, from its labels."""
        for label in VERSION_LABELS:
            if label in self.labels:
                return self.labels[label]
        return None
