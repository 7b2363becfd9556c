"""The human-readable form of `bootc status`, line for line as upstream bootc prints it.

Each deployment is a stanza: a title (`● Booted image: NAME`), then `Label: value` rows whose
colons line up under the title's. pybootc adds one row, `Backend:`, for deployments that a
backend other than upstream's ostree-container one made.
"""

from __future__ import annotations

from pybootc.host.model import (
    STORE_OSTREE_CONTAINER,
    BootEntry,
    Host,
    HostStatus,
    ImageStatus,
    SignatureKind,
    Slot,
)

BLACK_CIRCLE = "●"
NOT_DEPLOYED = "System is not deployed via bootc."

_IMAGE_TITLES = {
    Slot.STAGED: "  Staged image",
    Slot.BOOTED: f"{BLACK_CIRCLE} Booted image",
    Slot.ROLLBACK: "  Rollback image",
    None: "   Other image",
}
_OSTREE_TITLES = {
    Slot.STAGED: "  Staged ostree",
    Slot.BOOTED: f"{BLACK_CIRCLE} Booted ostree",
    Slot.ROLLBACK: "  Rollback ostree",
    None: " Other ostree",
}
_COMPOSEFS_TITLES = {
    Slot.STAGED: "  Staged composefs",
    Slot.BOOTED: f"{BLACK_CIRCLE} Booted composefs",
    Slot.ROLLBACK: "  Rollback composefs",
}
_SIGNATURE_LABELS = {
    SignatureKind.CONTAINER_POLICY: "container-policy",
    SignatureKind.INSECURE: "insecure",
}


def _yes_no(flag: bool) -> str:
    return "yes" if flag else "no"


def human_timestamp(timestamp: str) -> str:
    """A normalized timestamp (see spec.normalize_timestamp) without its fraction of a second."""
    return f"{timestamp[:19]}Z"


class _Stanza:
    """The lines of one deployment, with rows right-aligned to the title's width."""

    def __init__(self, title: str, width: int) -> None:
        self.lines = [title]
        self.width = width

    def row(self, label: str, value: object) -> None:
        self.lines.append(f"{label.rjust(self.width)}: {value}")


def _image_name(image: ImageStatus) -> str:
    # Registry is the default transport, so it goes unsaid; any other is written out.
    ref = image.image
    return ref.image if ref.transport == "registry" else f"{ref.transport}:{ref.image}"


def _version_rows(out: _Stanza, image: ImageStatus) -> None:
    when = None if image.timestamp is None else human_timestamp(image.timestamp)
    if image.version is not None:
        out.row("Version", image.version if when is None else f"{image.version} ({when})")
    elif when is not None:
        out.row("Timestamp", when)


def _cached_update_rows(out: _Stanza, cached: ImageStatus, current: ImageStatus) -> None:
    # An update check that found the image we already have is not news.
    if cached.image_digest == current.image_digest:
        return
    if cached.version is not None:
        when = "" if cached.timestamp is None else f" ({human_timestamp(cached.timestamp)})"
        out.row("UpdateVersion", f"{cached.version}{when}")
    else:
        out.row("Update", "Available")
    out.row("UpdateDigest", cached.image_digest)


def _usr_overlay_row(out: _Stanza, slot: Slot | None, status: HostStatus) -> None:
    if slot is Slot.BOOTED and status.usr_overlay is not None:
        out.row("/usr overlay", status.usr_overlay.label)


def _verbose_ostree_rows(out: _Stanza, entry: BootEntry, slot: Slot | None) -> None:
    if entry.ostree is not None:
        out.row("StateRoot", entry.ostree.stateroot)
        out.row("Deploy serial", entry.ostree.deploy_serial)
        out.row("Staged", _yes_no(slot is Slot.STAGED))


def _verbose_tail_rows(out: _Stanza, entry: BootEntry, slot: Slot | None) -> None:
    out.row("Soft-reboot", _yes_no(entry.soft_reboot_capable))
    if entry.composefs is not None:
        enforced = "Not Enforced" if entry.composefs.missing_verity_allowed else "Enforced"
        out.row("FsVerity", enforced)
    if slot is Slot.STAGED:
        out.row("Download-only", _yes_no(entry.download_only))


