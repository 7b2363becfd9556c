"""The Host document of `bootc status`: frozen dataclasses named after host-v1.schema.json.

This module owns the document's shape only: camelCase keys in bootc's order, JSON and YAML
text, and defaults for documents written before newer fields existed. Building a Host from
a sysroot is status.py's job; rendering it for people is status_render.py's.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta, timezone
from enum import StrEnum
from typing import Any, Protocol, TypeVar

import yaml

from pybootc.errors import BootcError

API_VERSION = "org.containers.bootc/v1"
KIND = "BootcHost"
OBJECT_NAME = "host"
# The one Store the schema names; pybootc also records its own backend names there.
STORE_OSTREE_CONTAINER = "ostreeContainer"

JsonDict = dict[str, Any]
_T = TypeVar("_T")
_E = TypeVar("_E", bound=StrEnum)


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

_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?([Zz]|[+-]\d{2}:\d{2})"
)


def _format_utc(m: datetime, nanos: int) -> str:
    # chrono prints no fraction, or 3, 6 or 9 digits: the fewest that lose nothing.
    if nanos == 0:
        fraction = ""
    elif nanos % 1_000_000 == 0:
        fraction = f".{nanos // 1_000_000:03d}"
    elif nanos % 1_000 == 0:
        fraction = f".{nanos // 1_000:06d}"
    else:
        fraction = f".{nanos:09d}"
    date = f"{m.year:04d}-{m.month:02d}-{m.day:02d}"
    return f"{date}T{m.hour:02d}:{m.minute:02d}:{m.second:02d}{fraction}Z"


def normalize_timestamp(value: str | datetime) -> str:
    """`value` as bootc serializes a timestamp: RFC 3339 in UTC, `Z`, 0/3/6/9 fraction digits.

    Nanoseconds survive (a datetime would cut them to microseconds). A naive datetime is
    taken as UTC. Raises BootcError for text that is not an RFC 3339 date-time.
    """
    if isinstance(value, datetime):
        utc = (value if value.tzinfo is not None else value.replace(tzinfo=UTC)).astimezone(UTC)
        return _format_utc(utc, utc.microsecond * 1000)
    found = _RFC3339.fullmatch(value)
    if found is None:
        raise BootcError(f'Invalid timestamp "{value}": expected an RFC 3339 date-time')
    year, month, day, hour, minute, second, digits, offset = found.groups()
    try:
        zone = UTC
        if offset not in ("Z", "z"):
            delta = timedelta(hours=int(offset[1:3]), minutes=int(offset[4:6]))
            zone = timezone(-delta if offset[0] == "-" else delta)
        ymd = int(year), int(month), int(day)
        moment = datetime(*ymd, int(hour), int(minute), int(second), tzinfo=zone)
        utc = moment.astimezone(UTC)
    except (ValueError, OverflowError) as err:
        raise BootcError(f'Invalid timestamp "{value}": {err}') from None
    return _format_utc(utc, int((digits or "0")[:9].ljust(9, "0")))


# ---------------------------------------------------------------------------------------
# Reading untyped JSON/YAML values, naming the path of the offending field in every error.


def _kind_of(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "an object" if isinstance(value, Mapping) else type(value).__name__


class _Fields:
    """One JSON object being read; `where` is its path in the document."""

    def __init__(self, data: object, where: str) -> None:
        if not isinstance(data, Mapping):
            problem = f"expected an object, found {_kind_of(data)}"
            raise self.fail(where or "document", problem)
        self.data: Mapping[str, Any] = data
        self.where = where

    @staticmethod
    def fail(where: str, problem: str) -> BootcError:
        return BootcError(f"Invalid host document: {where}: {problem}")

    def path(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def get(self, key: str, check: Callable[[object, str], _T], default: _T) -> _T:
        """The value of `key` through `check`, or `default` when absent or null."""
        value = self.data.get(key)
        return default if value is None else check(value, self.path(key))

    def required(self, key: str, check: Callable[[object, str], _T]) -> _T:
        if key not in self.data:
            raise self.fail(self.where or "document", f'missing field "{key}"')
        return check(self.data[key], self.path(key))


def _string(value: object, where: str) -> str:
    # Unquoted YAML reads `version: 20231230` as a number; serde_yaml, knowing the field
    # is a string, takes it as one, and so do we. Booleans are not taken.
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise _Fields.fail(where, f"expected a string, found {_kind_of(value)}")
    return value


def _boolean(value: object, where: str) -> bool:
    if not isinstance(value, bool):
        raise _Fields.fail(where, f"expected a boolean, found {_kind_of(value)}")
    return value


def _uint32(value: object, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**32:
        raise _Fields.fail(where, f"expected an unsigned 32-bit integer, found {value!r}")
    return value


def _timestamp(value: object, where: str) -> str:
    if not isinstance(value, str | datetime):
        raise _Fields.fail(where, f"expected a date-time string, found {_kind_of(value)}")
    try:
        return normalize_timestamp(value)
    except BootcError as err:
        raise _Fields.fail(where, err.message) from None


def _variant(enum: type[_E]) -> Callable[[object, str], _E]:
    def check(value: object, where: str) -> _E:
        try:
            return enum(_string(value, where))
        except ValueError:
            expected = ", ".join(f'"{v.value}"' for v in enum)
            problem = f'unknown variant "{value}", expected one of {expected}'
            raise _Fields.fail(where, problem) from None

    return check


def _string_map(value: object, where: str) -> tuple[tuple[str, str], ...]:
    data = _Fields(value, where).data
    return tuple(sorted((str(k), _string(v, f"{where}.{k}")) for k, v in data.items()))


class _Dumpable(Protocol):
    def to_json_dict(self) -> JsonDict: ...


def _dump(value: _Dumpable | None) -> JsonDict | None:
    return None if value is None else value.to_json_dict()


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
                raise _Fields.fail(where, f'expected {{"ostreeRemote": NAME}}, found {value}')
            return cls.ostree_remote(_string(value["ostreeRemote"], f"{where}.ostreeRemote"))
        kind = _variant(SignatureKind)(value, where)
        if kind is SignatureKind.OSTREE_REMOTE:
            raise _Fields.fail(where, '"ostreeRemote" needs the name of the remote')
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
        f = _Fields(data, where)
        return cls(
            image=f.required("image", _string),
            transport=f.required("transport", _string),
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
        f = _Fields(data, where)
        return cls(
            image=f.required("image", ImageReference.from_json_dict),
            version=f.get("version", _string, None),
            timestamp=f.get("timestamp", _timestamp, None),
            image_digest=f.required("imageDigest", _string),
            architecture=f.required("architecture", _string),
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
        f = _Fields(data, where)
        return cls(
            stateroot=f.required("stateroot", _string),
            checksum=f.required("checksum", _string),
            deploy_serial=f.required("deploySerial", _uint32),
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
        f = _Fields(data, where)
        return cls(
            verity=f.required("verity", _string),
            boot_type=f.required("bootType", _variant(BootType)),
            bootloader=f.required("bootloader", _variant(Bootloader)),
            boot_digest=f.get("bootDigest", _string, None),
            missing_verity_allowed=f.required("missingVerityAllowed", _boolean),
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
            "image": _dump(self.image),
            "cachedUpdate": _dump(self.cached_update),
            "incompatible": self.incompatible,
            "pinned": self.pinned,
            "softRebootCapable": self.soft_reboot_capable,
            "downloadOnly": self.download_only,
            "store": self.store,
            "ostree": _dump(self.ostree),
        }
        # Left out when absent, so that ostree deployments read like the v1 fixtures.
        if self.composefs is not None:
            out["composefs"] = self.composefs.to_json_dict()
        return out

    @classmethod
    def from_json_dict(cls, data: object, where: str = "entry") -> BootEntry:
        f = _Fields(data, where)
        return cls(
            image=f.get("image", ImageStatus.from_json_dict, None),
            cached_update=f.get("cachedUpdate", ImageStatus.from_json_dict, None),
            incompatible=f.required("incompatible", _boolean),
            pinned=f.required("pinned", _boolean),
            soft_reboot_capable=f.get("softRebootCapable", _boolean, False),
            download_only=f.get("downloadOnly", _boolean, False),
            store=f.get("store", _string, None),
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
        f = _Fields(data, where)
        return cls(
            access_mode=f.required("accessMode", _variant(FilesystemOverlayAccessMode)),
            persistence=f.required("persistence", _variant(FilesystemOverlayPersistence)),
        )


@dataclass(frozen=True)
class HostSpec:
    """What the host should run: the image to follow and which deployment boots next."""

    image: ImageReference | None = None
    boot_order: BootOrder = BootOrder.DEFAULT

    def to_json_dict(self) -> JsonDict:
        return {"image": _dump(self.image), "bootOrder": self.boot_order.value}

    @classmethod
    def from_json_dict(cls, data: object, where: str = "spec") -> HostSpec:
        f = _Fields(data, where)
        return cls(
            image=f.get("image", ImageReference.from_json_dict, None),
            boot_order=f.get("bootOrder", _variant(BootOrder), BootOrder.DEFAULT),
        )


def _entries(value: object, where: str) -> tuple[BootEntry, ...]:
    if not isinstance(value, list):
        raise _Fields.fail(where, f"expected a list, found {_kind_of(value)}")
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
            "staged": _dump(self.staged),
            "booted": _dump(self.booted),
            "rollback": _dump(self.rollback),
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
        f = _Fields(data, where)
        return cls(
            staged=f.get("staged", BootEntry.from_json_dict, None),
            booted=f.get("booted", BootEntry.from_json_dict, None),
            rollback=f.get("rollback", BootEntry.from_json_dict, None),
            other_deployments=f.get("otherDeployments", _entries, ()),
            rollback_queued=f.get("rollbackQueued", _boolean, False),
            type=f.get("type", _variant(HostType), None),
            usr_overlay=f.get("usrOverlay", FilesystemOverlay.from_json_dict, None),
            read_only=f.get("readOnly", _boolean, False),
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
        f = _Fields(data, where)
        return cls(
            name=f.get("name", _string, None),
            namespace=f.get("namespace", _string, None),
            labels=f.get("labels", _string_map, None),
            annotations=f.get("annotations", _string_map, None),
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
        f = _Fields(data, "")
        return cls(
            api_version=f.required("apiVersion", _string),
            kind=f.required("kind", _string),
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
        return cls.from_json_dict(data)

    def to_yaml(self) -> str:
        """YAML with keys in bootc's order; an ostree remote signature as `!ostreeRemote NAME`."""
        return yaml.dump(
            _tag_signatures(self.to_json_dict()),
            Dumper=_HostYamlDumper,
            sort_keys=False,
            allow_unicode=True,
            width=2**31 - 1,
        )

    @classmethod
    def from_yaml(cls, text: str) -> Host:
        """Read YAML the way serde_yaml reads it into bootc's types (see _HostYamlLoader)."""
        try:
            data = yaml.load(text, Loader=_HostYamlLoader)
        except yaml.YAMLError as err:
            raise BootcError(f"Invalid host document: {err}") from None
        return cls.from_json_dict(data)


