"""`bootc internals flatten`: an image, from any transport, flattened into a directory.

With `--source blobs` the layer tars are streamed through skopeo's image proxy;
with `--source containers-storage` the image is pulled into a containers-storage
(a scratch one unless given) and its overlay diff directories are merged.
"""

from __future__ import annotations

import enum
import functools
import os
import shutil
import tempfile
from pathlib import Path

from pybootc.errors import BootcError, error_context
from pybootc.layers.flatten import BlobLayer, FlattenSummary, flatten_blobs, flatten_diff_dirs
from pybootc.oci.model import ImageConfig, Manifest
from pybootc.stores.containers_storage import ContainersStorage

# The name an image gets in a scratch storage; nothing else lives there.
_SCRATCH_NAME = "localhost/pybootc-flatten:latest"


class Source(enum.StrEnum):
    BLOBS = "blobs"
    CONTAINERS_STORAGE = "containers-storage"


def _check_output(output: Path) -> None:
    if os.path.lexists(output):
        raise BootcError(f"Output directory {output} already exists")
    if not output.parent.is_dir():
        raise BootcError(f"{output.parent} is not a directory")


def flatten_from_blobs(image: str, output: Path) -> FlattenSummary:
    # Imported here: the containers-storage source has no use for it.
    from pybootc.oci.auth import RegistryAuth
    from pybootc.oci.proxy import ImageProxy

    with (
        # Beside the output: what skopeo stages goes with it.
        tempfile.TemporaryDirectory(prefix=".pybootc-staging-", dir=output.parent) as staging,
        ImageProxy(auth=RegistryAuth.find(Path("/")), staging=Path(staging)) as proxy,
    ):
        opened = proxy.open_image(image)
        manifest = Manifest.parse(proxy.fetch_manifest(opened)[0])
        config = ImageConfig.parse(proxy.fetch_config(opened))
        if len(config.diff_ids) != len(manifest.layers):
            raise BootcError(
                f"Image has {len(manifest.layers)} layers but {len(config.diff_ids)} diff_ids"
            )
        for desc in manifest.layers:
            # Refuse unknown or encrypted layers before anything is written.
            if desc.layer_format.encrypted:
                raise BootcError(
                    f"Layer {desc.digest} is encrypted; use --source containers-storage"
                )
        layers = [
            BlobLayer(
                desc,
                diff_id,
                functools.partial(proxy.open_blob, opened, desc.digest, desc.size),
                source_checks_digest=True,
            )
            for desc, diff_id in zip(manifest.layers, config.diff_ids, strict=True)
        ]
        return flatten_blobs(layers, output)


def flatten_from_storage(image: str, output: Path, storage_root: Path | None) -> FlattenSummary:
    scratch = storage_root is None
    if storage_root is None:
        storage_root = Path(tempfile.mkdtemp(prefix="pybootc-storage-", dir="/var/tmp"))
    storage = ContainersStorage.at(storage_root)
    try:
        with error_context(f"Pulling {image} into {storage.root}"):
            storage.pull(image, _SCRATCH_NAME)
        layers = storage.image_layers(_SCRATCH_NAME)
        return flatten_diff_dirs(
            [layer.diff_dir for layer in layers],
            output,
            markers=[layer.markers for layer in layers],
        )
    finally:
        if scratch:
            storage.reset()
            shutil.rmtree(storage.root, ignore_errors=True)
            shutil.rmtree(storage.runroot, ignore_errors=True)


def flatten_image(
    image: str, output: Path, *, source: Source, storage_root: Path | None = None
) -> FlattenSummary:
    _check_output(output)
    with error_context(f"Flattening {image}"):
        if source is Source.BLOBS:
            return flatten_from_blobs(image, output)
        return flatten_from_storage(image, output, storage_root)
