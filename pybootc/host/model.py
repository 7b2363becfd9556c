"""The Host document of `bootc status`: frozen dataclasses named after host-v1.schema.json.

This module owns the document's shape only: camelCase keys in bootc's order, JSON and YAML
text, and defaults for documents written before newer fields existed. Building a Host from
a sysroot is host/build.py's job; rendering it for people is host/render.py's.

Plain dataclasses, not a model library: what pydantic would replace is the to/from JSON
methods here and the readers in fields.py, about 270 of these two modules' 690 lines;
the rest (the fields, the variants, chrono's timestamps, the errors that name a field's
path as bootc's do) stays either way.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum

from pybootc.errors import BootcError
from pybootc.host.fields import (
    Fields,
    JsonDict,
    dump_optional,
    kind_of,
    normalize_timestamp,
    read_boolean,
    read_string,
    read_string_map,
    read_timestamp,
    read_uint32,
    read_variant,
)

API_VERSION = "org.containers.bootc/v1"
KIND = "BootcHost"
OBJECT_NAME = "host"
# The one Store the schema names; pybootc also records its own backend names there.
STORE_OSTREE_CONTAINER = "ostreeContainer"


class BootOrder(StrEnum):
    """Which deployment boots next: the staged/booted one, or the rollback."""

    DEFAULT = "default"
    ROLLBACK = "rollback"


class HostType(StrEnum):
    """What kind of system was detected; bootc may add variants later."""

    BOOTC_HOST = "bootcHost"


class Slot(StrEnum):
    """The three named places a boot entry can hold in HostStatus."""

    STAGED = "staged"
    BOOTED = "booted"
    ROLLBACK = "rollback"


class SignatureKind(StrEnum):
    """How fetches are verified; the value is the schema's spelling."""

    OSTREE_REMOTE = "ostreeRemote"
    CONTAINER_POLICY = "containerPolicy"
    INSECURE = "insecure"


class BootType(StrEnum):
    """How a composefs deployment boots: BLS type 1 (kernel + initrd) or a UKI."""

    BLS = "Bls"
    UKI = "Uki"


class Bootloader(StrEnum):
    GRUB = "grub"
    GRUB_CC = "grub-cc"
    SYSTEMD = "systemd"
    NONE = "none"


class FilesystemOverlayAccessMode(StrEnum):
    READ_ONLY = "readOnly"
    READ_WRITE = "readWrite"

    @property
    def label(self) -> str:
        """How bootc's human form says it."""
        return "read-only" if self is FilesystemOverlayAccessMode.READ_ONLY else "read/write"


class FilesystemOverlayPersistence(StrEnum):
    TRANSIENT = "transient"
    PERSISTENT = "persistent"


# ---------------------------------------------------------------------------------------
# Timestamps: kept as the RFC 3339 UTC text that bootc (chrono) writes.

# ---------------------------------------------------------------------------------------
# The document. Each to_json_dict writes keys in the order bootc's structs declare them.


@dataclass(frozen=True)
class ImageSignature:
    """How fetches of an image are verified; `remote` names the ostree remote, if that kind."""

    kind: SignatureKind
    remote: str | None = None

    def __post_init__(self) -> None:
        if (self.kind is SignatureKind.OSTREE_REMOTE) != (self.remote is not None):
            raise BootcError(f"Signature {self.kind.value} cannot have remote {self.remote!r}")

    @classmethod
    def ostree_remote(cls, remote: str) -> ImageSignature:
        return cls(SignatureKind.OSTREE_REMOTE, remote)

    @classmethod
    def container_policy(cls) -> ImageSignature:
        return cls(SignatureKind.CONTAINER_POLICY)

    @classmethod
    def insecure(cls) -> ImageSignature:
        return cls(SignatureKind.INSECURE)

    def to_json_value(self) -> str | JsonDict:
        """`"insecure"`, `"containerPolicy"` or `{"ostreeRemote": NAME}`."""
        return self.kind.value if self.remote is None else {self.kind.value: self.remote}

    @classmethod
    def from_json_value(cls, value: object, where: str = "signature") -> ImageSignature:
        if isinstance(value, Mapping):
            if list(value) != [SignatureKind.OSTREE_REMOTE.value]:
                raise Fields.fail(where, f'expected {{"ostreeRemote": NAME}}, found {value}')
            return cls.ostree_remote(read_string(value["ostreeRemote"], f"{where}.ostreeRemote"))
        kind = read_variant(SignatureKind)(value, where)
        if kind is SignatureKind.OSTREE_REMOTE:
            raise Fields.fail(where, '"ostreeRemote" needs the name of the remote')
        return cls(kind)


