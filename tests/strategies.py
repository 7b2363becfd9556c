"""Hypothesis strategies the tests share: layers that collide (flattening tests) and
Host documents (the spec and its rendering)."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import strategies as st

from pybootc.host.fields import normalize_timestamp
from pybootc.host.model import (
    STORE_OSTREE_CONTAINER,
    BootEntry,
    BootEntryComposefs,
    BootEntryOstree,
    Bootloader,
    BootOrder,
    BootType,
    FilesystemOverlay,
    FilesystemOverlayAccessMode,
    FilesystemOverlayPersistence,
    Host,
    HostSpec,
    HostStatus,
    HostType,
    ImageReference,
    ImageSignature,
    ImageStatus,
    ObjectMeta,
)
from pybootc.sample.ocibuild import (
    Entry,
    Kind,
    Layer,
    directory,
    file,
    hardlink,
    layer,
    opaque,
    symlink,
    whiteout,
)
from tests.support import ACL_AS_MODE_750, ACL_EXTENDED

# --- layers over a small name space, so that they collide ------------------------------

NAMES = ("a", "b", "c")
paths = st.lists(st.sampled_from(NAMES), min_size=1, max_size=3).map("/".join)
modes = st.sampled_from([0o644, 0o600, 0o755, 0o4755, 0o700, 0o1777])
owners = st.sampled_from([0, 0, 1000])
CAPABILITY = bytes.fromhex("0100000200200000000000000000000000000000")
# The kernel refuses a malformed security.capability or ACL, so those only ever get
# real ones: an access ACL the mode can say, or one it cannot (layers/kernel_xattrs.py).
_REAL = {
    "security.capability": {b"1": CAPABILITY, b"\x00\xff": CAPABILITY},
    "system.posix_acl_access": {b"1": ACL_AS_MODE_750, b"\x00\xff": ACL_EXTENDED},
}
xattrs = st.dictionaries(
    st.sampled_from(["user.x", "user.y", "security.capability", "trusted.t", *_REAL]),
    st.sampled_from([b"1", b"\x00\xff"]),
    max_size=2,
).map(lambda d: {k: _REAL[k][v] if k in _REAL else v for k, v in d.items()})


KINDS = ["file", "file", "dir", "dir", "symlink", "hardlink", "whiteout", "opaque", "fifo"]


@st.composite
def layers(draw: st.DrawFn) -> Layer:
    # Distinct paths, and a directory wherever the layer writes below a path:
    # layers as image builders make them, so that most stacks are accepted and
    # the collisions happen between layers.
    chosen = draw(st.lists(paths, min_size=1, max_size=8, unique=True))
    # containers-storage follows a symlink the same layer made (and can hang on a
    # FIFO written through one); pybootc refuses that. Such layers stay out here
    # and are covered by the breakout tests.
    parents = {p[:i] for p in chosen for i in range(len(p)) if p[i] == "/"}
    markers: list[Entry] = []
    entries: list[Entry] = []
    written_files: list[str] = []
    for path in chosen:
        kind = "dir" if path in parents else draw(st.sampled_from(KINDS))
        if kind == "file":
            entries.append(
                file(
                    path,
                    draw(st.binary(max_size=8)),
                    mode=draw(modes),
                    uid=draw(owners),
                    xattrs=draw(xattrs),
                )
            )
            written_files.append(path)
        elif kind == "dir":
            entries.append(
                directory(path, mode=draw(modes) | 0o700, uid=draw(owners), xattrs=draw(xattrs))
            )
        elif kind == "symlink":
            entries.append(symlink(path, draw(st.sampled_from(["a", "../b", "/c", "a/b"]))))
        elif kind == "hardlink" and written_files:
            entries.append(hardlink(path, draw(st.sampled_from(written_files))))
        elif kind == "whiteout":
            markers.append(whiteout(path))
        elif kind == "opaque":
            markers.append(opaque(path))
        elif kind == "fifo":
            entries.append(Entry(path, Kind.FIFO, mode=0o644))
    # Markers usually come first, as the image spec recommends; sometimes anywhere.
    ordered = markers + entries if draw(st.integers(0, 4)) else entries + markers
    return layer(*ordered)


# --- Host documents ----------------------------------------------------------------------

_text = st.text(min_size=1, max_size=20)
_timestamps = st.datetimes(
    min_value=datetime(1970, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
).map(normalize_timestamp)
_signatures = (
    st.none()
    | st.sampled_from([ImageSignature.insecure(), ImageSignature.container_policy()])
    | _text.map(ImageSignature.ostree_remote)
)
_image_refs = st.builds(ImageReference, image=_text, transport=_text, signature=_signatures)
_image_statuses = st.builds(
    ImageStatus,
    image=_image_refs,
    image_digest=_text,
    architecture=_text,
    version=st.none() | _text,
    timestamp=st.none() | _timestamps,
)
_composefs = st.builds(
    BootEntryComposefs,
    verity=_text,
    boot_type=st.sampled_from(BootType),
    bootloader=st.sampled_from(Bootloader),
    missing_verity_allowed=st.booleans(),
    boot_digest=st.none() | _text,
)


def _entries(stores: st.SearchStrategy[str | None]) -> st.SearchStrategy[BootEntry]:
    return st.builds(
        BootEntry,
        image=st.none() | _image_statuses,
        cached_update=st.none() | _image_statuses,
        incompatible=st.booleans(),
        pinned=st.booleans(),
        soft_reboot_capable=st.booleans(),
        download_only=st.booleans(),
        store=stores,
        ostree=st.none()
        | st.builds(
            BootEntryOstree,
            stateroot=_text,
            checksum=_text,
            deploy_serial=st.integers(0, 2**32 - 1),
        ),
        composefs=st.none() | _composefs,
    )


def hosts(stores: st.SearchStrategy[str | None]) -> st.SearchStrategy[Host]:
    entries = _entries(stores)
    status = st.builds(
        HostStatus,
        staged=st.none() | entries,
        booted=st.none() | entries,
        rollback=st.none() | entries,
        other_deployments=st.lists(entries, max_size=2).map(tuple),
        rollback_queued=st.booleans(),
        type=st.none() | st.just(HostType.BOOTC_HOST),
        usr_overlay=st.none()
        | st.builds(
            FilesystemOverlay,
            st.sampled_from(FilesystemOverlayAccessMode),
            st.sampled_from(FilesystemOverlayPersistence),
        ),
        read_only=st.booleans(),
    )
    pairs = st.none() | st.dictionaries(_text, _text, max_size=2).map(
        lambda d: tuple(sorted(d.items()))
    )
    return st.builds(
        Host,
        spec=st.builds(
            HostSpec, image=st.none() | _image_refs, boot_order=st.sampled_from(BootOrder)
        ),
        status=status,
        api_version=_text,
        kind=_text,
        metadata=st.builds(
            ObjectMeta,
            name=st.none() | _text,
            namespace=st.none() | _text,
            labels=pairs,
            annotations=pairs,
        ),
    )


any_store = st.none() | st.sampled_from([STORE_OSTREE_CONTAINER, "container", "ostree"]) | _text