# ---------------------------------------------------------------------------------------
# YAML: serde_yaml writes an enum's newtype variant as a tag (`!ostreeRemote fedora`), and
# reads scalars by the field's type, so `2023-10-14T19:22:15Z` and `20231230.1` stay text.


_STR_TAG = "tag:yaml.org,2002:str"
_PRINTABLE_ASCII = re.compile(r"[!-~]+(?: [!-~]+)*")
_UNICODE_BREAKS = re.compile("[\x85\u2028\u2029]")


@dataclass(frozen=True)
class _TaggedScalar:
    tag: str
    value: str


def _tag_signatures(value: Any) -> Any:
    if isinstance(value, list):
        return [_tag_signatures(item) for item in value]
    if not isinstance(value, dict):
        return value
    out: JsonDict = {}
    for key, item in value.items():
        if key == "signature" and isinstance(item, dict):
            ((variant, name),) = item.items()
            out[key] = _TaggedScalar(variant, name)
        else:
            out[key] = _tag_signatures(item)
    return out


class _HostYamlDumper(yaml.SafeDumper):
    """A SafeDumper that writes _TaggedScalar as a local tag, unquoted where it can."""

    def choose_scalar_style(self) -> str:
        event = self.event
        if isinstance(event, yaml.ScalarEvent) and _UNICODE_BREAKS.search(event.value):
            # PyYAML folds these inside single quotes, changing the text; escape them.
            return '"'
        # PyYAML quotes every explicitly tagged scalar; serde_yaml writes plain text plainly.
        if isinstance(event, yaml.ScalarEvent) and (event.tag or "").startswith("!"):
            analysis = self.analysis = self.analysis or self.analyze_scalar(event.value)
            implicit = self.resolve(yaml.ScalarNode, event.value, (True, False))  # type: ignore[no-untyped-call]
            plain_text = implicit == _STR_TAG and _PRINTABLE_ASCII.fullmatch(event.value)
            if plain_text and analysis.allow_block_plain and not analysis.multiline:
                return ""
        return str(super().choose_scalar_style())


