"""What a verb says: the lines for stdout, and whether it changed what boots next."""

from __future__ import annotations

from dataclasses import dataclass

from pybootc.oci.imgref import OstreeImageReference
from pybootc.oci.metadata import ImageMetadata


@dataclass(frozen=True)
class Report:
    """What a verb has to say: lines for stdout, and whether it changed what boots next
    (`--apply` reboots only then)."""

    lines: tuple[str, ...]
    changed: bool = True


def queued(imgref: OstreeImageReference, metadata: ImageMetadata) -> Report:
    lines = [f"Queued for next boot: {imgref.spec_form()}"]
    if metadata.config.version:
        lines.append(f"  Version: {metadata.config.version}")
    lines.append(f"  Digest: {metadata.manifest_digest}")
    return Report(tuple(lines))
