"""`upgrade --check`: what an update would bring, from manifest and config alone."""

from __future__ import annotations

from pathlib import Path

from pybootc.commands.deploy import followed, prepare_target, registry_auth
from pybootc.commands.report import ManifestDiff, Report
from pybootc.ostree.ext_format import cached_update_metadata
from pybootc.ostree.origin import commit_layers
from pybootc.ostree.repo import set_detached_metadata
from pybootc.ostree.sysroot import Sysroot
from pybootc.stores.protocol import layer_summary


def check_for_update(
    sysroot_path: Path, tag: str | None = None
) -> tuple[Report, dict[str, object]]:
    """`upgrade --check`: manifest and config only, an update kept as the cached one, and what
    an upgrade would fetch: upstream's layer diff against the deployed manifest, then
    the layers the store has already and those it needs."""
    sysroot = Sysroot.open(sysroot_path)
    with sysroot.lock():
        current, image = followed(sysroot, tag)
        prepared = prepare_target(sysroot, image, registry_auth(sysroot, current), current)
        metadata = prepared.metadata
        if not prepared.deployed and tag is None:
            # As ostree-ext caches it: an update, of the image the deployment follows.
            set_detached_metadata(sysroot.repo, current.checksum, cached_update_metadata(metadata))
        deployed = commit_layers(sysroot.repo, current.checksum)
    diff = ManifestDiff.between(deployed, metadata.manifest.layers)
    present, needed, needed_size = layer_summary(prepared.layers)
    summary: dict[str, object] = {
        "image": str(image.imgref),
        "updateAvailable": not prepared.deployed,
        "digest": metadata.manifest_digest,
        "version": metadata.config.version,
        "layers": diff.total,
        "size": diff.total_size,
        "removedLayers": diff.removed,
        "removedSize": diff.removed_size,
        "addedLayers": diff.added,
        "addedSize": diff.added_size,
        "layersPresent": present,
        "layersNeeded": needed,
        "bytesNeeded": needed_size,
    }
    if prepared.deployed:
        return Report((f"No changes in: {image.imgref.alternate()}",)), summary
    lines = [f"Update available for: {image.imgref.alternate()}"]
    if metadata.config.version:
        lines.append(f"  Version: {metadata.config.version}")
    lines.append(f"  Digest: {metadata.manifest_digest}")
    lines += diff.lines()
    lines.append(prepared.layers_line())
    return Report(tuple(lines)), summary
