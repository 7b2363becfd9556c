"""An image's manifest and config, fetched with `skopeo inspect` and no layer blob.

This is ostree-ext's `prepare()`: all that `upgrade --check` needs, and what a
pull checks (architecture, digest) before it fetches anything big.
"""

from __future__ import annotations

import dataclasses
import json
import platform
from dataclasses import dataclass

from pybootc import tools
from pybootc.errors import BootcError, error_context
from pybootc.oci.auth import ANONYMOUS, RegistryAuth
from pybootc.oci.imgref import ImageReference, Transport
from pybootc.oci.model import INDEX_MEDIA_TYPES, ImageConfig, Manifest, manifest_digest
from pybootc.oci.sigpolicy import check_policy

# uname -m to the architecture names of OCI configs (Go's GOARCH).
_GOARCH = {
    "x86_64": "amd64",
    "aarch64": "arm64",
    "armv7l": "arm",
    "ppc64le": "ppc64le",
    "s390x": "s390x",
}


def host_architecture() -> str:
    machine = platform.machine()
    return _GOARCH.get(machine, machine)


@dataclass(frozen=True)
class ImageMetadata:
    manifest_raw: bytes
    manifest_digest: str
    manifest: Manifest
    config_raw: bytes
    config: ImageConfig
    # The skopeo source the signature policy judged: the manifest the reference resolved
    # to (this machine's, from an index), by digest for a registry; what is deployed is
    # pulled from it.
    judged_source: str | None = None

    def source_of(self, imgref: ImageReference) -> str:
        """Where to read this image's blobs from: the manifest judged, else `imgref`."""
        return self.judged_source or imgref.to_skopeo()

    @property
    def config_digest(self) -> str:
        """The image ID containers-storage gives this image."""
        return self.manifest.config.digest


def _inspect(source: str, *args: str, auth: RegistryAuth = ANONYMOUS) -> bytes:
    argv = ["skopeo", "inspect", "--retry-times", "0", *auth.options(), *args, source]
    return tools.run(argv).stdout


def _by_digest(imgref: ImageReference, digest: str) -> str:
    """The skopeo source of `digest` in the registry repository of `imgref`."""
    repository = imgref.name.rsplit("@", 1)[0]
    last = repository.rsplit("/", 1)
    if ":" in last[-1]:
        repository = repository.rsplit(":", 1)[0]
    return f"docker://{repository}@{digest}"


def _platform_manifest(imgref: ImageReference, index_raw: bytes) -> str:
    """This machine's image in an index, by digest (a skopeo source), chosen as
    containers/image chooses it: the first entry for linux on this architecture, in
    the index's order; failing that, the first entry that names no platform."""
    arch = host_architecture()
    index = json.loads(index_raw)
    entries = [e for e in index.get("manifests") or [] if isinstance(e, dict)]
    chosen = next(
        (
            entry
            for entry in entries
            if isinstance(plat := entry.get("platform"), dict)
            and plat.get("architecture") == arch
            # An entry that names no OS is not for linux (containers/image asks for
            # an exact match).
            and plat.get("os") == "linux"
        ),
        next((entry for entry in entries if entry.get("platform") is None), None),
    )
    if chosen is None or not isinstance(chosen.get("digest"), str):
        raise BootcError(f"Image has no manifest for architecture {arch}")
    if imgref.transport is not Transport.REGISTRY:
        raise BootcError("Multi-architecture images are supported from registries only")
    return _by_digest(imgref, chosen["digest"])


def _is_index(raw: bytes) -> bool:
    """Whether `raw` is an image index (a manifest list); anything else, even what is
    no JSON, is for skopeo to judge and to say what is wrong with it."""
    try:
        document = json.loads(raw)
    except (ValueError, RecursionError):
        return False
    return isinstance(document, dict) and (
        document.get("mediaType") in INDEX_MEDIA_TYPES or "manifests" in document
    )


def _metadata(raw: bytes, config_raw: bytes) -> ImageMetadata:
    return ImageMetadata(
        raw, manifest_digest(raw), Manifest.parse(raw), config_raw, ImageConfig.parse(config_raw)
    )


def metadata_at(source: str) -> ImageMetadata:
    """Manifest and config of the image at skopeo's `source`, exactly as stored there."""
    return _metadata(_inspect(source, "--raw"), _inspect(source, "--config", "--raw"))


def fetch_image_metadata(
    imgref: ImageReference, *, auth: RegistryAuth = ANONYMOUS, check_architecture: bool = True
) -> ImageMetadata:
    """Fetch and check manifest and config of `imgref`; no layer is downloaded.

    The signature policy is applied to the manifest the reference resolves to (from an
    index, this machine's), pinned by its digest (`judged_source`): its config is read,
    and what is deployed later is fetched, from there, so a tag that moves in between
    cannot swap in an image the policy never saw.
    """
    source = imgref.to_skopeo()
    with error_context(f"Fetching manifest of {imgref}"):
        raw = _inspect(source, "--raw", auth=auth)
        if _is_index(raw):
            # The policy judges the image that is fetched, not the index: skopeo's copy
            # of an index judges the image it picks from it, which need not be ours.
            source = _platform_manifest(imgref, raw)
            raw = _inspect(source, "--raw", auth=auth)
        elif imgref.transport is Transport.REGISTRY:
            source = _by_digest(imgref, manifest_digest(raw))
        check_policy(source, auth)
        # The config of that manifest, by its digest too: a tag read again could name
        # another build by now.
        metadata = _metadata(raw, _inspect(source, "--config", "--raw", auth=auth))
    metadata = dataclasses.replace(metadata, judged_source=source)
    expected = host_architecture()
    if check_architecture and metadata.config.architecture != expected:
        raise BootcError(
            f"Image has architecture {metadata.config.architecture}; expected {expected}"
        )
    return metadata
