"""`upgrade --check`: what an update would bring, from manifest and config alone."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pybootc.commands.deploy import followed, prepare_target, registry_auth
from pybootc.commands.report import Report
from pybootc.oci.model import Descriptor
from pybootc.ostree.ext_format import cached_update_metadata
from pybootc.ostree.gi import GLib
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


@dataclass(frozen=True)
class ManifestDiff:
    """Upstream's ManifestDiff: the new image's layers, and those removed and added
    against the deployed one's."""

    total: int
    total_size: int
    removed: int
    removed_size: int
    added: int
    added_size: int

    @classmethod
    def between(cls, old: Sequence[Descriptor], new: Sequence[Descriptor]) -> ManifestDiff:
        old_digests = {d.digest for d in old}
        new_digests = {d.digest for d in new}
        removed = [d for d in old if d.digest not in new_digests]
        added = [d for d in new if d.digest not in old_digests]
        return cls(
            len(new),
            sum(d.size for d in new),
            len(removed),
            sum(d.size for d in removed),
            len(added),
            sum(d.size for d in added),
        )

    def lines(self) -> list[str]:
        size = GLib.format_size
        return [
            f"Total new layers: {self.total:<4}  Size: {size(self.total_size)}",
            f"Removed layers:   {self.removed:<4}  Size: {size(self.removed_size)}",
            f"Added layers:     {self.added:<4}  Size: {size(self.added_size)}",
        ]