def _represent_tagged(dumper: yaml.SafeDumper, data: _TaggedScalar) -> yaml.ScalarNode:
    return dumper.represent_scalar(f"!{data.tag}", data.value)


_HostYamlDumper.add_representer(_TaggedScalar, _represent_tagged)


class _HostYamlLoader(yaml.SafeLoader):
    """A SafeLoader that resolves only null, booleans and plain decimal integers."""


_HostYamlLoader.yaml_implicit_resolvers = {}
for _tag, _pattern, _first in (
    ("null", r"~|null|Null|NULL|", ["~", "n", "N", ""]),
    ("bool", r"true|True|TRUE|false|False|FALSE", list("tTfF")),
    # No leading zero and no "+", so that the number turned back into text loses nothing.
    ("int", r"0|-?[1-9][0-9]*", list("-0123456789")),
):
    _HostYamlLoader.add_implicit_resolver(
        f"tag:yaml.org,2002:{_tag}", re.compile(f"^(?:{_pattern})$"), _first
    )


def _construct_local_tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> JsonDict:
    if isinstance(node, yaml.ScalarNode):
        return {suffix: loader.construct_scalar(node)}
    if isinstance(node, yaml.MappingNode):
        return {suffix: loader.construct_mapping(node, deep=True)}
    if isinstance(node, yaml.SequenceNode):
        return {suffix: loader.construct_sequence(node, deep=True)}
    raise yaml.constructor.ConstructorError(None, None, f"unknown tag !{suffix}", node.start_mark)


_HostYamlLoader.add_multi_constructor("!", _construct_local_tag)