@dataclass(frozen=True)
class ImageReference:
    """An image name with its transport (`registry`, `oci`, ...) and signature policy."""

    image: str
    transport: str
    signature: ImageSignature | None = None

    def to_json_dict(self) -> JsonDict:
        out: JsonDict = {"image": self.image, "transport": self.transport}
        if self.signature is not None:
            out["signature"] = self.signature.to_json_value()
        return out

    @classmethod
    def from_json_dict(cls, data: object, where: str = "image") -> ImageReference:
        f = Fields(data, where)
        return cls(
            image=f.required("image", read_string),
            transport=f.required("transport", read_string),
            signature=f.get("signature", ImageSignature.from_json_value, None),
        )


@dataclass(frozen=True)
class ImageStatus:
    """What was fetched for an image: digest, architecture and, if labelled, version and time."""

    image: ImageReference
    image_digest: str
    architecture: str
    version: str | None = None
    # RFC 3339 in UTC, normalized the way bootc writes it (see normalize_timestamp).
    timestamp: str | None = None

    def __post_init__(self) -> None:
        if self.timestamp is not None:
            object.__setattr__(self, "timestamp", normalize_timestamp(self.timestamp))

    def to_json_dict(self) -> JsonDict:
        return {
            "image": self.image.to_json_dict(),
            "version": self.version,
            "timestamp": self.timestamp,
            "imageDigest": self.image_digest,
            "architecture": self.architecture,
        }

    @classmethod
    def from_json_dict(cls, data: object, where: str = "image") -> ImageStatus:
        f = Fields(data, where)
        return cls(
            image=f.required("image", ImageReference.from_json_dict),
            version=f.get("version", read_string, None),
            timestamp=f.get("timestamp", read_timestamp, None),
            image_digest=f.required("imageDigest", read_string),
            architecture=f.required("architecture", read_string),
        )


@dataclass(frozen=True)
class BootEntryOstree:
    """The ostree side of a deployment: its stateroot, commit and deploy serial."""

    stateroot: str
    checksum: str
    deploy_serial: int

    def to_json_dict(self) -> JsonDict:
        return {
            "stateroot": self.stateroot,
            "checksum": self.checksum,
            "deploySerial": self.deploy_serial,
        }

    @classmethod
    def from_json_dict(cls, data: object, where: str = "ostree") -> BootEntryOstree:
        f = Fields(data, where)
        return cls(
            stateroot=f.required("stateroot", read_string),
            checksum=f.required("checksum", read_string),
            deploy_serial=f.required("deploySerial", read_uint32),
        )


@dataclass(frozen=True)
class BootEntryComposefs:
    """The composefs side of a deployment (upstream's composefs backend; read, never made)."""

    verity: str
    boot_type: BootType
    bootloader: Bootloader
    missing_verity_allowed: bool
    boot_digest: str | None = None

    def to_json_dict(self) -> JsonDict:
        return {
            "verity": self.verity,
            "bootType": self.boot_type.value,
            "bootloader": self.bootloader.value,
            "bootDigest": self.boot_digest,
            "missingVerityAllowed": self.missing_verity_allowed,
        }

    @classmethod
    def from_json_dict(cls, data: object, where: str = "composefs") -> BootEntryComposefs:
        f = Fields(data, where)
        return cls(
            verity=f.required("verity", read_string),
            boot_type=f.required("bootType", read_variant(BootType)),
            bootloader=f.required("bootloader", read_variant(Bootloader)),
            boot_digest=f.get("bootDigest", read_string, None),
            missing_verity_allowed=f.required("missingVerityAllowed", read_boolean),
        )


@dataclass(frozen=True)
class BootEntry:
    """One deployment as status reports it."""

    image: ImageStatus | None = None
    # The newer image a previous `upgrade --check` found, if any.
    cached_update: ImageStatus | None = None
    # The origin has changes bootc does not understand (rpm-ostree layering, say).
    incompatible: bool = False
    pinned: bool = False
    soft_reboot_capable: bool = False
    download_only: bool = False
    # Which store holds the image: "ostreeContainer" upstream; pybootc's backend names too.
    store: str | None = None
    ostree: BootEntryOstree | None = None
    composefs: BootEntryComposefs | None = None

    def to_json_dict(self) -> JsonDict:
        out: JsonDict = {
            "image": dump_optional(self.image),
            "cachedUpdate": dump_optional(self.cached_update),
            "incompatible": self.incompatible,
            "pinned": self.pinned,
            "softRebootCapable": self.soft_reboot_capable,
            "downloadOnly": self.download_only,
            "store": self.store,
            "ostree": dump_optional(self.ostree),
        }
        # Left out when absent, so that ostree deployments read like the v1 fixtures.
        if self.composefs is not None:
            out["composefs"] = self.composefs.to_json_dict()
        return out

    @classmethod
    def from_json_dict(cls, data: object, where: str = "entry") -> BootEntry:
        f = Fields(data, where)
        return cls(
            image=f.get("image", ImageStatus.from_json_dict, None),
            cached_update=f.get("cachedUpdate", ImageStatus.from_json_dict, None),
            incompatible=f.required("incompatible", read_boolean),
            pinned=f.required("pinned", read_boolean),
            soft_reboot_capable=f.get("softRebootCapable", read_boolean, False),
            download_only=f.get("downloadOnly", read_boolean, False),
            store=f.get("store", read_string, None),
            ostree=f.get("ostree", BootEntryOstree.from_json_dict, None),
            composefs=f.get("composefs", BootEntryComposefs.from_json_dict, None),
        )


