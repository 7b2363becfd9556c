"""What a verb says: the lines for stdout, and whether it changed what boots next."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pybootc.oci.imgref import OstreeImageReference
from pybootc.oci.metadata import ImageMetadata
from pybootc.oci.model import Descriptor
from pybootc.ostree.gi import GLib


@dataclass(frozen=True)
class Report:
    """What a verb has to say: lines for stdout, and whether it changed what boots next
    (`--apply` reboots only then)."""

    lines: tuple[str, ...]
    changed: bool = True


def queued(
    imgref: OstreeImageReference, metadata: ImageMetadata, diff: Sequence[str] = ()
) -> Report:
    """Upstream's lines for a staged image; an upgrade adds its layer diff (`diff`)."""
    lines = [f"Queued for next boot: {imgref.spec_form()}"]
    if metadata.config.version:
        lines.append(f"  Version: {metadata.config.version}")
    lines.append(f"  Digest: {metadata.manifest_digest}")
    return Report((*lines, *diff))


def no_changes(imgref: OstreeImageReference, metadata: ImageMetadata) -> str:
    """What upstream's pull says of an image it has already."""
    return f"No changes in {imgref.spec_form()} => {metadata.manifest_digest}"


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
