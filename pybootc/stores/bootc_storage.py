"""bootc's own containers-storage at SYSROOT/ostree/bootc/storage.

It is kept apart from the host's podman storage, so `podman image prune` there
can never delete the OS. Images get here by `skopeo copy`, leave by GC, and move
to and from the host's default storage with `bootc image`.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pybootc import tools
from pybootc.errors import BootcError, error_context
from pybootc.oci.auth import ANONYMOUS, RegistryAuth
from pybootc.oci.imgref import ImageReference, Transport
from pybootc.stores.containers_storage import ContainersStorage

# Upstream's path (the seed PR had ostree/container-storage).
STORAGE_SUBDIR = Path("ostree/bootc/storage")
# The host's own storage, as podman and skopeo use it without options.
DEFAULT_STORAGE = "containers-storage:"


def bootc_storage(sysroot: Path) -> ContainersStorage:
    return ContainersStorage.at(sysroot / STORAGE_SUBDIR)


def stored_name(imgref: ImageReference) -> str:
    """The name an image is kept under: its registry name; else, as podman names an
    image from a layout or archive, a localhost one after the directory or file it
    came from, with its tag there (`oci:/srv/images/fedora-bootc:41` is
    `localhost/fedora-bootc:41`)."""
    if imgref.transport is Transport.REGISTRY:
        return imgref.name
    if imgref.transport is Transport.CONTAINERS_STORAGE:
        return imgref.name.split("]", 1)[-1]
    path, tag = imgref.name, ""
    if imgref.transport in (Transport.OCI, Transport.OCI_ARCHIVE, Transport.DOCKER_ARCHIVE):
        path, _, tag = imgref.name.partition(":")
    stem = Path(path).name.lower().removesuffix(".tar")
    repository = re.sub(r"[^a-z0-9]+", "-", stem).strip("-") or "image"
    tag = re.sub(r"[^A-Za-z0-9_.-]+", "-", tag).lstrip(".-")[:128] or "latest"
    return f"localhost/{repository}:{tag}"


@dataclass(frozen=True)
class StoredImage:
    image_id: str
    names: tuple[str, ...]
    digest: str
    created: str
    size: int
    # Every manifest digest the image was pulled under: one image (one config, one
    # layer chain) can come from several manifests, e.g. the gzip and zstd pushes of
    # one build; `digest` is only the first of them.
    digests: frozenset[str] = frozenset()


def _image_id(shown: str) -> str:
    """An image ID as podman shows it (bare hex, or with its algorithm), with it."""
    return shown if ":" in shown else f"sha256:{shown}"


def list_images(storage: ContainersStorage) -> list[StoredImage]:
    if not storage.root.exists():
        return []
    out = storage.podman("images", "--format", "json").stdout
    found = []
    for item in json.loads(out or b"[]"):
        found.append(
            StoredImage(
                image_id=_image_id(item["Id"]),
                names=tuple(item.get("Names") or ()),
                digest=str(item.get("Digest", "")),
                created=str(item.get("CreatedAt", "")),
                size=int(item.get("Size", 0)),
                digests=frozenset(
                    {str(item.get("Digest", ""))}
                    | {str(d).rpartition("@")[2] for d in item.get("RepoDigests") or ()}
                ),
            )
        )
    return found


# containers-storage names an image by its config digest. skopeo 1.9.3's zstd:chunked
# writer re-tars every layer (it drops the end-of-archive padding) but keeps the config
# and its diff_ids, so one config can come with two different layer chains: the gzip
# and the zstd:chunked push of one build. Pulling the second then fails with this.
_IMAGE_ID_TAKEN = "uses a different top layer"


def _own_image_id(source: str, auth: RegistryAuth) -> str:
    """An image ID for the image at skopeo's `source` that no config digest can collide
    with."""
    raw = tools.run(["skopeo", "inspect", *auth.options(), "--raw", source]).stdout
    return hashlib.sha256(b"pybootc-image-id:" + hashlib.sha256(raw).digest()).hexdigest()


def pull(
    storage: ContainersStorage,
    imgref: ImageReference,
    *,
    decryption_key: Path | None = None,
    auth: RegistryAuth = ANONYMOUS,
    tmpdir: Path | None = None,
    source: str | None = None,
) -> str:
    """Copy `imgref` into bootc's storage, skopeo staging blobs in `tmpdir`; returns
    the name it is stored under. `source`, if given, is where to copy it from: the
    manifest, by digest, that the signature policy judged."""
    name = stored_name(imgref)
    source = source or imgref.to_skopeo()
    extra = ["--decryption-key", str(decryption_key)] if decryption_key else []
    extra += auth.source_options()
    try:
        with error_context(f"Pulling {imgref}"):
            try:
                storage.pull(source, name, extra=extra, tmpdir=tmpdir)
            except BootcError as err:
                if _IMAGE_ID_TAKEN not in err.message:
                    raise
                # The layers it wrote are kept and reused: only the image is new.
                storage.pull(
                    source,
                    f"{name}@{_own_image_id(source, auth)}",
                    extra=extra,
                    tmpdir=tmpdir,
                )
    except BootcError as err:
        # skopeo says "unexpected EOF" of a layer a wrong key decrypted, and of any
        # stream cut short: only the first is a question of keys.
        cut_short = decryption_key is not None and "unexpected EOF" in err.message
        if cut_short or "decrypt" in err.message.lower():
            hint = "use --decryption-key" if decryption_key is None else "is it the right key?"
            raise BootcError(
                f"Pulling {imgref}: the image is encrypted and could not be decrypted ({hint})"
            ) from None
        raise
    return name


def remove_unused(storage: ContainersStorage, keep: Iterable[str]) -> list[str]:
    """Remove every image whose ID or manifest digest is not in `keep`, and that no
    container was made from; return their IDs."""
    wanted = set(keep)
    unused = [
        i for i in list_images(storage) if i.image_id not in wanted and not i.digests & wanted
    ]
    if not unused:
        return []  # the usual case after an update: no podman ps on its way
    # Containers made with `internals podman create/run` are the user's: their images
    # stay, as upstream's `podman image rm` (no --force) leaves them.
    listed = storage.podman("ps", "--all", "--no-trunc", "--format", "{{.ImageID}}").stdout
    in_containers = {_image_id(found) for found in listed.decode().split()}
    removed = []
    for image in unused:
        if image.image_id in in_containers:
            continue
        # --force for an image with several names, which podman keeps otherwise; no
        # container is left for it to remove with the image.
        storage.podman("rmi", "--force", image.image_id)
        removed.append(image.image_id)
    return removed


def copy_between(
    source: str, destination: str, *, staging: Path, extra: Sequence[str] = ()
) -> None:
    """`skopeo copy`, staging blobs in `staging`, which the caller removes afterwards:
    skopeo 1.9 leaves the uncompressed layers it stages for containers-storage behind
    in its default, /var/tmp, even when the copy succeeds."""
    tools.run(["skopeo", "--tmpdir", str(staging), "copy", "--quiet", *extra, source, destination])