@dataclass(frozen=True)
class FilesystemOverlay:
    """The overlay mounted on /usr of the booted deployment (`ostree admin unlock`)."""

    access_mode: FilesystemOverlayAccessMode
    persistence: FilesystemOverlayPersistence

    @property
    def label(self) -> str:
        """How bootc's human form says it, e.g. `transient, read/write`."""
        return f"{self.persistence.value}, {self.access_mode.label}"

    def to_json_dict(self) -> JsonDict:
        return {"accessMode": self.access_mode.value, "persistence": self.persistence.value}

    @classmethod
    def from_json_dict(cls, data: object, where: str = "usrOverlay") -> FilesystemOverlay:
        f = Fields(data, where)
        return cls(
            access_mode=f.required("accessMode", read_variant(FilesystemOverlayAccessMode)),
            persistence=f.required("persistence", read_variant(FilesystemOverlayPersistence)),
        )


@dataclass(frozen=True)
class HostSpec:
    """What the host should run: the image to follow and which deployment boots next."""

    image: ImageReference | None = None
    boot_order: BootOrder = BootOrder.DEFAULT

    def to_json_dict(self) -> JsonDict:
        return {"image": dump_optional(self.image), "bootOrder": self.boot_order.value}

    @classmethod
    def from_json_dict(cls, data: object, where: str = "spec") -> HostSpec:
        f = Fields(data, where)
        return cls(
            image=f.get("image", ImageReference.from_json_dict, None),
            boot_order=f.get("bootOrder", read_variant(BootOrder), BootOrder.DEFAULT),
        )


def _entries(value: object, where: str) -> tuple[BootEntry, ...]:
    if not isinstance(value, list):
        raise Fields.fail(where, f"expected a list, found {kind_of(value)}")
    return tuple(BootEntry.from_json_dict(e, f"{where}[{i}]") for i, e in enumerate(value))


@dataclass(frozen=True)
class HostStatus:
    """What the host has: its staged, booted, rollback and other deployments."""

    staged: BootEntry | None = None
    booted: BootEntry | None = None
    rollback: BootEntry | None = None
    other_deployments: tuple[BootEntry, ...] = ()
    rollback_queued: bool = False
    type: HostType | None = None
    usr_overlay: FilesystemOverlay | None = None
    # The physical root is on read-only media (a live ISO); nothing can be changed.
    read_only: bool = False

    def slot(self, slot: Slot) -> BootEntry | None:
        """The entry in `slot`."""
        by_slot = {Slot.STAGED: self.staged, Slot.BOOTED: self.booted, Slot.ROLLBACK: self.rollback}
        return by_slot[slot]

    def entries(self) -> Iterator[BootEntry]:
        """Every entry: staged, booted, rollback, then the others."""
        for entry in (self.staged, self.booted, self.rollback):
            if entry is not None:
                yield entry
        yield from self.other_deployments

    def to_json_dict(self) -> JsonDict:
        out: JsonDict = {
            "staged": dump_optional(self.staged),
            "booted": dump_optional(self.booted),
            "rollback": dump_optional(self.rollback),
        }
        if self.other_deployments:
            out["otherDeployments"] = [e.to_json_dict() for e in self.other_deployments]
        out["rollbackQueued"] = self.rollback_queued
        out["type"] = None if self.type is None else self.type.value
        # Newer than spec-v1-null.json, which an empty host reproduces: left out at their
        # defaults (serde reads a missing Option as None, and readOnly defaults to false).
        if self.usr_overlay is not None:
            out["usrOverlay"] = self.usr_overlay.to_json_dict()
        if self.read_only:
            out["readOnly"] = True
        return out

    @classmethod
    def from_json_dict(cls, data: object, where: str = "status") -> HostStatus:
        f = Fields(data, where)
        return cls(
            staged=f.get("staged", BootEntry.from_json_dict, None),
            booted=f.get("booted", BootEntry.from_json_dict, None),
            rollback=f.get("rollback", BootEntry.from_json_dict, None),
            other_deployments=f.get("otherDeployments", _entries, ()),
            rollback_queued=f.get("rollbackQueued", read_boolean, False),
            type=f.get("type", read_variant(HostType), None),
            usr_overlay=f.get("usrOverlay", FilesystemOverlay.from_json_dict, None),
            read_only=f.get("readOnly", read_boolean, False),
        )


