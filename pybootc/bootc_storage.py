"""bootc's own containers-storage at SYSROOT/ostree/container-storage.

It is kept apart from the host's podman storage, so `podman image prune` there
can never delete the OS. Images get here by `skopeo copy`, leave by GC, and move
to and from the host's default storage with `bootc image`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pybootc import tools
from pybootc.containers_storage import ContainersStorage
from pybootc.errors import BootcError, error_context
from pybootc.imgref import ImageReference, Transport

STORAGE_SUBDIR = Path("ostree/container-storage")
# The host's own storage, as podman and skopeo use it without options.
DEFAULT_STORAGE = "containers-storage:"


def bootc_storage(sysroot: Path) -> ContainersStorage:
    return ContainersStorage.at(sysroot / STORAGE_SUBDIR)


def stored_name(imgref: ImageReference) -> str:
    """The name an image is kept under: its registry name, else a localhost one."""
    if imgref.transport is Transport.REGISTRY:
        return imgref.name
    if imgref.transport is Transport.CONTAINERS_STORAGE:
        return imgref.name.split("]", 1)[-1]
    tag = imgref.name.rsplit(":", 1)[-1] if imgref.transport is Transport.OCI else "latest"
    base = imgref.name.rsplit(":", 1)[0] if imgref.transport is Transport.OCI else imgref.name
    slug = re.sub(r"[^a-z0-9]+", "-", Path(base).name.lower()).strip("-") or "image"
    tag = re.sub(r"[^A-Za-z0-9_.-]+", "-", tag) or "latest"
    return f"localhost/{imgref.transport.value}-{slug}:{tag}"


@dataclass(frozen=True)
class StoredImage:
    image_id: str
    names: tuple[str, ...]
    digest: str
    created: str
    size: int


def list_images(storage: ContainersStorage) -> list[StoredImage]:
    if not storage.root.exists():
        return []
    out = tools.run(storage.podman("images", "--format", "json")).stdout
    found = []
    for item in json.loads(out or b"[]"):
        found.append(
            StoredImage(
                image_id=f"sha256:{item['Id']}" if ":" not in item["Id"] else item["Id"],
                names=tuple(item.get("Names") or ()),
                digest=str(item.get("Digest", "")),
                created=str(item.get("CreatedAt", "")),
                size=int(item.get("Size", 0)),
            )
        )
    return found


def pull(
    storage: ContainersStorage,
    imgref: ImageReference,
    *,
    decryption_key: Path | None = None,
    quiet: bool = True,
) -> str:
    """Copy `imgref` into bootc's storage; returns the name it is stored under."""
    name = stored_name(imgref)
    extra = ["--decryption-key", str(decryption_key)] if decryption_key else []
    try:
        with error_context(f"Pulling {imgref}"):
            storage.pull(imgref.to_skopeo(), name, extra=extra)
    except BootcError as err:
        if "unexpected EOF" in err.message or "decrypt" in err.message.lower():
            hint = "use --decryption-key" if decryption_key is None else "is it the right key?"
            raise BootcError(
                f"Pulling {imgref}: the image is encrypted and could not be decrypted ({hint})"
            ) from None
        raise
    return name


def remove_unused(storage: ContainersStorage, keep: Iterable[str]) -> list[str]:
    """Remove every image whose ID or manifest digest is not in `keep`; return their IDs."""
    wanted = set(keep)
    removed = []
    for image in list_images(storage):
        if image.image_id in wanted or image.digest in wanted:
            continue
        tools.run(storage.podman("rmi", "--force", image.image_id))
        removed.append(image.image_id)
    return removed


def copy_between(source: str, destination: str, extra: Sequence[str] = ()) -> None:
    tools.run(["skopeo", "copy", "--quiet", *extra, source, destination])
