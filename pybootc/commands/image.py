"""`bootc image ...` and `bootc internals podman`: bootc's storage as a tool.

Images move between bootc's storage and the host's default one (whatever
podman uses without options: /var/lib/containers/storage, or what
CONTAINERS_STORAGE_CONF names) with `skopeo copy`, so they arrive complete.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from pybootc import tools
from pybootc.commands.report import Report
from pybootc.errors import BootcError
from pybootc.oci.imgref import ImageReference, Transport
from pybootc.ostree.origin import origin_image
from pybootc.ostree.sysroot import Sysroot, current_deployment
from pybootc.stores import bootc_storage
from pybootc.stores.pipeline import collect_garbage
from pybootc.stores.protocol import DeployedImages

DEFAULT_COPY_TARGET = "localhost/bootc"


def podman(sysroot_path: Path, args: Sequence[str]) -> int:
    """Run podman against bootc's storage, output and exit status passed through."""
    storage = bootc_storage.bootc_storage(sysroot_path)
    if not storage.root.is_dir():
        raise BootcError(
            f"{storage.root} does not exist: nothing was deployed with containers-storage"
        )
    return tools.run_passthrough(["podman", *args], env=storage.podman_env())


def list_images(sysroot_path: Path, *, as_json: bool) -> str:
    sysroot = Sysroot.open(sysroot_path)
    used = DeployedImages.of(sysroot).manifest_digests
    images = bootc_storage.list_images(bootc_storage.bootc_storage(sysroot_path))
    rows = [
        {
            "image": name,
            "imageId": image.image_id,
            "digest": image.digest,
            "type": "host" if image.digests & used else "unused",
        }
        for image in images
        for name in (image.names or ("<none>",))
    ]
    if as_json:
        return json.dumps(rows, indent=2)
    width = max([len("REPOSITORY"), *(len(r["image"]) for r in rows)])
    lines = [f"{'REPOSITORY':<{width}}  {'TYPE':<6}  IMAGE ID      DIGEST"]
    for row in rows:
        short_id = row["imageId"].removeprefix("sha256:")[:12]
        lines.append(f"{row['image']:<{width}}  {row['type']:<6}  {short_id}  {row['digest']}")
    return "\n".join(lines)


def _deployed_name(sysroot: Sysroot) -> str:
    current = current_deployment(sysroot)
    origin = origin_image(current) if current else None
    if origin is None:
        raise BootcError("No deployed image to copy; name one with --source")
    return bootc_storage.stored_name(origin.imgref.imgref)


def copy_to_storage(sysroot_path: Path, source: str | None, target: str | None) -> Report:
    sysroot = Sysroot.open(sysroot_path)
    storage = bootc_storage.bootc_storage(sysroot_path)
    name = source or _deployed_name(sysroot)
    destination = target or DEFAULT_COPY_TARGET
    bootc_storage.copy_between(
        storage.reference(name), f"{bootc_storage.DEFAULT_STORAGE}{destination}"
    )
    return Report((f"Copied {name} to {bootc_storage.DEFAULT_STORAGE}{destination}",))


def pull_from_default_storage(sysroot_path: Path, image: str) -> Report:
    Sysroot.open(sysroot_path)
    storage = bootc_storage.bootc_storage(sysroot_path)
    name = bootc_storage.stored_name(ImageReference(Transport.CONTAINERS_STORAGE, image))
    bootc_storage.copy_between(f"{bootc_storage.DEFAULT_STORAGE}{image}", storage.reference(name))
    return Report((f"Copied {bootc_storage.DEFAULT_STORAGE}{image} to bootc's storage as {name}",))


def prune(sysroot_path: Path) -> Report:
    removed = collect_garbage(Sysroot.open(sysroot_path))
    if not removed:
        return Report(("No unused images.",))
    return Report(tuple(f"Removed {image_id}" for image_id in removed))