@dataclass(frozen=True)
class ObjectMeta:
    """Kubernetes-style metadata; bootc sets only `name`. Maps are sorted key/value pairs."""

    name: str | None = None
    namespace: str | None = None
    labels: tuple[tuple[str, str], ...] | None = None
    annotations: tuple[tuple[str, str], ...] | None = None

    def to_json_dict(self) -> JsonDict:
        out: JsonDict = {}
        if self.annotations is not None:
            out["annotations"] = dict(self.annotations)
        if self.labels is not None:
            out["labels"] = dict(self.labels)
        if self.name is not None:
            out["name"] = self.name
        if self.namespace is not None:
            out["namespace"] = self.namespace
        return out

    @classmethod
    def from_json_dict(cls, data: object, where: str = "metadata") -> ObjectMeta:
        f = Fields(data, where)
        return cls(
            name=f.get("name", read_string, None),
            namespace=f.get("namespace", read_string, None),
            labels=f.get("labels", read_string_map, None),
            annotations=f.get("annotations", read_string_map, None),
        )


@dataclass(frozen=True)
class Host:
    """The whole document: `bootc status --format json|yaml` prints one of these."""

    spec: HostSpec = HostSpec()
    status: HostStatus = HostStatus()
    api_version: str = API_VERSION
    kind: str = KIND
    metadata: ObjectMeta = field(default_factory=lambda: ObjectMeta(name=OBJECT_NAME))

    @classmethod
    def empty(cls) -> Host:
        """A host with nothing deployed (spec-v1-null.json)."""
        return cls()

    def filter_to_slot(self, slot: Slot) -> Host:
        """This host with only `slot` left of staged/booted/rollback (`status --booted`)."""

        def keep(s: Slot) -> BootEntry | None:
            return self.status.slot(s) if s is slot else None

        status = replace(
            self.status,
            staged=keep(Slot.STAGED),
            booted=keep(Slot.BOOTED),
            rollback=keep(Slot.ROLLBACK),
        )
        return replace(self, status=status)

    def to_json_dict(self) -> JsonDict:
        return {
            "apiVersion": self.api_version,
            "kind": self.kind,
            "metadata": self.metadata.to_json_dict(),
            "spec": self.spec.to_json_dict(),
            "status": self.status.to_json_dict(),
        }

    @classmethod
    def from_json_dict(cls, data: object) -> Host:
        """Read a document, with defaults for fields newer than it; unknown keys are ignored."""
        f = Fields(data, "")
        return cls(
            api_version=f.required("apiVersion", read_string),
            kind=f.required("kind", read_string),
            metadata=f.get("metadata", ObjectMeta.from_json_dict, ObjectMeta()),
            spec=f.get("spec", HostSpec.from_json_dict, HostSpec()),
            status=f.get("status", HostStatus.from_json_dict, HostStatus()),
        )

    def to_json(self) -> str:
        """Pretty JSON, two-space indent, no trailing newline (serde_json's pretty form)."""
        return json.dumps(self.to_json_dict(), indent=2, ensure_ascii=False)

    def to_canonical_json(self) -> str:
        """Canonical JSON (RFC 8785 for these ASCII keys), as upstream `status --json` prints."""
        compact = (",", ":")
        return json.dumps(
            self.to_json_dict(), sort_keys=True, separators=compact, ensure_ascii=False
        )

    @classmethod
    def from_json(cls, text: str) -> Host:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise BootcError(f"Invalid host document: {err}") from None
        except RecursionError:
            raise BootcError("Invalid host document: it nests too deeply") from None
        return cls.from_json_dict(data)

    def to_yaml(self) -> str:
        """YAML with keys in bootc's order (spec_yaml)."""
        # Imported here: PyYAML is a quarter of what `bootc status` on a terminal, or
        # with --json, would spend importing, and neither writes YAML.
        from pybootc.host.yaml_text import dump_yaml

        return dump_yaml(self.to_json_dict())

    @classmethod
    def from_yaml(cls, text: str) -> Host:
        from pybootc.host.yaml_text import load_yaml

        return cls.from_json_dict(load_yaml(text))
