"""`bootc image ...` and `bootc internals podman`: bootc's storage as a tool.

Images move between bootc's storage and the host's default one (whatever
podman uses without options: /var/lib/containers/storage, or what
CONTAINERS_STORAGE_CONF names) with `skopeo copy`, so they arrive complete.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pybootc import tools
from pybootc.commands.report import Report
from pybootc.errors import BootcError
from pybootc.oci.imgref import ImageReference, Transport
from pybootc.ostree.ext_format import IMAGE_REF_PREFIX, image_of_ref, image_ref
from pybootc.ostree.origin import origin_image
from pybootc.ostree.repo import list_refs, resolve_ref
from pybootc.ostree.sysroot import Sysroot, current_deployment
from pybootc.stores import bootc_storage
from pybootc.stores.export import export_image
from pybootc.stores.pipeline import collect_garbage
from pybootc.stores.registry import store_for

if TYPE_CHECKING:
    from rich.table import Table

DEFAULT_COPY_TARGET = "localhost/bootc"


def podman(sysroot_path: Path, args: Sequence[str]) -> int:
    """Run podman against bootc's storage, output and exit status passed through; the
    storage is made if there is none yet, as upstream's get_ensure_imgstore makes it."""
    return _podman_runs(sysroot_path, [args])


def image_cmd(sysroot_path: Path, verb: str, args: Sequence[str]) -> int:
    """Upstream's `bootc image cmd VERB ARGS`: `podman image VERB ARGS` against bootc's
    storage; `pull` takes image references only, pulled one after the other."""
    if verb != "pull":
        return _podman_runs(sysroot_path, [["image", verb, *args]])
    return _podman_runs(sysroot_path, [["image", "pull", image] for image in args])


def _podman_runs(sysroot_path: Path, runs: Sequence[Sequence[str]]) -> int:
    """Each podman command line in turn against bootc's storage, until one fails; the
    exit status of the last run."""
    Sysroot.open(sysroot_path)  # an OSTree sysroot, or one clear error
    env = bootc_storage.bootc_storage(sysroot_path).podman_env()
    status = 0
    for args in runs:
        status = tools.run_passthrough(["podman", *args], env=env)
        if status != 0:
            break
    return status


class ImageType(enum.StrEnum):
    """What `image list --type` selects, as upstream names it."""

    ALL = "all"
    LOGICAL = "logical"
    HOST = "host"


@dataclass(frozen=True)
class ListedImage:
    """A row of `bootc image list`: upstream's JSON keys, in its order."""

    image_type: str  # host, unified or logical
    image: str


def _host_images(sysroot: Sysroot) -> list[ListedImage]:
    """The images the host's deployments were made from, as ostree-ext lists them:
    one per merge commit ref, whichever backend fetched it."""
    found = []
    for ref in sorted(list_refs(sysroot.repo, IMAGE_REF_PREFIX)):
        image = image_of_ref(ref)
        if image is None:
            continue
        transport, name = image
        # Shown as upstream shows an image reference: `docker://` for a registry.
        known = transport in {t.value for t in Transport}
        shown = str(ImageReference(Transport(transport), name)) if known else f"{transport}:{name}"
        found.append(ListedImage("host", shown))
    return found


def _unified_images(sysroot_path: Path) -> list[ListedImage]:
    """Every name in bootc's own containers-storage, as upstream lists that storage."""
    storage = bootc_storage.bootc_storage(sysroot_path)
    images = bootc_storage.list_images(storage)
    return [ListedImage("unified", name) for image in images for name in sorted(image.names)]


def list_images(sysroot_path: Path, image_type: ImageType) -> list[ListedImage]:
    """The images `bootc image list --type` shows. pybootc has no logically bound
    images, so `logical` lists none."""
    sysroot = Sysroot.open(sysroot_path)
    if image_type is ImageType.LOGICAL:
        return []
    # As upstream, the host's images are always listed with those in bootc's own storage.
    return _host_images(sysroot) + _unified_images(sysroot_path)


def images_json(images: Sequence[ListedImage]) -> str:
    """Upstream's JSON: a pretty-printed list of {"image_type", "image"}, with no
    newline after it (serde_json's to_writer_pretty)."""
    return json.dumps([dataclasses.asdict(image) for image in images], indent=2)


