"""ostree-ext's on-disk format in an OSTree repo, kept in this one module.

An image imported the way ostree-ext imports it is a merge commit under
`ostree/container/image/ESCAPED-IMGREF`, whose metadata holds the manifest, its digest
and the image config; with the ostree backend each layer is a commit of its own under
`ostree/container/blob/ESCAPED-DIGEST`. An update that `upgrade --check` found is kept
as detached metadata of the deployed commit. Tools written for ostree-ext (rpm-ostree,
bootc) read these names; nothing else in pybootc spells them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pybootc.errors import BootcError
from pybootc.ostree.gi import GLib

if TYPE_CHECKING:
    from pybootc.oci.imgref import ImageReference
    from pybootc.oci.metadata import ImageMetadata

# Image refs and the ostree backend's layer refs alike.
CONTAINER_REF_PREFIX = "ostree/container"
IMAGE_REF_PREFIX = f"{CONTAINER_REF_PREFIX}/image"
BLOB_REF_PREFIX = f"{CONTAINER_REF_PREFIX}/blob"

# The merge commit's metadata.
MANIFEST_DIGEST_KEY = "ostree.manifest-digest"
MANIFEST_KEY = "ostree.manifest"
IMAGE_CONFIG_KEY = "ostree.container.image-config"
# A layer commit's metadata.
BLOB_DIGEST_KEY = "ostree.container.blob-digest"
# The deployed commit's detached metadata: an update found by `upgrade --check`.
CACHED_DIGEST_KEY = "ostree-ext.cached.manifest-digest"
CACHED_MANIFEST_KEY = "ostree-ext.cached.manifest"
CACHED_CONFIG_KEY = "ostree-ext.cached.config"


def ref_escape(s: str) -> str:
    """Escape `s` for use in a ref, exactly as ostree-ext's refescape does.

    ASCII alphanumerics and `-` stay; `/` stays when it follows an alphanumeric and is
    not the last character (so no empty or trailing path components); `_` becomes `__`;
    anything else becomes `_XX_`, its code point in upper-case hex (at least 2 digits).
    """
    if not s:
        raise BootcError("Invalid empty string for ref")
    if "\0" in s:
        raise BootcError("Invalid embedded NUL in string for ostree ref")
    out: list[str] = []
    previous_alphanumeric = False
    for i, c in enumerate(s):
        alphanumeric = c.isascii() and c.isalnum()
        slash_kept = c == "/" and previous_alphanumeric and i + 1 < len(s)
        if alphanumeric or c == "-" or slash_kept:
            out.append(c)
        elif c == "_":
            out.append("__")
        else:
            out.append(f"_{ord(c):02X}_")
        previous_alphanumeric = alphanumeric
    return "".join(out)


def ref_unescape(escaped: str) -> str:
    """Undo `ref_escape`."""
    out: list[str] = []
    i = 0
    while i < len(escaped):
        c = escaped[i]
        if c != "_":
            if not (c.isascii() and (c.isalnum() or c in "-/")):
                raise BootcError(f"Invalid character {c!r} in escaped ref {escaped}")
            out.append(c)
            i += 1
        elif escaped.startswith("__", i):
            out.append("_")
            i += 2
        else:
            end = escaped.find("_", i + 1)
            try:
                if end < 0:
                    raise ValueError(escaped)
                out.append(chr(int(escaped[i + 1 : end], 16)))
            except (ValueError, OverflowError):
                raise BootcError(f"Invalid escape in ref {escaped}") from None
            i = end + 1
    return "".join(out)


def image_ref_name(imgref: str) -> str:
    """The ref ostree-ext keeps the merge commit of `transport:name` under."""
    return f"{IMAGE_REF_PREFIX}/{ref_escape(imgref)}"


def image_of_ref(ref: str) -> tuple[str, str] | None:
    """(transport, name) of the image whose merge commit `ref` holds; None for a ref
    that is not under IMAGE_REF_PREFIX."""
    escaped = ref.removeprefix(f"{IMAGE_REF_PREFIX}/")
    if escaped == ref:
        return None
    transport, _, name = ref_unescape(escaped).partition(":")
    return transport, name


def image_ref(imgref: ImageReference) -> str:
    """The ref that holds an image's merge commit: ostree-ext names it after
    `transport:name` (whatever the signature policy of the reference it came by)."""
    return image_ref_name(f"{imgref.transport.value}:{imgref.name}")


def blob_ref(digest: str) -> str:
    """The ref of the ostree backend's commit of the layer `digest`."""
    return f"{BLOB_REF_PREFIX}/{ref_escape(digest)}"


def canonical_json(raw: bytes) -> str:
    """The JSON text ostree-ext stores in commit metadata: compact, keys sorted."""
    return json.dumps(json.loads(raw), sort_keys=True, separators=(",", ":"))


def image_commit_metadata(metadata: ImageMetadata) -> dict[str, GLib.Variant]:
    """What a merge commit records of its image."""
    return {
        MANIFEST_DIGEST_KEY: GLib.Variant("s", metadata.manifest_digest),
        MANIFEST_KEY: GLib.Variant("s", canonical_json(metadata.manifest_raw)),
        IMAGE_CONFIG_KEY: GLib.Variant("s", canonical_json(metadata.config_raw)),
    }


def cached_update_metadata(metadata: ImageMetadata) -> dict[str, GLib.Variant]:
    """The detached metadata that records `metadata` as the update found."""
    return {
        CACHED_DIGEST_KEY: GLib.Variant("s", metadata.manifest_digest),
        CACHED_MANIFEST_KEY: GLib.Variant("s", canonical_json(metadata.manifest_raw)),
        CACHED_CONFIG_KEY: GLib.Variant("s", canonical_json(metadata.config_raw)),
    }


def _digest_and_config(
    meta: Mapping[str, Any], digest_key: str, config_key: str
) -> tuple[str, dict[str, Any]] | None:
    digest = meta.get(digest_key)
    config_text = meta.get(config_key)
    if not isinstance(digest, str) or not isinstance(config_text, str):
        return None
    config: dict[str, Any] = json.loads(config_text)
    return digest, config


def image_of_commit(meta: Mapping[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """(manifest digest, image config) a merge commit's metadata records, if any."""
    return _digest_and_config(meta, MANIFEST_DIGEST_KEY, IMAGE_CONFIG_KEY)


def cached_update_of(detached: Mapping[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """(manifest digest, image config) of the update recorded in detached metadata."""
    return _digest_and_config(detached, CACHED_DIGEST_KEY, CACHED_CONFIG_KEY)


def manifest_of_commit(meta: Mapping[str, Any]) -> bytes | None:
    """The manifest a merge commit's metadata records, if any."""
    raw = meta.get(MANIFEST_KEY)
    return raw.encode() if isinstance(raw, str) else None


def blob_digest_of_commit(meta: Mapping[str, Any]) -> str | None:
    """The layer digest a layer commit's metadata records, if any."""
    digest = meta.get(BLOB_DIGEST_KEY)
    return digest if isinstance(digest, str) else None