def _backend_row(out: _Stanza, entry: BootEntry) -> None:
    # pybootc's addition; never printed for upstream's own store, so upstream's output
    # stays byte for byte the same.
    if entry.store is not None and entry.store != STORE_OSTREE_CONTAINER:
        out.row("Backend", entry.store)


def _image_stanza(
    slot: Slot | None, entry: BootEntry, image: ImageStatus, status: HostStatus, verbose: bool
) -> list[str]:
    title = _IMAGE_TITLES[slot]
    out = _Stanza(f"{title}: {_image_name(image)}", len(title))
    out.row("Digest", f"{image.image_digest} ({image.architecture})")
    if entry.composefs is not None:
        out.row("Verity", entry.composefs.verity)
    _version_rows(out, image)
    if entry.pinned:
        out.row("Pinned", "yes")
    if entry.cached_update is not None:
        _cached_update_rows(out, entry.cached_update, image)
    _usr_overlay_row(out, slot, status)
    if verbose:
        _verbose_ostree_rows(out, entry, slot)
        if entry.ostree is not None:
            out.row("Commit", entry.ostree.checksum)
        signature = image.image.signature
        if signature is not None:
            label = _SIGNATURE_LABELS.get(signature.kind, f"ostree-remote:{signature.remote}")
            out.row("Signature", label)
        _verbose_tail_rows(out, entry, slot)
    _backend_row(out, entry)
    return out.lines


def _ostree_stanza(
    slot: Slot | None, entry: BootEntry, checksum: str, status: HostStatus, verbose: bool
) -> list[str]:
    title = _OSTREE_TITLES[slot]
    # Upstream aligns these rows to the title's length in UTF-8 bytes, not characters,
    # so under "● Booted ostree" they sit two columns further right. Kept for fidelity.
    out = _Stanza(title, len(title.encode()))
    out.row("Commit", checksum)
    if entry.pinned:
        out.row("Pinned", "yes")
    _usr_overlay_row(out, slot, status)
    if verbose:
        _verbose_ostree_rows(out, entry, slot)
        out.row("Soft-reboot", _yes_no(entry.soft_reboot_capable))
        if slot is Slot.STAGED:
            out.row("Download-only", _yes_no(entry.download_only))
    _backend_row(out, entry)
    return out.lines


def _stanza(slot: Slot | None, entry: BootEntry, status: HostStatus, verbose: bool) -> list[str]:
    if entry.image is not None:
        return _image_stanza(slot, entry, entry.image, status, verbose)
    if entry.ostree is not None:
        return _ostree_stanza(slot, entry, entry.ostree.checksum, status, verbose)
    if slot is None:
        # Upstream prints nothing (but the separating blank line) for such an entry.
        return []
    if entry.composefs is not None:
        title = _COMPOSEFS_TITLES[slot]
        out = _Stanza(title, len(title.encode()))
        out.row("Commit", entry.composefs.verity)
        return out.lines
    return [f"Current {slot.value} state is unknown"]


def render_human(host: Host, *, verbose: bool = False, require_booted: bool = True) -> str:
    """`bootc status` for people, ending in a newline.

    Like upstream, a host with no booted deployment prints only `System is not deployed
    via bootc.`. A sysroot that is not the running system has no booted deployment but may
    well have deployments: `require_booted=False` renders them all the same.
    """
    status = host.status
    if status.booted is None and require_booted:
        return f"{NOT_DEPLOYED}\n"
    named = [(slot, status.slot(slot)) for slot in Slot]
    stanzas = [_stanza(slot, entry, status, verbose) for slot, entry in named if entry is not None]
    stanzas += [_stanza(None, entry, status, verbose) for entry in status.other_deployments]
    if status.booted is None:
        # Upstream never gets here; leave out the stanzas that say nothing.
        stanzas = [stanza for stanza in stanzas if stanza]
        if not stanzas:
            return f"{NOT_DEPLOYED}\n"
    lines: list[str] = []
    for index, stanza in enumerate(stanzas):
        if index:
            lines.append("")
        lines += stanza
    return "".join(f"{line}\n" for line in lines)