def images_table(images: Sequence[ListedImage]) -> Table:
    """Upstream's table: REPOSITORY and TYPE, no borders."""
    from rich.table import Table

    table = Table(box=None, show_edge=False, pad_edge=True, highlight=False)
    table.add_column("REPOSITORY", no_wrap=True, overflow="fold")
    table.add_column("TYPE", no_wrap=True)
    for image in images:
        table.add_row(image.image, image.image_type)
    return table


def _copy_source(sysroot: Sysroot, source: str | None, work: Path) -> tuple[str, str]:
    """(what to call the image, a skopeo source for it) for `image copy-to-storage`:
    the booted image (on a sysroot nothing boots from, the first in boot order), or
    `source`: a name in bootc's storage, or an image a deployment came from (as
    `image list` shows it)."""
    storage = bootc_storage.bootc_storage(sysroot.path)
    if source is None:
        current = current_deployment(sysroot)
        origin = origin_image(current) if current else None
        if current is None or origin is None:
            raise BootcError("No deployed image to copy; name one with --source")
        store = store_for(origin.backend, sysroot.path, sysroot.repo)
        return store.deployed_source(origin, current.checksum, work)
    stored = {n for image in bootc_storage.list_images(storage) for n in image.names}
    if source in stored:
        return source, storage.reference(source)
    try:
        imgref = ImageReference.parse(source)
    except BootcError:
        imgref = None
    commit = None
    if imgref is not None:
        commit = resolve_ref(sysroot.repo, image_ref(imgref))
    if imgref is None or commit is None:
        raise BootcError(f"No such image: {source}")
    # Either backend keeps the layer commits an image ref's commit was merged from.
    return str(imgref), export_image(sysroot.repo, commit, work / "layout", "image", work)


@contextmanager
def _scratch(sysroot: Sysroot) -> Iterator[Path]:
    """A work directory in the repo's filesystem (a checkout there is hardlinks),
    removed afterwards with whatever skopeo staged in it."""
    with tempfile.TemporaryDirectory(
        prefix="pybootc-copy-", dir=sysroot.path / "ostree/repo/tmp"
    ) as scratch:
        yield Path(scratch)


def copy_to_storage(sysroot_path: Path, source: str | None, target: str | None) -> Report:
    """Copy an image to the host's default storage, as upstream's `image
    copy-to-storage`: from bootc's storage, or exported from the repo's layer
    commits for an image the ostree backend fetched."""
    sysroot = Sysroot.open(sysroot_path)
    destination = f"{bootc_storage.DEFAULT_STORAGE}{target or DEFAULT_COPY_TARGET}"
    with _scratch(sysroot) as work:
        shown, skopeo_source = _copy_source(sysroot, source, work)
        digest_file = work / "digest"
        bootc_storage.copy_between(
            skopeo_source, destination, staging=work, extra=["--digestfile", str(digest_file)]
        )
        digest = digest_file.read_text().strip()
    return Report(
        (f"Copying local image {shown} to {destination} ...", f"Pushed: {destination} {digest}")
    )


def pull_from_default_storage(sysroot_path: Path, image: str) -> Report:
    sysroot = Sysroot.open(sysroot_path)
    storage = bootc_storage.bootc_storage(sysroot_path)
    name = bootc_storage.stored_name(ImageReference(Transport.CONTAINERS_STORAGE, image))
    with _scratch(sysroot) as work:
        source = f"{bootc_storage.DEFAULT_STORAGE}{image}"
        bootc_storage.copy_between(source, storage.reference(name), staging=work)
    return Report((f"Copied {bootc_storage.DEFAULT_STORAGE}{image} to bootc's storage as {name}",))


def prune(sysroot_path: Path) -> Report:
    sysroot = Sysroot.open(sysroot_path)
    # Under the lock, as every deployment's GC: a switch holding it may be deploying an
    # image that the list of images in use, read before, does not name yet.
    with sysroot.lock():
        removed = collect_garbage(sysroot).images
    if not removed:
        return Report(("No unused images.",))
    return Report(tuple(f"Removed {image_id}" for image_id in removed))
